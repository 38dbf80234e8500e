"""`bench/thinking_steps.py` reads a thinking reply against the world's rationale: which steps name what the
rationale's do, which state its values, whether the last step computes right on the chain's own numbers, and
whether the answer is the chain's conclusion. Hand-made replies with known readings."""
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "bench")]
steps = pytest.importorskip("thinking_steps")


def record(category: str, thinking: str, parsed: str, correct: bool) -> dict:
    return {"category": category, "trace": {"thinking": thinking}, "parsed": parsed,
            "status": "correct" if correct else "wrong"}


SUM_REF = "Count the squares: 0. Count the circles: 1. 0 + 1 = 1. Answer: 1"


@pytest.mark.parametrize("thinking, parsed, correct, expected", [
    # the rationale itself
    ("Count the squares: 0. Count the circles: 1. 0 + 1 = 1.", "1", True,
     dict(asks_right=True, sees_right=True, computes_right=True, answers_its_chain=True, counts=[True, True])),
    # the right things asked, one count wrong, the sum right on its own numbers, answer not the chain's
    ("Count the squares: 2. Count the circles: 1. 2 + 1 = 3.", "1", True,
     dict(asks_right=True, sees_right=False, computes_right=True, answers_its_chain=False, counts=[False, True])),
    # other objects counted, arithmetic wrong on its own numbers
    ("Count the stars: 2. Count the stars: 0. 2 + 0 = 1.", "1", True,
     dict(asks_right=False, sees_right=False, computes_right=False, answers_its_chain=True, counts=[])),
    # a multiple-choice option step is not reasoning; a chain cut short asks nothing right
    ("Count the squares: 0. 0 is option .", "1", True,
     dict(asks_right=False, sees_right=False, computes_right=False, answers_its_chain=False, counts=[True])),
])
def test_an_arithmetic_chain_is_read_step_by_step(thinking, parsed, correct, expected):
    got = steps.read_chain(record("arithmetic", thinking, parsed, correct), SUM_REF)
    assert got["accuracy"] is correct
    assert {k: got[k] for k in expected} == expected


def test_comparison_and_multi_step_chains():
    ref = "Count the red objects: 2. Count the yellow objects: 0. 2 is greater than 0. Answer: yes"
    inconsistent = steps.read_chain(record("comparison", "Count the red objects: 2. Count the yellow objects: 0. "
                                           "2 is not greater than 0.", "no", False), ref)
    assert inconsistent["sees_right"] and not inconsistent["computes_right"] and inconsistent["answers_its_chain"]
    ref = "Find the triangle: it is yellow. Count the other yellow objects: 1. Answer: 1"
    got = steps.read_chain(record("multi_step", "Find the triangle: it is yellow.\nCount the other yellow objects: 1.",
                                  "1", True), ref)
    assert got["sees_right"] and got["answers_its_chain"] and "computes_right" not in got
    ref = "The leftmost object is the blue square. Its color is blue. Answer: blue"
    got = steps.read_chain(record("multi_step", "The leftmost object is the red circle. Its color is red.", "red",
                                  False), ref)
    assert got["asks_right"] and not got["sees_right"] and got["answers_its_chain"]
    got = steps.read_chain(record("multi_step", "The topmost object is the blue square. Its color is blue.", "blue",
                                  True), ref)
    assert not got["asks_right"]


def test_summary_and_collapse():
    chains = [steps.read_chain(record("arithmetic", t, "1", ok), SUM_REF) for t, ok in
              [("Count the squares: 0. Count the circles: 1. 0 + 1 = 1.", True),
               ("Count the stars: 1. Count the stars: 0. 1 + 0 = 1.", True),
               ("Count the squares: 1. Count the circles: 1. 1 + 1 = 2.", False)]]
    s = steps.summarise(chains)
    assert s["n"] == 3 and s["asks_right"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["sees_right"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["accuracy_when_sees_right"] == 1.0 and s["accuracy_when_not"] == 0.5
    assert s["count_steps"] == 4 and s["count_steps_right"] == 0.75
    rows = [{"parsed": "yes", "answer": a, "trace": {"thinking": "t"}} for a in ("yes", "yes", "no", "yes")]
    c = steps.collapse(rows)
    assert c["most_common_answer"] == "yes" and c["most_common_answer_share"] == 1.0
    assert c["answer_prior"] == 0.75 and c["most_common_chain_share"] == 1.0
