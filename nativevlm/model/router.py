"""InternVL3.5-Flash's visual resolution router (ViR): per region, is the coarse rate enough?

As released (the InternVL3.5-Flash code and its transformers port): a learnable query reads the region's
encoder tokens through stacked cross-attention pooling layers (each layer's query is the previous layer's
LayerNorm'd output; keys and values are always the region's tokens), then residual MLP blocks
(x + LayerNorm(Linear(GELU(Linear(x))))), then a LayerNorm and a 2-way linear head with a softmax.
Column 0 is the probability that the region may be compressed (`extra_downsample`), column 1 that it
should keep the fine rate.

`decide` is the released inference rule: compress where p_compress is above the `relative_threshold`
quantile of the probabilities it is ranked with and at least `absolute_threshold`. Ranked with the whole
batch (`mode: batch`), a region's rate depends on what else is encoded with it; `mode: request` ranks
each request's regions among themselves, so a request gets the same tokens whatever runs beside it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import RouterConfig
from .layers import attention

COMPRESS, KEEP = 0, 1  # columns of the router's probabilities


class PoolingAttention(nn.Module):
    """Multi-head attention of a few queries over a padded set of tokens (key padding mask)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """q [B, Q, D], kv [B, N, D], valid [B, N] bool -> [B, Q, D]."""
        def heads(x):
            return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

        mask = valid[:, None, None, :].expand(-1, 1, q.shape[1], -1)
        y = attention(heads(self.query(q)), heads(self.key(kv)), heads(self.value(kv)), mask=mask, causal=False)
        return self.out_proj(y.transpose(1, 2).reshape(q.shape))


class ResidualMLP(nn.Module):
    def __init__(self, dim: int, expansion: int):
        super().__init__()
        self.dense_in, self.dense_out = nn.Linear(dim, dim * expansion), nn.Linear(dim * expansion, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.dense_out(F.gelu(self.dense_in(x))))


class Router(nn.Module):
    def __init__(self, dim: int, config: RouterConfig):
        super().__init__()
        if config.mode not in ("batch", "request"):
            raise ValueError(f"router.mode must be 'batch' or 'request', got {config.mode!r}")
        if dim % config.num_heads:
            raise ValueError(f"router.num_heads {config.num_heads} does not divide the encoder width {dim}")
        self.config = config
        self.query_token = nn.Parameter(torch.randn(1, dim))
        self.pool = nn.ModuleList(PoolingAttention(dim, config.num_heads) for _ in range(config.pool_layers))
        self.pool_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(config.pool_layers))
        self.blocks = nn.ModuleList(ResidualMLP(dim, config.expansion) for _ in range(config.mlp_blocks))
        self.gate_norm = nn.LayerNorm(dim)
        self.gate_proj = nn.Linear(dim, 2)

    def logits(self, regions: Sequence[torch.Tensor]) -> torch.Tensor:
        """Regions' encoder tokens (each [n_i, D] or a grid [h, w, D]) -> logits [R, 2] (COMPRESS, KEEP)."""
        flat = [r.reshape(-1, r.shape[-1]) for r in regions]
        n = max(t.shape[0] for t in flat)
        dtype = self.query_token.dtype
        kv = torch.zeros(len(flat), n, flat[0].shape[-1], dtype=dtype, device=flat[0].device)
        valid = torch.zeros(len(flat), n, dtype=torch.bool, device=flat[0].device)
        for i, t in enumerate(flat):
            kv[i, :len(t)], valid[i, :len(t)] = t.to(dtype), True
        x = self.query_token.expand(len(flat), 1, -1)
        for attn, norm in zip(self.pool, self.pool_norms):
            x = norm(attn(x, kv, valid))
        x = x.squeeze(1)
        for block in self.blocks:
            x = block(x)
        return self.gate_proj(self.gate_norm(x))

    def forward(self, regions: Sequence[torch.Tensor]) -> torch.Tensor:
        """p_compress [R] for each region."""
        return self.logits(regions).float().softmax(-1)[:, COMPRESS]


def decide(p_compress: torch.Tensor, relative_threshold: float, absolute_threshold: float,
           groups: Optional[Sequence[Sequence[int]]] = None) -> torch.Tensor:
    """Which regions to compress [R] bool: p above the `relative_threshold` quantile of its group and at
    least `absolute_threshold` (the released rule). `groups` are index lists ranked apart (default: all
    regions together)."""
    p = p_compress.float()
    out = torch.zeros_like(p, dtype=torch.bool)
    for idx in (groups if groups is not None else [range(len(p))]):
        idx = torch.as_tensor(list(idx), dtype=torch.long, device=p.device)
        if len(idx) == 0:
            continue
        q = torch.quantile(p[idx], relative_threshold)
        out[idx] = (p[idx] > q) & (p[idx] >= absolute_threshold)
    return out
