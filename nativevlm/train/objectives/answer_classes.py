"""Answer classes: train the image encoder on its own, before the language model reads it, with a linear
classifier over the data's short answers on the mean of each image's encoder grid.

Why: a decoder trained from scratch on a yes/no-heavy question-answer mixture learns the answer priors from
the question long before its encoder learns to tell a digit 3 from a 7 or a pentagon from a hexagon, so the
encoder's gradient stays small and those families stay at their prior (docs/learnability.md). The same
encoder trained alone, told each image's answer as a class, reads them within a few thousand images (digits
87% against 10% inside the full model). Run as the first stage of a recipe (`trainable: ["vision.*"]`), the
model's own encoder starts the next stage already seeing, as a plain supervised pretraining of a vision
backbone would, with labels from the user's answers only.

Classes: the normalised answers (`nativevlm.eval.matching.normalize_answer`: "Red." -> "red", "three" -> "3")
of the stage's one-image conversations, counted over up to `count_samples` of them (evenly spaced over each
file read whole; the first ones of a sharded source), less the yes/no words (`yes`, `no`: they depend on
the question, not on the image alone), less those found fewer than `min_count` times (free text names
nothing twice), the `max_classes` most frequent (the head's width: it is made before the data is read).
Classes are grouped by the records' `meta.family` (each answer in the family that gives it most often; one
group when records have none), and each answer's cross-entropy is a softmax over its group only, as one linear
classifier per family would be: an image asked its colour in one conversation and its shape in another learns
both, the shape's answer not competing with the colour's. An answer that depends on which object the question
names ("What colour is the pentagon?" on an image with several) can only teach which colours the image holds;
it still helps the encoder tell them apart.

Per micro-batch: each image's answers are read back from the batch's own target tokens (so packing and several
turns per image need nothing else); the images with at least one class answer are encoded alone (the model's
forward with no text: `NativeVLM.forward(None, pixel_values=...)`, so no language-model compute), and the loss
is the cross-entropy of the head over the mean of the grid, averaged over the image's class answers, then over
the images. A conversation with several images is skipped (which answer belongs to which image is unknown).
Metrics: `loss`, `accuracy` (the head's within each answer's family, on the micro-batch, before the step),
`labelled` (the share of images with a class answer).

The head is the objective's own module (`objectives.answer_classes`): checkpointed, left out of the exported
model. The class list is saved with each checkpoint and checked on resume. It runs under DDP, not FSDP
(the head would be sharded outside the model's forward).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import ConfigError
from ...data.sample import strip_image_markers
from ...eval.matching import normalize_answer
from .answer_words import image_turns, one_image_samples, stage_sources
from .base import MicroBatch, Objective, Output, StageContext, StepInfo, register


@dataclass
class AnswerClassesOptions:
    max_classes: int = 256  # the head's width: at most this many answers (the most frequent) are classes
    min_count: int = 3  # an answer found fewer times than this among the counted conversations is not a class
    count_samples: int = 20000  # conversations read per file (evenly spaced) to find the classes
    yes: list[str] = field(default_factory=lambda: ["yes"])  # answers that depend on the question: never classes
    no: list[str] = field(default_factory=lambda: ["no"])


def answer_counts(sources, limit: int) -> tuple[Counter, int]:
    """(meta.family or "", normalised answer) of the assistant turns of the one-image conversations among up
    to `limit` samples of each source (`one_image_samples`), and how many conversations were counted."""
    counts: Counter = Counter()
    n = 0
    for sample in one_image_samples(sources, limit):
        n += 1
        family = str(sample.meta.get("family", ""))
        counts.update((family, normalize_answer(strip_image_markers(m["content"])))
                      for m in sample.messages if m["role"] == "assistant")
    return counts, n


def choose_classes(counts: Counter, exclude: set[str], min_count: int, max_classes: int
                   ) -> tuple[list[str], list[str]]:
    """The answers that become classes (at least `min_count` times over all families, not in `exclude`, the
    `max_classes` most frequent; ties by text, so every rank and every resume gets the same list) and each
    one's family (the one it answers most often; ties by name)."""
    total: Counter = Counter()
    best: dict[str, tuple[int, str]] = {}  # answer -> (-count, family) of its most frequent family
    for (f, a), c in counts.items():
        total[a] += c
        best[a] = min(best.get(a, (-c, f)), (-c, f))
    kept = sorted(((c, a) for a, c in total.items() if c >= min_count and a and a not in exclude),
                  key=lambda ca: (-ca[0], ca[1]))
    classes = [a for _, a in kept[:max_classes]]
    return classes, [best[a][1] for a in classes]


@register("answer_classes")
class AnswerClasses(Objective):
    Options = AnswerClassesOptions
    metrics = ("loss", "accuracy", "labelled")

    def __init__(self, options=None):
        super().__init__(options)
        if self.options.max_classes < 2 or self.options.min_count < 1 or self.options.count_samples < 1:
            raise ConfigError("answer_classes: max_classes must be >= 2, min_count and count_samples >= 1")
        self.classes: list[str] = []

    def module(self, model: nn.Module):
        vision = getattr(getattr(model, "config", None), "vision", None)
        return None if vision is None else nn.Linear(vision.hidden_size, self.options.max_classes)

    def setup(self, ctx: StageContext) -> None:
        where = f"stage {ctx.stage.name}: answer_classes"
        if ctx.module is None or not hasattr(ctx.model, "encode_images"):
            raise ConfigError(f"{where} trains the image encoder; kind lm has none")
        if hasattr(ctx.module.weight, "full_tensor"):
            raise ConfigError(f"{where} runs under distributed: ddp (or one process), not fsdp")
        counts, n = answer_counts(stage_sources(ctx.data, ctx.stage), self.options.count_samples)
        exclude = {normalize_answer(w) for w in [*self.options.yes, *self.options.no]}
        self.classes, families = choose_classes(counts, exclude, self.options.min_count, self.options.max_classes)
        if not self.classes:
            raise ConfigError(f"{where}: no answer other than yes/no occurs {self.options.min_count} times or more "
                              f"in {n} one-image conversations; it needs short answers that name what an image "
                              "shows (a colour, an object, a count). Leave it out for free-text data")
        self.index = {a: i for i, a in enumerate(self.classes)}
        # per class, -inf on every logit outside its family: a softmax over the family's classes only
        group = torch.tensor([sorted(set(families)).index(f) for f in families])
        width = self.options.max_classes
        self.masks = torch.full((len(self.classes), width), float("-inf"), device=ctx.device)
        self.masks[:, :len(self.classes)].masked_fill_(group[:, None] == group[None, :], 0.0)
        self.families = families
        self.head = ctx.module
        self.tokenizer = ctx.tokenizer
        self.image_start_id = ctx.model.config.image_start_id
        others = sum(c for (_, a), c in counts.items() if a not in self.index and a not in exclude)
        groups = Counter(families)
        listed = ", ".join(f"{f or 'all'} {c}" for f, c in groups.items())
        ctx.log(f"{where}: {len(self.classes)} classes in {len(groups)} famil{'y' if len(groups) == 1 else 'ies'} "
                f"({listed}) from {n} one-image conversations; {others} answers of other kinds are not classes")

    def labels(self, mb: MicroBatch) -> list[list[int]]:
        """For each image of the micro-batch (in `pixel_values` order), the classes of its conversation's
        answers (empty for a conversation with several images or without a class answer)."""
        b = mb.batch
        turns = image_turns(b.input_ids, b.answer_targets(), b.document_ids, self.image_start_id)
        out = []
        for image in turns:
            answers = [normalize_answer(self.tokenizer.decode(a)) for _, a in image or []]
            out.append([self.index[a] for a in answers if a in self.index])
        return out

    def loss(self, model: nn.Module, mb: MicroBatch, info: StepInfo) -> Output:
        labels = self.labels(mb)
        kept = [k for k, lab in enumerate(labels) if lab]
        metrics = {"labelled": (len(kept), len(labels))}
        if not kept:
            return Output(None, metrics)
        grids = model(None, pixel_values=[mb.batch.pixel_values[k] for k in kept]).image_grids
        pooled = torch.stack([g.flatten(0, 1).mean(0) for g in grids])
        logits = self.head(pooled).float()
        per_image, right, answers = [], 0, 0
        for row, k in zip(logits, kept):
            target = torch.tensor(labels[k], device=row.device)
            masked = row + self.masks[target]  # [answers, width]: each answer against its family's classes
            per_image.append(F.cross_entropy(masked, target))
            right += int((masked.argmax(-1) == target).sum())
            answers += len(target)
        loss = torch.stack(per_image).mean()
        metrics.update(loss=(loss.detach() * len(kept), len(kept)), accuracy=(right, answers))
        return Output(loss / info.micro_batches, metrics)

    def state_dict(self) -> dict:
        return {"classes": list(self.classes), "families": list(self.families)}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("classes"), state.get("families")) != (self.classes, self.families):
            raise ConfigError("answer_classes: the checkpoint was trained with other classes than this stage's data "
                              "gives; resume with the data it was trained on")
