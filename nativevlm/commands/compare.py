"""`nativevlm compare A B`: two `nativevlm eval` folders compared question by question (`eval.compare`)."""
from __future__ import annotations

import json
from pathlib import Path

from ..eval.compare import compare_folders


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare two evaluations of the same questions, question by question",
                       description="For each benchmark both folders hold: accuracy of A and of B, the difference "
                                   "B - A with its paired 95% interval, the questions only one of them gets right, "
                                   "and McNemar's exact p-value; overall and per category.")
    p.add_argument("a", help="a `nativevlm eval --out` folder (the baseline)")
    p.add_argument("b", help="another, of the same benchmarks and questions")
    p.add_argument("--strict", action="store_true", help="count a right answer only when it is the answer alone")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    result = compare_folders(Path(args.a), Path(args.b), args.strict)
    if args.json:
        print(json.dumps({bench: {k: v.to_dict() for k, v in rows.items()} for bench, rows in result.items()},
                         indent=1))
        return 0
    print(f"A: {args.a}\nB: {args.b}" + ("\n(strict: right and the answer alone)" if args.strict else ""))
    for bench, rows in result.items():
        print(f"\n{bench}\n{'':14s} {'n':>5s}      A ->      B       B-A [95% interval]")
        for name, r in rows.items():
            print(f"{name:14s} {r.n:5d} {r.line()}")
    return 0
