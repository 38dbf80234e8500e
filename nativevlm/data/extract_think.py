"""Data for Extract+Think (Prism, REFERENCE.md section 4): the reasoner's text-only QA (each question
with a description of its image in place of the image) and visual extraction tuning (image + question ->
description). The answerer that runs the two stages is `nativevlm.infer.pipelines.ExtractThink`; both
sides use the templates below, so what a reasoner is fine-tuned on is what it is asked.
"""
from __future__ import annotations

from typing import Sequence

from .formats import DataError

GUIDED_PROMPT = "Describe what in the image is needed to answer this question: {question}"
REASON_TEMPLATE = "Description: {description}\nQuestion: {question}"


def reasoning_prompt(description: str, question: str) -> str:
    """What the reasoner sees: the description, then the question (the image's own words stand in for it)."""
    return REASON_TEMPLATE.format(description=description.strip(), question=question.strip())


def _question_of(record: dict) -> tuple[str, str]:
    """(question, answer) of a one-question LLaVA QA record, its image marker dropped."""
    turns = record.get("conversations") or []
    if len(turns) != 2:
        raise DataError(f"record {record.get('id')}: expected one question and one answer, got {len(turns)} turns")
    question = turns[0]["value"].replace("<image>\n", "").replace("<image>", "").strip()
    return question, turns[1]["value"]


def descriptions_by_image(caption_records: Sequence[dict]) -> dict[str, str]:
    """image path -> its description, from a LLaVA captions file (the world's `<split>_captions.json`)."""
    out = {}
    for r in caption_records:
        if r.get("image") and r.get("conversations"):
            out[r["image"]] = r["conversations"][-1]["value"]
    return out


def _paired(qa_records: Sequence[dict], descriptions: dict[str, str], what: str):
    kept, missing = [], 0
    for r in qa_records:
        if r.get("image") in descriptions:
            kept.append(r)
        else:
            missing += 1
    if not kept:
        raise DataError(f"{what}: none of the {len(qa_records)} questions has a description of its image "
                        "(descriptions are matched by the records' `image` path)")
    return kept, missing


def reasoner_records(qa_records: Sequence[dict], descriptions: dict[str, str]) -> tuple[list[dict], int]:
    """Text-only LLaVA records teaching a language model to answer from a description: the user turn is
    `reasoning_prompt(description, question)`, the answer the QA record's. Returns (records, questions
    skipped because their image has no description)."""
    kept, missing = _paired(qa_records, descriptions, "reasoner data")
    out = []
    for r in kept:
        question, answer = _question_of(r)
        out.append({"id": f"{r['id']}_reason",
                    "conversations": [{"from": "human", "value": reasoning_prompt(descriptions[r["image"]], question)},
                                      {"from": "gpt", "value": answer}],
                    "meta": dict(r.get("meta") or {})})
    return out, missing


def extraction_records(qa_records: Sequence[dict], descriptions: dict[str, str],
                       prompt: str = GUIDED_PROMPT) -> tuple[list[dict], int]:
    """Visual extraction tuning data: the image and `prompt` (with the question) -> the description."""
    kept, missing = _paired(qa_records, descriptions, "extraction data")
    out = []
    for r in kept:
        question, _ = _question_of(r)
        out.append({"id": f"{r['id']}_extract", "image": r["image"],
                    "conversations": [{"from": "human", "value": "<image>\n" + prompt.format(question=question)},
                                      {"from": "gpt", "value": descriptions[r["image"]]}],
                    "meta": {**(r.get("meta") or {}), "family": "extract", "kind": "perception"}})
    return out, missing
