"""What the MPO and GSPO objectives share: the policy's per-token answer log-probabilities over a batch, the
stage's samples by id, and a frozen copy of a model."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..config import ConfigError
from ..data.sample import Sample
from ..model.batch import Batch
from .losses import token_logprobs


def answer_logprobs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(target_t) [B, T], mask [B, T]) of `batch`'s targets: one forward without targets (so every
    position's logits come back, not only the loss's), read at the targets."""
    inputs = {**batch.model_inputs(), "targets": None, "loss_weights": None}
    return token_logprobs(model(**inputs).logits, batch.targets)


def samples_by_id(sources: list[list[Sample]], stage: str, objective: str) -> dict[str, Sample]:
    """The stage's samples by id (the objective finds a micro-batch's samples through `Batch.sample_ids`);
    ConfigError when an id repeats, since the batch could then not say which sample it holds."""
    out: dict[str, Sample] = {}
    for samples in sources:
        if not isinstance(samples, list):
            raise ConfigError(f"stage {stage}: the {objective} objective finds its samples by id, so it needs data "
                              "files read whole (.json / .jsonl), not a sharded source")
        for s in samples:
            if s.id in out:
                raise ConfigError(f"stage {stage}: sample id {s.id!r} occurs twice in the stage's data; the {objective} "
                                  "objective finds samples by id, so give every record a unique `id`")
            out[s.id] = s
    return out


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` that never trains (no gradients, eval mode): the reference policy."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref
