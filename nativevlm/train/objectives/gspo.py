"""GSPO (online RL with a verifiable reward; `rl.losses` holds the formulas): every `steps_per_rollout`
optimizer steps, the policy answers each question of the micro-batch `group_size` times, the replies are
scored, and the following `steps_per_rollout` steps all train on that rollout.

A rollout, per micro-batch: the trainer draws the questions (any QA data with answers: the world's
`train.json`); each is asked through the serving engine (`infer.engine`, the generation path evaluation
uses), reply k of question q sampled with its own generator seeded from (the stage's seed, the step, q's id,
k), so a rollout does not depend on batch composition and a resumed run draws the same replies. The reward
is `rl.reward` (the answer read rule-first as evaluation reads it, plus the format term); advantages are
normalised within each question's group; questions whose accuracy lies outside [accuracy_low,
accuracy_high] are dropped (their advantages are all or nearly zero). The kept replies' per-token
log-probabilities under the policy that sampled them (one forward, no gradient) are the old log-probs.

Each step of the window computes GSPO's clipped sequence-ratio loss on the rollout against those old
log-probs. The first step is on-policy (every ratio 1, nothing clipped); the later ones are off-policy, which
is where the clip acts (with `steps_per_rollout: 1` it never would). The loss is the mean over the
micro-batch's kept replies, averaged over micro-batches and ranks. The trainer's batches in the window's
other steps are drawn (keeping the sampler's order) but not used. No KL term, no reference model.

The rollout (questions, reply tokens, old log-probs, advantages) is the objective's state: a run killed
mid-window resumes on the same rollout, bit-exactly. Metrics: `reward`, `accuracy`, `response_length` and
`kept` (the share of questions the accuracy filter keeps) on rollout steps (with both modes, also
`think_accuracy` and `direct_accuracy`); `loss`, `clip_fraction` and
`ratio` (mean sequence ratio) on every step.

Thinking mode (`think: true`): each reply is asked with the engine's `think=True` (`<think>` opened after the
prompt, `</think>` forced after `thinking_budget` tokens), the trained sequence is prompt + that opening +
the reply (loss on the reply's tokens: thinking, close tag and answer; a `</think>` the budget forced counts
as the reply's own, so a rewarded reply also teaches closing there), and the format term of the reward asks
for one well-formed think block before the answer. The reward reads the answer after `</think>`, so RL selects
the thinking that ends in a right, readable answer. With `think: false` (the default) the model is left to
choose, as evaluation asks it, and the format term asks for a reply with no think block.

Both modes (`think: true` with `direct_share: p`): each question of a rollout is asked directly (the engine's
`think=False`, no think block, the direct reward) with probability p and thinking otherwise, the whole group in
one mode so that its advantages compare replies of the same kind; the draw is a hash of (seed, step, question),
like the replies' seeds. Thinking-mode RL alone does not train the direct answers of a think-fusion model,
which then drift; this keeps both modes in the rollouts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...config import ConfigError
from ...data.collate import IGNORE, Collator, EncodedSample, encode_sample
from ...data.sample import Sample
from ...infer.engine import Engine, Request, SamplingParams, think_opening
from ...model.batch import Batch
from ...rl.losses import accuracy_filter, group_advantages, gspo_loss
from ...rl.policy import answer_logprobs, samples_by_id
from ...rl.preferences import asked_to_think, has_answer, prompt_of, reply_seed, reply_text
from ...rl.reward import RewardWeights, reward
from .base import MicroBatch, Objective, Output, StageContext, StepInfo, register


@dataclass
class GSPOOptions:
    group_size: int = 8  # G: replies sampled per question
    steps_per_rollout: int = 4  # optimizer steps on each rollout (> 1, or the clip never acts)
    eps_low: float = 3e-4  # the ratio is clipped to [1 - eps_low, 1 + eps_high]
    eps_high: float = 4e-4
    accuracy_low: float = 0.2  # keep questions whose rollout accuracy lies in [accuracy_low, accuracy_high]
    accuracy_high: float = 0.8
    temperature: float = 1.0
    max_new_tokens: int = 16
    format_weight: float = 0.5  # the reward's format term (correct = 1)
    think: bool = False  # thinking-mode rollouts (the engine's think=True) and reward (module docstring)
    thinking_budget: Optional[int] = None  # with think: the most tokens thought before `</think>` is forced
    direct_share: float = 0.0  # with think: the share of questions asked directly instead (module docstring)
    strict_answer: bool = False  # a right answer counts only alone, not hedged ("yes. 1 is ..."): `rl.reward`


@dataclass
class Rollout:
    """One micro-batch's rollout: the kept replies (`ids[i]` the question, `replies[i]` its tokens, `thinks[i]`
    whether it was asked to think), their log-probs under the sampling policy and their advantages; `batch` is
    built from them on first use."""

    ids: list[str]
    replies: list[list[int]]
    old_logps: torch.Tensor
    advantages: torch.Tensor
    thinks: Optional[list[bool]] = None  # None: every reply in the objective's `think` mode
    batch: Optional[Batch] = None

    def state_dict(self) -> dict:
        return {"ids": self.ids, "replies": self.replies, "old_logps": self.old_logps, "advantages": self.advantages,
                "thinks": self.thinks}


@register("gspo")
class GSPO(Objective):
    Options = GSPOOptions
    metrics = ("loss", "clip_fraction", "ratio", "reward", "accuracy", "response_length", "kept", "think_accuracy",
               "direct_accuracy")
    panels = (("GSPO: each rollout's reward, accuracy and questions kept",
               ("reward", "accuracy", "kept", "think_accuracy", "direct_accuracy")),
              ("GSPO: share of replies clipped (0 on a rollout's on-policy step)", ("clip_fraction",)),
              ("GSPO: reply length (tokens)", ("response_length",)))
    progress = ("reward", "accuracy", "kept", "clip_fraction")

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        if o.group_size < 2:
            raise ConfigError(f"objective gspo: group_size must be >= 2 (advantages compare replies), got {o.group_size}")
        if o.steps_per_rollout < 1 or o.max_new_tokens < 1 or o.temperature <= 0:
            raise ConfigError("objective gspo: steps_per_rollout and max_new_tokens must be >= 1 and temperature > 0")
        if not 0 <= o.accuracy_low <= o.accuracy_high <= 1 or min(o.eps_low, o.eps_high) < 0:
            raise ConfigError("objective gspo: need 0 <= accuracy_low <= accuracy_high <= 1 and eps_low, eps_high >= 0")
        if o.thinking_budget is not None and (not o.think or not 1 <= o.thinking_budget < o.max_new_tokens):
            raise ConfigError("objective gspo: thinking_budget needs think: true and 1 <= thinking_budget < "
                              f"max_new_tokens (room for the answer), got {o.thinking_budget} with max_new_tokens "
                              f"{o.max_new_tokens}")
        if not 0 <= o.direct_share <= 1 or (o.direct_share > 0 and not o.think):
            raise ConfigError("objective gspo: direct_share is the share of questions asked directly beside thinking "
                              f"ones, so it needs think: true and 0 <= direct_share <= 1, got {o.direct_share}")

    def setup(self, ctx: StageContext) -> None:
        self.model, self.tokenizer = ctx.model, ctx.tokenizer
        self.samples = samples_by_id(ctx.data.sources, ctx.stage.name, "gspo")
        for src, samples in zip(ctx.stage.data, ctx.data.sources):
            if not all(has_answer(s) for s in samples):
                raise ConfigError(f"stage {ctx.stage.name}: {src.path} has questions without an answer; the gspo "
                                  "objective rewards replies against it (meta.answer or the last assistant turn)")
        trainer = ctx.data.collator
        self.collator = Collator(trainer.tokenizer, trainer.image_processor, trainer.max_length)
        self.seed = ctx.data.sampler.seed
        self.opening = think_opening(self.tokenizer) if self.options.think else []  # what the engine writes
        self.weights = RewardWeights(format=self.options.format_weight)
        self.rollouts: dict[int, Rollout] = {}

    def prompt(self, sample: Sample) -> EncodedSample:
        return encode_sample(prompt_of(sample), self.tokenizer, self.collator.image_processor,
                             add_generation_prompt=True)

    def thinks(self, sample_id: str, step: int) -> bool:
        """Whether question `sample_id` is asked to think in the rollout of `step`."""
        if not self.options.think:
            return False
        return asked_to_think(self.seed, f"{step}:{sample_id}", self.options.direct_share)

    def sequences(self, ids: list[str], replies: list[list[int]], thinks: Optional[list[bool]] = None) -> Batch:
        """Prompt (+ the engine's `<think>` opening for a reply asked to think) + reply rows, targets on the reply
        only."""
        rows = []
        for j, (i, reply) in enumerate(zip(ids, replies)):
            p = self.prompt(self.samples[i])
            think = self.options.think if thinks is None else thinks[j]
            head = p.input_ids + (self.opening if think else [])
            targets = [IGNORE] * (len(head) - 1) + reply + [IGNORE]
            rows.append(EncodedSample(head + reply, targets, p.pixel_values, p.image_downsample, len(reply), i))
        return self.collator.batch(rows)

    def rollout(self, ids: list[str], info: StepInfo, device: torch.device) -> tuple[Optional[Rollout], dict]:
        """Sample, score, filter and record old log-probs for the questions `ids`; returns the rollout (None
        when no question is kept) and the rollout metrics."""
        o, G = self.options, self.options.group_size
        samples = [self.samples[i] for i in ids]
        prompts = [self.prompt(s) for s in samples]
        modes = [self.thinks(s.id, info.step) for s in samples]  # per question: think (True) or answer directly
        mixed = o.think and not all(modes)
        requests = [Request(p.input_ids, SamplingParams(o.max_new_tokens, o.temperature,
                                                        seed=reply_seed(self.seed, f"{info.step}:{s.id}", k)),
                            pixel_values=p.pixel_values, think=True if t else (False if mixed else None),
                            thinking_budget=o.thinking_budget if t else None)
                    for s, p, t in zip(samples, prompts, modes) for k in range(G)]
        longest = max(len(p.input_ids) for p in prompts) + len(self.opening)
        was_training = self.model.training
        done = Engine(self.model, self.tokenizer, max_batch_size=len(requests),
                      max_len=longest + o.max_new_tokens).generate(requests)
        self.model.train(was_training)
        eos = self.tokenizer.eos_id
        replies = [c.token_ids + ([eos] if c.finish_reason == "stop" else []) for c in done]
        texts = [reply_text(self.tokenizer, c, self.opening if modes[j // G] else []) for j, c in enumerate(done)]
        scored = [reward(samples[j // G], t, thinking=modes[j // G], weights=self.weights, strict=o.strict_answer)
                  for j, t in enumerate(texts)]
        rewards = torch.tensor([r.value for r in scored]).view(-1, G)
        correct = torch.tensor([float(r.correct) for r in scored]).view(-1, G)
        keep = accuracy_filter(correct.mean(1), o.accuracy_low, o.accuracy_high)
        metrics = {"reward": (rewards.sum(), rewards.numel()), "accuracy": (correct.sum(), correct.numel()),
                   "response_length": (sum(len(r) for r in replies), len(replies)),
                   "kept": (keep.sum(), len(keep))}
        if o.direct_share > 0:  # each mode's rollout accuracy (the groups asked that way)
            asked = torch.tensor(modes)
            for name, rows_of in (("think_accuracy", asked), ("direct_accuracy", ~asked)):
                metrics[name] = (correct[rows_of].sum(), correct[rows_of].numel())
        rows = [j for j in range(len(replies)) if keep[j // G]]
        if not rows:
            return None, metrics
        advantages = group_advantages(rewards).flatten()[rows].to(device)
        kept_ids, kept_replies = [ids[j // G] for j in rows], [replies[j] for j in rows]
        thinks = [modes[j // G] for j in rows] if mixed else None
        batch = self.sequences(kept_ids, kept_replies, thinks).to(device)
        with torch.no_grad():
            old, _ = answer_logprobs(self.model, batch)
        return Rollout(kept_ids, kept_replies, old, advantages, thinks, batch), metrics

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        metrics = {}
        if info.stage_step % self.options.steps_per_rollout == 0:
            rollout, metrics = self.rollout(mb.batch.sample_ids, info, mb.batch.input_ids.device)
            self.rollouts.pop(mb.index, None)
            if rollout is not None:
                self.rollouts[mb.index] = rollout
        rollout = self.rollouts.get(mb.index)
        if rollout is None:
            return Output(None, metrics)
        if rollout.batch is None:
            rollout.batch = self.sequences(rollout.ids, rollout.replies, rollout.thinks).to(mb.batch.input_ids.device)
        logps, mask = answer_logprobs(model, rollout.batch)
        loss, m = gspo_loss(logps, rollout.old_logps, mask, rollout.advantages, self.options.eps_low,
                            self.options.eps_high)
        n = len(rollout.ids)
        metrics.update(loss=(loss.detach(), 1), clip_fraction=(m["clip_fraction"] * n, n), ratio=(m["ratio_mean"] * n, n))
        return Output(loss / info.micro_batches, metrics)

    def state_dict(self) -> dict:
        return {"rollouts": {i: r.state_dict() for i, r in self.rollouts.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts = {int(i): Rollout(**r) for i, r in state["rollouts"].items()}
