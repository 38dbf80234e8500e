"""Images in requests: where their bytes may come from, and what is checked before anything is decoded.

`data:` URIs are always accepted; http(s) URLs only when remote images are enabled, for allow-listed domains,
within a time-out and a size cap; local paths only under one allowed folder (as vLLM's
`--allowed-local-media-path`). The pixel count is read from the file header, so a decompression bomb is
refused before a single pixel of it is decoded. `decode_image` is the one intake of image bytes for both
servers (the chat API and the DvD vision worker), so both refuse the same files with the same error."""
from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import httpx
import torch
from PIL import Image

from ..data.image import ImageError, ImageProcessor, load_image


class RequestError(Exception):
    """A request the server refuses: the HTTP status and the fields of the OpenAI error envelope."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class MediaPolicy:
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    allow_remote: bool = False
    allowed_domains: list[str] = field(default_factory=list)  # empty = any domain (when remote is allowed)
    fetch_timeout_s: float = 5.0
    local_media_path: Optional[str] = None


async def image_bytes(url: str, policy: MediaPolicy, param: str, http) -> bytes:
    """The encoded image file an `image_url` names. `http` is an httpx.AsyncClient for remote fetches."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestError("a data: image URL must look like data:image/png;base64,<data>", param, "invalid_image_url")
        if len(payload) * 3 // 4 > policy.max_image_bytes:
            raise _too_many_bytes(policy, param)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("the data: image URL is not valid base64", param, "invalid_base64") from None
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        return await _fetch(url, policy, param, http)
    if scheme in ("", "file"):
        return _read_local(url[len("file://"):] if scheme == "file" else url, policy, param)
    raise RequestError(f"unsupported image URL scheme {scheme!r}: use data:, http(s):// or a local path",
                       param, "invalid_image_url")


async def _fetch(url: str, policy: MediaPolicy, param: str, http) -> bytes:
    if not policy.allow_remote:
        raise RequestError("remote image URLs are disabled on this server (start it with --allow-remote-images)",
                           param, "remote_images_disabled")
    host = urlparse(url).hostname or ""
    if policy.allowed_domains and host not in policy.allowed_domains:
        raise RequestError(f"image domain {host!r} is not in the allowed domains {policy.allowed_domains}",
                           param, "domain_not_allowed")
    try:
        async with http.stream("GET", url, timeout=policy.fetch_timeout_s, follow_redirects=False) as r:
            if r.status_code != 200:
                raise RequestError(f"fetching the image failed: HTTP {r.status_code}", param, "image_fetch_failed")
            data = bytearray()
            async for chunk in r.aiter_bytes():  # stop reading at the cap instead of trusting Content-Length
                data += chunk
                if len(data) > policy.max_image_bytes:
                    raise _too_many_bytes(policy, param)
            return bytes(data)
    except httpx.TimeoutException:
        raise RequestError(f"fetching the image timed out after {policy.fetch_timeout_s} s", param,
                           "image_fetch_timeout") from None
    except httpx.HTTPError as e:
        raise RequestError(f"fetching the image failed: {e}", param, "image_fetch_failed") from None


def _read_local(path: str, policy: MediaPolicy, param: str) -> bytes:
    if policy.local_media_path is None:
        raise RequestError("local image paths are disabled on this server (start it with "
                           "--allowed-local-media-path DIR)", param, "local_images_disabled")
    root = Path(policy.local_media_path).resolve()
    file = Path(path).resolve()  # resolving first: `..` and symlinks can't escape the folder
    if not file.is_relative_to(root):
        raise RequestError(f"local image paths must be under {root}", param, "path_not_allowed")
    if not file.is_file():
        raise RequestError(f"image file {path} does not exist", param, "image_not_found")
    if file.stat().st_size > policy.max_image_bytes:
        raise _too_many_bytes(policy, param)
    return file.read_bytes()


def _too_many_bytes(policy: MediaPolicy, param: Optional[str]) -> RequestError:
    return RequestError(f"the image is over the {policy.max_image_bytes}-byte limit", param, "image_too_large")


def image_size(data: bytes, policy: MediaPolicy, param: Optional[str]) -> tuple[int, int]:
    """(width, height) from the header alone, checked against the byte and pixel limits before any decoding."""
    if len(data) > policy.max_image_bytes:
        raise _too_many_bytes(policy, param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Image.DecompressionBombError:  # Pillow's own (higher) limit, hit while reading the header
        raise RequestError(f"the image is over the {policy.max_image_pixels}-pixel limit", param,
                           "image_too_large") from None
    except (OSError, SyntaxError, ValueError):
        raise RequestError("the data is not an image file Pillow can read (PNG, JPEG, WebP, ...)", param,
                           "invalid_image") from None
    if w * h > policy.max_image_pixels:
        raise RequestError(f"the image is {w}x{h} = {w * h} pixels, over the {policy.max_image_pixels}-pixel limit",
                           param, "image_too_large")
    if w < 1 or h < 1:
        raise RequestError(f"the image is {w}x{h} pixels", param, "invalid_image")
    return w, h


def decode_image(data: bytes, processor: ImageProcessor, policy: MediaPolicy, param: Optional[str]) -> torch.Tensor:
    """An image file's bytes -> the model's pixels: the checks of `image_size`, then the decode and resize.
    Slow for a large image, so the servers run it in a worker pool, never on the event loop."""
    image_size(data, policy, param)
    try:
        return processor(load_image(data))
    except ImageError as e:
        raise RequestError(f"the image could not be decoded: {e}", param, "invalid_image") from None
