"""The plain peer with a decoder's read-out: does its lead on `multi` survive being read as a decoder reads?

The peer (`bench/peer.py`) reads its answer as a class from the mean of every state of a bidirectional
transformer over [image tokens; question words]. A decoder-only VLM reads its answer from one position (the
last prompt token), under a causal mask. This runs the peer six ways on the same data and seed, for the same
number of training samples (not minutes, so runs sharing the machine stay comparable):

    read-out  x  attention
    mean         bidirectional   (the peer as shipped)
    last         bidirectional
    mean         causal
    last         causal          (a decoder's: the question's last word, causal)
    last+mean    both            (answered from the last word, a mean-pool head trained beside it)

and reports held-out accuracy per family against samples seen, and on the test split how often a colour or
object answer names something the image holds at all (`presence`, as `bench/learnability.py` reports it).

    python bench/peer_readout.py --out bench/results/peer_readout --work runs/peer_readout --samples 10240 --seeds 0

Writes `<out>/peer_readout.json` and `<out>/peer_readout.png`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

VARIANTS = {"mean, bidirectional": ("mean", False), "last, bidirectional": ("last", False),
            "mean, causal": ("mean", True), "last, causal": ("last", True),
            "last+mean, bidirectional": ("last+mean", False), "last+mean, causal": ("last+mean", True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True, help="where the generated set is written")
    ap.add_argument("--set", default="multi", help="a set of bench/qa_sets.py")
    ap.add_argument("--train", type=int, default=16000, help="training questions (the benchmark's default)")
    ap.add_argument("--samples", type=int, default=12288, help="training samples per run")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--eval-every", type=int, default=2048)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from learnability import presence
    from peer import train_peer
    from qa_sets import write_set

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_set(args.set, Path(args.work) / "data", {"train": args.train, "val": 400, "test": 1500})
    path = out / "peer_readout.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(command=" ".join(["python", "bench/peer_readout.py", *sys.argv[1:]]), set=args.set,
                  samples=args.samples, image_size=args.image_size)
    runs = result.setdefault("runs", {})
    for seed in args.seeds:
        for label, (readout, causal) in VARIANTS.items():
            key = f"{label}, seed {seed}"
            if key in runs:
                continue
            print(f"== {key}", flush=True)
            t0 = time.time()
            r = train_peer(str(data["train"]), str(data["val"]), minutes=1e9, image_size=args.image_size,
                           eval_every=args.eval_every, max_samples=args.samples, seed=seed,
                           test_path=str(data["test"]), readout=readout, causal=causal,
                           log=lambda m: print(m, flush=True))
            answers = r.pop("test_answers")
            runs[key] = {"readout": readout, "causal": causal, "seed": seed, **r,
                         "presence": presence(data["test"], answers), "wall_seconds": round(time.time() - t0, 1)}
            path.write_text(json.dumps(result, indent=1) + "\n")  # after each run: a stopped run loses one
    plot(result, out / "peer_readout.png")
    table(result)


def table(result: dict) -> None:
    fams = sorted({k[4:] for r in result["runs"].values() for k in r["test"] if k.startswith("acc/")} - {"all"})
    print("| read-out, attention, seed | " + " | ".join(fams) + " | colour answers naming a colour of the image |")
    for key, r in result["runs"].items():
        pres = r["presence"].get("colour", {}).get("present")
        print(f"| {key} | " + " | ".join(f"{100 * r['test'][f'acc/{f}']:.1f}" for f in fams) +
              f" | {'' if pres is None else f'{100 * pres:.1f}'} |")


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = ["colour", "count", "shape", "yes/no"]
    fig, axes = plt.subplots(1, len(fams), figsize=(4 * len(fams), 3.4), sharex=True)
    colours = dict(zip(VARIANTS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")))
    for key, r in result["runs"].items():
        label = key.rsplit(", seed", 1)[0]
        style = "-" if r["seed"] == min(x["seed"] for x in result["runs"].values()) else "--"
        for ax, fam in zip(axes, fams):
            pts = [(c["samples"], 100 * c[f"acc/{fam}"]) for c in r["curve"] if f"acc/{fam}" in c]
            ax.plot(*zip(*pts), style, color=colours[label], label=key)
    any_run = next(iter(result["runs"].values()))
    for ax, fam in zip(axes, fams):
        prior = any_run["priors"].get(fam)
        if prior is not None:
            ax.axhline(100 * prior, color="grey", ls=":", lw=1)
        ax.set_title(f"{fam} (val)")
        ax.set_xlabel("training samples")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("accuracy % (dotted: answer prior)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"the plain peer on `{result['set']}`, read out {len(VARIANTS)} ways (val curves; the test split's "
                 "accuracy is in the JSON)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
