"""Preference pairs for MPO, made by the model itself (InternVL3.5's MPO data): sample the current model N
times on each training question (temperature 1, seeded), score each reply against the ground truth with the
reward, and keep one pair per question: chosen = a right reply, rejected = a wrong one. A question whose
replies are all right or all wrong gives no pair and is counted by reason.

Sampling goes through the serving engine (`infer.engine`, the one generation path), each reply with its
own generator seeded from (seed, question id, reply index), so a reply does not depend on what else is in
the batch and a rerun reproduces it. The output is cached per question: `FILE` holds the pairs (JSONL),
`FILE.skipped.jsonl` the questions that gave none, `FILE.summary.json` the settings and counts. A rerun
with the same settings samples only the questions in neither file; a rerun with other settings is refused.

Pair records: `{"id", "messages": the prompt turns (chat form, one <image> marker per image), "images":
paths relative to FILE's folder, "chosen", "rejected", "meta": the question's meta plus n_right and n}`.

Thinking mode (`think=True`): each reply is asked as the engine's `think=True` request (`<think>` opened after
the prompt, `</think>` forced after `thinking_budget` tokens) and kept whole, as training renders a thinking
turn (`<think>\n...\n</think>\nanswer`); the reward reads the answer after `</think>` and asks for one
well-formed think block, so chosen is a right answer reached by thinking, rejected a wrong one (or one that
never closed its thinking). MPO then trains on the whole turn: thinking, tags and answer. `strict=True`
counts a right answer only when it stands alone (the reward's `strict`), so a hedge is a rejected reply.
Both modes (`think=True`, `direct_share=p`): each question is asked directly instead (the engine's
`think=False`, think blocks banned, the direct reward) with probability p, drawn by a hash of (seed, question
id) like the reply seeds, so one pair file trains both modes; each record's `meta.think` says which.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..data.collate import encode_sample
from ..data.sample import Sample
from ..errors import DataError, UserError
from ..infer.engine import Engine, Request, SamplingParams, think_opening
from .reward import reward

ALL_RIGHT, ALL_WRONG, NO_ANSWER, TOO_LONG = "all right", "all wrong", "no answer", "prompt too long"


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 8
    seed: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 32
    think: bool = False  # thinking-mode replies (module docstring)
    thinking_budget: Optional[int] = None  # with think: the most tokens thought before `</think>` is forced
    strict: bool = False  # a right answer counts only alone (rl.reward's strict)
    direct_share: float = 0.0  # with think: the share of questions asked directly instead (module docstring)

    def __post_init__(self):
        if self.thinking_budget is not None and (not self.think or not 1 <= self.thinking_budget < self.max_new_tokens):
            raise UserError(f"thinking budget {self.thinking_budget}: it needs thinking mode and 1 <= budget < "
                            f"max new tokens ({self.max_new_tokens}), leaving room for the answer")
        if not 0 <= self.direct_share <= 1 or (self.direct_share > 0 and not self.think):
            raise UserError(f"direct share {self.direct_share}: the share of questions asked directly beside "
                            "thinking ones needs thinking mode and 0 <= share <= 1")

    def thinks(self, sample_id: str) -> bool:
        """Whether question `sample_id` is asked to think."""
        return self.think and asked_to_think(self.seed, sample_id, self.direct_share)


def reply_seed(seed: int | str, sample_id: str, k: int) -> int:
    """The seed of reply k to a question: a stable hash, the same in every process and batch."""
    digest = hashlib.sha256(f"{seed}|{sample_id}|{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def asked_to_think(seed: int | str, key: str, direct_share: float) -> bool:
    """In both modes, whether the question `key` is asked to think (True) or directly (with probability
    `direct_share`): a stable hash of (seed, key), like the reply seeds."""
    return direct_share == 0 or reply_seed(seed, key, -1) / 2 ** 63 >= direct_share


def reply_text(tokenizer, completion, opening: list[int]) -> str:
    """A finished reply as the reward reads it: asked to think (`opening`, the engine's `<think>` tokens), the
    whole turn as written (opening, thinking, close tag, answer), so malformed tags are seen as they are;
    otherwise the answer text."""
    return tokenizer.decode(opening + completion.token_ids).strip() if opening else completion.text.strip()


def sample_replies(model, tokenizer, processor, samples: Sequence[Sample], settings: SamplingSettings,
                   max_batch_size: int = 64) -> list[Optional[list[str]]]:
    """`settings.n` sampled replies to each sample's question (its messages up to the last answer); None for
    a sample whose prompt and replies would not fit the model's context."""
    prompts = [encode_sample(prompt_of(s), tokenizer, processor, add_generation_prompt=True) for s in samples]
    opening = think_opening(tokenizer) if settings.think else []  # what the engine writes after the prompt
    context = getattr(model, "language", model).config.max_position_embeddings
    fits = [len(p.input_ids) + len(opening) + settings.max_new_tokens <= context for p in prompts]
    longest = max((len(p.input_ids) for p, ok in zip(prompts, fits) if ok), default=0) + len(opening)
    # per question: think (True), or answer directly: banned from thinking beside thinking questions (False),
    # left to choose as evaluation asks (None)
    modes = {s.id: True if settings.thinks(s.id) else (False if settings.think else None) for s in samples}
    requests = [Request(p.input_ids, SamplingParams(settings.max_new_tokens, settings.temperature,
                                                    seed=reply_seed(settings.seed, s.id, k)),
                        pixel_values=p.pixel_values, think=modes[s.id],
                        thinking_budget=settings.thinking_budget if modes[s.id] else None)
                for s, p, ok in zip(samples, prompts, fits) if ok for k in range(settings.n)]
    if not requests:
        return [None] * len(samples)
    engine = Engine(model, tokenizer, max_batch_size=min(max_batch_size, len(requests)),
                    max_len=longest + settings.max_new_tokens)
    texts = iter(reply_text(tokenizer, c, opening if r.think else [])
                 for r, c in zip(requests, engine.generate(requests)))
    return [[next(texts) for _ in range(settings.n)] if ok else None for ok in fits]


def has_answer(sample: Sample) -> bool:
    return bool(sample.meta.get("answer")) or sample.messages[-1]["role"] == "assistant"


def choose_pair(sample: Sample, replies: list[str], thinking: bool = False,
                strict: bool = False) -> tuple[Optional[tuple[str, str]], str, int]:
    """(chosen, rejected) or None, the reason when None, and how many replies are right. Chosen is the right
    reply with the highest reward, rejected the wrong one with the highest reward (a readable wrong answer
    before an unreadable one: the harder negative); the first such reply on ties. `thinking` and `strict`: the
    reward's (a thinking-mode reply is read after its `</think>` and asked for one well-formed think block)."""
    rewards = [reward(sample, r, thinking=thinking, strict=strict) for r in replies]
    right = [i for i, r in enumerate(rewards) if r.correct]
    wrong = [i for i, r in enumerate(rewards) if not r.correct]
    if not wrong:
        return None, ALL_RIGHT, len(right)
    if not right:
        return None, ALL_WRONG, 0
    best = lambda idx: max(idx, key=lambda i: (rewards[i].value, -i))  # noqa: E731
    return (replies[best(right)], replies[best(wrong)]), "", len(right)


def pair_record(sample: Sample, chosen: str, rejected: str, n_right: int, n: int, folder: Path,
                think: Optional[bool] = None) -> dict:
    prompt = prompt_of(sample)
    mode = {} if think is None else {"think": think}
    return {"id": sample.id, "messages": prompt.messages,
            "images": [os.path.relpath(p, folder) for p in prompt.images], "chosen": chosen,
            "rejected": rejected, "meta": {**sample.meta, "n_right": n_right, "n": n, **mode}}


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file this module appends to; a torn last line (a run killed mid-write) is
    dropped from the file, so the question it held is sampled again."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise DataError(f"{path} line {i + 1}: not a JSON record; delete the file to start over") from None
            path.write_text("".join(lines[:-1]), encoding="utf-8")
    return records


@dataclass
class Summary:
    questions: int
    pairs: int
    skipped: Counter
    sampled: int  # questions sampled by this run (the rest were in the cache)

    def line(self) -> str:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        return (f"{self.questions} questions -> {self.pairs} pairs" + (f"; skipped {skipped}" if skipped else "")
                + f" ({self.sampled} sampled now, {self.questions - self.sampled} from the cache)")


def make_preferences(samples: Sequence[Sample], out: Path, settings: SamplingSettings,
                     sample_fn: Callable[[Sequence[Sample]], list[Optional[list[str]]]], source: dict,
                     chunk: int = 16, log: Callable[[str], None] = print) -> Summary:
    """Write (or complete) the pair file `out` for `samples`; `sample_fn` gives the replies to a chunk of
    samples (`sample_replies` bound to a model). `source` (model and data paths) goes into the summary with
    the settings; a cache made with other settings or another source is refused."""
    ids = Counter(s.id for s in samples)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise DataError(f"{source.get('data')}: question id {dup[0]!r} occurs {ids[dup[0]]} times; the pair cache "
                        "is keyed by id, so give each record a unique `id`")
    summary_path, skipped_path = Path(f"{out}.summary.json"), Path(f"{out}.skipped.jsonl")
    config = {"settings": dataclasses.asdict(settings), "source": source}
    if summary_path.exists():
        old = json.loads(summary_path.read_text(encoding="utf-8"))
        # a cache from before a setting existed was made with its default
        old["settings"] = {**dataclasses.asdict(SamplingSettings()), **old.get("settings", {})}
        if {k: old.get(k) for k in config} != config:
            raise UserError(f"{out} was made with other settings ({old.get('settings')}, {old.get('source')}); "
                            "use another --out, or delete it and its .summary.json / .skipped.jsonl to start over")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    pairs, skips = read_jsonl(out), read_jsonl(skipped_path)
    done = {r["id"] for r in pairs} | {r["id"] for r in skips}
    todo = [s for s in samples if s.id not in done]
    wanted = set(ids)
    skipped = Counter(r["reason"] for r in skips if r["id"] in wanted)
    n_pairs = sum(r["id"] in wanted for r in pairs)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        answerable = [s for s in part if has_answer(s)]
        replies = dict(zip((s.id for s in answerable), sample_fn(answerable))) if answerable else {}
        new_pairs, new_skips = [], []
        for s in part:
            if s.id not in replies:
                pair, reason, n_right = None, NO_ANSWER, 0
            elif replies[s.id] is None:
                pair, reason, n_right = None, TOO_LONG, 0
            else:
                pair, reason, n_right = choose_pair(s, replies[s.id], settings.thinks(s.id), settings.strict)
            if pair is None:
                new_skips.append({"id": s.id, "reason": reason, "n_right": n_right, "n": settings.n})
                skipped[reason] += 1
            else:  # thinking-mode files record each pair's mode
                new_pairs.append(pair_record(s, *pair, n_right, settings.n, out.parent,
                                             settings.thinks(s.id) if settings.think else None))
        for path, recs in ((out, new_pairs), (skipped_path, new_skips)):
            with path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        n_pairs += len(new_pairs)
        log(f"{min(start + chunk, len(todo))}/{len(todo)} questions sampled, {n_pairs} pairs so far")
    summary = Summary(len(samples), n_pairs, skipped, len(todo))
    summary_path.write_text(json.dumps({**config, "questions": summary.questions, "pairs": summary.pairs,
                                        "skipped": dict(summary.skipped)}, indent=1), encoding="utf-8")
    return summary


def read_pairs(path: Path) -> list[tuple[Sample, Sample]]:
    """The (chosen, rejected) conversations of a pair file: the prompt turns plus each answer as the last
    assistant turn, images resolved against the file's folder."""
    out = []
    for r in read_jsonl(Path(path)):
        images = [str((Path(path).parent / p).resolve()) for p in r["images"]]
        make = lambda answer: Sample(id=r["id"], images=images, meta=r["meta"],  # noqa: E731
                                     messages=[*r["messages"], {"role": "assistant", "content": answer}])
        out.append((make(r["chosen"]), make(r["rejected"])))
    return out


def prompt_of(sample: Sample) -> Sample:
    """The sample without its final assistant turn: what the model is asked."""
    msgs = sample.messages[:-1] if sample.messages[-1]["role"] == "assistant" else sample.messages
    return dataclasses.replace(sample, messages=msgs)
