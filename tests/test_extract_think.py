"""Extract+Think (Prism): the world writes the reasoner's data from its own ground truth; the two-stage
answerer describes each image once, hands the description to the reasoner in the template it is trained
on, records it, and keeps the perceiver's failures apart; a language model answers text-only requests;
a study scores [perceiver, reasoner] pairs (and `truth`, perfect perception) and resumes without redoing
them; `nativevlm eval --reasoner` runs the pipeline from the command line."""
import csv
import json
import re
import shutil

import pytest
import yaml
from PIL import Image

from nativevlm.cli import main
from nativevlm.data.extract_think import REASON_TEMPLATE, descriptions_by_image, reasoner_records
from nativevlm.data.vet import VET_PROMPT
from nativevlm.eval.benchmarks import load_benchmark
from nativevlm.eval.harness import Reply, Request, run_benchmark
from nativevlm.infer.pipelines import ExtractThink, KnownDescriptions
from trainkit import COLORS, lm_recipe, vlm_recipe, write_recipe


def test_the_world_writes_each_question_with_its_caption(tmp_path):
    from nativevlm.data.world import generate_world

    generate_world(str(tmp_path), 6, split="val", progress=False)
    qa = json.loads((tmp_path / "val.json").read_text())
    captions = descriptions_by_image(json.loads((tmp_path / "val_captions.json").read_text()))
    reason = json.loads((tmp_path / "val_reason.json").read_text())
    assert len(reason) == len(qa) and len(captions) == 6
    for q, r in zip(qa, reason):
        question = q["conversations"][0]["value"].removeprefix("<image>\n")
        assert "image" not in r and r["meta"] == q["meta"]
        assert r["conversations"][0]["value"] == REASON_TEMPLATE.format(description=captions[q["image"]],
                                                                         question=question)
        assert r["conversations"][1]["value"] == q["meta"]["answer"]
        if q["meta"]["family"] == "color":  # the description carries what the question asks
            assert q["meta"]["answer"] in captions[q["image"]]
    with pytest.raises(Exception, match="none of the 2 records is a question whose image has a description"):
        reasoner_records(qa[:2], {})


def colour_of(img) -> str:
    rgb = img.convert("RGB").getpixel((0, 0))
    return next(name for name, value in COLORS.items() if tuple(value) == rgb)


class Perceiver:
    """Says the colour of the image, or fails on blue; counts what it was asked."""

    chunk_size = 8

    def __init__(self):
        self.asked = []

    def __call__(self, requests):
        self.asked += [r.text for r in requests]
        return [Reply("", "blue blinds me") if colour_of(r.images[0]) == "blue" else
                Reply(f"a {colour_of(r.images[0])} square") for r in requests]


class Reasoner:
    """Answers the colour named in the description (text only)."""

    chunk_size = 8

    def __init__(self):
        self.asked = []

    def __call__(self, requests):
        assert requests and all(not r.images for r in requests)  # a local model can't batch nothing
        self.asked += [r.text for r in requests]
        return [Reply(re.search(r"Description: a (\w+)", r.text).group(1)) for r in requests]


def test_extract_think_describes_each_image_once_and_traces_it():
    red, green, blue = (Image.new("RGB", (16, 16), COLORS[c]) for c in ("red", "green", "blue"))
    perceiver, reasoner = Perceiver(), Reasoner()
    et = ExtractThink(perceiver, reasoner)
    questions = [Request([red], "What colour?"), Request([green], "Which colour?"),
                 Request([red.copy()], "Is it red?"), Request([blue], "What colour?")]
    replies = et(questions)
    assert [r.text for r in replies[:3]] == ["red", "green", "red"]
    assert replies[0].trace == {"description": "a red square"} and replies[0].error is None
    assert replies[3].text == "" and replies[3].error == "perception: blue blinds me"
    assert perceiver.asked == ["Describe the image."] * 3  # red (twice, by content), green, blue: once each
    assert reasoner.asked[0] == REASON_TEMPLATE.format(description="a red square", question="What colour?")
    assert len(reasoner.asked) == 3  # the failed description is not reasoned about
    et([Request([red], "Again?")])
    assert len(perceiver.asked) == 3  # remembered across calls
    asked = len(reasoner.asked)
    assert et([Request([blue], "Only blue?")])[0].error == "perception: blue blinds me"
    assert len(reasoner.asked) == asked  # nothing to reason about: the reasoner is not called
    guided = ExtractThink(Perceiver(), Reasoner(), "Look for: {question}")
    guided([questions[0], questions[2], questions[0]])
    assert guided.perceiver.asked == ["Look for: What colour?", "Look for: Is it red?"]  # per question
    with pytest.raises(Exception, match="only field it may name"):
        ExtractThink(perceiver, reasoner, "Describe {image}")


def test_known_descriptions_through_the_harness(tmp_path, train_world):
    """Perfect perception (captions looked up by image content, under another path) + a reasoner that reads
    the colour: every answer right, each record carrying its description; an image without a caption is a
    request failure, not a wrong answer."""
    shutil.copytree(train_world["root"] / "images", tmp_path / "images")
    records = json.loads(train_world["val"].read_text())
    qa = [{"id": r["id"], "image": r["image"], "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the image?"},
        {"from": "gpt", "value": r["conversations"][1]["value"].split()[1]}]} for r in records]
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "images" / "unknown.png")
    qa.append({"id": "unknown", "image": "images/unknown.png", "conversations": qa[0]["conversations"]})
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    bench = load_benchmark(f"llava:{tmp_path / 'qa.json'}")
    summary = run_benchmark(bench, ExtractThink(KnownDescriptions(train_world["val"]), Reasoner()), tmp_path / "out",
                            progress=False).summary()
    assert summary["accuracy"] == pytest.approx((len(qa) - 1) / len(qa))
    assert summary["request_failure_rate"] == pytest.approx(1 / len(qa))
    rows = [json.loads(line) for line in (tmp_path / "out" / bench.name / "records.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r["conversations"][1]["value"] for r in records}
    assert all(r["trace"]["description"] == by_id[r["id"]] for r in rows if r["id"] != "unknown")
    assert "no description of this image" in rows[-1]["error"]


def test_a_language_model_answers_text_only_requests(train_world):
    from nativevlm.config import ConfigError
    from nativevlm.data.tokenizer import Tokenizer
    from nativevlm.eval.local import LocalAnswerer
    from nativevlm.model.language import LanguageModel
    from nativevlm.model.vlm import NativeVLM
    from nativevlm.train.recipe import recipe_from_dict

    import torch

    torch.manual_seed(0)
    cfg = recipe_from_dict(lm_recipe(train_world))
    model = LanguageModel(cfg.model.language)
    assert not isinstance(model, NativeVLM)
    tokenizer = Tokenizer.load(train_world["tok"])
    tokenizer.decode = lambda ids: " ".join(map(str, ids))  # the generated ids themselves, special ones too
    answerer = LocalAnswerer(model, tokenizer, batch_size=8, max_new_tokens=5)
    prompts = ["red green blue", "a", "the image of the blue square is"]
    together = [r.text for r in answerer([Request([], p) for p in prompts])]
    alone = [answerer([Request([], p)])[0].text for p in prompts]
    assert together == alone and any(together)  # batched (left-padded) == alone
    with pytest.raises(ConfigError, match="can't read images"):
        answerer([Request([Image.new("RGB", (16, 16))], "what colour?")])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_scores_extract_think_pairs_and_eval_runs_them(tmp_path, train_world, capsys):
    """A study with a reasoner (prepared) and a perceiver cell scores [truth, reasoner] and [perceiver,
    reasoner], one row each, and does not redo them; `nativevlm eval --reasoner` runs the same pipeline."""
    val = json.loads(train_world["val"].read_text())
    reason, _ = reasoner_records([{**r, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the image?"},
        {"from": "gpt", "value": r["conversations"][1]["value"].split()[1]}]} for r in val],
        descriptions_by_image(val))
    (tmp_path / "reason.json").write_text(json.dumps(reason))
    lm = lm_recipe(train_world)
    lm["stages"][0]["data"], lm["max_length"] = [{"path": str(tmp_path / "reason.json")}], 192
    vlm = write_recipe(tmp_path / "vlm.yaml", vlm_recipe(train_world))
    study = {
        "name": "prism", "prepare": [{"name": "reasoner", "recipe": str(write_recipe(tmp_path / "lm.yaml", lm))}],
        "cells": [{"name": "vlm", "recipe": str(vlm), "set": [f"stages.1.val_data={train_world['val']}",
                                                              f"curves.data={train_world['val']}", "curves.samples=4"]}],
        "eval": {"bench": [f"llava:{train_world['val']}"], "max_new_tokens": 3},
        "extract_think": {"pairs": [["truth", "reasoner"], ["vlm", "reasoner"]], "max_new_tokens": 6,
                          "descriptions": str(train_world["val"])},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    out = tmp_path / "out"
    args = ["study", "run", str(tmp_path / "study.yaml"), "--out", str(out)]
    assert main(args) == 0
    n_rows = len(read_csv(out / "study.csv"))
    rows = {r["cell"]: r for r in read_csv(out / "study.csv")}
    assert set(rows) == {"vlm", "truth+reasoner", "vlm+reasoner"}
    pair, truth = rows["vlm+reasoner"], rows["truth+reasoner"]
    last = rows["vlm"]  # its learning curve's last point and its final test evaluation, side by side
    assert last["val_acc/all"] != "" and last["acc/all"] != "" and last["parse_failures/all"] != ""
    assert (pair["perceiver"], pair["reasoner"], pair["samples"]) == ("vlm", "reasoner", "")
    assert int(pair["encoder_params"]) > 0 and int(pair["llm_params"]) > 0 and truth["encoder_params"] == ""
    assert 0 <= float(pair["acc/all"]) <= 1 and 0 <= float(truth["acc/all"]) <= 1
    records = [json.loads(line) for line in (out / "runs" / "vlm+reasoner" / "eval").rglob("records.jsonl")
               .__next__().read_text().splitlines()]
    assert all(isinstance(r["trace"]["description"], str) for r in records)
    predictions = next((out / "runs" / "truth+reasoner" / "eval").rglob("predictions.jsonl"))
    stamp = predictions.stat().st_mtime_ns
    assert main(args) == 0  # nothing to redo
    assert len(read_csv(out / "study.csv")) == n_rows and predictions.stat().st_mtime_ns == stamp
    assert main(["study", "fit", str(out / "study.csv"), "--out", str(out / "fit")]) == 0
    assert [c["cell"] for c in json.loads((out / "fit" / "fit.json").read_text())["cells"]] == ["vlm"]
    assert (out / "fit" / "final_accuracy.png").stat().st_size > 1000  # the cell's and both pairs' bars
    fit = json.loads((out / "fit" / "fit.json").read_text())
    assert 0 < fit["priors"]["all"] <= 1  # of the study's benchmark, drawn on the accuracy plots

    capsys.readouterr()
    runs = out / "runs"
    ev = ["eval", str(runs / "vlm" / "final"), "--bench", f"llava:{train_world['val']}", "--max-new-tokens", "3",
          "--extract-max-new-tokens", "6", "--batch-size", "32"]
    assert main(ev + ["--reasoner", str(runs / "reasoner" / "final"), "--out", str(tmp_path / "ev")]) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["run"]["reasoner"] == str(runs / "reasoner" / "final")
    (summary,) = results["benchmarks"].values()
    assert summary["accuracy"] == pytest.approx(float(pair["acc/all"]))  # the study's pair, again
    assert main(ev + ["--reasoner", str(runs / "vlm" / "final"), "--out", str(tmp_path / "e2")]) == 2
    assert "is a vision-language model" in capsys.readouterr().err
    assert main(ev + ["--extract-prompt", "Describe.", "--out", str(tmp_path / "e3")]) == 2
    assert "--reasoner" in capsys.readouterr().err
    # a VET perceiver's prompt, a thinking reasoner: the run records both, each answer's trace its thinking
    assert main(ev + ["--reasoner", str(runs / "reasoner" / "final"), "--extract-prompt", "vet", "--think",
                      "--thinking-budget", "1", "--out", str(tmp_path / "e6")]) == 0
    run = json.loads((tmp_path / "e6" / "run.json").read_text())
    assert (run["extract_prompt"], run["think"], run["thinking_budget"]) == (VET_PROMPT, True, 1)
    traces = [json.loads(line)["trace"] for line in next((tmp_path / "e6").rglob("records.jsonl")).open()]
    assert traces and all(set(t) >= {"description", "thinking"} for t in traces)
    # the reasoner alone on its own text-only questions (descriptions given): the ceiling of any perceiver
    lm_eval = ["eval", str(runs / "reasoner" / "final"), "--max-new-tokens", "3", "--batch-size", "32"]
    assert main(lm_eval + ["--bench", f"llava:{tmp_path / 'reason.json'}", "--out", str(tmp_path / "e4")]) == 0
    (summary,) = json.loads((tmp_path / "e4" / "results.json").read_text())["benchmarks"].values()
    assert summary["n"] == len(reason) and summary["accuracy"] == pytest.approx(float(truth["acc/all"]))
    assert main(lm_eval + ["--bench", f"llava:{train_world['val']}", "--out", str(tmp_path / "e5")]) == 2
    assert "is a language model and" in capsys.readouterr().err


def test_data_extract_think_command(tmp_path, train_world, capsys):
    """Own data: a QA file + its captions -> reason.json and extract.json; what can't be paired is skipped
    and counted; nothing pairable, or a file that isn't a LLaVA list, is one line and exit 2."""
    val = json.loads(train_world["val"].read_text())
    qa = [{"id": f"q{i}", "image": r["image"], "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]}
        for i, r in enumerate(val)]
    qa += [{"id": "lost", "image": "images/none.png", "conversations": qa[0]["conversations"]},
           {"id": "chat", "image": val[0]["image"], "conversations": qa[0]["conversations"] * 2},
           "not a record"]
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    args = ["data", "extract-think", str(tmp_path / "qa.json"), "--descriptions", str(train_world["val"])]
    assert main(args + ["--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert f"skipped 3 of {len(qa)}" in printed and "'malformed record': 1" in printed
    reason = json.loads((tmp_path / "o" / "reason.json").read_text())
    extract = json.loads((tmp_path / "o" / "extract.json").read_text())
    assert len(reason) == len(extract) == len(val)
    assert reason[0]["conversations"][0]["value"] == REASON_TEMPLATE.format(
        description=val[0]["conversations"][1]["value"], question="What colour is it?")
    assert extract[0]["image"] == val[0]["image"] and "What colour is it?" in extract[0]["conversations"][0]["value"]
    assert extract[0]["conversations"][1]["value"] == val[0]["conversations"][1]["value"]
    (tmp_path / "bad.json").write_text("{}")
    assert main(args[:2] + [str(tmp_path / "bad.json")] + args[3:] + ["--out", str(tmp_path / "p")]) == 2
    assert "expected a JSON list of LLaVA records" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps([{**r, "image": "images/other.png"} for r in val]))
    assert main(args[:4] + [str(tmp_path / "other.json"), "--out", str(tmp_path / "p")]) == 2  # other images
    assert "none of the" in capsys.readouterr().err
