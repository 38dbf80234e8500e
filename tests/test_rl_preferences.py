"""Preference pairs sampled from a tiny model through the engine: pairs are well formed, chosen is right and
rejected wrong per the reward, skips are counted by reason, a rerun is a no-op (and repairs a torn line),
the same seed gives the same pairs, and a cache made with other settings is refused."""
import json
from pathlib import Path

import pytest

from nativevlm.cli import main
from nativevlm.data.formats import read_samples
from nativevlm.data.image import ImageProcessor
from nativevlm.data.sample import Sample
from nativevlm.infer.chat import load_model_and_tokenizer
from nativevlm.rl.preferences import (ALL_RIGHT, ALL_WRONG, NO_ANSWER, SamplingSettings, choose_pair,
                                      make_preferences, read_pairs, sample_replies)
from nativevlm.rl.reward import reward
from servekit import image, make_model_dir

SETTINGS = SamplingSettings(n=4, seed=0, max_new_tokens=3)
QUESTIONS = ["how many red", "what is left of the blue square", "is the circle small", "which shape is above",
             "what colour is the large triangle"]


def qa_records(answers: list[str]) -> list[dict]:
    return [{"id": f"q{i}", "image": f"images/{i}.png", "meta": {"family": "count", "kind": "perception"},
             "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}
            for i, (q, a) in enumerate(zip(QUESTIONS, answers))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model, and a QA file whose answers are chosen from the model's own seeded replies: for the first
    questions the first reply that reads as right against itself (so some replies are right and, sampled at
    temperature 1 from a random model, others wrong), for the last one an answer no reply gives."""
    root = tmp_path_factory.mktemp("prefs")
    model_dir = make_model_dir(root / "model")
    (root / "data" / "images").mkdir(parents=True)
    for i in range(len(QUESTIONS)):
        image((40 * i, 200, 30), (32 + 8 * i, 32)).save(root / "data" / "images" / f"{i}.png")
    qa = root / "data" / "qa.json"
    qa.write_text(json.dumps(qa_records(["x"] * len(QUESTIONS))))
    model, tok = load_model_and_tokenizer(model_dir)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    samples, _ = read_samples(qa)
    replies = sample_replies(model, tok, processor, samples, SETTINGS)
    answers = []
    for s, rs in zip(samples[:-1], replies):
        answers.append(next(r for r in rs if reward(with_answer(s, r), r).correct))
    qa.write_text(json.dumps(qa_records(answers + ["zebra zebra zebra"])))
    return model_dir, qa, replies


def with_answer(sample: Sample, answer: str) -> Sample:
    return Sample(sample.id, [*sample.messages[:-1], {"role": "assistant", "content": answer}], sample.images)


def run(model_dir, qa, out, *extra) -> int:
    return main(["data", "preferences", str(qa), "--model", str(model_dir), "--out", str(out), "--n", "4",
                 "--max-new-tokens", "3", "--device", "cpu", *extra])


def test_pairs_are_right_vs_wrong_and_cached(setup, tmp_path, capsys):
    model_dir, qa, replies = setup
    out = tmp_path / "prefs" / "pairs.jsonl"
    assert run(model_dir, qa, out) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    samples = {s.id: s for s in read_samples(qa)[0]}
    assert summary["questions"] == 5 and summary["pairs"] + sum(summary["skipped"].values()) == 5
    assert summary["skipped"].get(ALL_WRONG) == 1  # the last question, at least
    assert len(records) == summary["pairs"] >= 2
    for r in records:
        s = samples[r["id"]]
        assert r["chosen"] in replies[int(r["id"][1:])] and r["rejected"] in replies[int(r["id"][1:])]
        assert reward(s, r["chosen"]).correct and not reward(s, r["rejected"]).correct
        assert r["messages"] == s.messages[:-1] and r["meta"]["n"] == 4 and 1 <= r["meta"]["n_right"] <= 3
        assert (out.parent / r["images"][0]).resolve() == Path(s.images[0]).resolve()
    chosen, rejected = read_pairs(out)[0]
    assert chosen.messages[-1] == {"role": "assistant", "content": records[0]["chosen"]}
    assert rejected.messages[:-1] == chosen.messages[:-1] and Path(chosen.images[0]).is_file()
    capsys.readouterr()

    before = out.read_bytes()
    assert run(model_dir, qa, out) == 0  # everything cached
    assert "0 sampled now, 5 from the cache" in capsys.readouterr().out and out.read_bytes() == before

    out.write_bytes(before[:-1] + b'"torn')  # a run killed mid-line: that question is sampled again
    skipped = Path(f"{out}.skipped.jsonl").read_text()
    assert run(model_dir, qa, out) == 0
    assert "1 sampled now" in capsys.readouterr().out
    assert out.read_bytes() == before and Path(f"{out}.skipped.jsonl").read_text() == skipped

    again = tmp_path / "again" / "pairs.jsonl"  # the same seed in a fresh file: the same pairs
    assert run(model_dir, qa, again) == 0 and again.read_bytes() == before

    assert run(model_dir, qa, out, "--seed", "1") == 2  # another seed into the same cache: refused
    assert "other settings" in capsys.readouterr().err


def test_choose_pair_and_skip_reasons(tmp_path):
    s = Sample("q", [{"role": "user", "content": "how many?"}, {"role": "assistant", "content": "3"}])
    assert choose_pair(s, ["3", "three", "3."])[:2] == (None, ALL_RIGHT)
    assert choose_pair(s, ["4", "", "2 or 5"])[:2] == (None, ALL_WRONG)
    # chosen: the right reply; rejected: the readable wrong one before the unreadable ones
    assert choose_pair(s, ["", "4 or 5", "3", "4"]) == (("3", "4"), "", 1)
    unanswered = Sample("u", [{"role": "user", "content": "how many?"}])
    summary = make_preferences([s, unanswered], tmp_path / "p.jsonl", SETTINGS,
                               lambda chunk: [["3", "4", "3", "x"] for _ in chunk], {"model": "m"}, log=lambda m: None)
    assert summary.pairs == 1 and summary.skipped == {NO_ANSWER: 1}
    with pytest.raises(ValueError, match="occurs 2 times"):
        make_preferences([s, s], tmp_path / "d.jsonl", SETTINGS, lambda c: [], {"data": "qa.json"})


def test_world_questions(setup, tmp_path, capsys):
    """The world's own QA file reads and samples as it is (answers in meta, multiple choice, images)."""
    from nativevlm.data.world import generate_world

    generate_world(str(tmp_path / "world"), 1, split="train", progress=False)
    out = tmp_path / "pairs.jsonl"
    assert run(setup[0], tmp_path / "world" / "train.json", out, "--limit", "4") == 0
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["questions"] == 4 and summary["pairs"] + sum(summary["skipped"].values()) == 4
    assert "4 questions ->" in capsys.readouterr().out
