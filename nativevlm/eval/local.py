"""Answers from a model in this process: batched greedy generation with the training prompt template
(the same encoding `nativevlm ask` and the world evaluation use)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..config import ConfigError
from ..data.collate import encode_sample, prompt_batch
from ..data.image import ImageProcessor
from ..data.sample import IMAGE_MARKER, Sample
from ..infer.generate import generate
from .harness import Reply, Request


@torch.no_grad()
def generate_answers(model, tokenizer, image_processor, samples: Sequence[Sample], max_new_tokens: int,
                     device: Optional[torch.device] = None) -> list[str]:
    """Greedy answers to one batch of prompts (each sample's messages end with the question)."""
    model.eval()
    device = device or next(model.parameters()).device
    encoded = [encode_sample(s, tokenizer, image_processor, add_generation_prompt=True) for s in samples]
    batch = prompt_batch(encoded, tokenizer.pad_id).to(device)  # left padded: prompts end where answers start
    out = generate(model, batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id)
    return [tokenizer.decode([t for t in row if t != tokenizer.eos_id]).strip() for row in out.tolist()]


class LocalAnswerer:
    """The harness's answerer for a loaded model. Images go before the question, one marker each, as in
    the training data. A language model answers text-only requests (the reasoner of Extract+Think)."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_new_tokens: int = 32):
        self.model, self.tokenizer = model, tokenizer
        vision = getattr(model.config, "vision", None)
        self.processor = ImageProcessor.from_config(vision, model.config.connector) if vision is not None else None
        self.chunk_size, self.max_new_tokens = batch_size, max_new_tokens

    def __call__(self, requests: list[Request]) -> list[Reply]:
        if self.processor is None and any(r.images for r in requests):
            raise ConfigError("this model is a language model and can't read images; evaluate a vision-language "
                              "model, or pair it as the reasoner of Extract+Think (nativevlm eval --reasoner)")
        samples = [Sample(id=str(i), images=list(r.images),
                          messages=[{"role": "user", "content": f"{IMAGE_MARKER}\n" * len(r.images) + r.text}])
                   for i, r in enumerate(requests)]
        answers = generate_answers(self.model, self.tokenizer, self.processor, samples, self.max_new_tokens)
        return [Reply(a) for a in answers]
