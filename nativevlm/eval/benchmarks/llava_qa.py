"""LLaVA JSON (or chat-messages JSONL) question/answer pairs: one user turn (its images first) and one
assistant turn, the reference. `meta.answer` overrides the assistant turn; `meta.choices` (option texts in
letter order) makes the record multiple choice, its option lines are cut from the question so circular
evaluation can re-render them; `meta.category` (or `meta.family`) and `meta.kind` group the scores."""
from __future__ import annotations

import re
from pathlib import Path

from ...data.formats import DataError, read_samples
from ...data.sample import strip_image_markers
from ..matching import normalize_answer, option_letters
from .base import Benchmark, Item


def read(path: Path, log=print) -> Benchmark:
    samples, report = read_samples(path)
    if report.n_skipped:
        log(report.summary())
    items, multi_turn = [], 0
    for s in samples:
        roles = [m["role"] for m in s.messages if m["role"] != "system"]
        if roles != ["user", "assistant"]:
            multi_turn += 1
            continue
        items.append(item_of(s, path))
    if multi_turn:
        log(f"{path}: {multi_turn} records are not one question and one answer; left out")
    return Benchmark(path.stem, str(path), items)


def item_of(sample, path: Path) -> Item:
    question = strip_image_markers(sample.messages[-2]["content"])
    answer = str(sample.meta.get("answer") or sample.messages[-1]["content"]).strip()
    category = str(sample.meta.get("category") or sample.meta.get("family") or "all")
    kind = str(sample.meta.get("kind") or "")
    choices = sample.meta.get("choices")
    options, suffix = {}, ""
    if choices:
        if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
            raise DataError(f"{path} record {sample.id}: meta.choices must be a list of option texts")
        options = dict(zip(option_letters(len(choices)), (str(c) for c in choices)))
        question, suffix = split_options(question, options)
        if answer not in options:  # a reference given as the option's text
            by_text = [k for k, v in options.items() if normalize_answer(v) == normalize_answer(answer)]
            if len(by_text) != 1:
                raise DataError(f"{path} record {sample.id}: answer {answer!r} is neither an option letter "
                                f"({', '.join(options)}) nor one option's text")
            answer = by_text[0]
    return Item(sample.id, question, answer, list(sample.images), options, suffix, category, kind,
                {k: v for k, v in sample.meta.items() if k not in ("answer", "choices")})


def split_options(question: str, options: dict[str, str]) -> tuple[str, str]:
    """Cut the "A. text" lines out of a question: (the text before them, the instruction after them). A
    question that doesn't list its options keeps its text; the harness lists them after it."""
    lines = question.split("\n")
    at = [i for i, line in enumerate(lines) if re.match(r"^\(?([A-Z])[.):]\s", line)]
    if len(at) != len(options):
        return question, ""
    return "\n".join(lines[:at[0]]).strip(), "\n".join(lines[at[-1] + 1:]).strip()
