"""Preference pairs sampled from a tiny model through the engine: pairs are well formed, chosen is right and
rejected wrong per the reward, skips are counted by reason, a rerun is a no-op (and repairs a torn line),
the same seed gives the same pairs, and a cache made with other settings is refused; in thinking mode the
replies are the engine's think=True replies kept whole, and the pair is chosen as the thinking reward reads it."""
import json
from pathlib import Path

import pytest

from nativevlm.cli import main
from nativevlm.data.formats import read_samples
from nativevlm.data.image import ImageProcessor
from nativevlm.data.sample import Sample
from nativevlm.data.collate import encode_sample
from nativevlm.data.thinking import THINK_END, THINK_START, split_thinking
from nativevlm.infer.chat import load_model_and_tokenizer
from nativevlm.infer.engine import Engine, Request, SamplingParams, think_opening
from nativevlm.rl.preferences import (ALL_RIGHT, ALL_WRONG, NO_ANSWER, SamplingSettings, choose_pair,
                                      make_preferences, prompt_of, read_pairs, reply_seed, sample_replies)
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


def test_thinking_mode_replies_are_the_engines_think_replies_kept_whole(setup):
    """`think=True`: each reply is what the engine writes to a think=True request with the budget and the
    reply's own seed, opening tag included; the budget closes the thinking where it says."""
    model_dir, qa, _ = setup
    model, tok = load_model_and_tokenizer(model_dir)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    samples = read_samples(qa)[0][:2]
    settings = SamplingSettings(n=3, seed=5, max_new_tokens=12, think=True, thinking_budget=4)
    got = sample_replies(model, tok, processor, samples, settings)
    opening = think_opening(tok)
    for s, replies in zip(samples, got):
        p = encode_sample(prompt_of(s), tok, processor, add_generation_prompt=True)
        engine = Engine(model, tok, max_batch_size=1, max_len=len(p.input_ids) + len(opening) + 12)
        for k, reply in enumerate(replies):
            done = engine.generate([Request(p.input_ids, SamplingParams(12, 1.0, seed=reply_seed(5, s.id, k)),
                                            pixel_values=p.pixel_values, think=True, thinking_budget=4)])[0]
            assert reply == tok.decode(opening + done.token_ids).strip()
            assert reply.startswith(THINK_START) and THINK_END in reply
            assert split_thinking(reply).thinking == tok.decode(done.token_ids[:4]).strip()
    with pytest.raises(ValueError, match="thinking budget 12"):
        SamplingSettings(n=2, max_new_tokens=12, think=True, thinking_budget=12)


def test_thinking_mode_pairs_are_chosen_as_the_thinking_reward_reads_them(setup, tmp_path, capsys):
    s = Sample("q", [{"role": "user", "content": "is there a red circle?"}, {"role": "assistant", "content": "yes"}])
    right, hedge = "<think>\ncount\n</think>\nyes", "<think>\nlook\n</think>\nyes, it is"
    wrong, unfinished, bare = "<think>\nhmm\n</think>\nno", "<think>\nstill thinking", "yes"
    # the answer is read after </think>; a right answer without its think block is right but unformatted
    assert choose_pair(s, [bare, unfinished, right, wrong], thinking=True) == ((right, wrong), "", 2)
    assert choose_pair(s, [bare, unfinished], thinking=True) == ((bare, unfinished), "", 1)
    # strict: the hedge is a wrong reply (and the harder negative than one that never answered)
    assert choose_pair(s, [hedge, unfinished, right], thinking=True) == ((hedge, unfinished), "", 2)
    assert choose_pair(s, [hedge, unfinished, right], thinking=True, strict=True) == ((right, hedge), "", 1)
    out = tmp_path / "p.jsonl"
    settings = SamplingSettings(n=3, max_new_tokens=12, think=True, thinking_budget=4, strict=True)
    summary = make_preferences([s], out, settings, lambda chunk: [[hedge, right, wrong] for _ in chunk],
                               {"model": "m"}, log=lambda m: None)
    record = json.loads(out.read_text())
    assert summary.pairs == 1 and (record["chosen"], record["rejected"], record["meta"]["n_right"]) == (right, hedge, 1)
    chosen, _ = read_pairs(out)[0]  # MPO trains on the whole turn: thinking, tags and answer
    assert chosen.messages[-1]["content"] == right

    # the command line: a budget without --think is refused; a cache made before these settings existed
    # (its summary without them) is their defaults; a thinking run into a direct cache is refused
    model_dir, qa, _ = setup
    assert run(model_dir, qa, tmp_path / "x.jsonl", "--thinking-budget", "2") == 2
    assert "add --think" in capsys.readouterr().err
    # settings are refused before the model is loaded: a bad share names itself, not the missing model
    assert run(str(tmp_path / "no-model"), qa, tmp_path / "x.jsonl", "--think", "--direct-share", "2") == 2
    assert "direct share 2" in capsys.readouterr().err
    direct = tmp_path / "direct" / "pairs.jsonl"
    assert run(model_dir, qa, direct, "--limit", "2") == 0
    summary_path = Path(f"{direct}.summary.json")
    old = json.loads(summary_path.read_text())
    for key in ("think", "thinking_budget", "strict"):
        del old["settings"][key]
    summary_path.write_text(json.dumps(old))
    capsys.readouterr()
    assert run(model_dir, qa, direct, "--limit", "2") == 0 and "0 sampled now" in capsys.readouterr().out
    assert run(model_dir, qa, direct, "--limit", "2", "--think") == 2 and "other settings" in capsys.readouterr().err
    thinking = tmp_path / "thinking" / "pairs.jsonl"
    assert run(model_dir, qa, thinking, "--think", "--thinking-budget", "1", "--strict") == 0
    records = [json.loads(line) for line in thinking.read_text().splitlines()]
    skipped = [json.loads(line) for line in Path(f"{thinking}.skipped.jsonl").read_text().splitlines()]
    assert len(records) + len(skipped) == 5
    assert all(r[side].startswith(THINK_START) for r in records for side in ("chosen", "rejected"))


def test_both_modes_ask_each_question_one_way_and_choose_its_pair_that_way(setup, tmp_path):
    """`direct_share`: a hash of (seed, id) asks each question thinking or directly, all its replies one way:
    thinking replies are the engine's think=True replies kept whole, direct ones its think=False replies; the
    pair is chosen with that mode's reward and the record says which mode it is."""
    model_dir, qa, _ = setup
    model, tok = load_model_and_tokenizer(model_dir)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    samples = read_samples(qa)[0]
    settings = SamplingSettings(n=2, seed=4, max_new_tokens=12, think=True, thinking_budget=4, direct_share=0.5)
    modes = [settings.thinks(s.id) for s in samples]
    assert set(modes) == {True, False} and modes == [settings.thinks(s.id) for s in samples]  # stable
    got = sample_replies(model, tok, processor, samples, settings)
    opening = think_opening(tok)
    for s, replies, thinks in zip(samples, got, modes):
        p = encode_sample(prompt_of(s), tok, processor, add_generation_prompt=True)
        engine = Engine(model, tok, max_batch_size=1, max_len=len(p.input_ids) + len(opening) + 12)
        for k, reply in enumerate(replies):
            done = engine.generate([Request(p.input_ids, SamplingParams(12, 1.0, seed=reply_seed(4, s.id, k)),
                                            pixel_values=p.pixel_values, think=thinks,
                                            thinking_budget=4 if thinks else None)])[0]
            assert reply == (tok.decode(opening + done.token_ids).strip() if thinks else done.text.strip())
            assert reply.startswith(THINK_START) == thinks and (THINK_START in reply) == thinks
    with pytest.raises(ValueError, match="direct share 0.5"):
        SamplingSettings(n=2, direct_share=0.5)  # needs thinking mode

    # the pair of a direct question prefers the reply without a think block, a thinking one the reverse
    q = [Sample(f"q{i}", [{"role": "user", "content": "how many?"}, {"role": "assistant", "content": "3"}])
         for i in range(5)]
    thought, bare, wrong = "<think>\ncount\n</think>\n3", "3", "4"
    out = tmp_path / "both.jsonl"
    make_preferences(q, out, settings, lambda chunk: [[bare, thought, wrong] for _ in chunk], {"model": "m"},
                     log=lambda m: None)
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    for i, thinks in enumerate(modes):
        r = records[f"q{i}"]
        assert r["meta"]["think"] == thinks and r["chosen"] == (thought if thinks else bare)
        assert r["rejected"] == wrong and r["meta"]["n_right"] == 2
