"""Question/answer records and their multiple-choice form.

Answers are short canonical strings (a colour, a shape, a number, "yes"/"no", a letter) so exact match
scores them. Reasoning questions carry short steps that can each be checked against the scene.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

LETTERS = "ABCD"
MC_SUFFIX = "Answer with the letter of the correct option."


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    family: str
    kind: str  # "perception" or "reasoning"
    steps: tuple[str, ...] = ()  # reasoning only; the rationale, without its final "Answer:" line
    pool: tuple[str, ...] = ()  # the answer's domain, from which MC distractors are drawn
    choices: tuple[str, ...] | None = None

    @property
    def rationale(self) -> str | None:
        if self.kind != "reasoning":
            return None
        return " ".join(self.steps + (f"Answer: {self.answer}",))

    def meta(self, scene_id: str) -> dict:
        meta = {"family": self.family, "kind": self.kind, "answer": self.answer, "scene_id": scene_id}
        if self.rationale is not None:
            meta["rationale"] = self.rationale
        if self.choices is not None:
            meta["choices"] = list(self.choices)
        return meta


def perception(question: str, answer, family: str, pool=()) -> QA:
    return QA(question, str(answer), family, "perception", pool=tuple(str(p) for p in pool))


def reasoning(question: str, answer, family: str, steps: list[str], pool=()) -> QA:
    return QA(question, str(answer), family, "reasoning", tuple(steps), tuple(str(p) for p in pool))


def number_pool(answer: int) -> list[int]:
    """Plausible wrong counts/values: the neighbours of the answer, never negative."""
    return [answer + d for d in (-3, -2, -1, 1, 2, 3) if answer + d >= 0]


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def can_be_mc(qa: QA) -> bool:
    return len(set(qa.pool) - {qa.answer}) >= len(LETTERS) - 1


def to_multiple_choice(qa: QA, rng: random.Random) -> QA:
    """Four lettered options, one right; the answer becomes its letter."""
    distractors = rng.sample(sorted(set(qa.pool) - {qa.answer}), len(LETTERS) - 1)
    options = distractors + [qa.answer]
    rng.shuffle(options)
    letter = LETTERS[options.index(qa.answer)]
    lines = [qa.question] + [f"{L}. {o}" for L, o in zip(LETTERS, options)] + [MC_SUFFIX]
    steps = qa.steps + (f"{qa.answer} is option {letter}.",) if qa.kind == "reasoning" else ()
    return replace(qa, question="\n".join(lines), answer=letter, steps=steps, choices=tuple(options))
