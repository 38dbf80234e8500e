"""Decoupled vision-language serving (InternVL3.5's DvD): the vision half on its own server.

`VisionServer` (`nativevlm serve-vision`) holds the encoder + connector (+ the router, when the model has
one). `POST /v1/encode` takes one encoded image file as the body and answers with its features,
`[image tokens, language width]`, as a safetensors blob (bf16 on GPU, fp32 on CPU; safetensors rather than
pickle, so a response can't run code); with a router the blob also holds `rates`, the rate the router gave
each region, which the language server lays the prompt out at. The router ranks the regions of the images
encoded together (`router.mode: batch`, as released: an image's rates then depend on what else was in the
batch) or each image's own (`request`). Decoding runs in a
worker pool and concurrent images are encoded together: whatever arrived while one batch ran is the next batch.

`VisionClient` is the language server's side (`nativevlm serve --vision-url URL`): features are cached by the
SHA-256 of the image file, identical images in flight are fetched once, and the fetch is awaited on the
event loop, so the engine thread keeps decoding running requests while new requests' images are encoded
elsewhere: vision, transfer and language overlap as a pipeline.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Optional

import httpx
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from safetensors.torch import load, save

from ..data.image import ImageProcessor
from .media import MediaPolicy, RequestError, decode_image

ENCODE_PATH = "/v1/encode"


def pack_features(features: torch.Tensor, rates: Optional[tuple[int, ...]] = None) -> bytes:
    blob = {"features": features.contiguous()}
    if rates is not None:
        blob["rates"] = torch.tensor(rates, dtype=torch.int64)
    return save(blob)


def unpack_features(blob: bytes) -> tuple[torch.Tensor, Optional[tuple[int, ...]]]:
    data = load(blob)
    return data["features"], tuple(data["rates"].tolist()) if "rates" in data else None


class VisionServer:
    def __init__(self, model, media: Optional[MediaPolicy] = None, max_batch_images: int = 64,
                 image_workers: int = 4):
        self.model = model.eval()
        self.processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
        self.media = media or MediaPolicy()
        self.max_batch_images = max_batch_images
        self.pool = ThreadPoolExecutor(image_workers, thread_name_prefix="nativevlm-vision-decode")
        self.gpu = ThreadPoolExecutor(1, thread_name_prefix="nativevlm-vision")  # one batch at a time
        self.wire_dtype = torch.bfloat16 if next(model.parameters()).is_cuda else torch.float32
        self.queue: Optional[asyncio.Queue] = None
        self.stats = {"images": 0, "batches": 0}

    @torch.inference_mode()
    def _encode(self, pixels: list[torch.Tensor]) -> list[tuple[torch.Tensor, Optional[tuple[int, ...]]]]:
        device = next(self.model.parameters()).device
        pixels = [p.to(device) for p in pixels]
        if self.model.router is None:
            return [(f.to(self.wire_dtype).cpu(), None) for f in self.model.encode_images(pixels)]
        routed = self.model.route_images(pixels)  # each image is its own request
        return [(f.to(self.wire_dtype).cpu(), r) for f, r in zip(routed.features, routed.rates)]

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < self.max_batch_images:
                batch.append(self.queue.get_nowait())
            try:
                feats = await loop.run_in_executor(self.gpu, self._encode, [px for px, _ in batch])
                for (_, fut), f in zip(batch, feats):
                    fut.set_result(f)
            except Exception as e:  # a failed batch fails its requests, not the server
                for _, fut in batch:
                    fut.set_exception(e)
            self.stats["batches"] += 1
            self.stats["images"] += len(batch)

    async def encode(self, data: bytes) -> tuple[torch.Tensor, Optional[tuple[int, ...]]]:
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self.pool, decode_image, data, self.processor, self.media, None)
        fut = loop.create_future()
        await self.queue.put((pixels, fut))
        return await fut

    def app(self):
        @asynccontextmanager
        async def lifespan(_app):
            self.queue = asyncio.Queue()
            task = asyncio.create_task(self._batcher())
            yield
            task.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.gpu.shutdown(wait=False, cancel_futures=True)

        app = FastAPI(title="nativevlm vision", lifespan=lifespan)

        @app.post(ENCODE_PATH)
        async def encode(request: Request):
            try:
                feats, rates = await self.encode(await request.body())
            except RequestError as e:
                return JSONResponse(e.envelope(), status_code=e.status)
            return Response(pack_features(feats, rates), media_type="application/octet-stream")

        @app.get("/health")
        async def health():
            return {"status": "ok", **self.stats}

        return app


class VisionClient:
    """Features (and the router's rates, None without a router) from a vision server, cached by image
    content hash (an LRU bounded in stored values)."""

    def __init__(self, url: str, cache_values: int = 64 * 1024 * 1024, timeout_s: float = 120.0):
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s)
        self.url = url
        self.cache: OrderedDict[str, tuple] = OrderedDict()
        self.cache_values, self.cached_values = cache_values, 0
        self.pending: dict[str, asyncio.Future] = {}
        self.stats = {"hits": 0, "misses": 0}

    async def features(self, data: bytes, param: Optional[str] = None) -> tuple[torch.Tensor, Optional[tuple]]:
        key = hashlib.sha256(data).hexdigest()
        if key in self.cache:
            self.cache.move_to_end(key)
            self.stats["hits"] += 1
            return self.cache[key]
        if key in self.pending:  # the same image in another request still in flight: wait for it
            self.stats["hits"] += 1
            feats = await asyncio.shield(self.pending[key])
        else:
            self.stats["misses"] += 1
            self.pending[key] = asyncio.get_running_loop().create_future()
            try:
                feats = await self._fetch(data, param)
                self.pending[key].set_result(feats)
                self._store(key, feats)
            except BaseException as e:
                self.pending[key].set_exception(e)
                self.pending[key].exception()  # marked retrieved: nobody else may be waiting
                raise
            finally:
                del self.pending[key]
        return feats

    async def _fetch(self, data: bytes, param: Optional[str]) -> tuple[torch.Tensor, Optional[tuple]]:
        try:
            r = await self.http.post(ENCODE_PATH, content=data, headers={"content-type": "application/octet-stream"})
        except httpx.HTTPError as e:
            raise RequestError(f"the vision server at {self.url} is unreachable: {e}", param, "vision_unavailable",
                               status=503, type="server_error") from None
        if r.status_code != 200:
            try:
                err = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                err = {"message": r.text[:200], "code": None}
            raise RequestError(err["message"], param, err.get("code"), status=r.status_code if r.status_code < 500 else 502,
                               type="invalid_request_error" if r.status_code < 500 else "server_error")
        return unpack_features(r.content)

    def _store(self, key: str, feats: tuple[torch.Tensor, Optional[tuple]]) -> None:
        self.cache[key] = feats
        self.cached_values += feats[0].numel()
        while self.cached_values > self.cache_values and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.cached_values -= old[0].numel()

    async def aclose(self) -> None:
        await self.http.aclose()
