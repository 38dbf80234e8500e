"""Teacher-forced validation loss of a model on a dataset: the metric of NaViL's scaling study (the mean
next-token loss on the assistant tokens, each token weighted equally, as the trainer's `val_loss`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.collate import Collator
from ..data.formats import DataError, read_samples
from ..data.image import ImageProcessor


@torch.no_grad()
def validation_loss(model, tokenizer, path, batch_size: int = 8, max_length: int = 0, log=print) -> dict:
    """{"data", "loss", "tokens", "samples"} over every sample of a LLaVA JSON / chat JSONL file; samples
    longer than `max_length` (default: the model's context) are left out and counted."""
    samples, report = read_samples(Path(path))
    if report.n_skipped:
        log(report.summary())
    if not samples:
        raise DataError(f"{path}: no usable samples for a validation loss")
    model.eval()
    cfg = model.config.language
    collator = Collator(tokenizer, ImageProcessor.from_config(model.config.vision, model.config.connector),
                        max_length or cfg.max_position_embeddings)
    device = next(model.parameters()).device
    loss_sum, weight_sum, n = 0.0, 0.0, 0
    for start in range(0, len(samples), batch_size):
        batch = collator(samples[start:start + batch_size])
        if not batch.n_samples:
            continue
        out = model(batch.to(device))
        loss_sum += float(out.loss_sum)
        weight_sum += float(out.weight_sum)
        n += batch.n_samples
    if collator.dropped:
        log(f"{path}: samples left out of the validation loss: {dict(collator.dropped)}")
    if weight_sum == 0:
        raise DataError(f"{path}: no answer tokens to score (every sample too long, or none has an answer)")
    return {"data": str(path), "loss": loss_sum / weight_sum, "tokens": int(weight_sum), "samples": n}
