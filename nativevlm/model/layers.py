"""Building blocks shared by the vision encoder and the language model: norms, rotary embeddings (1D and
2D), attention over SDPA with explicit masks, a static KV cache, and MLPs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (as Llama/Qwen do), return in the input dtype.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Rotary position embeddings


def rope_frequencies(dim: int, theta: float, device=None) -> torch.Tensor:
    """Inverse frequencies for `dim` rotary channels (dim/2 pairs)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """1D RoPE. position_ids [..., T] -> cos, sin [..., T, head_dim] in the half-rotation layout used by
    Llama/Qwen (channel i pairs with channel i + head_dim/2)."""
    inv = rope_frequencies(head_dim, theta, position_ids.device)
    angles = position_ids.float().unsqueeze(-1) * inv
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rope_cos_sin_2d(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float):
    """2D RoPE for image patches: half of the rotary pairs turn with the row index, the other half with the
    column index. rows, cols [..., N] -> cos, sin [..., N, head_dim], same layout as `rope_cos_sin`."""
    assert head_dim % 4 == 0, "2D RoPE needs head_dim divisible by 4"
    inv = rope_frequencies(head_dim // 2, theta, rows.device)
    angles = torch.cat([rows.float().unsqueeze(-1) * inv, cols.float().unsqueeze(-1) * inv], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, T, D] (or broadcastable)."""
    cos = cos.unsqueeze(-3).to(x.dtype)
    sin = sin.unsqueeze(-3).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


# ---------------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """A static per-layer key/value cache of shape [B, kv_heads, max_len, head_dim].

    Static buffers (rather than growing tensors) keep memory flat during decoding and let a server keep
    one cache per slot. `length` is the number of positions written so far, shared by the batch; padded
    rows are handled by the key mask the caller passes (`attention_mask` over all cached positions).
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype=torch.float32, device=None):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values at [length, length + T) and return all keys/values so far. The caller
        advances `length` once per forward (after the last layer) via `advance`."""
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}; "
                             "allocate the cache with a larger max_len")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        self.length += t


# ---------------------------------------------------------------------------------------------------
# Masks


@dataclass
class AttentionInputs:
    """Everything attention needs besides the hidden states, computed once per forward and shared by
    all layers: rotary tables, the SDPA mask (None together with `causal` for the fast path) and the
    attention function itself (`attention`, or the model's own: `LanguageModel.attention_fn`)."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: Optional[torch.Tensor]  # bool [B, 1, T, S], True = attend
    causal: bool
    attend: Callable  # (q, k, v, mask, causal) -> [B, H, T, D], as `attention`
    kv_cache: Optional[KVCache] = None


def build_causal_mask(
    q_len: int,
    past_len: int,
    attention_mask: Optional[torch.Tensor],
    document_ids: Optional[torch.Tensor],
    device,
) -> Optional[torch.Tensor]:
    """The boolean SDPA mask for causal attention, or None when plain `is_causal` suffices.

    attention_mask: [B, past_len + q_len] bool, True for real tokens (covers padding in the cache too).
    document_ids: [B, q_len] long, packed documents: a token attends only within its document (no cache).
    Every query may attend to itself so that padded rows never produce NaNs (their outputs are ignored).
    """
    if attention_mask is None and document_ids is None and past_len == 0:
        return None
    kv_len = past_len + q_len
    q_pos = torch.arange(past_len, kv_len, device=device)
    k_pos = torch.arange(kv_len, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, T, S]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :kv_len].bool()
    if document_ids is not None:
        assert past_len == 0, "packed documents are a training-time layout; decode unpacked"
        same = document_ids[:, :, None] == document_ids[:, None, :]
        mask = mask & same[:, None]
    diag = torch.zeros(q_len, kv_len, dtype=torch.bool, device=device)
    diag[torch.arange(q_len), torch.arange(past_len, kv_len)] = True
    return mask | diag


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
              causal: bool) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D]. Grouped-query heads read their shared key/value
    head in place (`enable_gqa`): expanding k/v per query head copied the whole cache window every decode
    step (2.3x slower attention at batch 8 x 192 keys on CPU)."""
    # Never pass both a mask and is_causal: the mask already encodes causality when present.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                          enable_gqa=k.shape[1] != q.shape[1])


# ---------------------------------------------------------------------------------------------------
# MLPs


class SwiGLU(nn.Module):
    """SwiGLU FFN with gate and up projections fused into one matrix: one larger GEMM is faster than two
    small ones, on CPU especially; `hub.py` maps Hugging Face's separate gate/up tensors onto it."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """The ViT/SigLIP MLP (fc1 -> tanh-GELU -> fc2)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def init_weights(m: nn.Module) -> None:
    """Normal(0, 0.02) for linear and embedding weights, zero biases (GPT-2 / Llama convention)."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
