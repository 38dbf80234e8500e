"""Per-cell ground truth of an object scene, read back from its pixels.

The world draws each object alone in its 32-px cell, in an exact palette colour, without anti-aliasing, so a
cell's content (empty, or which colour and shape) is recoverable from the image itself: the colour is the
palette entry of its ink, the shape the template whose mask matches the ink best. This gives a per-image-token
target (one token per cell with 16-px patches and a 2x2 shuffle) for any batch of world images, with no side
channel from the data files: the optional cell loss of a training stage (`StageConfig.cell_loss`) uses it as
a pre-alignment signal for the visual side. It is world-only by construction; user data has no such labels.

Classes: 0 = empty, then 1 + colour_index * len(SHAPES) + shape_index over the full palette and shape list
(`NUM_CELL_CLASSES` = 41), so one head serves every preset.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw

from .render import draw_object
from .scene import BACKGROUND, CELL, PALETTE, SHAPES, SIZES, WorldObject

COLOURS = tuple(PALETTE)
NUM_CELL_CLASSES = 1 + len(COLOURS) * len(SHAPES)


def cell_class(color: str, shape: str) -> int:
    return 1 + COLOURS.index(color) * len(SHAPES) + SHAPES.index(shape)


def class_name(index: int) -> str:
    if index == 0:
        return "empty"
    c, s = divmod(index - 1, len(SHAPES))
    return f"{COLOURS[c]} {SHAPES[s]}"


def class_word_ids(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each colour and each shape word in class order, as captions spell them (after a space):
    the targets of the word-aligned cell loss (`NativeVLM.word_cell_loss`)."""
    return ([tokenizer.encode(" " + c) for c in COLOURS], [tokenizer.encode(" " + s) for s in SHAPES])


@lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, list[str]]:
    """Ink masks [K, CELL, CELL] of every (shape, size) drawn in cell (0, 0), and their shapes."""
    masks, shapes = [], []
    for shape in SHAPES:
        for size in SIZES:
            img = Image.new("RGB", (CELL, CELL), BACKGROUND)
            draw_object(ImageDraw.Draw(img), WorldObject(shape, "black", size, 0, 0))
            masks.append(np.any(np.asarray(img) != BACKGROUND, axis=-1))
            shapes.append(shape)
    return np.stack(masks), shapes


def cell_labels(pixels: torch.Tensor) -> torch.Tensor:
    """A world image as the model sees it ([3, H, W] in [-1, 1], sides multiples of 32, not resized) ->
    its cell classes [H/32 * W/32], row-major like the image tokens. Vectorised over cells: it runs on every
    training batch of a stage with a cell loss."""
    _, h, w = pixels.shape
    if h % CELL or w % CELL:
        raise ValueError(f"image {h}x{w}: cell labels need sides that are multiples of {CELL} (world images "
                         "at their native size)")
    rgb = ((pixels.detach().float().cpu() + 1.0) * 127.5).round()
    cells = rgb.view(3, h // CELL, CELL, w // CELL, CELL).permute(1, 3, 2, 4, 0).reshape(-1, CELL, CELL, 3)
    ink = (cells != torch.tensor(BACKGROUND, dtype=cells.dtype)).any(-1)  # [N, CELL, CELL]
    n_ink = ink.sum((1, 2))
    mean = (cells * ink[..., None]).sum((1, 2)) / n_ink.clamp_min(1)[:, None]
    colour = torch.cdist(mean, _palette()).argmin(1)
    templates, template_shape = _template_matrix()
    flat = ink.reshape(len(ink), -1).float()
    # Pixels on which ink and template agree, up to a per-cell constant: 2 ink.t - |t| (one small matmul).
    agree = 2 * flat @ templates.T - templates.sum(1)
    shape = template_shape[agree.argmax(1)]
    labels = 1 + colour * len(SHAPES) + shape
    return torch.where(n_ink > 0, labels, torch.zeros_like(labels))


@lru_cache(maxsize=1)
def _template_matrix() -> tuple[torch.Tensor, torch.Tensor]:
    masks, shapes = _templates()
    return (torch.from_numpy(masks.reshape(len(masks), -1)).float(),
            torch.tensor([SHAPES.index(s) for s in shapes]))


@lru_cache(maxsize=1)
def _palette() -> torch.Tensor:
    return torch.tensor([PALETTE[c] for c in COLOURS], dtype=torch.float32)
