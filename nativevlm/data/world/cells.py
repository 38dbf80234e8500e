"""Per-cell ground truth of an object scene, read back from its pixels.

The world draws each object alone in its 32-px cell, in an exact palette colour, without anti-aliasing, so a
cell's content (empty, or which colour and shape) is recoverable from the image itself: the colour is the
palette entry of its ink, the shape the template whose mask matches the ink best. This gives a per-image-token
target (one token per cell with 16-px patches and a 2x2 shuffle) for any batch of world images, with no side
channel from the data files: the `cells` training objective (`nativevlm.train.objectives.cells`) uses it as a
pre-alignment signal for the visual side. It is world-only by construction, and `cell_labels` checks that an
image is drawn the way the world draws object scenes before reading it (`NotAWorldRender` otherwise), so
labels are never made up from pixels that are not a world render.

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
    the targets of the word-aligned cell loss (`train.objectives.cells.word_loss`)."""
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


class NotAWorldRender(ValueError):
    """An image that is not drawn as the world draws object scenes; the message says what gives it away."""


# Ink pixels of an occupied cell that may differ from its best-matching shape template. A world render matches
# one exactly (0 pixels off in 600 scenes of both presets); the margin covers a polygon edge that rounds
# differently in a cell far from the origin, and is far below any other picture's (hundreds of pixels).
MAX_TEMPLATE_MISMATCH = 4


def cell_labels(pixels: torch.Tensor) -> torch.Tensor:
    """A world image as the model sees it ([3, H, W] in [-1, 1], sides multiples of 32, not resized) ->
    its cell classes [H/32 * W/32], row-major like the image tokens. Raises `NotAWorldRender` unless the
    image is what the world draws for an object scene: every pixel its white background or one exact
    palette colour, at most one colour per 32-px cell, and each cell's ink one of the world's shapes drawn
    in that cell. Vectorised over cells: it runs on every training batch of a stage with the cell loss."""
    _, h, w = pixels.shape
    if h % CELL or w % CELL:
        raise NotAWorldRender(f"its sides {w}x{h} are not multiples of the world's {CELL}-px cell")
    rgb = ((pixels.detach().float().cpu() + 1.0) * 127.5).round().long()
    code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]  # one integer per pixel colour
    cells = code.view(h // CELL, CELL, w // CELL, CELL).permute(0, 2, 1, 3).reshape(-1, CELL * CELL)
    hit = cells[..., None] == _colour_codes()  # [N, CELL*CELL, 1 + P]: the background, then the palette
    stray = int((~hit.any(-1)).sum())
    if stray:
        raise NotAWorldRender(f"{stray} of its {h * w} pixels are neither the world's background nor one of its "
                              "palette colours (a photo, anti-aliased text or chart labels, or a resized render)")
    per_cell = hit[..., 1:].sum(1)  # [N, P] ink pixels of each palette colour
    if bool(((per_cell > 0).sum(1) > 1).any()):
        raise NotAWorldRender(f"a {CELL}-px cell holds more than one colour (the world draws one object per cell)")
    n_ink = per_cell.sum(1)
    colour = per_cell.argmax(1)
    templates, template_shape = _template_matrix()
    flat = (~hit[..., 0]).float()  # [N, CELL*CELL] ink masks
    # Pixels on which ink and template agree, up to a per-cell constant: 2 ink.t - |t| (one small matmul);
    # the best template's mismatching pixels are then |ink| - that.
    agree = 2 * flat @ templates.T - templates.sum(1)
    best, index = agree.max(1)
    mismatch = torch.where(n_ink > 0, n_ink - best, torch.zeros_like(best))
    if float(mismatch.max()) > MAX_TEMPLATE_MISMATCH:
        raise NotAWorldRender(f"a cell's ink ({int(n_ink[mismatch.argmax()])} pixels) is none of the world's shapes "
                              f"drawn in its cell ({int(mismatch.max())} pixels off the closest one)")
    labels = 1 + colour * len(SHAPES) + template_shape[index]
    return torch.where(n_ink > 0, labels, torch.zeros_like(labels))


@lru_cache(maxsize=1)
def _template_matrix() -> tuple[torch.Tensor, torch.Tensor]:
    masks, shapes = _templates()
    return (torch.from_numpy(masks.reshape(len(masks), -1)).float(),
            torch.tensor([SHAPES.index(s) for s in shapes]))


@lru_cache(maxsize=1)
def _colour_codes() -> torch.Tensor:
    """The background's and each palette colour's RGB as one integer, as `cell_labels` codes pixels."""
    return torch.tensor([(r << 16) | (g << 8) | b for r, g, b in (BACKGROUND, *(PALETTE[c] for c in COLOURS))])
