"""Extract+Think (Prism): answer a visual question in two stages, so perception
and reasoning can be sized -- and blamed -- apart.

1. A perception model (a VLM) looks at the image and writes a description: `extract_prompt`, which may
   name the question (`{question}`: a question-guided description, Prism's visual extraction; a perceiver
   trained by visual extraction tuning is asked `data.vet.VET_PROMPT`) or not (the plain caption prompt the
   built-in world's models are trained on).
2. A text-only model (the reasoner) answers the question from that description alone:
   `data.extract_think.REASON_TEMPLATE`, the text it is fine-tuned on (`data.extract_think.reasoner_records`;
   the built-in world writes it as `<split>_reason.json`). It may think (a `LocalAnswerer` with `think`, within
   a thinking budget) or reason in the open; either way, when its answer ends with a line "Answer: X", X is
   the pipeline's answer (`data.extract_think.final_answer`), and its whole reply and thinking are in the trace.

`ExtractThink` is an answerer like any other (`infer.types`), so `nativevlm eval --reasoner` and the
study runner's `extract_think:` pairs score it with the same matching, per family and per kind; each
reply's trace carries the description, written beside the answer in `predictions.jsonl`.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

from ..data.extract_think import (EXTRACT_PROMPT, descriptions_by_image, extract_prompt, final_answer,
                                  reasoning_prompt)
from ..data.formats import DataError
from ..data.image import load_image
from .types import Answerer, Reply, Request


def image_key(images: Sequence) -> str:
    """A content digest of a request's images (PIL images or paths): the same picture is described once."""
    h = hashlib.sha1()
    for img in images:
        if isinstance(img, str):
            h.update(b"path:" + img.encode())
        else:
            h.update(f"{img.mode}:{img.size}:".encode())
            h.update(img.tobytes())
    return h.hexdigest()


class ExtractThink:
    """The two-stage answerer. `perceiver` and `reasoner` are answerers (a local model, an endpoint); with
    an extract prompt that doesn't name the question, each distinct image is described once and the
    description reused for all its questions (up to `cache_size` images)."""

    def __init__(self, perceiver: Answerer, reasoner: Answerer, extract_prompt: str = EXTRACT_PROMPT,
                 cache_size: int = 4096):
        try:
            extract_prompt.format(question="")
        except (KeyError, IndexError):
            raise DataError(f"extract prompt {extract_prompt!r}: the only field it may name is {{question}}") from None
        self.perceiver, self.reasoner, self.extract_prompt = perceiver, reasoner, extract_prompt
        self.chunk_size = min(getattr(perceiver, "chunk_size", 16), getattr(reasoner, "chunk_size", 16))
        self.guided = "{question}" in extract_prompt
        self.cache: OrderedDict[str, str] = OrderedDict()
        self.cache_size = cache_size

    def describe(self, requests: Sequence[Request]) -> list[Reply]:
        prompts = [extract_prompt(self.extract_prompt, r.text) for r in requests]
        keys = [image_key(r.images) + ("" if not self.guided else "|" + p) for r, p in zip(requests, prompts)]
        todo: dict[str, Request] = {}
        for key, r, p in zip(keys, requests, prompts):
            if key not in self.cache and key not in todo:
                todo[key] = Request(list(r.images), p)
        fresh = dict(zip(todo, self.perceiver(list(todo.values())))) if todo else {}
        known = {k: self.cache[k] for k in keys if k in self.cache}
        for key, reply in fresh.items():
            if reply.error is None:
                known[key] = self.cache[key] = reply.text
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return [Reply(known[k]) if k in known else fresh[k] for k in keys]

    def __call__(self, requests: list[Request]) -> list[Reply]:
        described = self.describe(requests)
        ok = [i for i, d in enumerate(described) if d.error is None]
        answers = self.reasoner([Request([], reasoning_prompt(described[i].text, requests[i].text))
                                 for i in ok]) if ok else []
        out: list[Optional[Reply]] = [None] * len(requests)
        for i, a in zip(ok, answers):
            trace = {"description": described[i].text, **(a.trace or {})}
            answer = final_answer(a.text)
            if answer != a.text:
                trace["reasoning"] = a.text
            out[i] = Reply(answer, a.error, trace=trace)
        for i, d in enumerate(described):
            if d.error is not None:
                out[i] = Reply("", f"perception: {d.error}", trace={"description": None})
        return out  # type: ignore[return-value]


class KnownDescriptions:
    """A perceiver that looks each image up in a captions file (LLaVA records, `image` -> the last turn)
    instead of looking at it: perfect perception, the reference a reasoner is scored against when the
    descriptions are the ground truth (the world's `<split>_captions.json`). Images are matched by
    content, so the questions may name them by any path."""

    chunk_size = 256

    def __init__(self, captions_path):
        path = Path(captions_path)
        if not path.is_file():
            raise DataError(f"descriptions file {path} does not exist")
        by_path = descriptions_by_image(json.loads(path.read_text()))
        self.by_image = {image_key([load_image(path.parent / ref)]): text for ref, text in by_path.items()}
        self.source = str(path)

    def __call__(self, requests: list[Request]) -> list[Reply]:
        out = []
        for r in requests:
            text = self.by_image.get(image_key(r.images))
            out.append(Reply(text) if text is not None else
                       Reply("", f"no description of this image in {self.source}"))
        return out
