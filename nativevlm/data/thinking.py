"""The thinking format: a reply may open with its reasoning inside `<think>...</think>`, then the answer
(InternVL3.5's and SAIL-VL2's thinking mode). One rendering for training targets and one reading for
rewards, so what a model is taught is what it is scored on."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Optional

from .sample import Sample

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


FINAL_ANSWER = re.compile(r"\s*Answer:[^\n]*$")


def think_fusion(sample: Sample, ratio: float, seed: str) -> Sample:
    """Think-fusion SFT (SAIL-VL2): a sample whose record has a rationale (`meta.rationale`, the world's
    reasoning questions: steps ending in "Answer: X") becomes, with probability `ratio`, a thinking sample:
    its last answer gets the steps as `thinking` (loss on thinking and answer; `data.collate`); the rest stay
    direct (loss on the answer only). The draw hashes (seed, sample id), so a sample keeps its form across
    epochs, ranks and resumes."""
    rationale = sample.meta.get("rationale")
    if not ratio or not isinstance(rationale, str):
        return sample
    draw = int.from_bytes(hashlib.sha256(f"{seed}:{sample.id}".encode()).digest()[:8], "big") / 2**64
    last = max((i for i, m in enumerate(sample.messages) if m["role"] == "assistant"), default=None)
    if draw >= ratio or last is None or sample.messages[last].get("thinking"):
        return sample
    messages = list(sample.messages)
    messages[last] = {**messages[last], "thinking": FINAL_ANSWER.sub("", rationale).strip() or rationale}
    return replace(sample, messages=messages)
