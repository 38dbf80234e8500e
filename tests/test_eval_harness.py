"""The evaluation harness: benchmark readers, scoring (circular, visual reliance), resume, the
OpenAI-compatible endpoint client against a stub server, and `nativevlm eval` on a tiny model."""
import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from nativevlm.cli import main
from nativevlm.data.formats import DataError
from nativevlm.eval.benchmarks import Benchmark, Item, load_benchmark
from nativevlm.eval.harness import BLANK, Reply, read_predictions, run_benchmark

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def png(color, size=(48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLORS[color]).save(buf, format="PNG")
    return buf.getvalue()


def write_tsv(path, rows, columns):
    lines = ["\t".join(columns)] + ["\t".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def color_tsv(tmp_path, n=6):
    """A VLMEvalKit TSV: 'What color is the image?' with the three colours as options (in varying order),
    images as base64; every second row refers to the row before for its image, as MMBench does."""
    rows = []
    for i in range(n):
        color = list(COLORS)[i // 2 % 3]
        opts = list(COLORS)[i % 3:] + list(COLORS)[:i % 3]
        image = base64.b64encode(png(color)).decode() if i % 2 == 0 else str(i - 1)
        rows.append({"index": i, "question": "What color is the image?", "A": opts[0], "B": opts[1], "C": opts[2],
                     "answer": "ABC"[opts.index(color)], "image": image, "category": f"cat{i % 2}",
                     "l2-category": "perception", "hint": "Look at it." if i == 0 else ""})
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "image", "category", "l2-category"]
    return write_tsv(tmp_path / "colors.tsv", rows, cols), rows


def test_tsv_reader_base64_references_and_prompt(tmp_path):
    path, rows = color_tsv(tmp_path)
    bench = load_benchmark(str(path))
    assert bench.name == "colors" and len(bench.items) == 6
    first, second = bench.items[0], bench.items[1]
    assert first.images == [png("red")] and second.images == first.images  # index reference resolved
    assert first.options == {"A": "red", "B": "blue", "C": "green"}  # the empty D column is no option
    assert first.category == "cat0" and first.kind == "perception" and first.answer == "A"
    assert first.prompt() == ("Hint: Look at it.\nQuestion: What color is the image?\nOptions:\nA. red\nB. blue\n"
                              "C. green\nPlease select the correct answer from the options above.")
    assert second.prompt().startswith("Question: What color")


def test_tsv_reader_image_path(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "0.png").write_bytes(png("blue"))
    rows = [{"index": 0, "question": "How many objects?", "answer": "1", "image_path": "img/0.png"},
            {"index": 1, "question": "Two images?", "answer": "yes", "image_path": "['img/0.png', 'img/0.png']"}]
    bench = load_benchmark("tsv:" + str(write_tsv(tmp_path / "b.tsv", rows, ["index", "question", "answer",
                                                                            "image_path"])))
    assert bench.items[0].images == [str((tmp_path / "img" / "0.png").resolve())]
    assert len(bench.items[1].images) == 2 and not bench.items[0].options


@pytest.mark.parametrize("rows,columns,message", [
    ([{"index": 0, "question": "q", "image_path": "x.png"}], ["index", "question", "image_path"], "no answer column"),
    ([{"index": 0, "question": "q", "answer": "E", "A": "x", "B": "y", "image": "0"}],
     ["index", "question", "answer", "A", "B", "image"], "line 2 (index 0): answer 'E' is not one of its options"),
    ([{"index": 0, "question": "q", "answer": "a", "image_path": "missing.png"}],
     ["index", "question", "answer", "image_path"], "image_path missing.png does not exist"),
    ([{"index": 0, "question": "q", "answer": "a", "image": "not base64 at all, clearly: more than 64 chars " * 2}],
     ["index", "question", "answer", "image"], "not valid base64"),
])
def test_tsv_reader_errors_name_the_input(tmp_path, rows, columns, message):
    path = write_tsv(tmp_path / "bad.tsv", rows, columns)
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_benchmark(str(path))
    assert str(path) in str(e.value)


def test_llava_reader_cuts_world_style_options(tmp_path):
    (tmp_path / "i.png").write_bytes(png("red"))
    q = "What color is the square?\nA. red\nB. blue\nC. green\nAnswer with the letter of the correct option."
    records = [{"id": "q0", "image": "i.png", "conversations": [{"from": "human", "value": "<image>\n" + q},
                                                                 {"from": "gpt", "value": "A"}],
                "meta": {"family": "color", "kind": "perception", "answer": "A", "choices": ["red", "blue", "green"]}},
               {"id": "q1", "image": "i.png", "conversations": [{"from": "human", "value": "<image>\nHow many?"},
                                                                 {"from": "gpt", "value": "blue"}],
                "meta": {"choices": ["red", "blue", "green"]}}]
    (tmp_path / "qa.json").write_text(json.dumps(records))
    items = load_benchmark(f"mine={tmp_path / 'qa.json'}").items
    assert items[0].question == "What color is the square?"
    assert items[0].suffix == "Answer with the letter of the correct option."
    assert items[0].rotated(1).prompt() == ("What color is the square?\nA. blue\nB. green\nC. red\n"
                                            "Answer with the letter of the correct option.")
    assert items[0].rotated(1).answer == "C" and items[0].category == "color"
    assert items[1].answer == "B" and items[1].question == "How many?"  # answer given as the option's text


class Scripted:
    """An answerer replying `fn(request)`; counts what it was asked."""

    chunk_size = 2

    def __init__(self, fn):
        self.fn, self.asked = fn, 0

    def __call__(self, requests):
        self.asked += len(requests)
        return [Reply(self.fn(r)) for r in requests]


def seen_color(request) -> str:
    pixel = request.images[0].getpixel((0, 0))
    return next((name for name, rgb in COLORS.items() if rgb == pixel), "grey")


def letter_of(request, text: str) -> str:
    lines = request.text.split("\n")
    return next((line[0] for line in lines if line[1:3] == ". " and line[3:] == text), "none")


def test_circular_evaluation_and_visual_reliance(tmp_path):
    path, _ = color_tsv(tmp_path)
    bench = load_benchmark(str(path))
    sees = Scripted(lambda r: letter_of(r, seen_color(r)))  # answers from the image, by the option's letter
    res = run_benchmark(bench, sees, tmp_path / "out", circular=True, visual_reliance=True).summary()
    assert res["accuracy"] == 1.0 and res["single_pass_accuracy"] == 1.0 and res["parse_failure_rate"] == 0
    assert res["blank_image"]["accuracy"] == 0.0  # grey matches no option: every blank answer is "none"
    assert res["visual_reliance"]["all"] == 1.0
    assert res["visual_reliance"]["category"]["cat0"]["reliance"] == 1.0
    assert sees.asked == 6 * 3 + 6  # three rotations each, then each once with a blank image
    blank = (tmp_path / "out" / "colors-blank" / "records.jsonl").read_text().splitlines()
    blank = [json.loads(line) for line in blank]
    assert all(r["status"] == "parse_failure" for r in blank)

    always_a = Scripted(lambda r: "A")  # right whenever the answer is A: a third of rotations
    res = run_benchmark(bench, always_a, tmp_path / "out_a", circular=True).summary()
    assert res["single_pass_accuracy"] == pytest.approx(2 / 6)  # rows 0 and 3 have answer A
    assert res["accuracy"] == 0.0  # but no question survives its rotations


def test_blank_image_has_the_same_size(tmp_path):
    path, _ = color_tsv(tmp_path, n=2)
    sizes = []
    run_benchmark(load_benchmark(str(path)), Scripted(lambda r: sizes.append((r.images[0].size,
                                                                              r.images[0].getpixel((0, 0)))) or "A"),
                  tmp_path / "out", visual_reliance=True)
    assert sizes[-1] == ((48, 32), BLANK) and sizes[0] == ((48, 32), COLORS["red"])


def test_resume_asks_only_what_is_missing(tmp_path):
    path, _ = color_tsv(tmp_path)
    bench = load_benchmark(str(path))
    first = Scripted(lambda r: "A")
    run_benchmark(bench, first, tmp_path / "out")
    preds = tmp_path / "out" / "colors" / "predictions.jsonl"
    lines = preds.read_text().splitlines()
    preds.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # killed while writing the fourth answer
    again = Scripted(lambda r: "A")
    res = run_benchmark(bench, again, tmp_path / "out").summary()
    assert again.asked == 3 and res["n"] == 6
    assert len(read_predictions(preds)) == 6  # the answers after the cut line are whole lines again
    assert res["accuracy"] == pytest.approx(2 / 6)


def make_items(n=4):
    return [Item(f"q{i}", "What color is the image?", "ABC"[i % 3], [png(list(COLORS)[i % 3])],
                 dict(zip("ABC", COLORS)), category="color", kind="perception") for i in range(n)]


class Stub(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible chat server: reads the image's colour, answers its option letter. The
    first request for the image size 48x33 fails with 503 (then succeeds); a question containing 'refuse'
    always gets a 400."""

    calls: list = []
    failed_once: set = set()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body["authorization"] = self.headers.get("Authorization")
        if body["model"] == "busy" and not Stub.calls:  # rate-limited once, told to come back at once
            Stub.calls.append(body)
            return self.reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        type(self).calls.append(body)
        parts = body["messages"][0]["content"]
        text = next(p["text"] for p in parts if p["type"] == "text")
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        assert url.startswith("data:image/png;base64,") and body["temperature"] == 0
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        key = text + str(img.getpixel((0, 0)))
        if "refuse" in text:
            return self.reply(400, {"error": {"message": "At most 0 image(s) may be provided", "type": "invalid"}})
        if img.size == (48, 33) and key not in self.failed_once:
            self.failed_once.add(key)
            return self.reply(503, {"object": "error", "message": "overloaded"})
        color = next((n for n, rgb in COLORS.items() if rgb == img.convert("RGB").getpixel((0, 0))), "grey")
        letter = next((line[0] for line in text.split("\n") if line[3:] == color), "none")
        self.reply(200, {"choices": [{"message": {"role": "assistant", "content": f"Answer: {letter}"}}]})

    def reply(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub_server():
    Stub.calls, Stub.failed_once = [], set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_endpoint_retries_a_failed_request_and_records_hard_failures(tmp_path, stub_server):
    from nativevlm.eval.endpoint import EndpointAnswerer

    items = make_items(3)
    items[1].images = [png("blue", (48, 33))]
    items[2].question = "Please refuse this one."
    answerer = EndpointAnswerer(stub_server, "tiny", concurrency=2, retries=2, backoff_s=0.01, log=lambda *a: None)
    res = run_benchmark(Benchmark("stub", "test", items), answerer, tmp_path / "out")
    statuses = [r["status"] for r in res.records]
    assert statuses == ["correct", "correct", "request_failure"]
    assert len(Stub.calls) == 4  # q0 once, q1 twice (a 503, then the retry), q2 once (a 400 is not retried)
    assert "At most 0 image(s)" in res.records[2]["error"]
    assert res.summary()["request_failure_rate"] == pytest.approx(1 / 3)


def test_endpoint_honours_retry_after(tmp_path, stub_server):
    import time

    from nativevlm.eval.endpoint import EndpointAnswerer

    answerer = EndpointAnswerer(stub_server, "busy", concurrency=1, retries=1, backoff_s=30, log=lambda *a: None)
    t0 = time.time()
    res = run_benchmark(Benchmark("stub", "test", make_items(1)), answerer, tmp_path / "out")
    assert res.records[0]["status"] == "correct" and len(Stub.calls) == 2
    assert time.time() - t0 < 10  # waited the server's 0 s, not the 30 s backoff


def test_duplicate_question_ids_are_refused(tmp_path):
    record = {"id": "same", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "yes"}]}
    (tmp_path / "qa.json").write_text(json.dumps([record, record]))
    with pytest.raises(DataError, match="question id 'same' appears twice"):
        load_benchmark(str(tmp_path / "qa.json"))


def test_validation_loss_does_not_depend_on_batching(tiny_vlm_and_world):
    from nativevlm.data.tokenizer import Tokenizer
    from nativevlm.eval.loss import validation_loss
    from nativevlm.model.loading import load_pretrained

    model_dir, _, val = tiny_vlm_and_world
    model, tok = load_pretrained(model_dir), Tokenizer.load(model_dir)
    one = validation_loss(model, tok, val, batch_size=1)
    three = validation_loss(model, tok, val, batch_size=3)  # padded rows of different lengths
    assert three["loss"] == pytest.approx(one["loss"], rel=1e-5) and one["tokens"] == three["tokens"]


def test_endpoint_down_stops_with_a_clear_error(tmp_path, capsys):
    path, _ = color_tsv(tmp_path, n=2)
    code = main(["eval", "tiny", "--bench", str(path), "--out", str(tmp_path / "out"), "--endpoint",
                 "http://127.0.0.1:9/v1", "--retries", "0"])
    assert code == 2 and "cannot connect" in capsys.readouterr().err


def test_eval_command_against_endpoint_resumes(tmp_path, stub_server, capsys):
    path, _ = color_tsv(tmp_path)
    args = ["eval", "tiny", "--bench", str(path), "--out", str(tmp_path / "out"), "--endpoint", stub_server,
            "--concurrency", "3", "--circular", "--api-key", "sk-test"]
    assert main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["benchmarks"]["colors"]["accuracy"] == 1.0
    assert "| cat0 | 3 | 100.0% | 100.0% | 0.0% |" in (tmp_path / "out" / "report.md").read_text()  # strict too
    assert len(Stub.calls) == 18 and Stub.calls[0]["authorization"] == "Bearer sk-test"
    preds = tmp_path / "out" / "colors" / "predictions.jsonl"
    preds.write_text("".join(preds.read_text().splitlines(keepends=True)[:11]))  # interrupted after 11 answers
    assert main(args) == 0
    assert len(Stub.calls) == 18 + 7
    assert json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]["colors"]["accuracy"] == 1.0


def test_eval_command_exits_1_while_requests_failed(tmp_path, stub_server, capsys):
    rows = [{"index": 0, "question": "Please refuse.", "answer": "A", "A": "red", "B": "blue",
             "image": base64.b64encode(png("red")).decode()}]
    path = write_tsv(tmp_path / "r.tsv", rows, ["index", "question", "answer", "A", "B", "image"])
    assert main(["eval", "tiny", "--bench", str(path), "--out", str(tmp_path / "o"), "--endpoint", stub_server]) == 1
    assert "requests failed in r" in capsys.readouterr().out


def test_eval_command_errors(tmp_path, capsys):
    assert main(["eval", "m", "--bench", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.tsv" in capsys.readouterr().err
    path, _ = color_tsv(tmp_path, n=2)
    assert main(["eval", "m", "--bench", str(path), "--out", str(tmp_path / "o"), "--endpoint", "http://x",
                 "--val-data", str(path)]) == 2
    assert "--val-data" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_vlm_and_world(tmp_path_factory):
    """A random tiny NativeVLM with its tokenizer in one folder, and a 2-scene world test split."""
    import dataclasses

    from trainkit import make_world, tiny_model

    from nativevlm.config import ModelConfig, from_dict
    from nativevlm.data.tokenizer import Tokenizer
    from nativevlm.data.world import generate_world
    from nativevlm.model.vlm import NativeVLM

    root = tmp_path_factory.mktemp("eval_world")
    tok_world = make_world(root / "tiny", n_text=16, n_images=8)
    generate_world(str(root / "world"), 2, split="test", progress=False)
    tok = Tokenizer.load(tok_world["tok"])
    cfg = dataclasses.replace(from_dict(ModelConfig, tiny_model()), **tok.image_token_ids())
    NativeVLM(cfg).save_pretrained(root / "model")
    tok.save(root / "model")
    return root / "model", root / "world", tok_world["val"]


def test_eval_command_local_model(tmp_path, tiny_vlm_and_world, capsys):
    model, world, val = tiny_vlm_and_world
    out = tmp_path / "out"
    args = ["eval", str(model), "--bench", f"world:{world}", "--out", str(out), "--max-new-tokens", "3",
            "--circular", "--visual-reliance", "--val-data", str(val)]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    bench = res["benchmarks"]["world-test"]
    assert bench["n"] == 8 and 0 <= bench["accuracy"] <= 1
    assert set(bench["by_kind"]) <= {"perception", "reasoning"}
    assert set(bench["visual_reliance"]["category"]) == set(bench["by_category"])
    assert res["val_loss"]["loss"] > 0 and res["val_loss"]["samples"] == 2
    report = (out / "report.md").read_text()
    assert "world-test" in report and "Teacher-forced validation loss" in report and "reliance" in report
    # the same folder with another model is refused, not mixed
    assert main(["eval", "other", "--bench", f"world:{world}", "--out", str(out), "--endpoint", "http://x"]) == 2
    assert "another run" in capsys.readouterr().err


def test_local_answers_are_the_reference_loop_s_and_evaluate_is_run_benchmark(tiny_vlm_and_world, tmp_path):
    """The engine behind every in-process evaluation answers each world question exactly as the naive greedy
    loop does on the same prompt (the path evaluation used before it ran on the engine), whatever the batch;
    and the in-memory `evaluate` (curves, quickstart) scores what `run_benchmark` (`nativevlm eval`) does."""
    import torch
    from reference import generate

    from nativevlm.data.image import ImageProcessor
    from nativevlm.data.sample import Sample, user_turn
    from nativevlm.data.tokenizer import Tokenizer
    from nativevlm.data.collate import encode_sample
    from nativevlm.eval.harness import evaluate
    from nativevlm.eval.local import LocalAnswerer
    from nativevlm.model.loading import load_pretrained

    model_dir, world, _ = tiny_vlm_and_world
    model, tok = load_pretrained(model_dir), Tokenizer.load(model_dir)
    bench = load_benchmark(f"world:{world}")
    proc = ImageProcessor.from_config(model.config.vision, model.config.connector)
    expected = []
    for item in bench.items:
        prompt = Sample(item.id, [{"role": "user", "content": user_turn(item.prompt(), len(item.images))}],
                        list(item.images))
        enc = encode_sample(prompt, tok, proc, add_generation_prompt=True)
        out = generate(model, torch.tensor([enc.input_ids]), pixel_values=enc.pixel_values, max_new_tokens=3,
                       eos_token_id=tok.eos_id)[0].tolist()
        expected.append(tok.decode([t for t in out if t != tok.eos_id]).strip())
    quick = evaluate(bench, LocalAnswerer(model, tok, 3, 3))  # batches of 3 over 8 questions
    assert [r["prediction"] for r in quick.records] == expected
    saved = run_benchmark(bench, LocalAnswerer(model, tok, 8, 3), tmp_path / "o")
    assert quick.records == saved.records and quick.table() == saved.table()


def test_table_known_answer():
    from nativevlm.eval.harness import BenchResult

    def rec(i, cat, kind, status):
        return {"id": f"{cat}{i}", "rotation": 0, "category": cat, "kind": kind, "status": status}

    colors = ["correct", "wrong", "parse_failure", "correct"]
    records = ([rec(i, "color", "perception", s) for i, s in enumerate(colors)]
               + [rec(i, "count", "reasoning", s) for i, s in enumerate(["wrong", "correct"])])
    assert BenchResult("b", "b", records).table().splitlines() == [
        "family         kind            n  accuracy  unparsed",
        "color          perception      4     50.0%     25.0%",
        "count          reasoning       2     50.0%      0.0%",
        "-" * 52,
        "all perception                 4     50.0%     25.0%",
        "all reasoning                  2     50.0%      0.0%",
        "overall                        6     50.0%     16.7%"]


def test_evaluation_never_imports_the_trainer():
    """Evaluation sits below training (docs/architecture.md): it loads models through model/loading.py."""
    import subprocess
    import sys

    code = ("import sys, nativevlm.eval.curves, nativevlm.eval.harness, nativevlm.eval.local, nativevlm.eval.endpoint, "
            "nativevlm.eval.loss, nativevlm.eval.benchmarks, nativevlm.model.loading, nativevlm.commands.eval; "
            "print([m for m in sys.modules if m.startswith('nativevlm.train')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_answer_priors_known_answer():
    from nativevlm.eval.benchmarks import Item
    from nativevlm.eval.harness import answer_priors

    items = ([Item(f"c{i}", "colour?", a, category="color", kind="perception") for i, a in enumerate(
        ["Red", "red.", "blue", "green"])] + [Item(f"n{i}", "how many?", a, category="count", kind="reasoning")
                                               for i, a in enumerate(["two", "2", "3", "2", "4", "1"])])
    p = answer_priors(items)  # "red" twice of 4 (normalised); "2" three times of 6 (number words as digits)
    assert p["color"] == 0.5 and p["count"] == 0.5 and p["perception"] == 0.5 and p["reasoning"] == 0.5
    assert p["all"] == pytest.approx(5 / 10)


def test_strict_accuracy_counts_a_right_answer_only_alone(tmp_path):
    """`accuracy` reads verbose answers rule-first; `strict_accuracy` counts a right answer only when it is the
    answer alone, per item, per category and under circular evaluation only if every rotation was."""
    from nativevlm.eval.harness import BenchResult, evaluate

    items = [Item("n0", "how many?", "1", category="count", kind="reasoning"),
             Item("n1", "how many?", "1", category="count", kind="reasoning"),
             Item("y0", "is there a cube?", "yes", category="exist", kind="perception"),
             Item("y1", "is there a cube?", "yes", category="exist", kind="perception")]
    replies = {"n0": "1", "n1": "yes. 1 is greater than", "y0": "yes. 1 is greater than", "y1": "no"}

    s = evaluate(Benchmark("hedge", "test", items), lambda reqs: [Reply(replies[i.id]) for i in items]).summary()
    assert s["accuracy"] == 0.75 and s["strict_accuracy"] == 0.25
    assert s["by_category"]["count"]["strict_accuracy"] == 0.5 and s["by_category"]["exist"]["strict_accuracy"] == 0
    # circular: the letter alone in one rotation and a hedge in the other is right but not strict
    mc = [Item("m", "colour?", "A", options={"A": "red", "B": "blue"}, category="c", kind="perception")]
    said = iter(["A", "B. red, not blue"])  # rotation 1 swaps the options: red is B there
    res = run_benchmark(Benchmark("mc", "test", mc), lambda reqs: [Reply(next(said)) for _ in reqs],
                        tmp_path / "out", circular=True)
    assert [r["status"] for r in res.records] == ["correct", "correct"] and [r["strict"] for r in res.records] == [
        True, False]
    assert res.summary()["accuracy"] == 1 and res.summary()["strict_accuracy"] == 0
    # records written before strict reading existed: no strict_accuracy, the rest as before
    old = [{k: v for k, v in r.items() if k != "strict"} for r in res.records]
    assert "strict_accuracy" not in BenchResult("mc", "test", old, circular=True).summary()
