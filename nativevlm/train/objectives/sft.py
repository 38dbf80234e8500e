"""Supervised fine-tuning: next-token cross-entropy on the target tokens, normalised over the global batch.

The loss of a step is sum(w * ce) / sum(w) over every micro-batch on every rank. The step counts the
weights before the first forward (`StepInfo.target_weight`, all-reduced), and each micro-batch's share is
`loss_sum * world / W_global`: DDP and FSDP average gradients over ranks, so the gradient is exactly that
of the single-process loss at the same global batch, however the batch is split. A sparse MoE's
load-balancing loss (`ModelOutput.aux_loss`) is added per micro-batch, averaged over them.
"""
from __future__ import annotations

from .base import MicroBatch, Objective, Output, StepInfo, register


@register("sft")
class SFT(Objective):
    metrics = ("loss", "aux")

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        if mb.index == 0 and float(info.target_weight) == 0:  # the same on every rank, so all stop together
            raise ValueError("a training step has no target tokens on any rank: every sample of the batch was "
                             "dropped (longer than max_length?) or has no assistant answer; raise max_length "
                             "or check the data")
        out = mb.forward()
        loss = out.loss_sum * (info.world / info.target_weight)
        metrics = {"loss": (out.loss_sum.detach().float(), mb.batch.loss_weights.sum())}
        if out.aux_loss is not None:
            loss = loss + out.aux_loss / info.micro_batches
            metrics["aux"] = (out.aux_loss.detach().float(), 1)
        return Output(loss, metrics)
