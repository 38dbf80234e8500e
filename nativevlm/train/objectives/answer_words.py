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

`question_words: true` also reads yes/no questions: when an answer is one of `yes` (after lower-casing and
stripping a final full stop), the question's words (less those found in more than `max_share` of the data's
questions: "is", "there", "a") join the image's bag, since they name what is in it ("Is there a ring?" ->
ring); when it is one of `no`, they become one of the image's negative groups, with the term
-log(1 - prod_a p(a)) over the group's words: a no says only that not all of them are there ("Can you see a
cobalt bar?" -> no: perhaps a cobalt dot, perhaps a scarlet bar).
In a yes/no-heavy set this multiplies the labels the encoder gets (most of them are otherwise left out,
yes and no being common answers), still from the user's own QA text. Measured on the learnability
benchmark's one-object sets: colour read sooner (one set's val colour 76% at 14,400 samples against 50%);
the yes/no answers themselves did not change (docs/learnability.md).

`pool: max` reads each word from one token, the token that gives it most (multiple-instance learning over
the image's tokens): p(a) = max_i q_i(a) with q_i = softmax(s * cos(x_i, E)); a yes question's words form a
group that must sit at one token, -max_i mean_{a in g} log q_i(a); a no question's group is scored by
max_i prod_{n in g} q_i(n) (no token has all of them). So "Can you see a cobalt bar?" -> yes asks for a
token that is both cobalt and a bar, and -> no for none, where the mean token cannot tell a cobalt bar and
a scarlet dot from a scarlet bar and a cobalt dot. On images with several objects and one question each, the
mean gives the encoder almost nothing to learn: a question-blind predictor must spread p over every
object's words, which a cosine softmax over the whole vocabulary does barely better than knowing nothing.
Trained alone on such a set, the encoder left the mean's loss where it started (4.06 -> 3.89 in 500 steps)
and lowered the max's from 3.34 to 1.86 (docs/learnability.md). `table: initial`
reads a copy of the embeddings taken when the stage starts (saved in its checkpoints) instead of the
embeddings as the language model trains them.

A conversation with several images is skipped (which answer word belongs to which image is unknown) and
counted in the `skipped` metric.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ...config import ConfigError
from ...data.collate import IGNORE
from ...data.formats import item_reader
from ...data.sample import strip_image_markers
from ...data.shards import iter_items
from .base import MicroBatch, Objective, Output, StageContext, StepInfo, register


@dataclass
class AnswerWordsOptions:
    scale: float = 10.0  # inverse temperature of the cosine logits
    pool: str = "mean"  # mean: one distribution from the mean token; tokens: a mixture of per-token ones;
    # max: each word (or a yes question's group of words) from the one token that gives it most
    max_share: float = 0.2  # leave out answer tokens found in more than this share of the data's conversations
    share_samples: int = 4000  # samples read per source to count them (evenly spaced in memory; a shard's first)
    # live: the LM's input embeddings as they train; initial: a copy taken when the stage starts (a fixed code
    # book, kept in the stage's checkpoints)
    table: str = "live"
    question_words: bool = False  # a yes/no question's words join the bag on "yes", the negatives on "no"
    yes: list[str] = field(default_factory=lambda: ["yes"])
    no: list[str] = field(default_factory=lambda: ["no"])


def turn_bags(images_turns: list[list[tuple[list[int], list[int]]] | None], ignore_ids: set[int]
              ) -> list[list[int] | None]:
    """For each image of the batch, from its turns (`image_turns`), the target token ids of its conversation
    (its document when packed) less `ignore_ids`, or None when that conversation holds more than one image."""
    return [None if turns is None else [i for _, answer in turns for i in answer if i not in ignore_ids]
            for turns in images_turns]


def image_turns(input_ids: torch.Tensor, targets: torch.Tensor, document_ids, image_start_id: int
                ) -> list[list[tuple[list[int], list[int]]] | None]:
    """For each image of the batch (in the order of their blocks, row-major: the order of `pixel_values`), the
    turns of its conversation (its document when packed) as (question ids, answer ids), special tokens
    included; None for a conversation with several images. A question is every non-answer token since the
    previous answer (targets are pre-shifted: position t is an answer token when targets[t - 1] is not
    IGNORE)."""
    out: list[list[tuple[list[int], list[int]]] | None] = []
    for b in range(input_ids.shape[0]):
        starts = (input_ids[b] == image_start_id).nonzero().flatten().tolist()
        docs = document_ids[b] if document_ids is not None else torch.zeros_like(input_ids[b])
        for s in starts:
            same = docs == docs[s]
            ids = input_ids[b][same].tolist()
            if sum(i == image_start_id for i in ids) != 1:
                out.append(None)
                continue
            t = targets[b][same].tolist()
            is_answer = [False] + [x != IGNORE for x in t[:-1]]
            turns, question, answer = [], [], []
            for i, (tok, a) in enumerate(zip(ids, is_answer)):
                (answer if a else question).append(tok)
                if answer and (i + 1 == len(ids) or not is_answer[i + 1]):  # an answer ends here
                    turns.append((question, answer))
                    question, answer = [], []
            out.append(turns)
    return out


def yes_no_words(turns: list[tuple[list[int], list[int]]], ignore_ids: set[int],
                 verdict: Callable[[list[int]], Optional[bool]]) -> tuple[list[list[int]], list[list[int]]]:
    """(a group of words for each question answered yes, a group for each question answered no), less
    `ignore_ids` (a question left with no words gives no group). `verdict(answer ids)` is True for a yes,
    False for a no, None otherwise."""
    pos: list[list[int]] = []
    neg: list[list[int]] = []
    for question, answer in turns:
        v = verdict(answer)
        words = [x for x in question if x not in ignore_ids]
        if v and words:
            pos.append(words)
        elif v is False and words:
            neg.append(words)
    return pos, neg


def word_probs(x: torch.Tensor, table: torch.Tensor, scale: float, pool: str) -> torch.Tensor:
    """p over the vocabulary from an image's tokens x [n, d] and the normalised table: from their mean, or
    a mixture of per-token distributions (`tokens`); for `max`, each token's own distribution [n, V]."""
    x = x.float().mean(0, keepdim=True) if pool == "mean" else x.float()
    q = (scale * F.normalize(x, dim=-1) @ table.T).softmax(-1)
    return q if pool == "max" else q.mean(0)


def answer_words_loss(tokens: list[torch.Tensor], bags: list[list[int] | None], table: torch.Tensor,
                      scale: float, pool: str = "mean",
                      negatives: Optional[list[list[list[int]] | None]] = None,
                      groups: Optional[list[list[list[int]] | None]] = None) -> tuple[torch.Tensor, int]:
    """Mean over images with a non-empty bag, groups or negative groups of the mean of -log p(a) over the
    bag's words, -mean_{a in g} log p(a) over the (positive) groups g and -log(1 - prod_{n in g} p(n)) over
    the negative groups (see the module docstring); returns the loss and the number of images it covers.

    With `pool: max` every term reads one token, the best for it: p(a) = max_i q_i(a) for a bag word; a
    group's words must be at one token, max_i mean_{a in g} log q_i(a); a negative group's joint is
    max_i prod_{n in g} q_i(n) (no token has all of them). Without `max`, groups are read word by word."""
    table = F.normalize(table.detach().float(), dim=-1)
    negatives = negatives or [None] * len(bags)
    groups = groups or [None] * len(bags)
    losses = []
    for x, bag, grp, neg in zip(tokens, bags, groups, negatives):
        if not bag and not neg and not grp:
            continue
        p = word_probs(x, table, scale, pool)
        terms = []
        if pool != "max":
            bag = (bag or []) + [a for g in grp or [] for a in g]
            if bag:
                terms.append(-p[torch.tensor(bag, device=p.device)].clamp_min(1e-12).log())
            if neg:
                joint = torch.stack([p[torch.tensor(g, device=p.device)].prod() for g in neg])
                terms.append(-(1 - joint).clamp_min(1e-12).log())
        else:
            logq = p.clamp_min(1e-12).log()  # [n, V]
            if bag:
                terms.append(-logq[:, torch.tensor(bag, device=p.device)].max(0).values)
            if grp:
                terms.append(-torch.stack([logq[:, torch.tensor(g, device=p.device)].mean(1).max()
                                           for g in grp]))
            if neg:
                joint = torch.stack([logq[:, torch.tensor(g, device=p.device)].sum(1).max().exp() for g in neg])
                terms.append(-(1 - joint).clamp_min(1e-12).log())
        losses.append(torch.cat(terms).mean())
    if not losses:
        return tokens[0].sum() * 0.0, 0
    return torch.stack(losses).mean(), len(losses)


def stage_sources(data, stage) -> list:
    """Each of the stage's sources to read ahead of training: the samples held in memory, or for a sharded
    source its records in stored order, read on their own (the training stream is not touched; every rank
    reads the same ones). A sharded source is a fresh generator on each call."""
    out = []
    for source, src in zip(data.sources, stage.data):
        if isinstance(source, list):
            out.append(source)
        else:
            read, _ = item_reader(src.path)
            out.append(s for s in map(read, iter_items(src.path)) if s is not None)
    return out


def one_image_samples(sources, limit: int):
    """The one-image conversations among up to `limit` samples of each source (a list: evenly spaced over it;
    an iterable: its first `limit`)."""
    for source in sources:
        if isinstance(source, list):
            source = source[::max(1, len(source) // limit)]
        for sample in islice(source, limit):
            if len(sample.images) == 1:
                yield sample


def common_tokens(sources, tokenizer, max_share: float, limit: int, role_groups) -> list[set[int]]:
    """For each group of roles, the token ids found in its turns of more than `max_share` of the single-image
    conversations among up to `limit` samples of each source (`one_image_samples`), all in one pass."""
    counts: list[dict[int, int]] = [{} for _ in role_groups]
    n = 0
    for sample in one_image_samples(sources, limit):
        n += 1
        for roles, count in zip(role_groups, counts):
            # each turn on its own, as the targets tokenise it (a joined text would count later answers'
            # first words in their mid-sentence form, which no target has)
            found = set().union(*(tokenizer.encode(strip_image_markers(m["content"]))
                                  for m in sample.messages if m["role"] in roles))
            for t in found:
                count[t] = count.get(t, 0) + 1
    return [{t for t, c in count.items() if n and c / n > max_share} for count in counts]


def common_answer_tokens(sources, tokenizer, max_share: float, limit: int, roles=("assistant",)) -> set[int]:
    """Token ids found in the `roles`' turns of more than `max_share` of the single-image conversations among
    up to `limit` samples of each source (`common_tokens` for one group)."""
    return common_tokens(sources, tokenizer, max_share, limit, [roles])[0]


@register("answer_words")
class AnswerWords(Objective):
    Options = AnswerWordsOptions
    choices = {"pool": ("mean", "tokens", "max"), "table": ("live", "initial")}
    metrics = ("loss", "skipped")

    def setup(self, ctx: StageContext) -> None:
        if not hasattr(ctx.model, "encode_images"):
            raise ConfigError(f"stage {ctx.stage.name}: the answer_words objective trains image tokens; "
                              "kind lm has none")
        self.embeddings = ctx.model.language.embed_tokens
        self.initial = None
        if self.options.table == "initial":
            weight = self.embeddings.weight.detach()
            # a sharded (FSDP2) table is gathered whole once (every rank sets up)
            self.initial = (weight.full_tensor() if hasattr(weight, "full_tensor") else weight).clone()
        self.image_start_id = ctx.model.config.image_start_id
        self.ignore = ctx.tokenizer.special_ids()
        self.tokenizer = ctx.tokenizer
        specials = self.ignore
        # the answers' common tokens and, for question_words, the questions', counted in one read of the data
        groups = [("assistant",)] * (self.options.max_share < 1.0) + [("system", "user")] * self.options.question_words
        found = common_tokens(stage_sources(ctx.data, ctx.stage), ctx.tokenizer, self.options.max_share,
                              self.options.share_samples, groups) if groups else []
        common = dict(zip(groups, found))
        self.ignore = self.ignore | common.get(("assistant",), set())
        if self.options.question_words:
            template = ctx.tokenizer.apply_chat_template(
                [{"role": r, "content": ""} for r in ("system", "user", "assistant")])
            self.question_ignore = specials | set(ctx.tokenizer.encode(template)) | common[("system", "user")]
            self.verdicts = {**{w.lower(): True for w in self.options.yes},
                             **{w.lower(): False for w in self.options.no}}
            if not self.options.yes or not self.options.no:
                raise ConfigError(f"stage {ctx.stage.name}: answer_words.question_words needs `yes` and `no` "
                                  "words (the answers that mean yes and no in your data)")

    def state_dict(self) -> dict:
        return {} if self.initial is None else {"initial": self.initial.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if self.initial is not None and "initial" in state:
            self.initial = state["initial"].to(self.embeddings.weight.device)

    def verdict(self, answer_ids: list[int]) -> Optional[bool]:
        """True when the answer is a yes, False when a no, None otherwise."""
        return self.verdicts.get(self.tokenizer.decode(answer_ids).strip().lower().removesuffix("."))

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        batch = mb.batch
        if not batch.pixel_values:
            return Output(None)
        turns = image_turns(batch.input_ids, batch.answer_targets(), batch.document_ids, self.image_start_id)
        bags = turn_bags(turns, self.ignore)
        feats = list(mb.forward().image_features)
        if len(feats) != len(bags):
            raise ValueError(f"{len(feats)} images encoded but {len(bags)} image blocks in the batch")
        skipped = sum(b is None for b in bags)
        negatives = groups = None
        if self.options.question_words:
            yes_no = [None if ts is None else yes_no_words(ts, self.question_ignore, self.verdict) for ts in turns]
            groups = [None if yn is None else yn[0] for yn in yes_no]
            negatives = [None if yn is None else yn[1] for yn in yes_no]
        table = self.embeddings.weight if self.initial is None else self.initial
        loss, n = answer_words_loss(feats, bags, table, self.options.scale,
                                    self.options.pool, negatives, groups)
        metrics = {"skipped": (skipped, 1)}
        if n == 0:
            return Output(None, metrics)
        metrics["loss"] = (loss.detach(), 1)
        return Output(loss / info.micro_batches, metrics)
