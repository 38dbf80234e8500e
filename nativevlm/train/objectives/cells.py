"""The world's cell loss: each image token is trained to tell what its 32-px cell of a world render holds.

World images are drawn so exactly (one object per cell, palette colours, no anti-aliasing) that every
cell's class (empty, or which colour and shape) is read back from the pixels (`data.world.cells`), one
label per image token (16-px patches, 2x2 shuffle). Two targets:

- `words` (no parameters): each occupied token should point (cosine) toward the LM's own embedding of its
  colour word and of its shape word, among the other colours and shapes, so that the text circuits the LM
  learnt on words ("a green triangle ... What color is the triangle? green") meet image tokens that look
  like those words (docs/learnability.md: colour and shape at about twice the accuracy without it).
- `head`: a linear head over the RMS-normalised token predicts its class (41 classes over the whole
  palette and shape list). The head is this objective's own module (`objectives.cells` on the model while
  training): it trains and is checkpointed with the run and never reaches the exported model.

The loss is a mean over a micro-batch's image tokens, averaged over micro-batches and ranks (as it was
when the model computed it), so unlike `sft` its value depends on how the global batch is split.

World-only in fact: a micro-batch image that is not drawn as the world draws object scenes (its
background, palette, one object per cell, the world's shapes) stops training with an error naming the
stage's data files, and each stage's files are checked up front (their first `CHECKED_PER_FILE` images).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import ConfigError
from ...data.image import load_image
from ...data.world.cells import NUM_CELL_CLASSES, NotAWorldRender, cell_labels, class_word_ids
from ...data.world.scene import CELL
from ...errors import DataError
from .base import MicroBatch, Objective, Output, StageContext, StepInfo, register

CHECKED_PER_FILE = 16


@dataclass
class CellOptions:
    target: str = "words"  # words: the LM's colour/shape word embeddings; head: a linear head over the token


def word_loss(tokens: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, colour_ids, shape_ids) -> torch.Tensor:
    """Mean over occupied tokens of the cross-entropy of their colour and of their shape among the word
    embeddings (`table`, the LM's token embeddings, not trained by this loss) of each colour / shape
    (`colour_ids` / `shape_ids`: each word's token ids in class order, their embeddings averaged)."""
    table = table.detach()
    cols = torch.stack([table[ids].mean(0) for ids in colour_ids])
    shps = torch.stack([table[ids].mean(0) for ids in shape_ids])
    keep = targets > 0
    t = F.normalize(tokens[keep].float(), dim=-1)
    cls = targets[keep] - 1
    n_shapes = len(shape_ids)
    loss_c = F.cross_entropy(10 * t @ F.normalize(cols.float(), dim=-1).T, cls // n_shapes)
    loss_s = F.cross_entropy(10 * t @ F.normalize(shps.float(), dim=-1).T, cls % n_shapes)
    return (loss_c + loss_s) / 2


def head_loss(head: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each image token's class. The head reads the RMS-normalised token, so a class is
    only easy to read when it is a sizeable part of the token's direction, which is how the language model
    reads it too (its layers start with an RMSNorm)."""
    logits = head(F.rms_norm(tokens, tokens.shape[-1:]))
    return F.cross_entropy(logits.float(), targets)


def not_world_error(where: str, reason: str, stage: str) -> DataError:
    return DataError(f"{where} is not a render of the built-in world ({reason}): the cells objective of stage "
                     f"'{stage}' reads its labels from world pixels; train it on `nativevlm data world` output, "
                     "or remove cells from the stage's objectives")


def resize_hint(processor, size: tuple[int, int], vision) -> str:
    """Why a world render may fail the check: the model's image geometry resizes it (a render must be read
    at its own size, one token per cell), and the setting that keeps it whole."""
    width, height = size
    w, h = processor.size_for(width, height)
    if (w, h) == (width, height):
        return ""
    native = (width // vision.patch_size) * (height // vision.patch_size)
    return (f"; this model's image geometry (vision.min_patches={vision.min_patches}, max_patches="
            f"{vision.max_patches}) resizes this {width}x{height} image to {w}x{h}: for world renders set "
            f"model.vision.min_patches <= {native} and max_patches >= the largest render's patch count")


@register("cells")
class Cells(Objective):
    Options = CellOptions
    choices = {"target": ("words", "head")}

    def module(self, model: nn.Module):
        if self.options.target != "head":
            return None
        return nn.Linear(model.config.language.hidden_size, NUM_CELL_CLASSES)

    def setup(self, ctx: StageContext) -> None:
        if not hasattr(ctx.model, "encode_images"):
            raise ConfigError(f"stage {ctx.stage.name}: the cells objective trains image tokens; kind lm has none")
        cfg = ctx.model.config
        if cfg.vision.patch_size * cfg.connector.downsample != CELL:
            raise ConfigError(f"stage {ctx.stage.name}: the cells objective needs one image token per {CELL}-px "
                              f"cell; this model's tokens are {cfg.vision.patch_size * cfg.connector.downsample} px")
        self.stage = ctx.stage.name
        self.files = [src.path for src, samples in zip(ctx.stage.data, ctx.data.sources)
                      if any(s.images for s in samples)]
        for src, samples in zip(ctx.stage.data, ctx.data.sources):
            for image in islice((path for s in samples for path in s.images), CHECKED_PER_FILE):
                try:
                    cell_labels(ctx.processor(image))
                except NotAWorldRender as e:
                    reason = str(e) + resize_hint(ctx.processor, load_image(image).size, cfg.vision)
                    raise not_world_error(f"{src.path}: image {Path(image).name}", reason, self.stage) from None
        self.embeddings = ctx.model.language.embed_tokens
        self.words = class_word_ids(ctx.tokenizer) if self.options.target == "words" else None
        self.head = ctx.module

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        pixels = mb.batch.pixel_values
        if not pixels:
            return Output(None)
        try:
            labels = torch.cat([cell_labels(p) for p in pixels]).to(pixels[0].device)
        except NotAWorldRender as e:
            raise not_world_error(f"an image of this stage's data ({', '.join(self.files)})", str(e), self.stage) from None
        tokens = torch.cat(list(mb.forward().image_features))
        if len(tokens) != len(labels):
            raise ValueError(f"{len(tokens)} image tokens for {len(labels)} cells: the cells objective needs every "
                             f"image tokenised at one token per {CELL}-px cell")
        loss = (word_loss(tokens, labels, self.embeddings.weight, *self.words) if self.words is not None
                else head_loss(self.head, tokens, labels))
        return Output(loss / info.micro_batches, {"loss": (loss.detach().float(), 1)})
