"""One optimizer step and one evaluation pass, normalised over the global batch.

The loss of a step is sum(w * ce) / sum(w) over every micro-batch on every rank. Each rank counts its
weights before the forward, the counts are all-reduced, and each micro-batch backpropagates
`loss_sum * world / W_global`: DDP and FSDP average gradients over ranks, so the gradient is exactly that of
the single-process loss at the same global batch, however the batch is split.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn

from ..model.batch import Batch
from .distributed import all_reduce_sum


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
    (token table and head), visual_experts (NaViL's image-token weights in the LM), language (the rest)."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if name.startswith(("vision.", "connector.")):
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
               device: torch.device, bf16: bool, touch_all: bool = False, groups: Optional[dict] = None,
               cell_loss: float = 0.0, cell_words: Optional[tuple] = None) -> dict:
    """Forward + backward over this rank's micro-batches, clip, step. Returns the global loss, grad norm
    and token count. `touch_all` (DDP) adds 0 * every trainable parameter to the loss: DDP reduces only
    once a parameter's gradient is ready, and a micro-batch that reaches no trainable parameter on one
    rank would otherwise leave the other rank waiting; it also spares DDP the unused-parameter search.
    With `groups` (see `module_groups`) the result adds each group's gradient norm before clipping.
    `cell_loss` > 0 adds that weight times the image tokens' cell loss (world images) per micro-batch,
    against the LM's colour and shape word embeddings when `cell_words` (their token ids) are given."""
    w_local = sum(b.loss_weights.sum() for b in batches).to(device, torch.float32)
    w_global = all_reduce_sum(w_local)
    if float(w_global) == 0:  # the same on every rank (all-reduced), so all ranks stop together
        raise ValueError("a training step has no target tokens on any rank: every sample of the batch was "
                         "dropped (longer than max_length?) or has no assistant answer; raise max_length "
                         "or check the data")
    loss_sum = torch.zeros((), device=device)
    cells = []
    for b in batches:
        inputs = b.to(device).model_inputs()
        if cell_loss and b.pixel_values:
            from ..data.world.cells import cell_labels

            inputs["cell_targets"] = torch.cat([cell_labels(p) for p in b.pixel_values]).to(device)
            if cell_words is not None:
                inputs["cell_words"] = cell_words
        with autocast(device, bf16):
            out = model(**inputs)
        loss = out.loss_sum * (world / w_global)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss / len(batches)
        if out.cell_loss is not None:
            loss = loss + cell_loss * out.cell_loss / len(batches)
            cells.append(out.cell_loss.detach())
        if touch_all:
            loss = loss + sum(p.sum() for p in params) * 0.0
        loss.backward()
        loss_sum += out.loss_sum.detach().float()
    parts = group_grad_norms(groups) if groups else {}
    if cells:
        parts["cell_loss"] = float(torch.stack(cells).mean())
    grad_norm = nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = all_reduce_sum(torch.tensor(sum(int(b.attention_mask.sum()) for b in batches), device=device))
    return {"loss": float(all_reduce_sum(loss_sum) / w_global), "grad_norm": float(grad_norm), "tokens": int(tokens),
            **parts}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], device: torch.device, bf16: bool) -> float:
    """Teacher-forcing loss over the val batches (weighted mean over all ranks' target tokens)."""
    totals = torch.zeros(2, device=device)
    for b in batches:
        with autocast(device, bf16):
            out = model(b.to(device))
        totals += torch.stack([out.loss_sum.float(), out.weight_sum.float()])
    loss_sum, weight_sum = all_reduce_sum(totals).tolist()
    return loss_sum / weight_sum if weight_sum > 0 else float("nan")
