"""`nativevlm data curate IN.json --out OUT.json [--report DIR] [--strict] [--stages ...]`."""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from ...errors import CurationError, one_line
from .run import DEFAULT_STAGES, STAGE_NAMES, build_stages, curate_file


def register(sub, model_judge: Optional[Callable] = None) -> None:
    """`model_judge(model_dir) -> logprob_fn` backs `--judge-model`; the command passes it in (a model's
    scoring is inference, which data does not import)."""
    p = sub.add_parser("curate", help="filter a LLaVA JSON dataset (SAIL-VL2-style curation)",
                       description="Drop broken, duplicate, degenerate and misaligned records from a LLaVA "
                                   "conversation JSON; kept records are written unchanged.")
    p.add_argument("input", type=Path, help="LLaVA JSON list (or .jsonl, one record a line), or a shard folder / "
                                            ".parquet (see `nativevlm data shard`)")
    p.add_argument("--out", type=Path, required=True,
                   help="where to write the kept records: a .json / .jsonl file, or else a shard folder")
    p.add_argument("--report", type=Path, help="folder for report.json, report.md and score histograms")
    p.add_argument("--image-root", type=Path, help="folder image paths are relative to (default: the input's)")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated, run in order; from {', '.join(STAGE_NAMES)} (default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) on malformed records, missing/corrupt images or marker mismatches")
    p.add_argument("--balance-buckets", type=int, default=32, help="k-means buckets for the balance stage")
    p.add_argument("--balance-per-bucket", type=int, help="balance: keep at most this many per bucket")
    p.add_argument("--balance-total", type=int, help="balance: keep this many in all, spread evenly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: one process; ray: Ray Data map/filter steps over the input's shards")
    p.add_argument("--address", help="--engine ray: a running Ray cluster's address (default: a local Ray)")
    p.add_argument("--workers", type=int, default=2,
                   help="--engine ray: parallel workers (the local Ray's CPUs; default: %(default)s)")
    p.add_argument("--judge-model", help="a trained nativevlm model folder to judge image-text alignment with "
                                         "(default: the built-in proxy matcher)")
    p.set_defaults(func=partial(handler, model_judge=model_judge))


def handler(args, model_judge: Optional[Callable] = None) -> int:
    try:
        if args.judge_model and model_judge is None:
            raise CurationError("--judge-model needs the nativevlm command (it loads the model to score with)")
        judge_fn = model_judge(args.judge_model) if args.judge_model else None
        stages = build_stages([s.strip() for s in args.stages.split(",") if s.strip()], args.balance_buckets,
                              args.balance_per_bucket, args.balance_total, args.seed, judge_fn)
        result = curate_file(args.input, args.out, stages, args.image_root, args.report, args.strict,
                             progress=sys.stderr.isatty(), engine=args.engine, address=args.address,
                             workers=args.workers)
    except CurationError as e:
        print(f"nativevlm data curate: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{args.input}: {result.n_in} in, {len(result.kept)} kept -> {args.out}")
    for reason, n in result.drops.items():
        print(f"  dropped {n:6d}  {reason}")
    broken = result.describe_errors()
    if broken:
        print("broken input records (dropped; --strict makes them an error):")
        print("\n".join(f"  {line}" for line in broken))
    if args.report:
        print(f"report: {args.report / 'report.md'}")
    return 0
