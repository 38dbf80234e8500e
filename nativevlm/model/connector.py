"""Connector from vision features to the LLM: pixel shuffle (f x f neighbouring patches -> one token of
f*f times the width) then an MLP (LayerNorm -> Linear -> GELU -> Linear, as in InternVL).

`mlp1` is the 2x2 path (1/4 of the patches as tokens). With `extra_downsample=4` a second path `mlp2`
gives 1/16 (InternVL3.5's compressed rate, which the visual resolution router picks per image).

`token_grid` is the one statement of how many image tokens an image becomes: the collator sizes each image's
token block with it and the model shapes the connector's output with it."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ConnectorConfig


def token_grid(height_px: int, width_px: int, patch_size: int, downsample: int) -> tuple[int, int]:
    """(rows, cols) of image tokens for an image of this size at compression rate `downsample` (each token is
    one downsample x downsample block of patch_size-pixel patches)."""
    cell = patch_size * downsample
    if height_px % cell or width_px % cell:
        raise ValueError(f"image {width_px}x{height_px} is not a multiple of patch_size * downsample = {cell} "
                         "pixels; preprocess images with nativevlm.data.image.ImageProcessor")
    return height_px // cell, width_px // cell


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, h, w, D] -> [B, h/f, w/f, f*f*D]: each f x f block of neighbouring patches becomes one token."""
    b, h, w, d = x.shape
    assert h % factor == 0 and w % factor == 0, f"feature grid {h}x{w} is not divisible by {factor}"
    x = x.view(b, h // factor, factor, w // factor, factor, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // factor, w // factor, factor * factor * d)


class ProjectorMLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class Connector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int, config: ConnectorConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size or llm_dim
        f = config.downsample
        self.mlp1 = ProjectorMLP(vision_dim * f * f, hidden, llm_dim)
        e = config.extra_downsample
        self.mlp2 = ProjectorMLP(vision_dim * e * e, hidden, llm_dim) if e else None

    @torch.no_grad()
    def match_output_scale(self, target_rms: float) -> None:
        """Rescale each path's last layer so that image tokens start at `target_rms`, the RMS of the language
        model's token embeddings. An MLP's default init gives tokens several times (a small pretrained LM:
        tens of times) larger than the words around them, which throws a pretrained LM far off its input
        distribution before any training (a first-step loss many times the text LM's). The input is the
        LayerNorm'd pixel-shuffled features, so a standard-normal probe measures the output scale; the probe
        uses its own generator and leaves the global RNG untouched."""
        g = torch.Generator().manual_seed(0)
        for mlp in (self.mlp1, self.mlp2):
            if mlp is None:
                continue
            last = mlp[-1]
            probe = torch.randn(1024, mlp[1].in_features, generator=g).to(last.weight)
            rms = mlp(probe).float().pow(2).mean().sqrt().item()
            if rms > 0:
                last.weight.mul_(target_rms / rms)
                last.bias.mul_(target_rms / rms)

    @property
    def rates(self) -> tuple[int, ...]:
        """The compression rates this connector has a path for."""
        return (self.config.downsample,) + ((self.config.extra_downsample,) if self.mlp2 is not None else ())

    def forward(self, features: torch.Tensor, downsample: int) -> torch.Tensor:
        """features [B, h, w, D] -> tokens [B, h/f, w/f, llm_dim] at rate f = `downsample` (the connector's
        `downsample`, or its `extra_downsample` for the compressed path)."""
        if downsample == self.config.downsample:
            return self.mlp1(pixel_shuffle(features, downsample))
        if self.mlp2 is not None and downsample == self.config.extra_downsample:
            return self.mlp2(pixel_shuffle(features, downsample))
        raise ValueError(f"this connector has no path for downsample {downsample} (it has {self.rates}); "
                         "set connector.extra_downsample=4 for the compressed rate")
