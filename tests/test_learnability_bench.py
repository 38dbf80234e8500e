"""The learnability benchmark's `multi` set records what each image holds, and the presence diagnostic reads
it: answers that name an object of the image but the wrong one count as present, not right; the uniform
reference is 1 / (distinct values in the image) for each question whose answer is among them; the yes/no
probes read a linear signal and not noise; a finished run is reused only for the same recipe (as parsed) and
settings."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench")]

learnability = pytest.importorskip("learnability")
qa_sets = pytest.importorskip("qa_sets")


def test_multi_records_list_their_objects(tmp_path):
    paths = qa_sets.write_set("multi", tmp_path, {"train": 4, "val": 4, "test": 60})
    records = json.loads(paths["test"].read_text())
    assert {r["meta"]["family"] for r in records} >= {"colour", "count", "yes/no"}
    for r in records:
        objects, q, a = r["meta"]["objects"], r["conversations"][0]["value"], r["meta"]["answer"]
        assert 2 <= len(objects) <= 4
        fam = r["meta"]["family"]
        if fam == "count":
            assert a == qa_sets.NUMBER_WORDS[len(objects)]
        elif fam == "colour":  # "What colour is the <kind>?": the one object of that kind
            kind = q.rstrip("?").split()[-1]
            assert [c for c, k in objects if k == kind] == [a]
        elif fam == "shape":  # "Which item is <colour>?"
            colour = q.rstrip("?").split()[-1]
            assert [k for c, k in objects if c == colour] == [a]
        else:
            c, k = q.rstrip("?").split()[-2:]
            assert (a == "yes") == ([c, k] in objects)


def test_presence_counts_present_right_and_uniform(tmp_path):
    objs = [["scarlet", "dot"], ["cobalt", "bar"], ["cobalt", "wedge"]]
    records = [
        {"id": "a", "meta": {"family": "colour", "answer": "scarlet", "objects": objs}},
        {"id": "b", "meta": {"family": "colour", "answer": "cobalt", "objects": objs}},
        {"id": "c", "meta": {"family": "shape", "answer": "bar", "objects": objs}},
        {"id": "d", "meta": {"family": "count", "answer": "three", "objects": objs}},
        {"id": "e", "meta": {"family": "colour", "answer": "amber"}},  # no objects: not counted
    ]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    got = learnability.presence(path, [("a", "Scarlet."), ("b", "scarlet"), ("c", "hexagon"), ("d", "three"),
                                       ("e", "amber")])
    # colour: a right; b names scarlet, present but wrong; 2 distinct colours -> uniform 1/2 each.
    assert got["colour"] == {"n": 2, "present": 1.0, "right": 0.5, "uniform_present": 0.5}
    # shape: 3 distinct kinds -> 1/3; hexagon is not in the image.
    assert got["shape"] == {"n": 1, "present": 0.0, "right": 0.0, "uniform_present": round(1 / 3, 4)}
    assert "count" not in got


def test_peer_readouts():
    """The shipped read-out is the head on the mean of every real position; `last` reads the question's last
    word; with `causal`, that position sees nothing after it, so words past it (padding) change nothing."""
    import torch

    peer = pytest.importorskip("peer")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    words = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    mean = peer.Peer(10, 4, 16, patch=8, dim=16, heads=2, max_words=4).eval()
    with torch.no_grad():
        z, _ = mean.fuse(images, words)
        pad = torch.cat([torch.zeros(2, 4, dtype=torch.bool), words == 0], 1)
        want = torch.stack([mean.head(mean.norm(z[i][~pad[i]].mean(0))) for i in range(2)])
        torch.testing.assert_close(mean(images, words), want)
    last = peer.Peer(10, 4, 16, patch=8, dim=16, heads=2, max_words=4, readout="last", causal=True).eval()
    with torch.no_grad():
        short = last(images[:1], torch.tensor([[3, 4, 5, 0]]))  # read at word 5 (position 4 + 2)
        longer = torch.tensor([[3, 4, 5, 9]])
        z, _ = last.fuse(images[:1], longer)
        # causal: the state at word 5 does not see the 9 after it, so it is what the shorter question reads
        torch.testing.assert_close(short, last.head(last.norm(z[:, 6])))
        assert not torch.allclose(short, last(images[:1], longer))  # the longer question reads at word 9
    with pytest.raises(ValueError, match="readout"):
        peer.Peer(10, 4, 16, readout="max")


def test_peer_last_plus_mean_readout():
    """`last+mean` answers from the last word's head and trains a mean-pool head beside it: its loss is the sum
    of both heads' cross-entropies, each computed here by hand from the fused states."""
    import torch
    import torch.nn.functional as F

    peer = pytest.importorskip("peer")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    words = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    labels = torch.tensor([1, 3])
    m = peer.Peer(10, 4, 16, patch=8, dim=16, heads=2, max_words=4, readout="last+mean").eval()
    with torch.no_grad():
        z, pad = m.fuse(images, words)
        last = m.head(m.norm(torch.stack([z[0, 4 + 2], z[1, 4 + 1]])))  # 4 image tokens, then the words
        mean = m.mean_head(m.mean_norm(torch.stack([z[i][~pad[i]].mean(0) for i in range(2)])))
        torch.testing.assert_close(m(images, words), last)
        torch.testing.assert_close(m.loss(images, words, labels), F.cross_entropy(last, labels) +
                                   F.cross_entropy(mean, labels))
        shipped = peer.Peer(10, 4, 16, patch=8, dim=16, heads=2, max_words=4).eval()
        torch.testing.assert_close(shipped.loss(images, words, labels),
                                   F.cross_entropy(shipped(images, words), labels))


def test_curve_priors_are_those_of_the_questions_the_curves_read(tmp_path):
    """Our learning curves read the recipe's 240 val questions round-robin over families, not the whole split
    the peer reads: with 250 yes/no questions (the first 190 in file order half "yes", all 60 after them
    "yes") and 50 colour questions, the curves read 190 yes/no questions whose prior is 50%, where the whole
    split's is 82%."""
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "a.png")
    answers = [("yes/no", "yes" if i % 2 or i >= 190 else "no") for i in range(250)] + [("colour", "red")] * 50
    records = [{"id": str(i), "image": "a.png", "meta": {"family": fam},
                "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": a}]}
               for i, (fam, a) in enumerate(answers)]
    (tmp_path / "val.json").write_text(json.dumps(records))
    priors = learnability.curve_priors(tmp_path / "val.json")
    assert priors["yes/no"] == pytest.approx(0.5) and priors["colour"] == 1.0
    assert priors["all"] == pytest.approx((95 + 50) / 240)
    from nativevlm.eval.benchmarks import llava_qa
    from nativevlm.eval.harness import answer_priors

    assert answer_priors(llava_qa.read(tmp_path / "val.json").items)["yes/no"] == pytest.approx(155 / 250)


def test_yes_no_probes_read_a_linear_signal_and_not_noise():
    """`bench/yes_no_signal.py --probe`'s probe: held-out AUC 1 where one feature carries the label, about
    0.5 where none does; the AUC itself on a known case."""
    import torch

    yes_no_signal = pytest.importorskip("yes_no_signal")
    assert yes_no_signal.auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    y = (x[:, 3] > 0).tolist()
    assert yes_no_signal.probe_auc(x[:400], y[:400], x[400:], y[400:]) > 0.99
    noise = (torch.rand(600, generator=g) > 0.5).tolist()
    assert abs(yes_no_signal.probe_auc(x[:400], noise[:400], x[400:], noise[400:]) - 0.5) < 0.12


def test_a_run_is_reused_only_for_the_same_recipe_and_settings():
    recipe = "# how to read it\nseed: 0\nquestion_loss: 1.0\nstages: [{name: all, steps: 3000}]\n"
    made_by = {"recipe": recipe, "sets": ["seed=1"]}
    # a comment or the layout changed: the same run
    assert learnability.same_stamp({"recipe": "# reworded\nseed: 0\nquestion_loss: 1.0\nstages:\n"
                                              "  - {name: all, steps: 3000}\n", "sets": ["seed=1"]}, made_by)
    # a value, an override or a missing recipe (a stamp from before the recipe was stamped): another run
    assert not learnability.same_stamp({"recipe": recipe.replace("1.0", "0"), "sets": ["seed=1"]}, made_by)
    assert not learnability.same_stamp({"recipe": recipe, "sets": []}, made_by)
    assert not learnability.same_stamp({"sets": ["seed=1"]}, made_by)


def test_peer_command_line_scores_a_test_split(tmp_path):
    """bench/world_long.py starts the peer through its command line: `--test` gives the final model's accuracy
    and answers on that split."""
    paths = qa_sets.write_set("solo", tmp_path, {"train": 64, "val": 16, "test": 24})
    out = tmp_path / "peer.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "peer.py"), "--train", str(paths["train"]), "--eval",
                    str(paths["val"]), "--test", str(paths["test"]), "--minutes", "0.01", "--eval-every", "64",
                    "--out", str(out)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    r = json.loads(out.read_text())
    test_turns = sum(len(rec["conversations"]) // 2 for rec in json.loads(paths["test"].read_text()))
    assert r["test_questions"] == len(r["test_answers"]) == test_turns
    assert set(r["test"]) >= {"acc/all"} and 0.0 <= r["test"]["acc/all"] <= 1.0
