"""What an answerer is: questions with images in, replies out. A model in this process (`eval.local`), an
OpenAI-compatible endpoint (`eval.endpoint`) and Extract+Think (`infer.pipelines`) are answerers; the
benchmark harness (`eval.harness`) asks any of them. (An engine `Request` is lower still: a tokenised prompt.)"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Request:
    images: list  # PIL images or image paths
    text: str


@dataclass
class Reply:
    text: str = ""
    error: Optional[str] = None  # set when the request failed for good (after the answerer's retries)
    trace: Optional[dict] = None  # what a multi-stage answerer did on the way (Extract+Think: the description)
    visual_tokens: int = 0  # <img> tokens the prompt spent on its images (fewer where a router compressed)


Answerer = Callable[[list[Request]], list[Reply]]  # with a `chunk_size` attribute: requests per call
