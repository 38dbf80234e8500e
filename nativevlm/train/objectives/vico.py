"""ViCO (InternVL3.5's visual consistency learning) in two stages, for the visual resolution router.

No ViCO training code has been released; this follows the method as published.

- `vico_consistency` (stage 1): every region of every image gets a random rate (the coarse
  `extra_downsample` with probability `compress_prob`, else the fine `downsample`), and the model's next-token
  distribution on each answer token is pulled, by KL(reference || model), towards a frozen copy of the model
  taken at the start of the stage that always sees every region at the fine rate. The loss is normalised
  over the global batch's target weight like `sft`, so with both sides at the fine rate it is exactly 0.
- `vico_router` (stage 2, only `router.*` trains): for each region, r = loss with that region alone at the
  coarse rate / loss with every region at the fine rate (the answer NLL of the region's sample, each
  region's forward batched across the micro-batch). The label is "keep the fine rate" when r is above the
  `percentile`-th percentile of r over a sliding window of the last `window` values (current ones included),
  else "compress": the window keeps the labels near the chosen balance as the model's losses drift. The
  router is trained by binary cross-entropy on its 2-way softmax. The window is checkpointed.

Changing a region's rate changes the number of its <img> tokens, so the micro-batch is laid out again
(`relayout`) for every rate assignment; answer tokens keep their order, which is what pairs the two
sides' distributions token by token.
"""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import ConfigError
from ...data.collate import IGNORE, image_block
from ...model.batch import Batch
from ...model.connector import Rate, regions, token_blocks
from ...model.router import COMPRESS, KEEP
from .base import MicroBatch, Objective, Output, StageContext, StepInfo, register


def bare(model: nn.Module) -> nn.Module:
    """The model under a data-parallel wrapper."""
    return getattr(model, "module", model)


def image_ids(config) -> dict[str, int]:
    return {k: getattr(config, k) for k in ("image_token_id", "image_start_id", "image_end_id", "image_eol_id")}


def n_regions(pixels: torch.Tensor, config) -> int:
    p = config.vision.patch_size
    return len(regions(pixels.shape[-2] // p, pixels.shape[-1] // p, config.connector.region_size))


def relayout(batch: Batch, rates: list[Rate], config) -> Batch:
    """`batch` with each image's token block rebuilt at `rates` (one per image, in batch order). Image blocks
    carry no targets but on their last token (`<img_end>` predicts the question's first word when the collator
    has a question loss), so only the block lengths change: the rows' other tokens, targets, weights and
    question marks keep their order, positions restart per document as the collator numbers them."""
    ids = image_ids(config)
    start_id, end_id = ids["image_start_id"], ids["image_end_id"]
    docs = batch.document_ids if batch.document_ids is not None else torch.where(batch.attention_mask, 0, -1)
    rows, k = [], 0
    for b in range(batch.input_ids.shape[0]):
        inp, tgt = batch.input_ids[b].tolist(), batch.targets[b].tolist()
        wts, doc = batch.loss_weights[b].tolist(), docs[b].tolist()
        asked = batch.question_mask[b].tolist() if batch.question_mask is not None else [False] * len(inp)
        out: tuple[list, list, list, list, list] = ([], [], [], [], [])
        t = 0
        while t < len(inp):
            if doc[t] < 0:
                t += 1
                continue
            if inp[t] == start_id:
                px = batch.pixel_values[k]
                block = image_block(token_blocks(*px.shape[-2:], config.vision.patch_size, rates[k],
                                                 config.connector.region_size), ids)
                k += 1
                end = inp.index(end_id, t)
                # only <img_end> may carry a target (a question's first word, with a question loss)
                out[0].extend(block), out[1].extend([IGNORE] * (len(block) - 1) + [tgt[end]])
                out[2].extend([0.0] * (len(block) - 1) + [wts[end]]), out[3].extend([doc[t]] * len(block))
                out[4].extend([False] * (len(block) - 1) + [asked[end]])
                t = end + 1
                continue
            for lst, v in zip(out, (inp[t], tgt[t], wts[t], doc[t], asked[t])):
                lst.append(v)
            t += 1
        rows.append(out)
    assert k == len(batch.pixel_values), "every image of the batch has one block"
    B, T = len(rows), max(len(r[0]) for r in rows)
    padded = batch.input_ids[~batch.attention_mask]  # padding is masked; keep the collator's pad id
    input_ids = torch.full((B, T), int(padded[0]) if len(padded) else int(batch.input_ids[0, 0]), dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    weights = torch.zeros(B, T)
    document_ids = torch.full((B, T), -1, dtype=torch.long)
    position_ids = torch.zeros(B, T, dtype=torch.long)
    question_mask = torch.zeros(B, T, dtype=torch.bool)
    for b, (inp, tgt, wts, doc, asked) in enumerate(rows):
        n = len(inp)
        input_ids[b, :n], targets[b, :n] = torch.tensor(inp), torch.tensor(tgt)
        question_mask[b, :n] = torch.tensor(asked, dtype=torch.bool)
        weights[b, :n], document_ids[b, :n] = torch.tensor(wts), torch.tensor(doc)
        d = document_ids[b, :n]
        first = torch.cat([torch.ones(1, dtype=torch.bool), d[1:] != d[:-1]])  # each document's first token
        starts = torch.arange(n)[first]
        position_ids[b, :n] = torch.arange(n) - starts[torch.cumsum(first.long(), 0) - 1]
    dev = batch.input_ids.device
    return Batch(input_ids=input_ids.to(dev), targets=targets.to(dev), loss_weights=weights.to(batch.loss_weights),
                 attention_mask=(document_ids >= 0).to(dev), position_ids=position_ids.to(dev),
                 document_ids=document_ids.to(dev) if batch.document_ids is not None else None,
                 pixel_values=batch.pixel_values, image_downsample=list(rates), n_samples=batch.n_samples,
                 n_loss_tokens=batch.n_loss_tokens,
                 question_mask=question_mask.to(dev) if batch.question_mask is not None else None)


def answer_logprobs(model: nn.Module, batch: Batch, image_features=None) -> torch.Tensor:
    """Log-probabilities [N, V] at the batch's answer positions (its targets less any question's), in
    row-major order."""
    inputs = batch.model_inputs()
    inputs.update(targets=None, loss_weights=None)
    if image_features is not None:
        inputs.update(pixel_values=None, image_downsample=None, image_features=image_features)
    logits = model(**inputs).logits
    return F.log_softmax(logits[batch.answer_targets() != IGNORE].float(), dim=-1)


def check_vlm_with_coarse_path(ctx: StageContext, name: str, router: bool = False) -> None:
    cfg = getattr(ctx.model, "config", None)
    if not hasattr(ctx.model, "encode_images") or not cfg.connector.extra_downsample:
        raise ConfigError(f"stage {ctx.stage.name}: {name} needs a NativeVLM with a coarse path; set "
                          "model.connector.extra_downsample: 4 (and a region_size) in the recipe")
    if router and ctx.model.router is None:
        raise ConfigError(f"stage {ctx.stage.name}: {name} trains the router; set model.router.enabled: true")


@dataclass
class ConsistencyOptions:
    compress_prob: float = 0.5  # chance that a region is drawn at the coarse rate
    seed: int = 0


@register("vico_consistency")
class Consistency(Objective):
    Options = ConsistencyOptions
    metrics = ("loss", "compressed")

    def setup(self, ctx: StageContext) -> None:
        check_vlm_with_coarse_path(ctx, "vico_consistency")
        if not 0 <= self.options.compress_prob <= 1:
            raise ConfigError(f"stage {ctx.stage.name}: vico_consistency.compress_prob must be in [0, 1]")
        self.config = ctx.model.config
        self.reference = copy.deepcopy(ctx.model).eval().requires_grad_(False)
        self.generator = torch.Generator().manual_seed(self.options.seed)

    def random_rates(self, pixel_values) -> list[tuple[int, ...]]:
        c = self.config.connector
        out = []
        for px in pixel_values:
            draw = torch.rand(n_regions(px, self.config), generator=self.generator) < self.options.compress_prob
            out.append(tuple(c.extra_downsample if d else c.downsample for d in draw.tolist()))
        return out

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        batch = mb.batch
        if not batch.pixel_values or not (batch.answer_targets() != IGNORE).any():
            return Output(None)
        fine = relayout(batch, [self.config.connector.downsample] * batch.n_images, self.config)
        rates = self.random_rates(batch.pixel_values)
        student = relayout(batch, rates, self.config)
        with torch.no_grad():
            ref = answer_logprobs(self.reference, fine)
        mine = answer_logprobs(model, student)
        w = student.loss_weights[student.answer_targets() != IGNORE].float()
        kl = (ref.exp() * (ref - mine)).sum(-1)
        total = (w * kl).sum()
        n_coarse = sum(r == self.config.connector.extra_downsample for rs in rates for r in rs)
        return Output(total * (info.world / info.target_weight),
                      {"loss": (total.detach(), w.sum()), "compressed": (n_coarse, sum(len(r) for r in rates))})

    def state_dict(self) -> dict:
        return {"reference": self.reference.state_dict(), "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.reference.load_state_dict(state["reference"])
        self.generator.set_state(state["rng"])


@dataclass
class RouterOptions:
    percentile: float = 50.0  # keep the fine rate when r is above this percentile of the window
    window: int = 1024  # recent r values the percentile is taken over
    eps: float = 1e-6  # added to both losses, so a region of a perfectly answered sample has r = 1


def keep_labels(r: torch.Tensor, window: deque, percentile: float) -> torch.Tensor:
    """1 (keep the fine rate) where r is above the `percentile`-th percentile of the window after the
    current values joined it, else 0 (compress)."""
    window.extend(r.tolist())
    return (r > float(np.percentile(np.asarray(window), percentile))).long()


@register("vico_router")
class RouterLoss(Objective):
    Options = RouterOptions
    metrics = ("loss", "keep", "ratio", "accuracy")
    panels = (("ViR router: loss and accuracy on the keep / compress labels", ("loss", "accuracy")),
              ("ViR router: share of regions labelled keep (fine rate)", ("keep",)))

    def setup(self, ctx: StageContext) -> None:
        check_vlm_with_coarse_path(ctx, "vico_router", router=True)
        if not 0 <= self.options.percentile <= 100 or self.options.window < 1:
            raise ConfigError(f"stage {ctx.stage.name}: vico_router needs 0 <= percentile <= 100 and window >= 1")
        self.config = ctx.model.config
        self.window: deque = deque(maxlen=self.options.window)

    def doc_losses(self, model: nn.Module, batch: Batch, image_features) -> dict[tuple[int, int], torch.Tensor]:
        """The mean answer NLL of each (row, document)."""
        inputs = batch.model_inputs()
        inputs.update(targets=None, loss_weights=None, pixel_values=None, image_downsample=None,
                      image_features=image_features)
        logits = model(**inputs).logits.float()
        answers = batch.answer_targets()
        keep = answers != IGNORE
        nll = F.cross_entropy(logits[keep], answers[keep], reduction="none")
        docs = (batch.document_ids if batch.document_ids is not None else torch.zeros_like(answers))[keep]
        rows = keep.nonzero()[:, 0]
        out: dict[tuple[int, int], list] = {}
        for b, d, v in zip(rows.tolist(), docs.tolist(), nll):
            out.setdefault((b, d), []).append(v)
        return {k: torch.stack(v).mean() for k, v in out.items()}

    def image_docs(self, batch: Batch) -> list[tuple[int, int]]:
        """(row, document) of each image of the batch, in batch order."""
        start = self.config.image_start_id
        at = (batch.input_ids == start).nonzero().tolist()
        docs = batch.document_ids if batch.document_ids is not None else torch.zeros_like(batch.input_ids)
        return [(b, int(docs[b, t])) for b, t in at]

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        batch = mb.batch
        if not batch.pixel_values or not (batch.answer_targets() != IGNORE).any():
            return Output(None)
        m, c = bare(model), self.config.connector
        with torch.no_grad():
            grids = m.vision(batch.pixel_values)
            parts = [m.connector.regions(g) for g in grids]
            fine_rates = [(c.downsample,) * len(p) for p in parts]
            fine = relayout(batch, fine_rates, self.config)
            base = self.doc_losses(m, fine, m.connector.connect(grids, fine_rates))
            where = self.image_docs(fine)
            ratios: list[list] = [[None] * len(p) for p in parts]
            for j in range(max(len(p) for p in parts)):
                rates = [tuple(c.extra_downsample if i == j else c.downsample for i in range(len(p))) for p in parts]
                trial = self.doc_losses(m, relayout(batch, rates, self.config), m.connector.connect(grids, rates))
                for k, p in enumerate(parts):
                    if j < len(p) and where[k] in base:
                        ratios[k][j] = float((trial[where[k]] + self.options.eps) / (base[where[k]] + self.options.eps))
        pairs = [(part, r) for ps, rs in zip(parts, ratios) for part, r in zip(ps, rs) if r is not None]
        if not pairs:
            return Output(None)
        r = torch.tensor([r for _, r in pairs])
        labels = torch.where(keep_labels(r, self.window, self.options.percentile).bool(), KEEP, COMPRESS)
        logits = m.router.logits([part for part, _ in pairs])
        loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        right = (logits.argmax(-1).cpu() == labels).sum()
        return Output(loss / info.micro_batches,
                      {"loss": (loss.detach(), 1), "keep": ((labels == KEEP).sum(), len(labels)),
                       "ratio": (r.sum(), len(r)), "accuracy": (right, len(labels))})

    def state_dict(self) -> dict:
        return {"window": list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.window = deque(state["window"], maxlen=self.options.window)
