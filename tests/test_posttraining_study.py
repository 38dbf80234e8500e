"""`studies/posttraining.py` groups the test questions by how many of the SFT model's sampled replies are right,
with the counts GSPO's accuracy filter keeps as one group, and reads each model's greedy accuracy per group."""
import sys
from pathlib import Path

import pytest
import torch

from nativevlm.rl.losses import accuracy_filter

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "studies")]
study = pytest.importorskip("posttraining")


@pytest.mark.parametrize("n", [2, 4, 5, 8, 10, 16])
def test_groups_cover_every_count_once_and_the_middle_one_is_what_the_filter_keeps(n):
    groups = study.sampled_groups(n)
    counts = [k for _, ks in groups for k in ks]
    assert counts == list(range(n + 1))
    kept = [k for k in range(n + 1) if accuracy_filter(torch.tensor([k / n]))[0]]
    assert [list(ks) for name, ks in groups if list(ks) == kept], (n, groups, kept)
    assert groups[0][0] == f"0/{n}" and groups[-1][0] == f"{n}/{n}"


def test_eight_replies_group_as_named():
    assert [(name, list(ks)) for name, ks in study.sampled_groups(8)] == [
        ("0/8", [0]), ("1/8", [1]), ("2-6/8", [2, 3, 4, 5, 6]), ("7/8", [7]), ("8/8", [8])]


def test_accuracy_per_group_by_hand():
    counts = {"a": 0, "b": 0, "c": 3, "d": 8, "e": 5}
    right = {"sft": {"a": False, "b": False, "c": True, "d": True, "e": False},
             "gspo": {"a": False, "b": True, "c": True, "d": True, "e": True}}
    got = study.by_sft_sampled(counts, right, 8)
    assert got["0/8"] == {"n": 2, "sft": 0.0, "gspo": 0.5}
    assert got["2-6/8"] == {"n": 2, "sft": 0.5, "gspo": 1.0}
    assert got["8/8"] == {"n": 1, "sft": 1.0, "gspo": 1.0}
    assert got["1/8"] == {"n": 0, "sft": None, "gspo": None}
