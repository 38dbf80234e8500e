"""One optimizer step and one evaluation pass, normalised over the global batch.

The loss of a step is sum(w * ce) / sum(w) over every micro-batch on every rank. Each rank counts its
weights before the forward, the counts are all-reduced, and each micro-batch backpropagates
`loss_sum * world / W_global`: DDP and FSDP average gradients over ranks, so the gradient is exactly that of
the single-process loss at the same global batch, however the batch is split.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Iterator, Optional

import torch
import torch.nn as nn

from ..model.batch import Batch
from .distributed import all_reduce_sum
from .objectives import MicroBatch, StepInfo, Weighted


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@contextlib.contextmanager
def keep_graph(model: nn.Module) -> Iterator[None]:
    """Make the token embeddings' output require grad, so every micro-batch has a backward pass even when
    no trainable parameter sees it (a text-only micro-batch while only the vision side trains). Each rank
    then runs the same backward hooks: DDP marks unused parameters ready and FSDP reduce-scatters their
    zero gradients, instead of one rank waiting on collectives the other never issues. The cost is nil
    whenever images are present, since reaching the encoder needs that backward anyway. The hook lives for
    the `with` block only, so the model leaves training as it came and a second run adds no second hook."""
    lm = getattr(model, "language", model)
    handle = lm.embed_tokens.register_forward_hook(
        lambda module, args, output: output.requires_grad_() if torch.is_grad_enabled() else output)
    try:
        yield
    finally:
        handle.remove()


def module_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable-or-not parameters by part, for per-group gradient norms: vision, connector, embeddings
    (token table and head), visual_experts (NaViL's image-token weights in the LM), objectives (their own
    modules, see `train.objectives`), router (the visual resolution router), language (the rest)."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if name.startswith(("vision.", "connector.", "router.", "objectives.")):
            part = name.split(".")[0]
        elif "embed_tokens" in name or "lm_head" in name:
            part = "embeddings"
        elif ".visual_" in name:
            part = "visual_experts"
        else:
            part = "language"
        groups.setdefault(part, []).append(p)
    return groups


def group_grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """L2 norm of each group's gradients (before clipping); groups with no gradient are left out."""
    out = {}
    for part, ps in groups.items():
        norms = [p.grad.detach().float().norm() for p in ps if p.grad is not None]
        norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]
        if norms:
            out[f"grad_norm/{part}"] = float(torch.stack(norms).norm())
    return out


def train_step(model: nn.Module, batches: list[Batch], optimizer, params: list, grad_clip: float, world: int,
               device: torch.device, bf16: bool, objectives: list[Weighted], touch_all: bool = False,
               groups: Optional[dict] = None, step: int = 0, stage_step: int = 0, rank: int = 0) -> dict:
    """Forward + backward over this rank's micro-batches for every objective, clip, step. Returns each
    objective's metrics (`<name>/<metric>`, global means), `loss` (the weighted sum of the objectives'
    `loss` metrics), the grad norm and the token count. `touch_all` (DDP) adds 0 * every trainable
    parameter to the loss: DDP reduces only once a parameter's gradient is ready, and a micro-batch that
    reaches no trainable parameter on one rank would otherwise leave the other rank waiting; it also spares
    DDP the unused-parameter search. A micro-batch that no objective has a loss for gets the same, so every
    rank still runs a backward; a step in which no rank has any loss leaves the weights and the optimizer's
    state as they are (no optimizer step).
    With `groups` (see `module_groups`) the result adds each group's gradient norm before clipping."""
    w_local = sum(b.loss_weights.sum() if b.loss_weights is not None else 0 for b in batches)
    info = StepInfo(step=step, stage_step=stage_step, micro_batches=len(batches), world=world, rank=rank,
                    target_weight=all_reduce_sum(torch.as_tensor(w_local).to(device, torch.float32)))
    names = [(o.objective.name, m) for o in objectives for m in o.objective.metrics]
    slot = {name: k for k, name in enumerate(names)}
    stats = torch.zeros(len(names), 2, device=device)  # (total, count) of each metric
    losses = 0  # this rank's objective losses (None from an objective: nothing to train on)
    for i, b in enumerate(batches):
        mb = MicroBatch(model, b.to(device), i)
        loss = torch.zeros((), device=device)
        for o in objectives:
            with autocast(device, bf16):
                out = o.objective.loss(model, mb, info)
            if out.loss is not None:
                loss = loss + o.weight * out.loss
                losses += 1
            for metric, (total, count) in out.metrics.items():
                k = slot.get((o.objective.name, metric))
                if k is None:
                    raise ValueError(f"objective {o.objective.name} reported {metric!r}, which is not among its "
                                     f"metrics {o.objective.metrics}")
                stats[k, 0] += total
                stats[k, 1] += count
        if touch_all or not loss.requires_grad:
            loss = loss + sum(p.sum() for p in params) * 0.0
        loss.backward()
    parts = group_grad_norms(groups) if groups else {}
    grad_norm = nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
        grad_norm = grad_norm.full_tensor()
    # No objective had a loss on any rank (GSPO's filter kept no question): the gradient is zero, and a step
    # would still move the weights (Adam's momentum, weight decay), so the weights and the optimizer's state stay.
    if all_reduce_sum(torch.tensor(float(losses), device=device)) > 0:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = all_reduce_sum(torch.tensor(sum(int(b.attention_mask.sum()) for b in batches), device=device))
    stats = all_reduce_sum(stats)
    metrics = {f"{name}/{metric}": float(t / c) for (name, metric), (t, c) in zip(names, stats) if c > 0}
    total = sum(o.weight * metrics.get(f"{o.objective.name}/loss", 0.0) for o in objectives)
    return {"loss": total, **metrics, "grad_norm": float(grad_norm), "tokens": int(tokens), **parts}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], device: torch.device, bf16: bool) -> float:
    """Teacher-forcing loss over the val batches (weighted mean over all ranks' answer tokens: a question
    loss, `Batch.question_mask`, trains the model but is not part of what val scores)."""
    totals = torch.zeros(2, device=device)
    for b in batches:
        if b.question_mask is not None:
            b = replace(b, targets=b.answer_targets(), loss_weights=b.loss_weights.masked_fill(b.question_mask, 0),
                        question_mask=None)
        with autocast(device, bf16):
            out = model(b.to(device))
        totals += torch.stack([out.loss_sum.float(), out.weight_sum.float()])
    loss_sum, weight_sum = all_reduce_sum(totals).tolist()
    return loss_sum / weight_sum if weight_sum > 0 else float("nan")
