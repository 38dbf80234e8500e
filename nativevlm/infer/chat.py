"""One question about zero or more images, answered by a trained model (the same prompt encoding as
training and evaluation)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..data.collate import encode_sample
from ..data.image import ImageProcessor
from ..data.sample import IMAGE_MARKER, Sample
from .generate import generate


@torch.no_grad()
def ask(model, tokenizer, question: str, images: Sequence[str] = (), max_new_tokens: int = 64,
        temperature: float = 0.0, processor: Optional[ImageProcessor] = None) -> str:
    """Images go before the question, one marker each, as in the training data."""
    model.eval()
    content = "".join(f"{IMAGE_MARKER}\n" for _ in images) + question
    sample = Sample(id="ask", messages=[{"role": "user", "content": content}], images=list(images))
    processor = processor or (ImageProcessor.from_config(model.config.vision, model.config.connector)
                              if images else None)
    enc = encode_sample(sample, tokenizer, processor, add_generation_prompt=True)
    device = next(model.parameters()).device
    ids = torch.tensor([enc.input_ids], device=device)
    extra = {"pixel_values": [p.to(device) for p in enc.pixel_values]} if enc.pixel_values else {}
    out = generate(model, ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id,
                   temperature=temperature, **extra)
    return tokenizer.decode([t for t in out[0].tolist() if t != tokenizer.eos_id]).strip()
