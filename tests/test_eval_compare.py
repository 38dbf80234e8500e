"""`nativevlm compare`: two evaluations of the same questions compared question by question (eval.compare)."""
import json
import math

import pytest

from nativevlm.cli import main
from nativevlm.eval.benchmarks import Benchmark, Item
from nativevlm.eval.compare import mcnemar_p, paired
from nativevlm.eval.harness import Reply, run_benchmark, write_results


def test_paired_difference_known_answer():
    a = {"q1": True, "q2": True, "q3": False, "q4": False, "q5": True}
    b = {"q1": True, "q2": False, "q3": True, "q4": True, "q5": True}
    r = paired(a, b)  # per-question differences 0, -1, 1, 1, 0: mean 0.2, sample variance 2.8 / 4
    assert (r.n, r.accuracy_a, r.accuracy_b, r.a_only, r.b_only) == (5, 0.6, 0.8, 1, 2)
    assert r.difference == pytest.approx(0.2) and r.se == pytest.approx(math.sqrt(0.7 / 5))
    assert (r.low, r.high) == pytest.approx((0.2 - 1.959964 * r.se, 0.2 + 1.959964 * r.se))
    assert r.p == pytest.approx(1.0)  # 1 against 2 discordant: 2 * P(X <= 1 | 3, 1/2) = 2 * 4 / 8, capped at 1
    same = paired(a, a)
    assert (same.difference, same.se, same.p) == (0, 0, 1.0)


@pytest.mark.parametrize("a_only,b_only", [(3, 12), (0, 7), (10, 10), (25, 40), (1, 0)])
def test_mcnemar_p_equals_the_exact_binomial_test(a_only, b_only):
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = scipy_stats.binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
    assert mcnemar_p(a_only, b_only) == pytest.approx(expected, rel=1e-9)


def test_different_questions_are_refused():
    with pytest.raises(ValueError, match="1 only in A.*0 only in B"):
        paired({"q1": True, "q2": False}, {"q1": True})


def evaluation(tmp_path, name, replies, circular=False):
    """A `nativevlm eval` folder: four open questions in two categories and one two-option question."""
    items = [Item(f"n{i}", "how many?", "2", category="count", kind="reasoning") for i in range(2)] + \
        [Item(f"y{i}", "is there one?", "yes", category="exist", kind="perception") for i in range(2)] + \
        [Item("m", "colour?", "A", options={"A": "red", "B": "blue"}, category="exist", kind="perception")]
    said = iter(replies)
    result = run_benchmark(Benchmark("toy", "test", items), lambda reqs: [Reply(next(said)) for _ in reqs],
                           tmp_path / name, circular=circular, progress=False)
    write_results(tmp_path / name, {"model": name}, [result])
    return tmp_path / name


def test_compare_command_reads_two_eval_folders(tmp_path, capsys):
    # A: n0 right, n1 wrong, y0 right (hedged), y1 wrong, m right; B: n0 right, n1 right, y0 right, y1 right, m wrong
    a = evaluation(tmp_path, "a", ["2", "3", "yes, 2 of them", "no", "A"])
    b = evaluation(tmp_path, "b", ["2", "2", "yes", "yes", "B"])
    assert main(["compare", str(a), str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["toy"]
    assert (rows["all"]["accuracy_a"], rows["all"]["accuracy_b"]) == (0.6, 0.8)
    assert (rows["all"]["a_only"], rows["all"]["b_only"]) == (1, 2)
    assert (rows["count"]["a_only"], rows["count"]["b_only"], rows["exist"]["b_only"]) == (0, 1, 1)
    assert main(["compare", str(a), str(b), "--json", "--strict"]) == 0  # A's hedged yes is not strict
    strict = json.loads(capsys.readouterr().out)["toy"]["all"]
    assert (strict["accuracy_a"], strict["b_only"]) == (0.4, 3)
    assert main(["compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "toy" in table and "right only in A 1, only in B 2" in table
    # circular: B's m is asked twice (the options rotated) and must be right both times
    c = evaluation(tmp_path, "c", ["2", "2", "yes", "yes", "A", "A"], circular=True)  # rotation 1 wants B
    d = evaluation(tmp_path, "d", ["2", "2", "yes", "yes", "A", "B"], circular=True)
    assert main(["compare", str(c), str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["toy"]["all"]["b_only"] == 1


def test_compare_names_what_is_wrong(tmp_path, capsys):
    a = evaluation(tmp_path, "a", ["2", "3", "yes", "no", "A"])
    assert main(["compare", str(a), str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps({"run": {}, "benchmarks": {"mmbench": {}}}))
    assert main(["compare", str(a), str(tmp_path / "other")]) == 2
    assert "mmbench/records.jsonl is missing" in capsys.readouterr().err
    (tmp_path / "other" / "mmbench").mkdir()
    (tmp_path / "other" / "mmbench" / "records.jsonl").write_text("")
    assert main(["compare", str(a), str(tmp_path / "other")]) == 2
    assert "share no benchmark" in capsys.readouterr().err
