"""The quickstart pipeline end to end, with tiny step counts (the real run is `make demo`)."""
import json

from nativevlm.cli import main


def test_quickstart_runs_end_to_end_and_reports(tmp_path, capsys):
    out = tmp_path / "qs"
    steps = ["stages.0.steps=2", "stages.1.steps=1", "stages.2.steps=2", "stages.2.batch_size=4"]
    code = main(["quickstart", "--out", str(out), "--train-scenes", "40", "--test-scenes", "6",
                 "--set-text-lm", "stages.0.steps=2", *[a for s in steps for a in ("--set", s)]])
    assert code == 0
    printed = capsys.readouterr().out
    assert "all perception" in printed and "nativevlm ask" in printed
    report = json.loads((out / "eval.json").read_text())
    test_questions = json.loads((out / "data/world/test.json").read_text())
    assert len(report["records"]) == len(test_questions)
    assert set(report["timings_s"]) == {"world", "tokenizer", "text_lm", "native_vlm", "evaluate"}
    assert (out / "report.md").read_text().startswith("# nativevlm quickstart")
    # The model it points at answers questions through `nativevlm ask`.
    assert main(["ask", report["model"], "How many objects are there?", "--image", report["samples"][0]["image"],
                 "--max-new-tokens", "3"]) == 0


def test_ask_names_a_missing_image(tmp_path, capsys):
    assert main(["ask", str(tmp_path), "hi", "--image", str(tmp_path / "none.png")]) == 2
    assert "none.png does not exist" in capsys.readouterr().err
