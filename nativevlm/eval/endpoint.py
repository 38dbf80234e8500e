"""Answers from any OpenAI-compatible chat server (ours, vLLM, SGLang, LMDeploy), as lmms-eval's
`openai_compatible` model asks them: images first, as PNG `data:` URIs, then the question; temperature 0.

Transient failures (connection errors, time-outs, 408/429/5xx) are retried with exponential backoff, or after
the server's `Retry-After`; other HTTP errors (a 400: too many images, a bad model name) would fail the same
way again, so they are recorded at once. A reply that still failed is a request failure the harness counts
on its own and asks again when the run is resumed. When every request of a chunk fails to connect, the
server is gone: the run stops with the answers so far saved, instead of retrying thousands of questions.
"""
from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import httpx
from PIL import Image

from ..data.image import load_image
from ..infer.types import Reply, Request

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_DELAY_S = 30.0


class EndpointError(ConnectionError):
    """The server can't be reached at all."""


def chat_url(url: str) -> str:
    """`http://host:port/v1` (or the full `/chat/completions` URL) -> the chat completions URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def data_uri(image) -> str:
    img = image if isinstance(image, Image.Image) else load_image(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def error_message(response: httpx.Response) -> str:
    """The message of an error body, current (`{"error": {"message"}}`) or older flat form."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if body.get("message"):
            return str(body["message"])
    return response.text[:200]


class EndpointAnswerer:
    def __init__(self, url: str, model: str, api_key: Optional[str] = None, concurrency: int = 4,
                 max_tokens: int = 32, retries: int = 4, timeout_s: float = 120.0, backoff_s: float = 1.0,
                 log=print):
        self.url, self.model, self.max_tokens = chat_url(url), model, max_tokens
        self.concurrency, self.retries, self.backoff_s, self.log = concurrency, retries, backoff_s, log
        self.chunk_size = 4 * concurrency  # answers are saved after each chunk: a resume loses at most one
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)

    def __call__(self, requests: list[Request]) -> list[Reply]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            replies = list(pool.map(self.ask, requests))
        if replies and all(r.error and r.error.startswith("cannot connect") for r in replies):
            raise EndpointError(f"--endpoint {self.url}: {replies[0].error}; the answers so far are saved, run the "
                                "same command again to resume once the server is up")
        return replies

    def payload(self, request: Request) -> dict:
        content = [{"type": "image_url", "image_url": {"url": data_uri(img)}} for img in request.images]
        content.append({"type": "text", "text": request.text})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": self.max_tokens}

    def ask(self, request: Request) -> Reply:
        payload = self.payload(request)
        error = ""
        for attempt in range(self.retries + 1):
            wait = min(MAX_DELAY_S, self.backoff_s * 2 ** attempt)
            try:
                response = self.client.post(self.url, json=payload)
            except httpx.TransportError as e:
                error = f"cannot connect ({type(e).__name__}: {e})"
            else:
                if response.status_code == 200:
                    try:
                        return Reply((response.json()["choices"][0]["message"]["content"] or "").strip())
                    except (ValueError, KeyError, IndexError, TypeError):
                        error = f"malformed reply: {response.text[:200]}"
                else:
                    error = f"HTTP {response.status_code}: {error_message(response)}"
                    if response.status_code not in RETRY_STATUS:
                        return Reply(error=error)
                    retry_after = response.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        wait = min(MAX_DELAY_S, float(retry_after))
            if attempt < self.retries:
                self.log(f"  request failed ({error}); retry {attempt + 1}/{self.retries} in {wait:.1f} s")
                time.sleep(wait)
        return Reply(error=error)
