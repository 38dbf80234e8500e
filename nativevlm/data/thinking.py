"""The thinking format: a reply may open with its reasoning inside `<think>...</think>`, then the answer
(InternVL3.5's and SAIL-VL2's thinking mode). One rendering for training targets and one reading for
rewards, so what a model is taught is what it is scored on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

THINK_START, THINK_END = "<think>", "</think>"


def render_thinking(thinking: str, answer: str) -> str:
    """A reply that thinks first: `<think>\\n{thinking}\\n</think>\\n{answer}`."""
    return f"{THINK_START}\n{thinking.strip()}\n{THINK_END}\n{answer.strip()}"


@dataclass(frozen=True)
class Reply:
    """A reply split into its thinking (None when it has no think block) and its answer. `well_formed`: it
    opens with exactly one `<think>` block holding some text, closed once, and no tag appears elsewhere."""

    thinking: Optional[str]
    answer: str
    well_formed: bool


def split_thinking(text: str) -> Reply:
    """The answer is what follows the last `</think>`, so a reply that botched its tags is still read for
    its answer; without a `</think>` it is the whole text, or nothing when a `<think>` was never closed (the
    reply ran out while thinking). `well_formed` says whether the tags were right."""
    head, sep, answer = text.rpartition(THINK_END)
    if not sep:
        if THINK_START in text:
            return Reply(text.split(THINK_START, 1)[1].strip(), "", False)
        return Reply(None, text.strip(), True)
    body = head.strip()
    thinking = body[len(THINK_START):].strip() if body.startswith(THINK_START) else None
    ok = (thinking is not None and bool(thinking) and text.count(THINK_START) == 1
          and text.count(THINK_END) == 1)
    return Reply(thinking, answer.strip(), ok)
