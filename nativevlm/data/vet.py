"""Visual extraction tuning (VET, from "Downscaling Intelligence"): teach a perceiver to write the description
a reasoner needs. Each QA pair of a sample becomes a declarative statement ("How many red objects are
there?" + "2" -> "There are 2 red objects."); the target is a fine-grained description that contains every
statement (a base description -- the built-in world's captions, its scene ground truth in words -- followed
by the statements it doesn't already hold; for data without descriptions the statements alone); the prompt
is the question-guided extraction prompt, so the perceiver learns to put what the question needs in words.

The paper has an LLM rewrite the statements into a description; rules do it here, so the targets are exact
and the transformation is testable. A question no rule reads becomes `The answer to "Q" is A.`
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from .extract_think import extract_prompt
from .formats import DataError
from .sample import strip_image_markers, user_turn

VET_PROMPT = ("Describe the fine-grained content of the image, including scenes, objects, relationships, instance "
              "location, and any text present. Especially, pay attention to what this question needs: {question}")
OPTION = re.compile(r"^\s*\(?([A-Z])[.)]\s+(.+?)\s*$")
NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
ANSWER_KEYS = ("answer", "choices", "rationale")  # the source question's: not the description's


def question_stem(question: str) -> tuple[str, dict[str, str]]:
    """(the question without its image markers, option lines or instructions after them, its options)."""
    lines = [line for line in strip_image_markers(question).splitlines() if line.strip()]
    options = {m.group(1): m.group(2) for m in map(OPTION.match, lines[1:]) if m}
    return (lines[0].strip() if lines else ""), options


def _one(noun: str) -> str:
    """The singular of a plural noun phrase's last word ("red objects" -> "red object")."""
    head, _, last = noun.rpartition(" ")
    last = last[:-3] + "y" if last.endswith("ies") else last[:-1] if last.endswith("s") else last
    return f"{head} {last}".strip()


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def declarative(question: str, answer: str) -> str:
    """One QA pair as a statement. A multiple-choice answer (a letter) is read as its option's text."""
    stem, options = question_stem(question)
    answer = options.get(answer.strip(), answer).strip()
    yes, no = answer.lower() == "yes", answer.lower() == "no"
    q = stem.rstrip("?").strip()
    rules = [
        (r"What (?:color|colour) is (.+)", lambda m: f"{m[1]} is {answer}"),
        (r"What shape is (.+)", lambda m: f"{m[1]} is a {answer}"),
        (r"What (?:type|kind) of (\w+) is this", lambda m: f"this is a {answer} {m[1]}"),
        (r"What is written in (.+)", lambda m: f'the text in {m[1]} is "{answer}"'),
        (r"How many (.+?) are there( .+)?", lambda m: _count(m[1], answer, f"there are {{n}} {{x}}{m[2] or ''}")),
        (r"How many (.+?) (?:do|does) (.+?) (\w+)", lambda m: _count(m[1], answer, f"{m[2]} {_third(m[3])} {{n}} {{x}}")),
        (r"How many (.+?) (have|are) (.+)", lambda m: _count(m[1], answer, f"{{n}} {{x}} {m[2]} {m[3]}")),
        (r"Is there (.+)", lambda m: f"there is {m[1]}" if yes else f"there is no {m[1].removeprefix('a ')}"
         if no else None),
        (r"Are there (.+)", lambda m: f"there are {m[1]}" if yes else f"there are not {m[1]}" if no else None),
        (r"Is (the .+?) (\w+) or (\w+)", lambda m: f"{m[1]} is {answer}" if answer in (m[2], m[3]) else None),
        (r"Is (the .+?) in the (\w+) or (\w+) (.+)", lambda m: f"{m[1]} is in the {answer} {m[4]}"
         if answer in (m[2], m[3]) else None),
        (r"Is (the .+?) (above|below|to the left of|to the right of|left of|right of|greater than|less than) (.+)",
         lambda m: f"{m[1]} is {'not ' if no else ''}{m[2]} {m[3]}" if yes or no else None),
        (r"Which (\w+) (has|is) (.+)", lambda m: f"the {m[1]} that {m[2]} {m[3]} is {answer}"),
        (r"How much (\w+) is (.+?) than (.+)", lambda m: f"{m[2]} is {answer} {m[1]} than {m[3]}"),
        (r"What is (.+)", lambda m: f"{m[1]} is {answer}"),
    ]
    for pattern, make in rules:
        m = re.fullmatch(pattern, q, flags=re.IGNORECASE)
        if m and (text := make(m)) is not None:
            return _sentence(text)
    return f'The answer to "{stem}" is {answer}.'


def _third(verb: str) -> str:
    """The third person singular: "show" -> "shows", "have" -> "has"."""
    return "has" if verb == "have" else verb + "s"


def _count(noun: str, answer: str, template: str) -> Optional[str]:
    """A count statement in agreement with its number ("there is 1 red object", "1 object has ...");
    "1 circles and squares" stays plural, counting two kinds."""
    if not NUMBER.match(answer):
        return None
    if answer != "1" or " and " in noun:
        return template.format(n=answer, x=noun)
    text = template.format(n=answer, x=_one(noun))
    return text.replace("there are ", "there is ").replace(" have ", " has ").replace(" are ", " is ")


def description(base: str, statements: Sequence[str]) -> str:
    """The base description, then each statement it doesn't already contain, once."""
    parts = [base.strip()] if base.strip() else []
    for s in statements:
        if s not in " ".join(parts):
            parts.append(s)
    return " ".join(parts)


def vet_records(qa_records: Sequence[dict], descriptions: Optional[dict[str, str]] = None,
                prompt: str = VET_PROMPT) -> tuple[list[dict], dict]:
    """One VET record per sample with an image: the image and `prompt` (its questions' stems) -> the
    description with every statement of its QA pairs (meta `statements`). `descriptions` (image path -> a
    base description) are the world's captions; a sample whose image has none is described by its
    statements alone. Returns (records, skipped records counted by reason)."""
    out, skipped = [], {"no image": 0, "no question with an answer": 0}
    for r in qa_records:
        turns = r.get("conversations") or []
        pairs = [(q["value"], a["value"]) for q, a in zip(turns[::2], turns[1::2])
                 if q.get("from") == "human" and a.get("from") == "gpt"]
        if not isinstance(r.get("image"), str):
            skipped["no image"] += 1
            continue
        if not pairs:
            skipped["no question with an answer"] += 1
            continue
        statements = [declarative(q, a) for q, a in pairs]
        stems = " ".join(question_stem(q)[0] for q, _ in pairs)
        out.append({"id": f"{r.get('id', len(out))}_vet", "image": r["image"],
                    "conversations": [{"from": "human", "value": user_turn(extract_prompt(prompt, stems), 1)},
                                      {"from": "gpt", "value": description((descriptions or {}).get(r["image"], ""),
                                                                          statements)}],
                    "meta": {**{k: v for k, v in (r.get("meta") or {}).items() if k not in ANSWER_KEYS},
                             "family": "vet", "kind": "perception", "statements": statements}})
    if not out:
        raise DataError(f"VET data: none of the {len(qa_records)} records has an image and a question with an answer "
                        f"(skipped: {skipped})")
    return out, {k: v for k, v in skipped.items() if v}
