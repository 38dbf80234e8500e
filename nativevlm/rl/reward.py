"""The verifiable reward of a sampled reply to a QA sample: is the answer right, read rule-first exactly as
evaluation reads it (`eval.harness.score` on the sample as a benchmark item: multiple choice when it lists
choices, else by value, yes/no or normalised exact match), plus a format term.

Strict (`strict=True`): a right answer counts only when it is the answer alone (`eval.matching.bare_answer`:
"3", not "yes. 3 is greater than", which the rules read as 3 for a count and as yes for a yes/no question).
A policy trained on the lenient reading learns such hedges (seen in thinking-mode GSPO:
`docs/studies/posttraining/thinking/`); evaluation keeps the lenient reading, as VLMEvalKit does.

Format: the answer is non-empty and a rule can read it (not a parse failure); in thinking mode the reply
also opens with one well-formed `<think>...</think>` block, and in direct mode it has no think tags. The
format weight (0.5) is below the correctness weight (1.0) so a right answer always outscores a wrong one,
however either is formatted; the format term still separates a wrong but readable answer from an
unreadable one.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data.sample import Sample
from ..data.thinking import split_thinking
from ..eval.matching import PARSE_FAILURE, WRONG, Match, bare_answer
from ..eval.benchmarks.llava_qa import item_of
from ..eval.harness import score


@dataclass(frozen=True)
class RewardWeights:
    correct: float = 1.0
    format: float = 0.5


@dataclass(frozen=True)
class Reward:
    correct: bool
    formatted: bool
    status: str  # the matching status of the answer: correct, wrong or parse_failure
    value: float


def reward(sample: Sample, reply: str, thinking: bool = False, weights: RewardWeights = RewardWeights(),
           strict: bool = False) -> Reward:
    """The reward of `reply` (the generated text) to `sample` (its reference in `meta.answer` or its last
    assistant turn; choices in `meta.choices`). The answer is read after the think block, if any."""
    parts = split_thinking(reply)
    item = item_of(sample, sample.meta.get("source", sample.id))
    match = score(item, parts.answer)
    if strict and match.correct and not bare_answer(parts.answer, item.answer, item.options):
        match = Match(WRONG, match.parsed)
    tags_ok = parts.well_formed and (parts.thinking is not None) == thinking
    formatted = tags_ok and match.status != PARSE_FAILURE
    value = weights.correct * match.correct + weights.format * formatted
    return Reward(match.correct, formatted, match.status, value)
