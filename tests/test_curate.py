"""Curation: every stage catches its injected fault and keeps clean records; the pipeline accounts for every
input record; --strict and the CLI behave; the pure-PyTorch MiniLM matches transformers."""
from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from nativevlm.data.curate import synthetic
from nativevlm.data.curate.balance import Balance, even_quota
from nativevlm.data.curate.base import CurationError, Entry, load_records, parse_record, run_pipeline
from nativevlm.data.curate.cli import register
from nativevlm.data.curate.dedup import Dedup
from nativevlm.data.curate.integrity import ImageIntegrity
from nativevlm.data.curate.judge import ImageTextJudge
from nativevlm.data.curate.run import build_stages, curate_file
from nativevlm.data.curate.text import TextQuality

CAPTION = "The picture shows 2 shapes: a large red circle at the top left and a small blue square at the centre."


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """12 scenes, each with a caption record and a QA record sharing its image."""
    return synthetic.generate(tmp_path, 12, seed=3)


def rec(rid: str, image: str | None, answer: str, prompt: str = "<image>\nDescribe the image.") -> dict:
    r = {"id": rid, "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}
    if image is not None:
        r["image"] = image
    return r


def entries(records: list[dict], root: Path) -> list[Entry]:
    out = []
    for i, r in enumerate(records):
        e, bad = parse_record(i, r, root)
        assert bad is None, bad
        out.append(e)
    return out


def run_stage(stage, records: list[dict], root: Path) -> list[str | None]:
    es = entries(records, root)
    stage.prepare(es)
    return [stage.check(e).reason for e in es]


def test_integrity_catches_each_fault(corpus: Path):
    root = corpus.parent
    good = "images/scene_00000.png"
    data = (root / good).read_bytes()
    (root / "trunc.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (64, 64), (255, 255, 255)).save(root / "blank.png")
    Image.new("RGB", (8, 40), (255, 0, 0)).save(root / "tiny.png")
    (root / "notimage.png").write_text("hello")
    records = [rec(str(i), p, CAPTION) for i, p in
               enumerate([good, "missing.png", "trunc.png", "blank.png", "tiny.png", "notimage.png"])]
    reasons = run_stage(ImageIntegrity(), records, root)
    assert reasons == [None, "missing_file", "corrupt", "blank", "too_small", "corrupt"]


def test_text_checks_keep_short_canonical_answers(tmp_path: Path):
    records = [
        rec("ok", "a.png", CAPTION),
        rec("short1", "a.png", "red", "<image>\nWhat colour is the circle?"),
        rec("short2", "a.png", "3", "<image>\nHow many shapes are there?"),
        rec("short3", "a.png", "a red circle", "<image>\nWhat is at the top left?"),
        rec("nomarker", "a.png", CAPTION, "Describe the image."),
        rec("twomarkers", "a.png", CAPTION, "<image>\n<image>\nDescribe the image."),
        rec("textonly", None, "Paris is the capital of France.", "What is the capital of France?"),
        rec("empty", "a.png", "   "),
        rec("punct", "a.png", "..."),
        rec("loop", "a.png", " ".join(["the red circle is big"] * 6) + "."),
        rec("cut", "a.png", CAPTION[:70]),
    ]
    records += [rec(f"pad{i}", "a.png", CAPTION) for i in range(6)]  # long answers here end with a period
    reasons = run_stage(TextQuality(), records, tmp_path)
    assert reasons[:11] == [None, None, None, None, "marker_mismatch", "marker_mismatch", None, "empty_answer",
                            "no_content", "repetitive", "truncated"]


def test_truncation_check_follows_the_corpus_convention(tmp_path: Path):
    """A corpus whose long answers are unpunctuated keeps them: the check is off, not a mass drop."""
    unpunctuated = CAPTION.rstrip(".")
    reasons = run_stage(TextQuality(), [rec(str(i), "a.png", unpunctuated) for i in range(5)], tmp_path)
    assert reasons == [None] * 5


def test_dedup_images_and_texts(corpus: Path):
    root = corpus.parent
    shutil.copyfile(root / "images/scene_00001.png", root / "copy.png")
    with Image.open(root / "images/scene_00002.png") as img:
        ImageEnhance.Brightness(img.convert("RGB")).enhance(1.08).save(root / "bright.jpg", quality=85)
    long = CAPTION + " Nothing else is visible and the background is plain and evenly lit throughout."
    records = [
        rec("a", "images/scene_00001.png", "first"),
        rec("b", "images/scene_00002.png", "second"),
        rec("c", "images/scene_00003.png", long),
        rec("same-file-new-question", "images/scene_00001.png", "red", "<image>\nWhat colour?"),
        rec("exact-copy", "copy.png", "first"),
        rec("near-copy", "bright.jpg", "second"),
        rec("repeat", "images/scene_00001.png", "red", "<image>\nWhat colour?"),
        rec("same-text", "images/scene_00004.png", long),
        rec("near-text", "images/scene_00005.png", "Indeed, " + long),
        rec("different", "images/scene_00006.png", "first"),
    ]
    reasons = run_stage(Dedup(), records, root)
    assert reasons == [None, None, None, None, "image_exact", "image_near", "record_exact", "text_exact",
                       "text_near", None]


def test_judge_with_injected_logprob_fn(corpus: Path):
    """A stand-in model that 'knows' which image a caption describes: swapped captions are dropped."""
    root = corpus.parent
    records = [rec(f"r{i}", f"images/scene_{i:05d}.png", f"Scene number {i} with some shapes in it.")
               for i in range(12)]
    records[3]["conversations"][1]["value"], records[7]["conversations"][1]["value"] = (
        records[7]["conversations"][1]["value"], records[3]["conversations"][1]["value"])

    def logprob_fn(image: Path, prompt: str, answer: str) -> float:
        return -1.0 if f"number {int(image.stem.split('_')[1])} " in answer else -9.0

    judge = ImageTextJudge(logprob_fn, min_records=1, max_rank=0.0)
    reasons = run_stage(judge, records, root)
    assert [i for i, r in enumerate(reasons) if r] == [3, 7]
    assert all(r in (None, "misaligned") for r in reasons)


def test_proxy_judge_abstains_on_a_tiny_corpus(corpus: Path):
    es, _ = load_records(corpus)
    judge = ImageTextJudge()
    judge.prepare(es)
    assert judge.abstain_reason and all(judge.check(e).reason is None for e in es)


def test_proxy_judge_catches_swapped_captions(tmp_path: Path):
    """On 600 synthetic scenes the proxy's estimated clean loss (5.7%; really ~10%) is above the 5% default,
    so the judge abstains; allowed 20% it catches the swaps. The benchmark's larger world corpus passes."""
    path = synthetic.generate(tmp_path, 600, seed=0, qa_per_image=0)
    records = json.loads(path.read_text())
    rng = random.Random(0)
    swapped = rng.sample(range(len(records)), 30)
    for a, b in zip(swapped[::2], swapped[1::2]):
        ca, cb = records[a]["conversations"][1], records[b]["conversations"][1]
        ca["value"], cb["value"] = cb["value"], ca["value"]
    cautious = ImageTextJudge()
    assert set(run_stage(cautious, records, tmp_path)) == {None} and "estimated" in cautious.abstain_reason
    reasons = run_stage(ImageTextJudge(max_clean_loss=0.2), records, tmp_path)
    caught = sum(reasons[i] == "misaligned" for i in swapped) / len(swapped)
    clean_kept = sum(reasons[i] is None for i in range(len(records)) if i not in swapped) / (len(records) - 30)
    assert caught >= 0.9 and clean_kept >= 0.85, (caught, clean_kept)


class FakeEmbedder:
    """Texts starting with the same word embed to the same direction: known buckets."""

    def encode(self, texts: list[str]) -> torch.Tensor:
        firsts = sorted({t.split()[0] for t in texts})
        x = torch.zeros(len(texts), len(firsts))
        for i, t in enumerate(texts):
            x[i, firsts.index(t.split()[0])] = 1.0
        return x


def test_balance_samples_evenly_across_buckets(tmp_path: Path):
    records = [rec(f"a{i}", None, "x", f"alpha {i}") for i in range(30)]
    records += [rec(f"b{i}", None, "x", f"beta {i}") for i in range(5)]
    records += [rec(f"c{i}", None, "x", f"gamma {i}") for i in range(2)]
    stage = Balance(buckets=3, total=10, embedder=FakeEmbedder())
    kept = [r["id"][0] for r, why in zip(records, run_stage(stage, records, tmp_path)) if why is None]
    assert sorted(kept.count(c) for c in "abc") == [2, 4, 4]
    assert even_quota([30, 5, 2], 10) == [4, 4, 2] and even_quota([3, 3], 100) == [3, 3]
    stage = Balance(buckets=3, per_bucket=3, embedder=FakeEmbedder())
    kept = [r["id"][0] for r, why in zip(records, run_stage(stage, records, tmp_path)) if why is None]
    assert sorted(kept.count(c) for c in "abc") == [2, 3, 3]


def test_pipeline_accounts_for_every_record(corpus: Path):
    records = json.loads(corpus.read_text())
    records[2]["image"] = "images/gone.png"
    records[5]["conversations"][1]["value"] = ""
    records += [42, {"id": "noconv"}, {"id": "badturn", "conversations": [{"from": "human"}]},
                {"id": "badrole", "conversations": [{"from": "robot", "value": "hi"}]}]
    corpus.write_text(json.dumps(records))
    es, bad = load_records(corpus)
    assert len(bad) == 4 and {o.reason for o in bad} == {"load/malformed"}
    result = run_pipeline(build_stages(["integrity", "text", "dedup", "judge"]), es, bad, corpus)
    assert result.n_in == len(records) == len(result.kept) + sum(result.drops.values())
    assert result.drops["integrity/missing_file"] == 1 and result.drops["text/empty_answer"] == 1
    assert [o.index for o in result.outcomes] == list(range(len(records)))


def test_jsonl_bad_lines_are_counted(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(rec("a", None, "yes", "Is it?")) + "\n{not json\n\n" +
                    json.dumps(rec("b", None, "no", "Is it?")) + "\n")
    es, bad = load_records(path)
    assert [e.id for e in es] == ["a", "b"] and [o.index for o in bad] == [1]


def test_unreadable_input_is_a_clear_error(tmp_path: Path):
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(CurationError, match="bad.json is not valid JSON"):
        load_records(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(CurationError, match="expected a JSON list"):
        load_records(tmp_path / "obj.json")


def test_strict_names_the_input(corpus: Path, tmp_path: Path):
    records = json.loads(corpus.read_text())
    records[4]["image"] = "images/gone.png"
    corpus.write_text(json.dumps(records))
    with pytest.raises(CurationError, match=r"data\.json: record #4 .*integrity/missing_file"):
        curate_file(corpus, tmp_path / "out.json", build_stages(["integrity", "text"]), strict=True)
    assert not (tmp_path / "out.json").exists()


def test_strict_fails_on_malformed_records_before_any_stage(corpus: Path, tmp_path: Path):
    corpus.write_text(json.dumps(json.loads(corpus.read_text()) + ["not a record"]))

    class Untouchable(ImageIntegrity):
        def prepare(self, entries):
            raise AssertionError("stages must not run on a broken input under --strict")

    with pytest.raises(CurationError, match=r"record #24 \(#24\): load/malformed: record is a str"):
        curate_file(corpus, tmp_path / "out.json", [Untouchable()], strict=True)


def test_image_root_resolves_paths(corpus: Path, tmp_path: Path):
    moved = tmp_path / "elsewhere" / "data.json"
    moved.parent.mkdir()
    shutil.move(corpus, moved)
    es, bad = load_records(moved, image_root=corpus.parent)
    assert not bad and all(p.is_file() for e in es for p in e.images)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nativevlm data")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_end_to_end(corpus: Path, tmp_path: Path, capsys):
    records = json.loads(corpus.read_text())
    records[1]["conversations"][0]["value"] = "What colour is it?"  # marker missing
    records.append(dict(records[0], id="dup"))
    corpus.write_text(json.dumps(records))
    out, report = tmp_path / "out" / "kept.json", tmp_path / "report"
    assert cli(["curate", str(corpus), "--out", str(out), "--report", str(report)]) == 0
    kept = json.loads(out.read_text())
    assert kept == [r for i, r in enumerate(records) if i not in (1, len(records) - 1)]
    summary = json.loads((report / "report.json").read_text())
    assert summary["n_in"] == len(records) and summary["n_kept"] == len(kept)
    assert summary["dropped_by_reason"] == {"dedup/record_exact": 1, "text/marker_mismatch": 1}
    md = (report / "report.md").read_text()
    assert "text/marker_mismatch" in md and "record #1" in md and list(report.glob("scores_*.png"))
    assert "record #1" in capsys.readouterr().out

    assert cli(["curate", str(corpus), "--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "data.json: record #1" in err and "Traceback" not in err
    assert cli(["curate", str(corpus), "--out", str(out), "--stages", "integrity,nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_minilm_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from nativevlm.data.curate.embed import SentenceEmbedder, minilm_dir

    texts = ["A red circle above a blue square.", "hello", "How many shapes are there in the picture today?"]
    ours = SentenceEmbedder().encode(texts)
    model = transformers.BertModel.from_pretrained(str(minilm_dir())).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-4)
    assert np.allclose(ours.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_reads_openai_messages_jsonl_and_multi_image_records(corpus: Path, tmp_path: Path):
    """Curation reads records with the dataset reader's parser: OpenAI-messages JSONL (image parts or an
    `images` list) and multi-image LLaVA records, and writes kept ones back unchanged."""
    root = corpus.parent
    a, b = "images/scene_00000.png", "images/scene_00001.png"
    records = [
        {"id": "parts", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{a}"}},
                                         {"type": "text", "text": "Describe the image."}]},
            {"role": "assistant", "content": CAPTION}]},
        {"id": "list", "images": [a, b], "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "<image><image> Are these the same picture?"},
            {"role": "assistant", "content": "No, they show different shapes."}]},
        {"id": "llava-multi", "images": [a, b], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhich picture has more shapes?"},
            {"from": "gpt", "value": "They have the same number of shapes."}]},
        {"id": "mismatch", "images": [a], "messages": [
            {"role": "user", "content": "Describe the image."}, {"role": "assistant", "content": CAPTION}]},
    ]
    path = root / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    es, bad = load_records(path)
    assert not bad
    by_id = {e.id: e for e in es}
    assert by_id["parts"].images == [(root / a).resolve()]
    assert by_id["parts"].prompts == ["<image>\nDescribe the image."] and by_id["parts"].answers == [CAPTION]
    assert by_id["list"].images == by_id["llava-multi"].images == [(root / a).resolve(), (root / b).resolve()]
    assert by_id["list"].answers == ["No, they show different shapes."]
    assert run_stage(TextQuality(), records, root) == [None, None, None, "marker_mismatch"]
    out = tmp_path / "kept.jsonl"
    result = curate_file(path, out, build_stages(["integrity", "text"]))
    assert result.drops == {"text/marker_mismatch": 1}
    assert [json.loads(line) for line in out.read_text().splitlines()] == records[:3]
