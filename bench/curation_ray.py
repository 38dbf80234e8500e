"""Curation throughput on Ray Data with 1 and 2 workers, against the single-process engine.

    .venv/bin/python bench/curation_ray.py [--scenes 300] [--shard-size 50]

Builds a synthetic corpus (`nativevlm.data.curate.synthetic`: a caption and a QA record per scene), shards it,
and curates it with the default stages (integrity, text, dedup, judge) once per engine, each Ray run in its own
process with a fresh local Ray of that many CPUs. Records/s counts the curation only (`run_ray`), not Ray's
start-up, which is reported beside it. Writes bench/results/curation_ray.json with the machine's load
average: on a shared machine the numbers move with everyone else's work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = """
import json, sys, time
from pathlib import Path
from nativevlm.data.curate.run import DEFAULT_STAGES, build_stages, curate_file
engine, workers, src, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
t0 = time.perf_counter()
if engine == "ray":
    from nativevlm.data.curate.ray_engine import start
    start(workers=workers)
t1 = time.perf_counter()
result = curate_file(src, out, build_stages(list(DEFAULT_STAGES)), engine=engine, workers=workers)
t2 = time.perf_counter()
print(json.dumps({"startup_s": round(t1 - t0, 2), "curate_s": round(t2 - t1, 2), "n_in": result.n_in,
                  "n_kept": len(result.kept),
                  "stage_seconds": {k: round(v, 2) for k, v in result.stage_seconds.items()}}))
"""


def run(engine: str, workers: int, src: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, engine, str(workers), str(src), str(out)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(engine=engine, workers=workers, records_per_s=round(row["n_in"] / row["curate_s"], 1))
    return row


def main() -> None:
    from nativevlm.data.curate import synthetic
    from nativevlm.data.shards import shard_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "curation_ray.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = synthetic.generate(tmp / "corpus", args.scenes, seed=0)
        shard_file(src, tmp / "shards", args.shard_size)
        load = os.getloadavg()
        rows = [run("local", 1, tmp / "shards", tmp / "local")]
        rows += [run("ray", w, tmp / "shards", tmp / f"ray{w}") for w in (1, 2)]
        for row in rows:
            print(f"{row['engine']:5s} x{row['workers']}: {row['records_per_s']:7.1f} records/s "
                  f"(curate {row['curate_s']} s, start-up {row['startup_s']} s)")
        assert len({r["n_kept"] for r in rows}) == 1, "the engines kept different records"
    result = {"command": "python bench/curation_ray.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_start": [round(x, 2) for x in load],
                          "note": "shared machine: other jobs ran alongside"},
              "shards": {"records": rows[0]["n_in"], "shard_size": args.shard_size},
              "stages": "integrity,text,dedup,judge", "runs": rows,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
