"""Text checks: `<image>` markers match the images, answers are non-empty, bounded, not truncated and not
degenerate repetition.

Short answers ("red", "3", "yes") are canonical VQA answers, so sentence-level checks (terminal punctuation)
only apply to answers of at least `sentence_min_words` words, and only when the corpus itself writes long
answers as sentences: `prepare` measures that convention, so a corpus of unpunctuated long answers is not
wiped out.
"""
from __future__ import annotations

import re

from ..sample import IMAGE_MARKER
from .base import Entry, Stage, Verdict

_WORD = re.compile(r"[A-Za-z0-9']+")
# A closing bracket is not terminal: "... at the top (row 1, column 2)" is a caption cut before its period.
_TERMINAL = tuple('.!?。！？"\'`*:')


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def repetition_ratio(tokens: list[str], n: int = 3) -> float:
    """Share of n-grams that repeat an earlier n-gram: 0 for fresh text, near 1 for a looping generator."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


class TextQuality(Stage):
    name = "text"
    strict_reasons = ("marker_mismatch",)

    def __init__(self, max_words: int = 2000, sentence_min_words: int = 8, repetition_n: int = 3,
                 max_repetition: float = 0.5, repetition_min_words: int = 12, convention_share: float = 0.8):
        self.max_words = max_words
        self.sentence_min_words = sentence_min_words
        self.repetition_n, self.max_repetition = repetition_n, max_repetition
        self.repetition_min_words = repetition_min_words
        self.convention_share = convention_share
        self.punctuated_share = 0.0

    def prepare(self, entries: list[Entry]) -> None:
        long = [a.strip() for e in entries for a in e.answers if len(words(a)) >= self.sentence_min_words]
        self.punctuated_share = sum(a.endswith(_TERMINAL) for a in long) / len(long) if long else 0.0

    def check(self, entry: Entry) -> Verdict:
        markers = sum(t.count(IMAGE_MARKER) for t in entry.prompts + entry.answers)
        if markers != len(entry.images):
            return Verdict(reason="marker_mismatch",
                           detail=f"{markers} {IMAGE_MARKER} marker(s) for {len(entry.images)} image(s)")
        if not entry.answers or any(not a.strip() for a in entry.answers):
            return Verdict(reason="empty_answer", detail="an answer is empty or whitespace")
        scores: dict[str, float] = {}
        rep = 0.0
        for a in entry.answers:
            toks = words(a)
            if not toks:
                return Verdict(reason="no_content", detail=f"answer {a.strip()[:40]!r} has no letter or digit")
            if len(toks) > self.max_words:
                return Verdict(reason="too_long", detail=f"{len(toks)} words > {self.max_words}")
            if len(toks) >= self.repetition_min_words:
                rep = max(rep, repetition_ratio(toks, self.repetition_n))
            scores = {"answer_words": max(scores.get("answer_words", 0), len(toks)), "repetition": rep}
            if rep > self.max_repetition:
                return Verdict(scores, "repetitive", f"{self.repetition_n}-gram repetition {rep:.2f}")
            if (len(toks) >= self.sentence_min_words and self.punctuated_share >= self.convention_share
                    and not a.strip().endswith(_TERMINAL)):
                return Verdict(scores, "truncated", f"long answer ends without punctuation: ...{a.strip()[-30:]!r}")
        return Verdict(scores)

    def summary(self) -> dict:
        return {"punctuated_share_of_long_answers": round(self.punctuated_share, 4),
                "truncation_check_active": self.punctuated_share >= self.convention_share}
