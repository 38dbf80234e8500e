"""Data for Extract+Think (Prism): the reasoner's text-only QA (each question
with a description of its image in place of the image) and visual extraction tuning (image + question ->
description). The answerer that runs the two stages is `nativevlm.infer.pipelines.ExtractThink`; both
sides use the templates below, so what a reasoner is fine-tuned on is what it is asked.
"""
from __future__ import annotations

import re
from typing import Sequence

from .formats import DataError
from .sample import strip_image_markers, user_turn

EXTRACT_PROMPT = "Describe the image."  # the plain description prompt (the built-in world's captions ask it)
GUIDED_PROMPT = "Describe what in the image is needed to answer this question: {question}"
REASON_TEMPLATE = "Description: {description}\nQuestion: {question}"
ANSWER_LINE = re.compile(r"^\s*Answer:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)


def extract_prompt(template: str, question: str) -> str:
    """The perceiver's prompt for `question`: `{question}` is its first line, without image markers or the
    options and instructions after it (those are for the reasoner); training data and inference both ask so."""
    lines = strip_image_markers(question).splitlines()
    return template.format(question=lines[0].strip() if lines else "")


def final_answer(text: str) -> str:
    """A reasoner that reasons in the open ends with a line "Answer: X": X. Else the whole reply."""
    found = [m.group(1) for m in ANSWER_LINE.finditer(text) if m.group(1)]
    return found[-1] if found else text.strip()


def reasoning_prompt(description: str, question: str) -> str:
    """What the reasoner sees: the description, then the question (the image's own words stand in for it)."""
    return REASON_TEMPLATE.format(description=description.strip(), question=question.strip())


def descriptions_by_image(caption_records: Sequence[dict]) -> dict[str, str]:
    """image path -> its description, from a LLaVA captions file (the world's `<split>_captions.json`)."""
    out = {}
    for r in caption_records:
        if r.get("image") and r.get("conversations"):
            out[r["image"]] = r["conversations"][-1]["value"]
    return out


def _paired(qa_records: Sequence[dict], descriptions: dict[str, str], what: str):
    """[(record, question, answer)] of the one-question records whose image has a description, and what was
    skipped, counted by reason."""
    kept, skipped = [], {"no description of its image": 0, "not one question and one answer": 0}
    for r in qa_records:
        turns = r.get("conversations") if isinstance(r, dict) else None
        if not turns or len(turns) != 2:
            skipped["not one question and one answer"] += 1
        elif r.get("image") not in descriptions:
            skipped["no description of its image"] += 1
        else:
            question = strip_image_markers(turns[0]["value"])
            kept.append((r, question, turns[1]["value"]))
    if not kept:
        raise DataError(f"{what}: none of the {len(qa_records)} records is a question whose image has a description "
                        f"(skipped: {skipped}; descriptions are matched by the records' `image` path)")
    return kept, {k: v for k, v in skipped.items() if v}


def reasoner_records(qa_records: Sequence[dict], descriptions: dict[str, str]) -> tuple[list[dict], dict]:
    """Text-only LLaVA records teaching a language model to answer from a description: the user turn is
    `reasoning_prompt(description, question)`, the answer the QA record's. Returns (records, skipped
    records counted by reason)."""
    kept, skipped = _paired(qa_records, descriptions, "reasoner data")
    out = [{"id": f"{r['id']}_reason",
            "conversations": [{"from": "human", "value": reasoning_prompt(descriptions[r["image"]], question)},
                              {"from": "gpt", "value": answer}],
            "meta": dict(r.get("meta") or {})} for r, question, answer in kept]
    return out, skipped


def extraction_records(qa_records: Sequence[dict], descriptions: dict[str, str],
                       prompt: str = GUIDED_PROMPT) -> tuple[list[dict], dict]:
    """Visual extraction tuning data: the image and `prompt` (with the question) -> the description."""
    kept, skipped = _paired(qa_records, descriptions, "extraction data")
    out = [{"id": f"{r['id']}_extract", "image": r["image"],
            "conversations": [{"from": "human", "value": user_turn(extract_prompt(prompt, question), 1)},
                              {"from": "gpt", "value": descriptions[r["image"]]}],
            "meta": {**(r.get("meta") or {}), "family": "extract", "kind": "perception"}} for r, question, _ in kept]
    return out, skipped
