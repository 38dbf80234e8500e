"""Mixture-of-experts pieces.

* Modality routing (NaViL's MHA-MMoE + FFN-MMoE): each token goes to exactly one of two experts, chosen by
  its modality (image or text) with no learned router. `ModalityRoute` holds the flat indices of each
  modality once per forward; `route_apply` runs the text and visual modules on their own tokens only, so
  the cost per token is that of the dense model.
* Sparse top-k MoE FFN (SAIL-VL2 / Qwen3-MoE style) with the Switch-style load-balancing loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModalityRoute:
    """Flat token indices per modality for a [B, T] batch (computed once, shared by every layer)."""

    text: torch.Tensor
    image: torch.Tensor
    num_tokens: int

    @classmethod
    def from_mask(cls, image_mask: Optional[torch.Tensor]) -> Optional["ModalityRoute"]:
        """None when there are no image tokens: then every token is text and the dense path runs."""
        if image_mask is None:
            return None
        flat = image_mask.reshape(-1)
        image = flat.nonzero(as_tuple=True)[0]
        if image.numel() == 0:
            return None
        text = (~flat).nonzero(as_tuple=True)[0]
        return cls(text=text, image=image, num_tokens=flat.numel())


class _Split(torch.autograd.Function):
    """flat [N, D] -> (flat[text], flat[image]). The indices partition the tokens, so the backward is two
    plain copies instead of index_select's generic scatter-add (3x slower on CPU at these sizes)."""

    @staticmethod
    def forward(ctx, flat, text, image):
        ctx.save_for_backward(text, image)
        ctx.n = flat.shape[0]
        return flat.index_select(0, text), flat.index_select(0, image)

    @staticmethod
    def backward(ctx, g_text, g_image):
        text, image = ctx.saved_tensors
        return _merge(g_text, g_image, text, image, ctx.n), None, None


class _Merge(torch.autograd.Function):
    """(y_text, y_image) -> [N, D] in token order; the inverse of `_Split`."""

    @staticmethod
    def forward(ctx, y_text, y_image, text, image, n):
        ctx.save_for_backward(text, image)
        return _merge(y_text, y_image, text, image, n)

    @staticmethod
    def backward(ctx, g):
        text, image = ctx.saved_tensors
        return g.index_select(0, text), g.index_select(0, image), None, None, None


def _merge(y_text, y_image, text, image, n):
    out = y_text.new_empty(n, y_text.shape[-1])
    out.index_copy_(0, text, y_text)
    out.index_copy_(0, image, y_image.to(y_text.dtype))
    return out


def route_apply(x: torch.Tensor, route: Optional[ModalityRoute], text_fn: Callable, image_fn: Optional[Callable]):
    """Apply `text_fn` to text tokens and `image_fn` to image tokens of x [B, T, D]; the outputs (any last
    width) are scattered back into token order. With no route (or no visual expert) all tokens are text."""
    if route is None or image_fn is None:
        return text_fn(x)
    b, t = x.shape[:2]
    x_text, x_image = _Split.apply(x.reshape(b * t, x.shape[-1]), route.text, route.image)
    out = _Merge.apply(text_fn(x_text), image_fn(x_image), route.text, route.image, b * t)
    return out.view(b, t, -1)


class SparseMoE(nn.Module):
    """Top-k routed SwiGLU experts with a load-balancing auxiliary loss.

    The aux loss is E * sum_e f_e * P_e (Switch Transformer): f_e the fraction of routed slots that went to
    expert e, P_e the mean router probability of e. Under torch.distributed, f_e is averaged over ranks so
    balance is measured over the global batch (as SAIL-VL2 / Qwen3-MoE do).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int):
        super().__init__()
        assert 1 <= top_k <= num_experts
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(num_experts, dim, 2 * hidden))
        self.down = nn.Parameter(torch.empty(num_experts, hidden, dim))
        nn.init.normal_(self.gate_up, std=0.02)
        nn.init.normal_(self.down, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (output shaped like x, the balance loss of this call)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = F.softmax(self.router(flat).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        slot_expert = experts.reshape(-1)
        order = slot_expert.argsort()
        counts = torch.bincount(slot_expert, minlength=self.num_experts)
        token_of_slot = order // self.top_k
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            slots = order[start:start + n]
            tokens = token_of_slot[start:start + n]
            start += n
            gate, up = (flat[tokens] @ self.gate_up[e]).chunk(2, dim=-1)
            y = (F.silu(gate) * up) @ self.down[e]
            out.index_add_(0, tokens, y * weights.reshape(-1)[slots, None])
        return out.view(shape), self._balance_loss(probs, counts)

    def _balance_loss(self, probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        frac = counts.float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(frac)
        frac = frac / frac.sum().clamp_min(1)
        return self.num_experts * (frac * probs.mean(0)).sum()
