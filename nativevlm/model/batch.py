"""The batch the collator builds and the model, the trainer and the generator take."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from .connector import Rate


@dataclass
class Batch:
    """B rows of T tokens (B = 0 when every sample was dropped).

    input_ids [B, T] long, right-padded (left-padded for generation prompts); targets [B, T] long,
    pre-shifted, -100 = no loss; loss_weights [B, T] float32, 0 where no target (loss = sum(w * ce) / sum(w));
    attention_mask [B, T] bool, True = real token; position_ids [B, T] long; document_ids [B, T] long (index
    of the document within its row, -1 = padding) or None unpacked; pixel_values: [3, H, W] tensors in order
    of appearance over the flattened batch, and image_downsample the compression rate each was tokenised at
    (an int, or a tuple with one rate per region: `connector.Rate`, laid out as `connector.token_blocks` says);
    n_samples, n_loss_tokens: for logging and throughput; sample_ids: the ids of the samples in the batch, in
    order (objectives that build their own sequences from them: MPO's pairs, GSPO's rollouts); question_mask
    [B, T] bool, True where the target is a word of the user's question rather than of an answer (the
    collator's `question_weight`), or None when no target is."""

    input_ids: torch.Tensor
    targets: Optional[torch.Tensor] = None
    loss_weights: Optional[torch.Tensor] = None
    attention_mask: Optional[torch.Tensor] = None
    position_ids: Optional[torch.Tensor] = None
    document_ids: Optional[torch.Tensor] = None
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    image_downsample: list[Rate] = field(default_factory=list)
    n_samples: int = 0
    n_loss_tokens: int = 0
    sample_ids: list[str] = field(default_factory=list)
    question_mask: Optional[torch.Tensor] = None

    def answer_targets(self) -> Optional[torch.Tensor]:
        """`targets` with the question's targets (`question_mask`) set to -100: the answers alone."""
        if self.targets is None or self.question_mask is None:
            return self.targets
        return self.targets.masked_fill(self.question_mask, -100)

    @property
    def n_images(self) -> int:
        return len(self.pixel_values)

    def to(self, device) -> "Batch":
        def move(t):
            return t.to(device) if t is not None else None

        return replace(self, input_ids=move(self.input_ids), targets=move(self.targets),
                       loss_weights=move(self.loss_weights), attention_mask=move(self.attention_mask),
                       position_ids=move(self.position_ids), document_ids=move(self.document_ids),
                       question_mask=move(self.question_mask), pixel_values=[p.to(device) for p in self.pixel_values])

    def model_inputs(self) -> dict:
        """The keyword arguments of `NativeVLM.forward` (a LanguageModel takes them less the image ones)."""
        inputs = dict(input_ids=self.input_ids, attention_mask=self.attention_mask, position_ids=self.position_ids,
                      document_ids=self.document_ids, targets=self.targets, loss_weights=self.loss_weights)
        if self.pixel_values:
            inputs.update(pixel_values=self.pixel_values, image_downsample=self.image_downsample or None)
        return inputs
