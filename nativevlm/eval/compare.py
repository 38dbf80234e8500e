"""Two evaluations of the same questions compared question by question. Two models asked the same 1,200
questions are not two independent samples: most questions both get right or both get wrong, and only the
questions they disagree on say which is better. The paired difference's standard error (of the per-question
differences) is then smaller than the one of either accuracy, and McNemar's exact test asks whether the
disagreements lean one way more than chance would (a fair coin over the discordant questions).

`nativevlm compare A B` reads two `nativevlm eval` folders; `paired` takes any two {question id: right} maps
(the studies' and benchmarks' own records).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from ..data.formats import DataError
from .harness import CORRECT, item_statuses

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Paired:
    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a
    se: float  # of the difference: std of the per-question differences / sqrt(n)
    low: float  # the difference's 95% interval (normal approximation)
    high: float
    a_only: int  # questions A gets right and B wrong
    b_only: int
    p: float  # McNemar's exact two-sided p-value over the a_only + b_only discordant questions

    def line(self) -> str:
        return (f"{self.accuracy_a:6.1%} -> {self.accuracy_b:6.1%}  {self.difference:+6.1%} "
                f"[{self.low:+.1%}, {self.high:+.1%}]  right only in A {self.a_only}, only in B {self.b_only}, "
                f"p {self.p:.3g}")

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: twice the smaller tail of Binomial(a_only + b_only, 1/2), at most 1."""
    m, k = a_only + b_only, min(a_only, b_only)
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def paired(a: Mapping[str, bool], b: Mapping[str, bool]) -> Paired:
    """A and B's right/wrong on the same questions (by id) compared question by question."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise DataError(f"the two evaluations asked different questions ({len(only_a)} only in A, e.g. "
                        f"{only_a[:3]}; {len(only_b)} only in B, e.g. {only_b[:3]}): compare runs of the same "
                        "benchmark with the same --limit")
    n = len(a)
    if n == 0:
        raise DataError("no questions to compare")
    d = [int(b[k]) - int(a[k]) for k in a]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(var / n)
    a_only, b_only = d.count(-1), d.count(1)
    return Paired(n, sum(a.values()) / n, sum(b.values()) / n, mean, se, mean - Z95 * se, mean + Z95 * se,
                  a_only, b_only, mcnemar_p(a_only, b_only))


def read_right(folder: Path, strict: bool = False) -> dict[str, dict[str, tuple[str, bool]]]:
    """Per benchmark of a `nativevlm eval` folder: question id -> (category, right), as its summary counts it
    (circular: right only if every rotation is; `strict`: right and the answer alone)."""
    if not (folder / "results.json").is_file():
        raise DataError(f"{folder}: no results.json; give a folder written by `nativevlm eval --out`")
    run = json.loads((folder / "results.json").read_text())
    out = {}
    for name, summary in run["benchmarks"].items():
        path = folder / name / "records.jsonl"
        if not path.is_file():
            raise DataError(f"{path} is missing: the per-question records of benchmark {name}")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        items = item_statuses(records, bool(summary.get("circular")))
        if strict and not all("strict" in i for i in items.values()):
            raise DataError(f"{path} was scored before strict reading existed; evaluate again to compare strictly")
        out[name] = {k: (i["category"], i["strict"] if strict else i["status"] == CORRECT) for k, i in items.items()}
    return out


def compare_folders(a: Path, b: Path, strict: bool = False) -> dict[str, dict[str, Paired]]:
    """Per benchmark both folders have: the paired comparison overall ("all") and per category."""
    right_a, right_b = read_right(a, strict), read_right(b, strict)
    shared = [name for name in right_a if name in right_b]
    if not shared:
        raise DataError(f"{a} ({', '.join(right_a)}) and {b} ({', '.join(right_b)}) share no benchmark")
    out = {}
    for name in shared:
        ra, rb = right_a[name], right_b[name]
        rows = {"all": paired({k: v for k, (_, v) in ra.items()}, {k: v for k, (_, v) in rb.items()})}
        by_category = defaultdict(list)
        for k, (category, _) in ra.items():
            by_category[category].append(k)
        if len(by_category) > 1:  # the same questions in both (checked overall above)
            for category, ids in sorted(by_category.items()):
                rows[category] = paired({k: ra[k][1] for k in ids}, {k: rb[k][1] for k in ids})
        out[name] = rows
    return out
