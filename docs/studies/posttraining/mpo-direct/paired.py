"""The comparisons this study's README makes between two MPO runs (each study.json has every run against the SFT
model in `paired_vs_sft`), question by question from the right answers each study.json keeps, and the study's plot
(test accuracy against the learning rate; the DPO term and the implicit reward's ranking per step):

    python docs/studies/posttraining/mpo-direct/paired.py      # writes paired.json and mpo_direct.png beside this file
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))

from nativevlm.eval.compare import paired  # noqa: E402


def study(folder: str) -> dict:
    return json.loads((HERE / folder / "study.json").read_text())


def right(folder: str, seed: int) -> dict:
    s = study(folder)["right"]["mpo"][str(seed)]
    return {i: c == "1" for i, c in enumerate(s)}  # the test questions, in the same order, in every file


COMPARISONS = [(f"MPO {lr} against its SFT term alone", f"sft-only-lr{lr}", f"lr{lr}") for lr in ("1e-4", "3e-5")]
COMPARISONS += [("MPO 3e-5 against MPO 1e-4", "lr1e-4", "lr3e-5"), ("MPO 1e-5 against MPO 1e-4", "lr1e-4", "lr1e-5")]
COMPARISONS += [(f"SFT weight {w} against 1.0 (lr 1e-4)", "lr1e-4", f"sft{w}-lr1e-4") for w in ("0.1", "0")]

out = []
for what, a, b in COMPARISONS:
    for seed in (0, 1):
        r = paired(right(a, seed), right(b, seed))
        out.append({"what": what, "seed": seed, "a": a, "b": b, **r.to_dict()})
        print(f"{what:40s} seed {seed} {r.line()}")
(HERE / "paired.json").write_text(json.dumps(out, indent=1) + "\n")


def plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = {"1e-5": 1e-5, "3e-5": 3e-5, "1e-4": 1e-4}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    sft = study("lr1e-4")["accuracy"]["sft"]["0"]["overall"] * 100
    ax.axhline(sft, color="tab:gray", ls="--", label=f"SFT (quickstart) {sft:.1f}%")
    for prefix, colour, label in (("lr", "tab:orange", "MPO (0.8 DPO + 0.2 BCO-pair + 1.0 SFT)"),
                                  ("sft-only-lr", "tab:green", "its SFT term alone (0 / 0 / 1)")):
        xs, means = [], []
        for name, lr in rates.items():
            if not (HERE / f"{prefix}{name}").is_dir():
                continue
            acc = [study(f"{prefix}{name}")["accuracy"]["mpo"][s]["overall"] * 100 for s in ("0", "1")]
            ax.plot([lr] * 2, acc, "o", color=colour, alpha=0.6)
            xs.append(lr), means.append(sum(acc) / 2)
        ax.plot(xs, means, "-", color=colour, label=f"{label}, mean of 2 seeds")
    for w, marker in (("0.1", "s"), ("0", "^")):  # the SFT weight lowered, at the recipe's rate
        acc = [study(f"sft{w}-lr1e-4")["accuracy"]["mpo"][s]["overall"] * 100 for s in ("0", "1")]
        ax.plot([1e-4] * 2, acc, marker, color="tab:blue", alpha=0.35 + 0.5 * (w == "0"),
                label=f"MPO with SFT weight {w}" + (" (DPO + BCO-pair alone)" if w == "0" else ""))
    ax.set(xscale="log", xlabel="MPO learning rate (40 steps of 16 pairs)", ylabel="held-out test accuracy (%)",
           title="greedy accuracy on 1,200 test questions", ylim=(45, 55))
    ax.legend(fontsize=7)
    for ax, key, title in ((axes[1], "dpo", "DPO term per step (0.693 = no preference)"),
                           (axes[2], "reward_accuracy", "pairs whose chosen reply the implicit reward ranks first")):
        for prefix, colour, label in (("lr", "tab:orange", "MPO"), ("sft-only-lr", "tab:green", "SFT term alone"),
                                      ("sft0-lr", "tab:blue", "DPO + BCO-pair alone")):
            for seed, style in (("0", "-"), ("1", "--")):
                x, y = zip(*study(f"{prefix}1e-4")["mpo_curves"][seed][key])
                ax.plot(x, y, style, color=colour, lw=1.2, label=f"{label}, lr 1e-4, seed {seed}")
        ax.set(xlabel="optimizer step", title=title)
        ax.legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


plot(HERE / "mpo_direct.png")
