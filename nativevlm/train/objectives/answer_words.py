"""Answer words: each image's tokens are trained to point at the language model's embeddings of the words
the conversation answers about that image. Labels come from the data's own answers, so it works on any
image-QA or caption set.

Why: trained from scratch on a question-answer mixture, a decoder learns the answer priors from the
question within a few dozen steps, then its answer position stops attending to the image (16% of its
attention, against 79% when every question is the same), so the encoder gets almost no gradient and its
tokens never come to carry colour or shape (a linear probe reads colour from them at 31% against 98%):
docs/learnability.md. This objective gives the encoder a direct, question-free path to the answers, as a
captioning stage does for models that have captions, and as the pooled classifier of a plain from-scratch
model does by construction.

For an image with tokens x_1..x_n and an answer token a (every target token of the image's conversation
except special tokens: a bag of words), p(a) = softmax(s * cos(mean_i x_i, E))[a] over the vocabulary's
embeddings E (the LM's input table, not trained by this loss); the loss is -mean_a log p(a), averaged over
the micro-batch's images. `pool: tokens` uses p(a) = mean_i softmax(s * cos(x_i, E))[a] instead, a
mixture over tokens in which each token may carry one word. The mean reads what spans several patches:
on a one-shape set, both read colour by 9,600 samples, but shape only with the mean (48% at 16,000 against
21%, the prior; docs/learnability.md). A question-blind predictor cannot know which of an image's
attributes a question asks for, which only spreads p over the image's words.

Answer words that answer most conversations (`max_share`, default 0.2: more than a fifth of the stage's
one-image conversations; yes and no in a yes/no-heavy set, a and the in captions) name nothing about any one
image: a question-blind predictor can only learn their base rate, and the pull toward them is noise. They
are left out, as a stop-word list would leave them. Measured on a one-shape set where 70% of
the answers are yes or no: colour read at 91% after 3,200 samples with them left out, against 40% with
them in (one run each; both at 100% by 12,800).

A conversation with several images is skipped (which answer word belongs to which image is unknown) and
counted in the `skipped` metric.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...config import ConfigError
from ...data.collate import IGNORE
from .base import MicroBatch, Objective, Output, StageContext, StepInfo, register


@dataclass
class AnswerWordsOptions:
    scale: float = 10.0  # inverse temperature of the cosine logits
    pool: str = "mean"  # mean: one distribution from the mean token; tokens: a mixture of per-token ones
    max_share: float = 0.2  # leave out answer tokens found in more than this share of the data's conversations
    share_samples: int = 4000  # conversations read (evenly spaced over each in-memory source) to count them


def image_answer_bags(input_ids: torch.Tensor, targets: torch.Tensor, document_ids, image_start_id: int,
                      ignore_ids: set[int]) -> list[list[int] | None]:
    """For each image of the batch (in the order of their blocks, row-major: the order of `pixel_values`),
    the target token ids of its conversation (its document when packed) less `ignore_ids`, or None when
    that conversation holds more than one image."""
    bags: list[list[int] | None] = []
    for b in range(input_ids.shape[0]):
        starts = (input_ids[b] == image_start_id).nonzero().flatten().tolist()
        docs = document_ids[b] if document_ids is not None else torch.zeros_like(input_ids[b])
        for s in starts:
            same = docs == docs[s]
            n_images = int((input_ids[b][same] == image_start_id).sum())
            if n_images != 1:
                bags.append(None)
                continue
            t = targets[b][same]
            bags.append([int(i) for i in t[t != IGNORE].tolist() if int(i) not in ignore_ids])
    return bags


def answer_words_loss(tokens: list[torch.Tensor], bags: list[list[int] | None], table: torch.Tensor,
                      scale: float, pool: str = "mean") -> tuple[torch.Tensor, int]:
    """Mean over images with a non-empty bag of -mean_a log p(a) (see the module docstring); returns the
    loss and the number of images it covers."""
    table = F.normalize(table.detach().float(), dim=-1)
    losses = []
    for x, bag in zip(tokens, bags):
        if not bag:
            continue
        x = x.float().mean(0, keepdim=True) if pool == "mean" else x.float()
        p = (scale * F.normalize(x, dim=-1) @ table.T).softmax(-1).mean(0)
        losses.append(-p[torch.tensor(bag, device=p.device)].clamp_min(1e-12).log().mean())
    if not losses:
        return tokens[0].sum() * 0.0, 0
    return torch.stack(losses).mean(), len(losses)


def common_answer_tokens(data, tokenizer, max_share: float, limit: int) -> set[int]:
    """Token ids found in the assistant turns of more than `max_share` of the stage's single-image
    conversations, counted over up to `limit` of them, evenly spaced, from each in-memory source (streamed
    sources are not read ahead)."""
    counts: dict[int, int] = {}
    n = 0
    for source in getattr(data, "sources", []):
        if not isinstance(source, list) or not source:
            continue
        step = max(1, len(source) // limit)
        for sample in source[::step][:limit]:
            if len(sample.images) != 1:
                continue
            n += 1
            # each answer on its own, as the targets tokenise it (a joined text would count later answers'
            # first words in their mid-sentence form, which no target has)
            found = set().union(*(tokenizer.encode(m["content"]) for m in sample.messages if m["role"] == "assistant"))
            for t in found:
                counts[t] = counts.get(t, 0) + 1
    return {t for t, c in counts.items() if n and c / n > max_share}


@register("answer_words")
class AnswerWords(Objective):
    Options = AnswerWordsOptions
    choices = {"pool": ("mean", "tokens")}
    metrics = ("loss", "skipped")

    def setup(self, ctx: StageContext) -> None:
        if not hasattr(ctx.model, "encode_images"):
            raise ConfigError(f"stage {ctx.stage.name}: the answer_words objective trains image tokens; "
                              "kind lm has none")
        self.embeddings = ctx.model.language.embed_tokens
        self.image_start_id = ctx.model.config.image_start_id
        self.ignore = ctx.tokenizer.special_ids()
        if self.options.max_share < 1.0:
            self.ignore = self.ignore | common_answer_tokens(ctx.data, ctx.tokenizer, self.options.max_share,
                                                             self.options.share_samples)

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        batch = mb.batch
        if not batch.pixel_values:
            return Output(None)
        bags = image_answer_bags(batch.input_ids, batch.targets, batch.document_ids, self.image_start_id,
                                 self.ignore)
        feats = list(mb.forward().image_features)
        if len(feats) != len(bags):
            raise ValueError(f"{len(feats)} images encoded but {len(bags)} image blocks in the batch")
        loss, n = answer_words_loss(feats, bags, self.embeddings.weight, self.options.scale,
                                    self.options.pool)
        skipped = sum(b is None for b in bags)
        metrics = {"skipped": (skipped, 1)}
        if n == 0:
            return Output(None, metrics)
        metrics["loss"] = (loss.detach(), 1)
        return Output(loss / info.micro_batches, metrics)
