"""Image encoders.

`arch="native"` is NaViL's native encoder: 16-px patches, the LLM's block design (RMSNorm, SwiGLU) with
bidirectional attention and 2D RoPE over (row, column), any image size whose sides are multiples of the
patch size. `arch="vit"` is a SigLIP-style ViT (LayerNorm, GELU MLP, learned absolute positions, a fixed
square input) for the compositional baseline, loadable from SigLIP checkpoints.

`stem="conv"` (native only) turns the image into the same grid of patch tokens with a few strided 3x3
convolutions instead of one linear map per patch: local structure (strokes, corners) built in. Trained on
its own with a classifier on the answers, it reads shapes and digits far sooner than linear patches
(docs/learnability.md point 15). Inside the full model it pays when the encoder is trained that way first
(`bench/encoder_alone.py --init-vlm`, then the recipe from it: point 16); under the recipe's objectives
alone, from random init, it has not helped.

Images of different sizes in one batch are encoded in groups of equal size, so no padding token ever
enters attention and each image's features equal those of the image encoded alone.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence, Union

import torch
import torch.nn as nn

from ..config import VisionConfig
from .hub import assemble, read_vision_checkpoint
from .layers import GeluMLP, RMSNorm, SwiGLU, apply_rope, attention, init_weights, rope_cos_sin_2d


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        native = cfg.arch == "native"
        self.num_heads = cfg.num_heads
        self.norm1 = RMSNorm(d, cfg.norm_eps) if native else nn.LayerNorm(d, eps=cfg.norm_eps)
        self.qkv_proj = nn.Linear(d, 3 * d, bias=cfg.bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.bias)
        self.norm2 = RMSNorm(d, cfg.norm_eps) if native else nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = SwiGLU(d, cfg.intermediate_size) if native else GeluMLP(d, cfg.intermediate_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv_proj(self.norm1(x)).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        y = attention(q, k, v, mask=None, causal=False).transpose(1, 2).reshape(b, n, d)
        x = x + self.o_proj(y)
        return x + self.mlp(self.norm2(x))


def check_multiple(h: int, w: int, p: int) -> None:
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}; "
                         "preprocess images with nativevlm.data.image.ImageProcessor")


class ConvStem(nn.Module):
    """[B, C, H, W] -> [B, (H/p)(W/p), D]: log2(p) 3x3 stride-2 convolutions with GELU (channels doubling up
    to D), then a 1x1 convolution to D; patches row-major like `VisionEncoder.patchify`."""

    def __init__(self, channels: int, patch_size: int, hidden_size: int):
        super().__init__()
        n = patch_size.bit_length() - 1
        if patch_size < 2 or 1 << n != patch_size:
            raise ValueError(f"vision.stem='conv' needs a power-of-two patch_size, got {patch_size}")
        widths = [max(hidden_size >> (n - i), 8) for i in range(1, n + 1)]
        layers: list[nn.Module] = []
        cin = channels
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, stride=2, padding=1), nn.GELU()]
            cin = w
        layers.append(nn.Conv2d(cin, hidden_size, 1))
        self.net = nn.Sequential(*layers)
        # He init keeps each layer's spread (PyTorch's default shrinks it about 3x a layer, so the tokens
        # would start as one constant); the last 1x1 without the ReLU gain.
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.net[-1].weight, nonlinearity="linear")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


class VisionEncoder(nn.Module):
    """pixel_values (a list of [3, H, W] tensors, or one [B, 3, H, W] tensor) -> a list of per-image
    feature grids [H/p, W/p, D] in input order."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.arch not in ("native", "vit"):
            raise ValueError(f"vision.arch must be 'native' or 'vit', got {config.arch!r}")
        self.config = config
        p, d = config.patch_size, config.hidden_size
        # A linear layer over flattened (channel, row, col) patches == a stride-p convolution, but one GEMM.
        if config.stem not in ("linear", "conv"):
            raise ValueError(f"vision.stem must be 'linear' or 'conv', got {config.stem!r}")
        if config.stem == "conv" and config.arch != "native":
            raise ValueError("vision.stem='conv' is for arch='native'; the SigLIP-style ViT keeps its linear patches")
        if config.stem == "conv":
            self.stem = ConvStem(config.num_channels, p, d)
        else:
            self.patch_embed = nn.Linear(config.num_channels * p * p, d, bias=True)
        self.position_embedding = (
            nn.Embedding((config.image_size // p) ** 2, d) if config.arch == "vit" else None
        )
        self.layers = nn.ModuleList(VisionBlock(config) for _ in range(config.num_layers))
        native = config.arch == "native"
        self.norm = (RMSNorm(d, config.norm_eps) if native else nn.LayerNorm(d, eps=config.norm_eps)) \
            if config.post_norm else None
        self.apply(init_weights)

    @classmethod
    def from_hf(cls, path, dtype: torch.dtype = torch.float32) -> "VisionEncoder":
        """Load a SigLIP vision checkpoint folder (config.json + safetensors) into the ViT variant."""
        return assemble(cls, *read_vision_checkpoint(path), dtype)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)(W/p), C*p*p], patches row-major, each flattened as (c, y, x)."""
        b, c, h, w = images.shape
        p = self.config.patch_size
        check_multiple(h, w, p)
        x = images.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Equal-size images [B, C, H, W] -> features [B, H/p, W/p, D]."""
        b, _, h, w = images.shape
        p = self.config.patch_size
        gh, gw = h // p, w // p
        if self.config.stem == "conv":
            check_multiple(h, w, p)
            x = self.stem(images.to(self.stem.net[0].weight.dtype))
        else:
            x = self.patch_embed(self.patchify(images).to(self.patch_embed.weight.dtype))
        rope = None
        if self.position_embedding is not None:
            if gh * gw != self.position_embedding.num_embeddings:
                raise ValueError(f"this ViT takes {self.config.image_size}px square images, got {h}x{w}")
            x = x + self.position_embedding.weight
        else:
            rows = torch.arange(gh, device=x.device).repeat_interleave(gw)
            cols = torch.arange(gw, device=x.device).repeat(gh)
            rope = rope_cos_sin_2d(rows, cols, self.config.hidden_size // self.config.num_heads, self.config.rope_theta)
        for layer in self.layers:
            x = layer(x, rope)
        if self.norm is not None:
            x = self.norm(x)
        return x.view(b, gh, gw, -1)

    def forward(self, pixel_values: Union[torch.Tensor, Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
            return list(self.encode_batch(pixel_values).unbind(0))
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, img in enumerate(pixel_values):
            if img.dim() != 3:
                raise ValueError(f"image {i}: expected a [C, H, W] tensor, got shape {tuple(img.shape)}")
            groups[tuple(img.shape)].append(i)
        out: list = [None] * len(pixel_values)
        for idx in groups.values():
            feats = self.encode_batch(torch.stack([pixel_values[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return out

