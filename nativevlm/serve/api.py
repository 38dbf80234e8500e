"""The OpenAI-compatible chat server: `/v1/chat/completions` (text and `image_url` parts, streaming as
server-sent events), `/v1/models`, `/health`, `/metrics`.

A request is validated in order of cost: JSON, model, messages and sampling fields first; then a place in the
bounded queue (429 when full, rather than growing without limit); then the images' bytes and header sizes
(pixel limit, token count, context length) before any decoding; then decoding and resizing in a worker pool
(never on the event loop) or, with a vision server (DvD), its features. The engine runs on its own thread;
this loop only parses, waits and streams, so a slow image or client never stalls the batch. Every refusal
is a 4xx with the OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`.

Thinking mode: the request fields `think` (or vLLM's `chat_template_kwargs: {"enable_thinking": ...}`) and
`thinking_budget` (or vLLM's `thinking_token_budget`) reach the engine (`infer.engine.Request`); the reply's
thinking comes back beside `content` as `reasoning` (current vLLM) and `reasoning_content` (DeepSeek and
older vLLM), in the message and in each streamed delta, so the content never holds thinking.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, Optional

import httpx
import torch
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..data.image import ImageProcessor
from ..data.sample import IMAGE_MARKER, user_turn
from ..errors import ConfigError
from ..infer.chat import encode_prompt
from ..model.connector import n_tokens
from ..infer.engine import Engine, Event, Request, SamplingParams
from .media import MediaPolicy, RequestError, decode_image, image_bytes, image_size

ROLES = ("system", "developer", "user", "assistant")
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logprobs", "logit_bias",
               "audio", "prediction")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class ServeConfig:
    model_name: str
    max_batch_size: int = 32
    max_len: Optional[int] = None  # context (prompt + answer); default: the model's
    max_queue: int = 64  # requests admitted beyond the running batch; past that, 429
    max_tokens_cap: int = 2048
    default_max_tokens: int = 256
    max_images_per_prompt: int = 8
    request_timeout_s: float = 600.0
    api_key: Optional[str] = None
    image_workers: int = 4
    vision_url: Optional[str] = None
    media: MediaPolicy = field(default_factory=MediaPolicy)


class _GridOnly:
    """Stands in for the image processor when only the token grid is needed: the header size gives it, so
    the prompt (and its length) is known before any image is decoded."""

    def __init__(self, processor: ImageProcessor):
        self.processor = processor
        self.factor, self.patch_size, self.downsample = processor.factor, processor.patch_size, processor.downsample
        self.region_size = processor.region_size

    def __call__(self, size: tuple[int, int]) -> torch.Tensor:
        w, h = self.processor.size_for(*size)
        return torch.empty(3, h, w, device="meta")

    def segments(self, size: tuple[int, int]) -> list[list[torch.Tensor]]:
        return [[self(size)]]  # the server takes one view per image (checked at start-up)


class Metrics:
    """Prometheus text exposition, kept by hand (a handful of counters, one histogram)."""

    def __init__(self):
        self.requests: Counter = Counter()  # by HTTP status
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.ttft_sum, self.ttft_count = 0.0, 0
        self.finished: deque = deque()  # (time, completion tokens) of recent requests, for tokens/s

    def observe(self, status: int, seconds: float, tokens: int = 0) -> None:
        self.requests[status] += 1
        self.latency[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))] += 1
        self.latency_sum += seconds
        if tokens:
            self.finished.append((time.monotonic(), tokens))

    def render(self, engine: Engine, in_flight: int, window_s: float = 10.0) -> str:
        now = time.monotonic()
        while self.finished and self.finished[0][0] < now - window_s:
            self.finished.popleft()
        lines = ["# TYPE nativevlm_requests_total counter"]
        lines += [f'nativevlm_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
        lines += ["# TYPE nativevlm_finished_requests_total counter"]
        lines += [f'nativevlm_finished_requests_total{{reason="{r}"}} {n}' for r, n in sorted(engine.finished.items())]
        lines += ["# TYPE nativevlm_queue_depth gauge", f"nativevlm_queue_depth {engine.num_waiting}",
                  "# TYPE nativevlm_running_requests gauge", f"nativevlm_running_requests {engine.num_running}",
                  "# TYPE nativevlm_in_flight_requests gauge", f"nativevlm_in_flight_requests {in_flight}",
                  "# TYPE nativevlm_prompt_tokens_total counter",
                  f"nativevlm_prompt_tokens_total {engine.stats['prompt_tokens']}",
                  "# TYPE nativevlm_generated_tokens_total counter",
                  f"nativevlm_generated_tokens_total {engine.stats['generated_tokens']}",
                  "# TYPE nativevlm_generation_tokens_per_second gauge",
                  f"nativevlm_generation_tokens_per_second {sum(n for _, n in self.finished) / window_s:.3f}",
                  "# TYPE nativevlm_time_to_first_token_seconds summary",
                  f"nativevlm_time_to_first_token_seconds_sum {self.ttft_sum:.6f}",
                  f"nativevlm_time_to_first_token_seconds_count {self.ttft_count}",
                  "# TYPE nativevlm_request_latency_seconds histogram"]
        cumulative = 0
        for bound, n in zip((*LATENCY_BUCKETS, "+Inf"), self.latency):
            cumulative += n
            lines.append(f'nativevlm_request_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"nativevlm_request_latency_seconds_sum {self.latency_sum:.6f}",
                  f"nativevlm_request_latency_seconds_count {cumulative}"]
        return "\n".join(lines) + "\n"


@dataclass
class _Parsed:
    messages: list[dict]
    urls: list[tuple[str, str]]  # (url, param path) in prompt order
    params: SamplingParams
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    think: Optional[bool] = None
    thinking_budget: Optional[int] = None


@dataclass
class _Reply:
    """What the response loop learns about one request, for the reply that consumes it."""
    start: float  # monotonic time the request arrived
    req: Optional[Request] = None
    image_tokens: int = 0
    first: Optional[float] = None  # time of the first event
    reason: Optional[str] = None  # the finish reason, once finished


class ChatServer:
    """The model, its engine (on its own thread) and the request pipeline; `app()` is the FastAPI app."""

    def __init__(self, model, tokenizer, config: ServeConfig, vision=None):
        views = getattr(model.config, "vision", None)
        if views is not None and (views.scales > 1 or views.max_tiles > 1):
            raise ConfigError("the server encodes each image as one view: set vision.scales=1 and "
                              "vision.max_tiles=1 in the model's config.json to serve it (multi-scale packing and "
                              "dynamic tiling run in evaluation and `nativevlm chat`)")
        self.config = config
        self.tokenizer = tokenizer
        self.engine = Engine(model, tokenizer, config.max_batch_size, config.max_len)
        self.takes_images = self.engine.is_vlm
        self.processor = ImageProcessor.from_config(model.config.vision, model.config.connector) \
            if self.takes_images else None
        self.vision = vision  # a vision_worker.VisionClient (DvD), or None: images are encoded here
        self.pool = ThreadPoolExecutor(config.image_workers, thread_name_prefix="nativevlm-image")
        self.metrics = Metrics()
        self.in_flight = 0
        self.http = None  # httpx.AsyncClient for remote images, made on start-up (it needs the loop)

    # -- parsing (cheap checks first) -------------------------------------------------------------------

    def parse(self, body) -> _Parsed:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object", None, "invalid_json")
        model = body.get("model")
        if model != self.config.model_name:
            raise RequestError(f"the model {model!r} does not exist; this server serves {self.config.model_name!r}",
                               "model", "model_not_found", status=404, type="not_found_error")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list", "messages", "invalid_messages")
        out, urls = [], []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise RequestError(f"messages[{i}] must be an object with role and content", f"messages[{i}]",
                                   "invalid_messages")
            role = m.get("role")
            if role not in ROLES:
                raise RequestError(f"messages[{i}].role {role!r} is not one of {list(ROLES)}", f"messages[{i}].role",
                                   "invalid_role")
            text = self._content(m.get("content"), f"messages[{i}].content", urls, role)
            out.append({"role": "system" if role == "developer" else role, "content": text})
        if urls and not self.takes_images:
            raise RequestError(f"the model {self.config.model_name!r} takes text only", "messages", "images_not_supported")
        if len(urls) > self.config.max_images_per_prompt:
            raise RequestError(f"At most {self.config.max_images_per_prompt} image(s) may be provided in one prompt; "
                               f"this one has {len(urls)}", "messages", "too_many_images")
        for name in UNSUPPORTED:  # refused rather than silently ignored: the client would get something else
            if body.get(name) not in (None, False, [], {}, {"type": "text"}, "none", "auto"):
                raise RequestError(f"{name} is not supported by this server", name, "unsupported_parameter")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        given = max_tokens is not None
        if given:
            name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            max_tokens = _number(body, name, None, 1, None, integer=True)
            if max_tokens > self.config.max_tokens_cap:
                raise RequestError(f"{name} is {max_tokens}; this server allows at most {self.config.max_tokens_cap}",
                                   name, "max_tokens_too_large")
        if _number(body, "n", 1, 1, 1, integer=True) != 1:
            raise RequestError("n must be 1", "n", "invalid_value")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise RequestError("stop must be a string or a list of up to 4 strings", "stop", "invalid_value")
        top_k = _number(body, "top_k", 0, -1, None, integer=True)
        seed = body.get("seed")
        if seed is not None:
            seed = _number(body, "seed", None, 0, 2**63 - 1, integer=True)
        params = SamplingParams(
            max_new_tokens=max_tokens or 1, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_number(body, "top_p", 1.0, 0.0, 1.0), top_k=max(top_k, 0), seed=seed, stop=stop,
            ignore_eos=_flag(body, "ignore_eos"))
        if params.top_p == 0:
            raise RequestError("top_p must be above 0", "top_p", "invalid_value")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise RequestError("stream_options must be an object", "stream_options", "invalid_value")
        think, budget = _thinking(body)
        return _Parsed(out, urls, params, given, _flag(body, "stream"), bool(options.get("include_usage")), think,
                       budget)

    @staticmethod
    def _content(content, param: str, urls: list, role: str) -> str:
        if content is None and role == "assistant":
            return ""
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = content
        else:
            raise RequestError(f"{param} must be a string or a list of content parts", param, "invalid_content")
        text, n_images = "", 0
        for j, part in enumerate(parts):
            p = f"{param}[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                if IMAGE_MARKER in part["text"]:
                    raise RequestError(f"{p}: text may not contain {IMAGE_MARKER!r}; send images as image_url parts",
                                       p, "invalid_content")
                text += part["text"]
            elif kind == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str) or not url:
                    raise RequestError(f"{p}.image_url must be {{\"url\": \"...\"}}", f"{p}.image_url", "invalid_image_url")
                urls.append((url, f"{p}.image_url"))
                n_images += 1
            else:
                raise RequestError(f"{p} must be {{\"type\": \"text\", \"text\": ...}} or "
                                   f"{{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}}", p, "invalid_content")
        return user_turn(text, n_images)

    # -- images and the prompt -----------------------------------------------------------------------

    async def prepare(self, parsed: _Parsed) -> tuple[Request, int]:
        """Fetch and size the images, tokenise, check the context, then decode (here) or encode (DvD)."""
        blobs = await asyncio.gather(*(image_bytes(u, self.config.media, p, self.http) for u, p in parsed.urls))
        sizes = [image_size(b, self.config.media, p) for b, (_, p) in zip(blobs, parsed.urls)]
        try:
            enc = encode_prompt(parsed.messages, sizes, self.tokenizer, _GridOnly(self.processor) if sizes else None)
        except ValueError as e:
            raise RequestError(str(e), "messages", "invalid_messages") from None
        n, limit = len(enc.input_ids) + (len(self.engine.think_open) if parsed.think else 0), self.engine.max_len
        params = parsed.params
        if not parsed.max_tokens_given:
            params.max_new_tokens = min(self.config.default_max_tokens, limit - n)
        if params.max_new_tokens < 1 or n + params.max_new_tokens > limit:
            raise RequestError(f"This model's maximum context length is {limit} tokens. However, you requested "
                               f"{n + params.max_new_tokens} tokens ({n} in the messages, {params.max_new_tokens} in "
                               "the completion). Please reduce the length of the messages or completion.",
                               "messages", "context_length_exceeded")
        loop = asyncio.get_running_loop()
        if self.vision is not None:
            got = await asyncio.gather(*(self.vision.features(b, p) for b, (_, p) in zip(blobs, parsed.urls)))
            feats, rates = [f for f, _ in got], [r for _, r in got]
        else:
            pixels = await asyncio.gather(*(loop.run_in_executor(self.pool, self._decode, b, p)
                                            for b, (_, p) in zip(blobs, parsed.urls)))
            if getattr(self.engine.model, "router", None) is None or not pixels:
                return Request(enc.input_ids, params, pixel_values=pixels, think=parsed.think,
                               thinking_budget=parsed.thinking_budget), self.image_tokens(enc.input_ids)
            routed = await loop.run_in_executor(self.pool, self._route, pixels)
            feats, rates = routed.features, routed.rates
        if any(r is not None for r in rates):  # the router chose: lay the prompt out at its rates (shorter)
            fine = self.processor.downsample
            enc = encode_prompt(parsed.messages, sizes, self.tokenizer, _GridOnly(self.processor),
                                [fine if r is None else r for r in rates])
        slots = [n_tokens(*px.shape[-2:], self.processor.patch_size, rate, self.processor.region_size)
                 for px, rate in zip(enc.pixel_values, enc.image_downsample)]
        for f, n, (_, p) in zip(feats, slots, parsed.urls):
            if f.shape[0] != n:
                raise RequestError(f"the vision server returned {f.shape[0]} image tokens where the prompt has {n}: "
                                   "do both servers run the same model?", p, "vision_mismatch", status=502,
                                   type="server_error")
        return Request(enc.input_ids, params, image_features=feats, think=parsed.think,
                       thinking_budget=parsed.thinking_budget), self.image_tokens(enc.input_ids)

    def image_tokens(self, input_ids: list[int]) -> int:
        """The prompt's tokens that stand for images (placeholders and their framing): what usage reports."""
        return sum(1 for t in input_ids if t in self.engine.banned)

    @torch.inference_mode()
    def _route(self, pixels: list[torch.Tensor]):
        """One request's images through the encoder and the router (in `request` mode ranked among
        themselves; in `batch` mode too, since the server routes each request as it comes)."""
        device = self.engine.device
        return self.engine.model.route_images([p.to(device) for p in pixels], requests=[list(range(len(pixels)))])

    def _decode(self, data: bytes, param: str) -> torch.Tensor:
        return decode_image(data, self.processor, self.config.media, param)

    # -- the endpoint ----------------------------------------------------------------------------------

    async def chat(self, request):
        reply = _Reply(time.monotonic())
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RequestError(f"the request body is not valid JSON: {e}", None, "invalid_json") from None
            parsed = self.parse(body)
        except RequestError as e:
            self.metrics.observe(e.status, time.monotonic() - reply.start)
            return JSONResponse(e.envelope(), status_code=e.status)
        pieces = self._generate(request, parsed, reply)
        try:
            await anext(pieces)  # admitted, images ready, submitted: a refusal up to here is a plain 4xx
            if not parsed.stream:
                got = [piece async for piece in pieces]
                text, thinking = "".join(p.text for p in got), "".join(p.thinking for p in got)
        except RequestError as e:
            return JSONResponse(e.envelope(), status_code=e.status)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.config.model_name}
        if parsed.stream:
            return StreamingResponse(self._sse(pieces, reply, head, parsed.include_usage),
                                     media_type="text/event-stream")
        message = {"role": "assistant", "content": text}
        if reply.req.completion.thinking is not None:
            message.update(reasoning=thinking, reasoning_content=thinking)
        return JSONResponse({**head, "object": "chat.completion", "choices": [{
            "index": 0, "message": message, "finish_reason": reply.reason, "logprobs": None}],
            "usage": self._usage(reply)})

    async def _generate(self, request, parsed: _Parsed, reply: _Reply) -> AsyncIterator[Event]:
        """The one response loop, which the streamed and the plain reply both consume: a place in the queue
        bound, the images, then the engine's events (answer and thinking pieces) up to the finish reason (left
        in `reply`). The first event is empty and says the request is in the engine. The place is held by one
        context manager, so it is given back however this ends: answered, refused, timed out, failed, or closed
        because the client left; a request that ends unfinished is cancelled in the engine, freeing its slot
        now."""
        try:
            with self._place():
                try:
                    reply.req, reply.image_tokens = await asyncio.wait_for(self.prepare(parsed),
                                                                           self.config.request_timeout_s)
                except asyncio.TimeoutError:
                    raise _timeout(self.config.request_timeout_s) from None
                events = self._submit(reply.req)
                try:
                    yield Event("")
                    deadline, checks = reply.start + self.config.request_timeout_s, {}
                    while reply.reason is None:
                        ev = await self._next(request, events, deadline, checks)
                        reply.first = reply.first or time.monotonic()
                        reply.reason = ev.finish_reason
                        if reply.reason == "error":
                            raise RequestError(f"generation failed: {ev.error}", None, "generation_failed",
                                               status=500, type="server_error")
                        if ev.text or ev.thinking:
                            yield ev
                finally:
                    if reply.reason is None:
                        self.engine.cancel(reply.req.id)
            self._observe_ok(reply)
        except RequestError as e:
            self.metrics.observe(e.status, time.monotonic() - reply.start)
            raise

    @contextmanager
    def _place(self) -> Iterator[None]:
        """A place in the bound of requests in flight (running + queued): 429 past it."""
        if self.in_flight >= self.config.max_batch_size + self.config.max_queue:
            raise RequestError(f"the server is at capacity ({self.in_flight} requests in flight); retry later",
                               None, "queue_full", status=429, type="rate_limit_error")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _sse(self, pieces: AsyncIterator[Event], reply: _Reply, head: dict, include_usage: bool):
        def chunk(delta: dict, reason=None) -> str:
            return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]}) + "\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for piece in pieces:
                if piece.thinking:
                    yield chunk({"reasoning": piece.thinking, "reasoning_content": piece.thinking})
                if piece.text:
                    yield chunk({"content": piece.text})
            yield chunk({}, reply.reason)
            if include_usage:
                yield "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [],
                                             "usage": self._usage(reply)}) + "\n\n"
        except RequestError as e:  # headers are sent: the error travels as an event
            yield "data: " + json.dumps(e.envelope()) + "\n\n"
        finally:
            await pieces.aclose()  # the client closing the stream closes this generator, and the loop with it
        yield "data: [DONE]\n\n"

    def _submit(self, req: Request) -> asyncio.Queue:
        """Hands the request to the engine thread; its events come back through an asyncio queue."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req.on_event = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)
        try:
            self.engine.submit(req)
        except ValueError as e:
            raise RequestError(str(e), None, "invalid_value") from None
        return events

    async def _next(self, request, events: asyncio.Queue, deadline: float, checks: dict) -> Event:
        """The next event, checking the deadline and, every 0.25 s (`checks` keeps when it last looked), whether
        the client is still there: events may come every step, so the check can't wait for a quiet moment."""
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise _timeout(self.config.request_timeout_s)
            if now >= checks.get("next", 0.0):
                checks["next"] = now + 0.25
                if await request.is_disconnected():
                    raise RequestError("the client disconnected", None, "client_disconnected", status=499)
            try:
                return await asyncio.wait_for(events.get(), min(deadline, checks["next"]) - now)
            except asyncio.TimeoutError:
                pass

    def _observe_ok(self, reply: _Reply) -> None:
        if reply.first is not None:
            self.metrics.ttft_sum += reply.first - reply.start
            self.metrics.ttft_count += 1
        self.metrics.observe(200, time.monotonic() - reply.start, reply.req.completion.completion_tokens)

    @staticmethod
    def _usage(reply: _Reply) -> dict:
        done, n = reply.req.completion.completion_tokens, len(reply.req.input_ids)
        return {"prompt_tokens": n, "completion_tokens": done, "total_tokens": n + done,
                "prompt_tokens_details": {"image_tokens": reply.image_tokens}}

    # -- the app ---------------------------------------------------------------------------------------

    def app(self):
        @asynccontextmanager
        async def lifespan(_app):
            self.http = httpx.AsyncClient()
            self.engine.start()
            try:
                yield
            finally:
                self.engine.stop()
                await self.http.aclose()
                if self.vision is not None:
                    await self.vision.aclose()
                self.pool.shutdown(wait=False, cancel_futures=True)

        app = FastAPI(title="nativevlm", lifespan=lifespan)

        def refused(request: HTTPRequest) -> Optional[JSONResponse]:
            """401 without the API key (when one is set); /health and /metrics stay open, as in vLLM."""
            key = self.config.api_key
            if key and request.headers.get("authorization") != f"Bearer {key}":
                e = RequestError("a valid API key is required: send the header Authorization: Bearer <key>", None,
                                 "invalid_api_key", status=401, type="authentication_error")
                self.metrics.observe(401, 0.0)
                return JSONResponse(e.envelope(), status_code=401)
            return None

        @app.exception_handler(HTTPException)
        async def http_error(_request, exc: HTTPException):
            e = RequestError(str(exc.detail), None, None, status=exc.status_code,
                             type="not_found_error" if exc.status_code == 404 else "invalid_request_error")
            return JSONResponse(e.envelope(), status_code=exc.status_code)

        @app.exception_handler(RequestValidationError)
        async def validation_error(_request, exc):
            return JSONResponse(RequestError(str(exc), None, "invalid_request").envelope(), status_code=400)

        @app.exception_handler(Exception)
        async def server_error(_request, exc):
            e = RequestError(f"internal error: {type(exc).__name__}", None, None, status=500, type="server_error")
            return JSONResponse(e.envelope(), status_code=500)

        @app.post("/v1/chat/completions")
        async def chat(request: HTTPRequest):
            return refused(request) or await self.chat(request)

        @app.get("/v1/models")
        async def models(request: HTTPRequest):
            return refused(request) or {"object": "list", "data": [{"id": self.config.model_name, "object": "model", "created": 0,
                                                "owned_by": "nativevlm", "max_model_len": self.engine.max_len}]}

        @app.get("/health")
        async def health():
            return {"status": "ok"}

        @app.get("/metrics")
        async def metrics():
            return PlainTextResponse(self.metrics.render(self.engine, self.in_flight),
                                     media_type="text/plain; version=0.0.4")

        return app


def _timeout(seconds: float) -> RequestError:
    return RequestError(f"the request took longer than the server's {seconds} s time-out", None, "timeout",
                        status=408, type="timeout_error")


def _thinking(body: dict) -> tuple[Optional[bool], Optional[int]]:
    """(think, thinking_budget) from our fields or vLLM's names for them; None: not given."""
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"}:
        raise RequestError("chat_template_kwargs may only hold enable_thinking", "chat_template_kwargs",
                           "unsupported_parameter")
    think = None
    for name, holder in (("think", body), ("enable_thinking", kwargs)):
        if holder.get(name) is not None:
            think = _flag(holder, name)
    budget_name = "thinking_token_budget" if "thinking_token_budget" in body else "thinking_budget"
    budget = _number(body, budget_name, None, 0, None, integer=True)
    if budget is not None and think is not True:
        raise RequestError(f"{budget_name} limits thinking: send it with think: true", budget_name, "invalid_value")
    return think, budget


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false", name, "invalid_value")
    return value


def _number(body: dict, name: str, default, lo, hi, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or (lo is not None and value < lo) or (hi is not None and value > hi):
        kind = "an integer" if integer else "a number"
        bounds = f" in [{lo}, {hi}]" if hi is not None else f" >= {lo}"
        raise RequestError(f"{name} must be {kind}{bounds}, got {value!r}", name, "invalid_value")
    return value
