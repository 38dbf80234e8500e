"""The one generation path (evaluation, learning curves, studies, Extract+Think, `ask`, the terminal chat, the
server): prefill + decode over a KV cache, with continuous batching, per-request sampling and streaming.

Cache layout, a "shared timeline": one static [slots, kv_heads, cache_len, head_dim] buffer per layer and one
write pointer shared by every running request. Each decode step writes each running request's new key at the
pointer. A request that joins mid-decode is prefilled so that its prompt ends at the pointer (right-aligned, like
a left-padded batch), and a per-row key mask says which cache positions belong to which row. Rotary positions
are applied before caching and passed explicitly, so a row's positions are its own (0, 1, ...) wherever its keys
sit, and attention is a masked sum over keys: a request computes the same thing in a batch as alone. The model
runs its one forward (`LanguageModel.forward` with `kv_cache`, `attention_mask`, `position_ids`), the one that
training uses. A finished request leaves by moving the last running row into its place, so every step computes
over rows [0, n) only; when the pointer reaches the end of the buffer, the rows are compacted (each row's keys
gathered, in order, to the start).

Thinking mode (`data.thinking`): a request with `think=True` has `<think>` opened after its prompt and, with a
`thinking_budget`, `</think>` forced as soon as that many tokens were thought without closing; an end-of-sequence
token sampled inside that block is replaced by `</think>` too, so a reply asked to think always goes on to an
answer (the model may still end it blank, after the tag); `think=False`
bans, while the reply is still blank, every token that would start `<think>`, so a think-fusion model answers
directly; `think=None` leaves the choice to the model. A reply is split into its thinking and its answer as it
is generated (`Event.thinking` / `Event.text`), so the answer a caller reads and scores never holds thinking.
"""
from __future__ import annotations

import itertools
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..data.collate import left_pad
from ..data.thinking import THINK_END, THINK_START

# ---------------------------------------------------------------------------------------------------
# Requests and results


@dataclass
class SamplingParams:
    """temperature 0 = greedy. top_k 0 and top_p 1 disable those filters. `seed` makes sampling reproducible
    whatever else runs in the batch (each request has its own generator). `stop` strings end the answer
    (excluded from it); `ignore_eos` generates exactly `max_new_tokens` (benchmarks)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class Event:
    """What one step produced for one request: new answer text and new thinking text (either possibly empty
    while a stop string, a think tag or a multi-byte character is still undecided) and, on the last event,
    why it finished: "stop" (end of turn or a stop string), "length" (max_new_tokens), "cancelled", or
    "error" (then `error` says what)."""

    text: str
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    thinking: str = ""


@dataclass
class Completion:
    """`text` is the answer; `thinking` the reply's `<think>` block (None when it has none). `token_ids` are
    every generated token, thinking and forced `</think>` included (the engine-opened `<think>` is not)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    error: Optional[str] = None
    thinking: Optional[str] = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


_ids = itertools.count()


@dataclass
class Request:
    """A tokenised prompt. Images come either as `pixel_values` (encoded by the engine at prefill) or as
    `image_features` (already encoded, e.g. by a vision server), in the order of the image blocks. `think`:
    True opens the reply with `<think>`, False keeps the reply from opening one, None lets the model choose;
    `thinking_budget` (with think=True) is the most tokens thought before `</think>` is forced; an
    end-of-sequence token inside the think block forces it too. Both count against `max_new_tokens`."""

    input_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    pixel_values: Sequence[torch.Tensor] = ()
    image_features: Sequence[torch.Tensor] = ()
    think: Optional[bool] = None
    thinking_budget: Optional[int] = None
    on_event: Optional[Callable[[Event], None]] = None  # called on the engine's thread
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    completion: Optional[Completion] = None
    done: threading.Event = field(default_factory=threading.Event)


# ---------------------------------------------------------------------------------------------------
# The cache


class BatchKVCache:
    """The shared-timeline cache (see the module docstring). It is what `LanguageModel.forward` sees during a
    decode step: `length` is the number of cached positions in the window the running rows use, `update`
    writes the step's keys at the pointer for rows [0, rows) and returns the window."""

    def __init__(self, lm, slots: int, cache_len: int):
        c, p = lm.config, lm.embed_tokens.weight
        shape = (slots, c.num_kv_heads, cache_len, c.resolved_head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(c.num_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(c.num_layers)]
        self.mask = torch.zeros(slots, cache_len, dtype=torch.bool, device=p.device)
        self.max_len = cache_len
        self.pointer = 0  # next write position, shared by all rows
        self.lo = 0  # first position any running row uses: keys before it are never read
        self.rows = 0

    @property
    def length(self) -> int:
        return self.pointer - self.lo

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.pointer + k.shape[2]
        self.k[layer][:self.rows, :, self.pointer:end] = k
        self.v[layer][:self.rows, :, self.pointer:end] = v
        return self.k[layer][:self.rows, :, self.lo:end], self.v[layer][:self.rows, :, self.lo:end]

    def advance(self, t: int) -> None:
        self.pointer += t

    def move_row(self, src: int, dst: int) -> None:
        for buf in (*self.k, *self.v):
            buf[dst] = buf[src]
        self.mask[dst] = self.mask[src]

    def compact(self, starts: list[int]) -> list[int]:
        """Gather each running row's keys, in order, to the start of the buffer (right-aligned to the longest
        row, as a prefill would place them). Returns the rows' new start positions."""
        n = self.rows
        mask = self.mask[:n, :self.pointer]
        counts = mask.sum(1)
        width = int(counts.max()) if n else 0
        # Source index per (row, new position): the row's valid positions in order, after `width - count`
        # unused slots (which read position 0 and stay masked).
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]  # valid first
        shift = (width - counts)[:, None]
        col = torch.arange(width, device=mask.device)[None, :]
        src = torch.where(col >= shift, order.gather(1, (col - shift).clamp_min(0)), torch.zeros_like(order))
        new_mask = col >= shift
        for buf in (*self.k, *self.v):
            idx = src[:, None, :, None].expand(n, buf.shape[1], width, buf.shape[3])
            buf[:n, :, :width] = buf[:n].gather(2, idx)
        self.mask[:n] = False
        self.mask[:n, :width] = new_mask
        self.pointer, self.lo = width, 0
        return [width - int(c) for c in counts.tolist()]


class _PrefillView:
    """The cache as a prefill of rows [r0, r1) sees it: empty (`length` 0), writing at [start, start + T)."""

    def __init__(self, cache: BatchKVCache, r0: int, r1: int, start: int):
        self.cache, self.r0, self.r1, self.start, self.length = cache, r0, r1, start, 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.start + k.shape[2]
        kb, vb = self.cache.k[layer][self.r0:self.r1], self.cache.v[layer][self.r0:self.r1]
        kb[:, :, self.start:end] = k
        vb[:, :, self.start:end] = v
        return kb[:, :, self.start:end], vb[:, :, self.start:end]

    def advance(self, t: int) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# Sampling and detokenisation


def banned_token_ids(model) -> list[int]:
    """The image placeholder and framing token ids of a NativeVLM (none for a text LM): never valid output,
    since a generated placeholder would need image features that do not exist."""
    if getattr(model, "language", model) is model:
        return []
    return sorted({v for k, v in vars(model.config).items()
                   if k.startswith("image_") and k.endswith("_id") and isinstance(v, int)})


def sample_row(logits: torch.Tensor, p: SamplingParams, generator: Optional[torch.Generator]) -> int:
    """One token from logits [V] under temperature, top-k, then top-p (the order vLLM and HF apply them)."""
    if p.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / p.temperature
    if 0 < p.top_k < logits.shape[-1]:
        kth = logits.topk(p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < p.top_p  # the smallest prefix reaching top_p (>= 1 token)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return int(torch.multinomial(probs, 1, generator=generator))


class _Detokenizer:
    """Generated ids -> text deltas. Text is held back while it ends in an incomplete UTF-8 character or
    could still be the start of a stop string, so a streamed answer never shows what the final one drops."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0

    def add(self, token: int) -> tuple[str, bool]:
        """Returns (new text to emit, whether a stop string was hit)."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return self.flush(), True
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            return "", False
        for s in self.stop:  # hold back the longest tail that a stop string starts with
            for k in range(min(len(s) - 1, safe), 0, -1):
                if self.text.endswith(s[:k]):
                    safe = min(safe, len(self.text) - k)
                    break
        out, self.sent = self.text[self.sent:safe], max(self.sent, safe)
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


def think_opening(tokenizer) -> list[int]:
    """The tokens the engine writes after the prompt of a request that thinks, as training renders them
    (`data.thinking.render_thinking`); they count against the context."""
    return tokenizer.encode(THINK_START + "\n")


def _held(text: str, tag: str) -> str:
    """`text` without its longest tail that could still grow into `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return text[:-k]
    return text


def split_reply(raw: str, opened: bool, final: bool) -> tuple[Optional[str], str]:
    """(thinking, answer) of a reply's text so far; `opened`: the engine wrote `<think>` before it. The same
    reading as `data.thinking.split_thinking` for a finished reply (thinking and answer stripped), while a
    reply still growing holds back whatever a later token could change (a partial tag, trailing blanks), so
    each part only ever grows and streamed pieces add up to the finished parts. A reply with no think block
    is its own answer, unstripped, as before thinking existed."""
    if not opened:
        head = raw.lstrip()
        if not head.startswith(THINK_START):
            if not final and THINK_START.startswith(head):
                return None, ""  # blank or a partial `<think>`: undecided
            return None, raw
        raw = head[len(THINK_START):]
    body, sep, after = raw.partition(THINK_END)
    if not sep:
        return (body.strip(), "") if final else (_held(body, THINK_END).strip(), "")
    return body.strip(), after.strip()


@dataclass
class _Row:
    req: Request
    detok: _Detokenizer
    generator: Optional[torch.Generator]
    prompt_len: int
    pos: int = 0  # rotary position of the token fed next
    start: int = 0  # cache position of the row's first key
    last: int = 0
    tokens: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)  # tokens fed next instead of sampled (a forced `</think>`)
    thinking: bool = False  # inside an engine-opened think block
    sent: tuple[int, int] = (0, 0)  # characters of (thinking, answer) delivered


# ---------------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Continuous batching over one model. `submit` (any thread) queues a request; each `step` admits waiting
    requests into free slots (one batched prefill) and decodes one token for every running request, so a new
    request joins at the next step and a finished one frees its slot at once. `max_batch_size` rows share a
    cache of `max_len` positions (default: the model's context); one step prefills at most
    `max_prefill_tokens` prompt tokens (at least one prompt), so a burst of long prompts can't stall decoding
    for long. Use `generate` / `stream` directly, or `start()` a background thread that steps while there is
    work (the server does)."""

    def __init__(self, model, tokenizer, max_batch_size: int = 32, max_len: Optional[int] = None,
                 max_prefill_tokens: int = 8192):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.lm = getattr(model, "language", model)
        self.is_vlm = self.lm is not model
        self.max_len = min(max_len or self.lm.config.max_position_embeddings, self.lm.config.max_position_embeddings)
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.device = self.lm.embed_tokens.weight.device
        self.cache = BatchKVCache(self.lm, max_batch_size, self.max_len)
        self.banned = banned_token_ids(model)
        self.pad_id = tokenizer.pad_id
        self.eos_id = tokenizer.eos_id
        self.running: list[_Row] = []
        self.waiting: list[Request] = []
        self._lock = threading.Condition()
        self._cancelled: set[str] = set()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.stats = {"prompt_tokens": 0, "generated_tokens": 0, "steps": 0}
        self.finished: Counter = Counter()  # finished requests by finish reason
        self.think_open = think_opening(tokenizer)
        self.think_close = tokenizer.encode("\n" + THINK_END + "\n")
        self._think_starts: Optional[list[int]] = None

    # -- submitting -----------------------------------------------------------------------------------

    def check(self, prompt_len: int, params: SamplingParams, think: Optional[bool] = None,
              thinking_budget: Optional[int] = None) -> None:
        """ValueError naming the problem when a request can never run."""
        params.validate()
        if thinking_budget is not None and (think is not True or thinking_budget < 0):
            raise ValueError(f"thinking_budget {thinking_budget}: a budget is a number of tokens >= 0 and applies "
                             "when thinking is on (think=True)")
        prompt_len += len(self.think_open) if think else 0
        if prompt_len + params.max_new_tokens > self.max_len:
            raise ValueError(f"the prompt has {prompt_len} tokens and max_new_tokens is {params.max_new_tokens}: "
                             f"together over the model's context of {self.max_len} tokens")

    def prompt_ids(self, req: Request) -> list[int]:
        """What is prefilled: the prompt, then `<think>` when the request thinks."""
        return req.input_ids + self.think_open if req.think else req.input_ids

    def think_start_ids(self) -> list[int]:
        """The tokens that would begin a `<think>` in a reply that is still blank: those whose text, leading
        blanks dropped, is a start of the tag or starts with it (the tag's own token, when the tokenizer has
        one, as trained ones do). Banned there when think=False."""
        if self._think_starts is None:
            texts = [self.tokenizer.decode([i]).lstrip() for i in range(self.tokenizer.vocab_size)]
            self._think_starts = [i for i, t in enumerate(texts)
                                  if t and (THINK_START.startswith(t) or t.startswith(THINK_START))]
        return self._think_starts

    def submit(self, req: Request) -> Request:
        self.check(len(req.input_ids), req.params, req.think, req.thinking_budget)
        with self._lock:
            self.waiting.append(req)
            self._lock.notify()
        return req

    def cancel(self, req_id: str) -> None:
        """The request leaves at the next step (its slot is freed); safe from any thread."""
        with self._lock:
            self._cancelled.add(req_id)
            self._lock.notify()

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # -- convenience (no background thread) -------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        for r in requests:
            self.submit(r)
        if self._thread is None:
            while not all(r.done.is_set() for r in requests):
                self.step()
        for r in requests:
            r.done.wait()
        return [r.completion for r in requests]

    def stream(self, req: Request) -> Iterator[Event]:
        """Events of one request as they are produced."""
        events: queue.Queue = queue.Queue()
        req.on_event = events.put
        self.submit(req)
        while True:
            if self._thread is None and events.empty():
                self.step()
                continue
            ev = events.get()
            yield ev
            if ev.finish_reason is not None:
                return

    # -- the background thread ----------------------------------------------------------------------------

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="nativevlm-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self.waiting or self.running or self._stopping):
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # e.g. out of memory: fail what is running, keep serving
                for i in reversed(range(len(self.running))):
                    self._leave(i, "error", error=f"{type(e).__name__}: {e}")

    # -- one step -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Admit what fits, prefill it, decode one token for every running request."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            self.waiting, dropped = ([r for r in self.waiting if r.id not in cancelled],
                                     [r for r in self.waiting if r.id in cancelled])
            admitted, budget = [], self.max_prefill_tokens
            while self.waiting and len(self.running) + len(admitted) < self.max_batch_size:
                n = len(self.prompt_ids(self.waiting[0]))
                if admitted and n > budget:
                    break
                admitted.append(self.waiting.pop(0))
                budget -= n
        for r in dropped:
            self._finish(r, [], "cancelled", 0)
        for i in reversed(range(len(self.running))):
            if self.running[i].req.id in cancelled:
                self._leave(i, "cancelled")
        decoding = len(self.running)
        if admitted:
            self._prefill(admitted)
        if decoding:
            self._decode(decoding)
        self.stats["steps"] += 1

    def _prefill(self, reqs: list[Request]) -> None:
        """One left-padded forward over the new prompts, whose keys go into fresh rows, right-aligned at the
        pointer (moved forward when a prompt is longer than the timeline so far)."""
        prompts = [self.prompt_ids(r) for r in reqs]
        width = max(len(p) for p in prompts)
        if max(self.cache.pointer, width) + 1 > self.cache.max_len:
            self._compact()
        end = max(self.cache.pointer, width)
        r0, r1 = len(self.running), len(self.running) + len(reqs)
        ids, mask = left_pad(prompts, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        view = _PrefillView(self.cache, r0, r1, end - width)
        try:
            feats = []
            if self.is_vlm:
                pixels = [p.to(self.device) for r in reqs for p in r.pixel_values]
                encoded = iter(self.model.encode_images(pixels)) if pixels else iter(())
                for r in reqs:  # row order, each request's images in order: the order of the <img> slots
                    feats += [f.to(self.device, self.lm.embed_tokens.weight.dtype) for f in r.image_features]
                    feats += [next(encoded) for _ in r.pixel_values]
            logits = self._forward(ids, mask, view, image_features=feats)
        except Exception as e:  # a bad request (e.g. features of the wrong shape) must fail alone
            if len(reqs) > 1:  # nothing was kept from the failed forward: prefill each on its own
                for r in reqs:
                    self._prefill([r])
                return
            self._finish(reqs[0], [], "error", len(prompts[0]), error=f"{type(e).__name__}: {e}")
            return
        # Running rows hold no key at or past the pointer, so the gap up to `end` is already masked for them.
        self.cache.mask[r0:r1] = False
        self.cache.mask[r0:r1, end - width:end] = mask
        self.cache.pointer = end
        for r, prompt in zip(reqs, prompts):
            gen = None
            if r.params.temperature > 0:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(r.params.seed) if r.params.seed is not None else gen.seed()
            n = len(prompt)
            row = _Row(r, _Detokenizer(self.tokenizer, r.params.stop), gen, n, pos=n, start=end - n,
                       thinking=bool(r.think))
            if row.thinking:
                self._budget(row)  # a budget of 0 closes the block at once
            self.running.append(row)
            self.stats["prompt_tokens"] += n
        self.cache.rows = len(self.running)
        self._emit(r0, logits)

    def _decode(self, n: int) -> None:
        """One token for rows [0, n) (the rows that were running before this step's prefill)."""
        if self.cache.pointer + 1 > self.cache.max_len:
            self._compact()
        rows = self.running[:n]
        c = self.cache
        ids = torch.tensor([[r.last] for r in rows], device=self.device)
        pos = torch.tensor([[r.pos] for r in rows], device=self.device)
        c.mask[:n, c.pointer] = True
        c.rows = n
        c.lo = min(r.start for r in rows)
        attn = c.mask[:n, c.lo:c.pointer + 1]
        logits = self._forward(ids, attn, c, position_ids=pos)
        c.rows = len(self.running)
        for r in rows:
            r.pos += 1
        self._emit(0, logits)

    def _forward(self, ids, attention_mask, kv_cache, position_ids=None, image_features=None) -> torch.Tensor:
        """Last-position logits [B, V]: the model's own embedding (image features spliced in) and decoder."""
        if self.is_vlm:
            embeds, image_mask = self.model.embed(ids, image_features=image_features or None)
        else:
            embeds, image_mask = self.lm.embed_tokens(ids), None
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                       kv_cache=kv_cache, image_mask=image_mask, logits_to_keep=1).logits[:, -1]

    def _compact(self) -> None:
        self.cache.rows = len(self.running)
        for row, start in zip(self.running, self.cache.compact([r.start for r in self.running])):
            row.start = start

    def _emit(self, r0: int, logits: torch.Tensor) -> None:
        """Sample one token for rows [r0, r0 + len(logits)), deliver text, retire finished rows."""
        if self.banned:
            logits[:, self.banned] = float("-inf")
        rows = self.running[r0:r0 + logits.shape[0]]
        for i, row in enumerate(rows):
            if row.req.think is False and not row.detok.text.strip():
                logits[i, self.think_start_ids()] = float("-inf")
        greedy = logits.argmax(-1).tolist()
        finished = []
        for i, row in enumerate(rows):
            p = row.req.params
            if row.forced:
                tok = row.forced.pop(0)
            else:
                tok = greedy[i] if p.temperature == 0 else sample_row(logits[i], p, row.generator)
            if tok == self.eos_id and row.thinking and not p.ignore_eos:  # ended inside its thinking
                self._close_thinking(row)
                tok = row.forced.pop(0)
            row.last = tok
            self.stats["generated_tokens"] += 1
            if tok == self.eos_id and not p.ignore_eos:
                row.detok.flush()
                finished.append((r0 + i, "stop"))
                continue
            row.tokens.append(tok)
            _, hit_stop = row.detok.add(tok)
            if hit_stop:
                finished.append((r0 + i, "stop"))
            elif len(row.tokens) >= p.max_new_tokens:
                row.detok.flush()
                finished.append((r0 + i, "length"))
            else:
                if row.thinking:
                    self._budget(row)
                if row.req.on_event:
                    ev, _ = self._event(row, final=False)
                    if ev.text or ev.thinking:
                        row.req.on_event(ev)
        for i, reason in reversed(finished):
            self._leave(i, reason)

    def _budget(self, row: _Row) -> None:
        """Leaves the think block when the reply closed it; forces `</think>` once the budget is thought. Run
        after every token of a row still thinking, so `row.thinking` is False once the reply holds `</think>`."""
        if THINK_END in row.detok.text:
            row.thinking = False
        elif row.req.thinking_budget is not None and len(row.tokens) >= row.req.thinking_budget:
            self._close_thinking(row)

    def _close_thinking(self, row: _Row) -> None:
        """Feeds `\\n</think>\\n` as the row's next tokens instead of sampling; the row has left its think block."""
        row.forced, row.thinking = list(self.think_close), False

    def _event(self, row: _Row, final: bool, reason: Optional[str] = None,
               error: Optional[str] = None) -> tuple[Event, tuple[Optional[str], str]]:
        """The answer and thinking text not yet delivered (all of it, settled, when `final`), and the reply's
        (thinking, answer) so far."""
        text = row.detok.text if final else row.detok.text[:row.detok.sent]
        thinking, answer = split_reply(text, bool(row.req.think), final)
        ev = Event(answer[row.sent[1]:], reason, error, (thinking or "")[row.sent[0]:])
        row.sent = (len(thinking or ""), len(answer))
        return ev, (thinking, answer)

    def _leave(self, i: int, reason: str, error: Optional[str] = None) -> None:
        row = self.running[i]
        last = len(self.running) - 1
        if i != last:
            self.cache.move_row(last, i)
            self.running[i] = self.running[last]
        self.running.pop()
        self.cache.rows = len(self.running)
        if not self.running:
            self.cache.pointer = self.cache.lo = 0
        ev, (thinking, answer) = self._event(row, True, reason, error)
        self._finish(row.req, row.tokens, reason, row.prompt_len, ev, Completion(
            answer, list(row.tokens), reason, row.prompt_len, error, thinking))

    def _finish(self, req: Request, tokens: list[int], reason: str, prompt_len: int, event: Optional[Event] = None,
                completion: Optional[Completion] = None, error: Optional[str] = None) -> None:
        req.completion = completion or Completion("", list(tokens), reason, prompt_len, error)
        self.finished[reason] += 1
        if req.on_event:
            req.on_event(event or Event("", reason, error))
        req.done.set()
