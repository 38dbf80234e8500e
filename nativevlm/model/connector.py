"""Connector from vision features to the LLM: pixel shuffle (f x f neighbouring patches -> one token of
f*f times the width) then an MLP (LayerNorm -> Linear -> GELU -> Linear, as in InternVL).

`mlp1` is the 2x2 path (1/4 of the patches as tokens). With `extra_downsample=4` a second path `mlp2`
gives 1/16 (InternVL3.5's compressed rate, which the visual resolution router picks per region).

Regions and token layout. An image's patch grid is cut into regions of `region_size` x `region_size`
patches, row-major from the top-left corner (the last row and column of regions may be smaller; 0 = the
whole image is one region). A compression rate is one int (every region at that rate) or a tuple with one
rate per region (`Rate`). Each region becomes a block of tokens, its rows row-major; the image's text is
`<img_start>`, then region after region each of its token rows followed by `<img_eol>`, then `<img_end>`.
With one region this is NaViL's layout (an `<img_eol>` after each row of the image); with several, each
region reads like a small image, so a region's token count changes with its rate without moving any other
region's tokens. `token_blocks` is the one statement of that layout: the collator sizes each image's
token block with it and the model shapes the connector's output with it."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn

from ..config import ConnectorConfig

Rate = Union[int, tuple[int, ...]]  # one rate for every region of an image, or one per region (row-major)


def token_grid(height_px: int, width_px: int, patch_size: int, downsample: int) -> tuple[int, int]:
    """(rows, cols) of image tokens for an image of this size at compression rate `downsample` (each token is
    one downsample x downsample block of patch_size-pixel patches)."""
    cell = patch_size * downsample
    if height_px % cell or width_px % cell:
        raise ValueError(f"image {width_px}x{height_px} is not a multiple of patch_size * downsample = {cell} "
                         "pixels; preprocess images with nativevlm.data.image.ImageProcessor")
    return height_px // cell, width_px // cell


def regions(rows: int, cols: int, region_size: int) -> list[tuple[int, int, int, int]]:
    """The (r0, r1, c0, c1) patch boxes of a rows x cols patch grid's regions, row-major."""
    step_r, step_c = (region_size, region_size) if region_size else (rows, cols)
    return [(r, min(r + step_r, rows), c, min(c + step_c, cols))
            for r in range(0, rows, step_r) for c in range(0, cols, step_c)]


def region_rates(rate: Rate, n_regions: int) -> tuple[int, ...]:
    if isinstance(rate, int):
        return (rate,) * n_regions
    if len(rate) != n_regions:
        raise ValueError(f"{len(rate)} compression rates for an image of {n_regions} regions")
    return tuple(rate)


def token_blocks(height_px: int, width_px: int, patch_size: int, rate: Rate,
                 region_size: int = 0) -> list[tuple[int, int]]:
    """(rows, cols) of each region's token block, in layout order, for an image of this size at `rate`."""
    if height_px % patch_size or width_px % patch_size:
        raise ValueError(f"image {width_px}x{height_px} is not a multiple of the patch size {patch_size}")
    boxes = regions(height_px // patch_size, width_px // patch_size, region_size)
    return [token_grid((r1 - r0) * patch_size, (c1 - c0) * patch_size, patch_size, f)
            for (r0, r1, c0, c1), f in zip(boxes, region_rates(rate, len(boxes)))]


def n_tokens(height_px: int, width_px: int, patch_size: int, rate: Rate, region_size: int = 0) -> int:
    return sum(r * c for r, c in token_blocks(height_px, width_px, patch_size, rate, region_size))


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
        coarsest = max(config.downsample, config.extra_downsample)
        if config.region_size % coarsest:
            raise ValueError(f"connector.region_size {config.region_size} must be a multiple of the coarsest rate "
                             f"{coarsest} (in patches), so each region tiles at every rate")
        hidden = config.hidden_size or llm_dim
        f = config.downsample
        self.mlp1 = ProjectorMLP(vision_dim * f * f, hidden, llm_dim)
        e = config.extra_downsample
        self.mlp2 = ProjectorMLP(vision_dim * e * e, hidden, llm_dim) if e else None

    @torch.no_grad()
    def match_output_scale(self, target_rms: float, paths: Optional[tuple[str, ...]] = None) -> None:
        """Rescale each path's last layer so that image tokens start at `target_rms`, the RMS of the language
        model's token embeddings. An MLP's default init gives tokens several times (a small pretrained LM:
        tens of times) larger than the words around them, which throws a pretrained LM far off its input
        distribution before any training (a first-step loss many times the text LM's). The input is the
        LayerNorm'd pixel-shuffled features, so a standard-normal probe measures the output scale; the probe
        uses its own generator and leaves the global RNG untouched. `paths` limits it to some of `mlp1`,
        `mlp2` (a path added to a trained model)."""
        g = torch.Generator().manual_seed(0)
        for mlp in (getattr(self, name) for name in paths or ("mlp1", "mlp2")):
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

    def regions(self, grid: torch.Tensor) -> list[torch.Tensor]:
        """One image's feature grid [h, w, D] -> its regions' grids, in layout order."""
        return [grid[r0:r1, c0:c1] for r0, r1, c0, c1 in regions(*grid.shape[:2], self.config.region_size)]

    def connect(self, grids: list[torch.Tensor], rates: list[Rate]) -> list[torch.Tensor]:
        """Feature grids [h, w, D] of images -> each image's tokens [n, llm_dim] in the layout of
        `token_blocks` at its rate. Regions of equal shape and rate go through the connector together."""
        pieces: list[list] = []
        groups: dict[tuple, list[tuple[int, int, torch.Tensor]]] = {}
        for i, (grid, rate) in enumerate(zip(grids, rates)):
            parts = self.regions(grid)
            pieces.append([None] * len(parts))
            for j, (part, f) in enumerate(zip(parts, region_rates(rate, len(parts)))):
                groups.setdefault((tuple(part.shape), f), []).append((i, j, part))
        for (_, f), members in groups.items():
            tokens = self(torch.stack([part for _, _, part in members]), f)
            for (i, j, _), t in zip(members, tokens):
                pieces[i][j] = t.reshape(-1, t.shape[-1])
        return [torch.cat(p) for p in pieces]

    def forward(self, features: torch.Tensor, downsample: int) -> torch.Tensor:
        """features [B, h, w, D] -> tokens [B, h/f, w/f, llm_dim] at rate f = `downsample` (the connector's
        `downsample`, or its `extra_downsample` for the compressed path)."""
        if downsample == self.config.downsample:
            return self.mlp1(pixel_shuffle(features, downsample))
        if self.mlp2 is not None and downsample == self.config.extra_downsample:
            return self.mlp2(pixel_shuffle(features, downsample))
        raise ValueError(f"this connector has no path for downsample {downsample} (it has {self.rates}); "
                         "set connector.extra_downsample=4 for the compressed rate")
