"""Generation-based evaluation of any answerer (a model in this process, or an OpenAI-compatible endpoint)
on benchmarks: prompts -> answers -> `matching` -> accuracy, parse-failure and request-failure rates per
category and per kind, optional circular evaluation and visual reliance, results JSON and a markdown report.
The one evaluation stack: `nativevlm eval`, the studies, the learning curves and the quickstart's table
(the built-in world's test split is a benchmark like the others) all score and record answers here.

Each benchmark's raw answers are appended to `OUT/<bench>/predictions.jsonl` as they arrive, so a run that
stops (a crash, a dead server) resumes where it was: only questions without an answer are asked again.
A request that still fails after its retries is recorded as a request failure, its own rate (lmms-eval
scores it as an empty, wrong answer), and is asked again on the next run.
"""
from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image
from tqdm.auto import tqdm

from ..config import ConfigError
from ..data.formats import DataError
from ..data.image import ImageError
from ..infer.types import Answerer, Reply, Request
from .benchmarks import Benchmark, Item, open_image
from .matching import (CORRECT, PARSE_FAILURE, WRONG, Match, bare_answer, majority_counts, match_choice,
                       match_open)

REQUEST_FAILURE = "request_failure"
STATUSES = (CORRECT, WRONG, PARSE_FAILURE, REQUEST_FAILURE)
# A blank image is mid-grey: after the [-1, 1] normalisation it is all zeros, no signal of any colour.
BLANK = (128, 128, 128)


@dataclass
class BenchResult:
    name: str
    source: str
    records: list[dict]  # one per question (and rotation): id, rotation, category, kind, answer, prediction, ...
    circular: bool = False
    blank: list[dict] = field(default_factory=list)  # the same questions asked with blank images, if measured

    def summary(self) -> dict:
        per_item = item_statuses(self.records, self.circular)
        first = [r for r in self.records if r["rotation"] == 0]
        out = {"name": self.name, "source": self.source, "n": len(per_item), **rates(per_item.values()),
               "by_category": grouped(per_item, "category"), "by_kind": grouped(per_item, "kind")}
        if self.circular:
            out["circular"] = True
            out["single_pass_accuracy"] = rates(r for r in first)["accuracy"]
        if self.blank:
            blank = item_statuses(self.blank, False)
            out["blank_image"] = {"accuracy": rates(blank.values())["accuracy"],
                                  "by_category": grouped(blank, "category"), "by_kind": grouped(blank, "kind")}
            single = {r["id"]: r for r in first}
            out["visual_reliance"] = {key: reliance(grouped(single, key), out["blank_image"][f"by_{key}"])
                                      for key in ("category", "kind")}
            out["visual_reliance"]["all"] = rates(single.values())["accuracy"] - out["blank_image"]["accuracy"]
        return out

    def table(self) -> str:
        """Plain text: accuracy and parse failures per category (the world's task families) with its kind,
        then per kind, then overall -- the quickstart's table."""
        s, kinds = self.summary(), {r["category"]: r["kind"] for r in self.records}
        lines = [f"{'family':14s} {'kind':11s} {'n':>5s} {'accuracy':>9s} {'unparsed':>9s}"]
        for cat, g in s["by_category"].items():
            lines.append(f"{cat:14s} {kinds[cat] or '-':11s} {g['n']:5d} {g['accuracy']:9.1%} "
                         f"{g['parse_failure_rate']:9.1%}")
        lines.append("-" * 52)
        for kind, g in s["by_kind"].items():
            if kind:
                lines.append(f"{'all ' + kind:26s} {g['n']:5d} {g['accuracy']:9.1%} {g['parse_failure_rate']:9.1%}")
        lines.append(f"{'overall':26s} {s['n']:5d} {s['accuracy']:9.1%} {s['parse_failure_rate']:9.1%}")
        return "\n".join(lines)


def item_statuses(records: list[dict], circular: bool) -> dict[str, dict]:
    """One status per question. Under circular evaluation a question is right only if every rotation is;
    wrong if any rotation is; else a parse (or request) failure."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if circular or r["rotation"] == 0:
            groups[r["id"]].append(r)
    out = {}
    for key, rs in groups.items():
        statuses = {r["status"] for r in rs}
        status = next(s for s in (REQUEST_FAILURE, WRONG, PARSE_FAILURE, CORRECT) if s in statuses)
        out[key] = {"status": status, "category": rs[0]["category"], "kind": rs[0]["kind"]}
        if all("strict" in r for r in rs):  # records scored before strict reading existed have none
            out[key]["strict"] = status == CORRECT and all(r["strict"] for r in rs)
    return out


def rates(items) -> dict:
    items = list(items)
    n = max(1, len(items))
    counts = {s: sum(i["status"] == s for i in items) for s in STATUSES}
    out = {"accuracy": counts[CORRECT] / n, "parse_failure_rate": counts[PARSE_FAILURE] / n,
           "request_failure_rate": counts[REQUEST_FAILURE] / n}
    if items and all("strict" in i for i in items):
        out["strict_accuracy"] = sum(i["strict"] for i in items) / n
    return out


def grouped(per_item: dict, key: str) -> dict:
    groups = defaultdict(list)
    for item in per_item.values():
        groups[item[key]].append(item)
    return {k: {"n": len(v), **rates(v)} for k, v in sorted(groups.items())}


def reliance(with_image: dict, blank: dict) -> dict:
    """Accuracy with the image minus accuracy with a blank one (Downscaling Intelligence's visual reliance)."""
    return {k: {"accuracy": v["accuracy"], "blank_accuracy": blank[k]["accuracy"],
                "reliance": v["accuracy"] - blank[k]["accuracy"]} for k, v in with_image.items()}


def answer_priors(items: list[Item]) -> dict[str, float]:
    """The accuracy of always giving each category's most common reference answer (normalised; the right
    letter for multiple choice): overall ("all"), per kind and per category -- the floor a model that
    ignores the image and the question's specifics reaches."""
    counts = majority_counts((item.category, item.answer) for item in items)
    kind_of = {item.category: item.kind for item in items}

    def rate(cats) -> float:
        return sum(counts[c][0] for c in cats) / max(1, sum(counts[c][1] for c in cats))

    out = {"all": rate(counts)}
    out.update({kind: rate([c for c in counts if kind_of[c] == kind]) for kind in sorted(set(kind_of.values()) - {""})})
    out.update({c: best / total for c, (best, total) in counts.items()})
    return out


def score(item: Item, prediction: str) -> Match:
    if item.options:
        return match_choice(prediction, item.options, item.answer)
    return match_open(prediction, item.answer)


def expand(items: list[Item], circular: bool) -> list[tuple[str, int, Item]]:
    """(key, rotation, item as asked): each item once, or each rotation of a multiple-choice one."""
    out = []
    for item in items:
        turns = range(len(item.options)) if circular and item.options else [0]
        out += [(f"{item.id}#{k}", k, item.rotated(k) if k else item) for k in turns]
    return out


def request_of(item: Item, blank: bool) -> Request:
    images = []
    for ref in item.images:
        try:
            img = open_image(ref)
        except (ImageError, FileNotFoundError) as e:
            raise DataError(f"question {item.id}: {e}") from None
        images.append(Image.new("RGB", img.size, BLANK) if blank else img)
    return Request(images, item.prompt())


def read_predictions(path: Path) -> dict[str, dict]:
    """key -> the last answer recorded for it (a later line replaces an earlier one: a retried failure)."""
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short when the run was killed: that answer is asked again
                done[row["key"]] = row
    return done


def ask_all(answerer: Answerer, asked: list[tuple[str, int, Item]], path: Optional[Path], blank: bool, log=print,
            progress: bool = True) -> dict:
    """Answers for every key, reusing those already in `path` and appending new ones as they come (with no
    `path`, in memory only)."""
    done = read_predictions(path) if path else {}
    todo = [(key, item) for key, _, item in asked if key not in done or done[key].get("error") is not None]
    if len(todo) < len(asked):
        log(f"{path}: {len(asked) - len(todo)} of {len(asked)} answers already there; asking the other {len(todo)}")
    step = max(1, getattr(answerer, "chunk_size", 16))
    bar = tqdm(total=len(todo), desc=path.parent.name if path else "evaluate", unit="q",
               disable=not progress or not todo)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
    cut = path is not None and path.is_file() and not path.read_bytes().endswith(b"\n") and path.stat().st_size > 0
    with path.open("a", encoding="utf-8") if path else contextlib.nullcontext() as f:
        if cut:
            f.write("\n")  # end the line cut short, so the next answer starts a line of its own
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            replies = answerer([request_of(item, blank) for _, item in chunk])
            for (key, _), reply in zip(chunk, replies):
                row = {"key": key, "prediction": reply.text, "error": reply.error}
                if reply.trace is not None:
                    row["trace"] = reply.trace
                done[key] = row
                if f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            if f:
                f.flush()
            bar.update(len(chunk))
    bar.close()
    return done


def scored(asked: list[tuple[str, int, Item]], answers: dict[str, dict]) -> list[dict]:
    """The record of each question asked (the one schema every evaluation writes): what was asked, the
    reference, the answer, what `matching` read from it and its status, and `strict`: right and the answer
    alone (`matching.bare_answer`: "yes. 1 is greater than" is right for "how many?" when the count is 1, not
    strict), the reading a policy cannot hedge; summaries report it as `strict_accuracy` beside `accuracy`."""
    records = []
    for key, rotation, item in asked:
        row = answers[key]
        match = Match(REQUEST_FAILURE, None) if row["error"] is not None else score(item, row["prediction"])
        records.append({"id": item.id, "rotation": rotation, "category": item.category, "kind": item.kind,
                        "question": item.prompt(), "answer": item.answer, "prediction": row["prediction"],
                        "parsed": match.parsed, "status": match.status, "error": row["error"],
                        "strict": match.status == CORRECT and bare_answer(row["prediction"], item.answer, item.options),
                        **({"trace": row["trace"]} if "trace" in row else {})})
    return records


def evaluate(bench: Benchmark, answerer: Answerer, progress: bool = False) -> BenchResult:
    """Ask and score every question once, in memory (no answers saved, nothing resumed): the learning
    curves' evaluation of a model mid-training, and the quickstart's."""
    asked = expand(bench.items, False)
    answers = ask_all(answerer, asked, None, False, progress=progress)
    return BenchResult(bench.name, bench.source, scored(asked, answers))


def run_benchmark(bench: Benchmark, answerer: Answerer, out_dir: Path, circular: bool = False,
                  visual_reliance: bool = False, log=print, progress: bool = True) -> BenchResult:
    """Ask, score and write `OUT/<bench>/records.jsonl` (and `OUT/<bench>-blank/` for visual reliance)."""
    results = {}
    for blank in (False, True) if visual_reliance else (False,):
        folder = out_dir / (bench.name + ("-blank" if blank else ""))
        asked = expand(bench.items, circular and not blank)
        records = scored(asked, ask_all(answerer, asked, folder / "predictions.jsonl", blank, log, progress))
        with (folder / "records.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        results[blank] = records
    return BenchResult(bench.name, bench.source, results[False], circular, results.get(True, []))


def check_run(out_dir: Path, run: dict) -> None:
    """`OUT/run.json` records what a results folder holds, so resuming never mixes two models' answers."""
    path = out_dir / "run.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != run:
            changed = ", ".join(k for k in sorted(set(before) | set(run)) if before.get(k) != run.get(k))
            raise ConfigError(f"--out {out_dir} holds answers from another run (different {changed}); pick a new "
                              "--out, or repeat that run's options to resume it")
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1) + "\n")


def write_results(out_dir: Path, run: dict, results: list[BenchResult], extra: Optional[dict] = None) -> dict:
    """results.json and report.md in `out_dir`."""
    summaries = [r.summary() for r in results]
    data = {"run": run, "benchmarks": {s["name"]: s for s in summaries}, **(extra or {})}
    (out_dir / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (out_dir / "report.md").write_text(report(run, summaries, extra or {}))
    return data


def report(run: dict, summaries: list[dict], extra: dict) -> str:
    lines = [f"# Evaluation of `{run['model']}`", ""]
    if "val_loss" in extra:
        v = extra["val_loss"]
        lines += [f"Teacher-forced validation loss on `{v['data']}`: **{v['loss']:.4f}** "
                  f"({v['tokens']} answer tokens, {v['samples']} samples)", ""]
    for s in summaries:
        circ = " (circular: every rotation of the options must be right)" if s.get("circular") else ""
        lines += [f"## {s['name']}", "", f"`{s['source']}`: {s['n']} questions{circ}", "",
                  f"accuracy **{s['accuracy']:.1%}**"
                  + (f" (strict, the answer alone: {s['strict_accuracy']:.1%})" if "strict_accuracy" in s else "")
                  + f", parse failures {s['parse_failure_rate']:.1%}, "
                  f"request failures {s['request_failure_rate']:.1%}"
                  + (f"; single pass {s['single_pass_accuracy']:.1%}" if s.get("circular") else ""), ""]
        for key in ("category", "kind"):
            groups = s[f"by_{key}"]
            if key == "kind" and set(groups) == {""}:
                continue
            rel = s.get("visual_reliance", {}).get(key)
            strict = all("strict_accuracy" in g for g in groups.values())
            head = (f"| {key} | n | accuracy |" + (" strict |" if strict else "") + " parse failures |"
                    + (" blank image | reliance |" if rel else ""))
            lines += [head, "|" + "---|" * (head.count("|") - 1)]
            for name, g in groups.items():
                row = (f"| {name or '-'} | {g['n']} | {g['accuracy']:.1%} |"
                       + (f" {g['strict_accuracy']:.1%} |" if strict else "") + f" {g['parse_failure_rate']:.1%} |")
                if rel:
                    row += f" {rel[name]['blank_accuracy']:.1%} | {rel[name]['reliance']:+.1%} |"
                lines.append(row)
            lines.append("")
    return "\n".join(lines)
