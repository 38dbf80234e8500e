"""The comparisons this study's README makes between two trained arms (not against SFT: each thinking.json has
those in `paired_vs_sft`), question by question from the right answers each thinking.json keeps:

    python docs/studies/posttraining/thinking/mpo/lr/paired.py      # writes paired.json beside this file
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[5]))

from nativevlm.eval.compare import paired  # noqa: E402


def arms(folder: str) -> dict:
    return json.loads((HERE / folder / "thinking.json").read_text())["gspo_thinking"]


def right(arm: dict) -> dict:
    return {i: c == "1" for i, c in enumerate(arm["right"])}  # the same questions, in the same order, in every file


COMPARISONS = []  # (what, folder A, arm A, folder B, arm B), B - A
for seed in (0, 1):
    for mode in ("think=True", "think=False"):
        for folder, pairs in (("thinking", ""), ("both", "0.5 direct, ")):
            mpo = f"MPO (strict pairs, {pairs}lr 3e-05) seed {seed}, {mode}"
            COMPARISONS += [
                (f"MPO 3e-5 against its SFT term alone ({folder} pairs)",
                 "sft-only" if folder == "thinking" else "sft-only-both",
                 f"MPO (strict pairs, {pairs}lr 3e-05, weights 0/0/1) seed {seed}, {mode}", folder, mpo),
                (f"MPO 3e-5 against MPO 1e-4 ({folder} pairs)", folder,
                 f"MPO (strict pairs{', 0.5 direct' if pairs else ''}) seed {seed}, {mode}", folder, mpo)]
        for folder, share in (("cascade", ""), ("cascade-both", ", 0.5 direct")):
            COMPARISONS.append((f"MPO 3e-5 + GSPO against GSPO alone ({folder})", folder,
                                f"GSPO (strict reward{share}) seed {seed}, {mode}", folder,
                                f"MPO + GSPO (strict reward{share}, MPO lr 3e-05) seed {seed}, {mode}"))

out = []
for what, fa, a, fb, b in COMPARISONS:
    r = paired(right(arms(fa)[a]), right(arms(fb)[b]))
    out.append({"what": what, "a": f"{fa}: {a}", "b": f"{fb}: {b}", **r.to_dict()})
    print(f"{what:50s} {b.rsplit(') ', 1)[1]:22s} {r.line()}")
(HERE / "paired.json").write_text(json.dumps(out, indent=1) + "\n")
