"""The verifiable reward against labelled replies: correctness read as evaluation reads it, the format term,
thinking-mode tags; and the thinking format's split."""
import pytest

from nativevlm.data.sample import Sample
from nativevlm.data.thinking import render_thinking, split_thinking
from nativevlm.eval.benchmarks.llava_qa import item_of
from nativevlm.eval.harness import score
from nativevlm.rl.reward import RewardWeights, reward


def qa(answer: str, choices=None) -> Sample:
    meta = {"answer": answer, **({"choices": choices} if choices else {})}
    return Sample(id="q", messages=[{"role": "user", "content": "<image>\nq?"},
                                    {"role": "assistant", "content": answer}], images=["x.png"], meta=meta)


MC = qa("B", ["red", "blue", "green", "yellow"])
LABELLED = [  # sample, reply, thinking mode, right, formatted
    (qa("3"), "3", False, True, True),
    (qa("3"), "three", False, True, True),
    (qa("3"), "There are 3 circles.", False, True, True),
    (qa("3"), "4", False, False, True),
    (qa("3"), "2 or 4", False, False, False),  # two numbers: a parse failure
    (qa("3"), "", False, False, False),
    (qa("yes"), "Yes, it is.", False, True, True),
    (qa("yes"), "no", False, False, True),
    (qa("red circle"), "the red circle", False, True, True),
    (qa("red circle"), "blue circle", False, False, True),
    (MC, "B", False, True, True),
    (MC, "blue", False, True, True),  # the option's text names it
    (MC, "Answer: A", False, False, True),
    (MC, "A or B", False, False, False),
    (qa("3"), "<think>\nthere are two and one\n</think>\n3", True, True, True),
    (qa("3"), "<think>\nthere are two and one\n</think>\n3", False, True, False),  # tags in direct mode
    (qa("3"), "3", True, True, False),  # no thinking in thinking mode
    (qa("3"), "<think></think>3", True, True, False),  # empty thinking
    (qa("3"), "<think>a</think><think>b</think>3", True, True, False),  # two blocks
    (qa("3"), "<think>a 3 b</think>", True, False, False),  # no answer after the block
    (qa("3"), "<think>count them 3", True, False, False),  # never closed: no answer read out of the thinking
    (MC, "<think>the blue one is it</think>\nAnswer: B", True, True, True),
]


@pytest.mark.parametrize("sample,reply,thinking,right,formatted", LABELLED)
def test_reward_on_labelled_replies(sample, reply, thinking, right, formatted):
    r = reward(sample, reply, thinking=thinking)
    assert (r.correct, r.formatted) == (right, formatted)
    assert r.value == 1.0 * right + 0.5 * formatted
    if not thinking and "<think>" not in reply:
        assert r.status == score(item_of(sample, "test"), reply).status  # the evaluation's reading, not a second matcher


STRICT = [  # sample, reply, right when read leniently (evaluation), right when it must be the answer alone
    (qa("1"), "yes. 1 is greater than", True, False),  # the hedge thinking-mode GSPO learnt
    (qa("yes"), "yes. 1 is greater than", True, False),
    (qa("1"), "1", True, True),
    (qa("1"), "one.", True, True),
    (qa("yes"), "Yes.", True, True),
    (qa("yes"), "Yes, it is.", True, False),
    (qa("3"), "There are 3 circles.", True, False),
    (qa("red circle"), "the red circle", True, True),  # open answers are compared whole either way
    (MC, "B", True, True),
    (MC, "(b)", True, True),
    (MC, "blue", True, True),
    (MC, "B. blue", True, True),
    (MC, "B, it is the blue one", True, False),
    (MC, "Answer: B", True, True),  # the answer span after "Answer:"
    (qa("3"), "<think>\ntwo and one\n</think>\n3", True, True),
    (qa("3"), "<think>\ntwo and one\n</think>\n3 is it. 2", False, False),  # two numbers: a parse failure
]


@pytest.mark.parametrize("sample,reply,lenient,strict", STRICT)
def test_strict_reward_counts_an_answer_only_alone(sample, reply, lenient, strict):
    thinking = reply.startswith("<think>")
    assert reward(sample, reply, thinking=thinking).correct == lenient
    r = reward(sample, reply, thinking=thinking, strict=True)
    assert r.correct == strict
    assert r.formatted == reward(sample, reply, thinking=thinking).formatted  # the format term is unchanged
    assert r.value == 1.0 * strict + 0.5 * r.formatted


def test_right_answers_outscore_wrong_ones_whatever_the_format():
    values = [(reward(s, reply, thinking=t).value, right) for s, reply, t, right, _ in LABELLED]
    assert min(v for v, right in values if right) > max(v for v, right in values if not right)
    assert reward(qa("3"), "3", weights=RewardWeights(correct=2.0, format=0.0)).value == 2.0


def test_split_thinking_round_trips_render():
    text = render_thinking("  one plus two  ", " 3 ")
    assert text == "<think>\none plus two\n</think>\n3"
    parts = split_thinking(text)
    assert (parts.thinking, parts.answer, parts.well_formed) == ("one plus two", "3", True)
    assert split_thinking(" just 3 ") == split_thinking("just 3")
    assert split_thinking("<think>counting 3").answer == ""  # cut off while thinking: no answer
    assert split_thinking("x </think> 3").well_formed is False and split_thinking("x </think> 3").answer == "3"
