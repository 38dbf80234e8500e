"""How much a model's yes/no answers depend on the image: the area under the ROC curve (AUC) of
logit("yes") - logit("no") at the answer position against the right answer, over the yes/no questions of a
LLaVA JSON file (records with `meta.family` "yes/no"). 0.5 means no signal; greedy answers can all be the
same ("yes") while the AUC is above 0.5. Where a record lists its objects (`meta.objects`, [colour, shape]
pairs, as the learnability benchmark's `multi` set does) and the question ends in "<colour> <shape>?", the
AUC is also given against the asked colour's presence, the asked shape's and both.

    python bench/yes_no_signal.py RUN_OR_MODEL_DIR DATA.json [--limit 400]

A run folder is read at its `final/`. Prints one line per AUC and writes nothing.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nativevlm import NativeVLM  # noqa: E402
from nativevlm.data.collate import encode_sample  # noqa: E402
from nativevlm.data.formats import read_samples  # noqa: E402
from nativevlm.data.image import ImageProcessor  # noqa: E402
from nativevlm.data.tokenizer import Tokenizer  # noqa: E402


def auc(scores: list[float], positive: list[bool]) -> float:
    """P(score of a positive > score of a negative), ties counted half (the Mann-Whitney statistic)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return float("nan")
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a run folder (its final/ is read) or a saved model folder")
    ap.add_argument("data", help="LLaVA JSON with meta.family on each record")
    ap.add_argument("--limit", type=int, default=400, help="at most this many yes/no questions")
    args = ap.parse_args()
    folder = Path(args.model)
    folder = folder / "final" if (folder / "final").is_dir() else folder
    model = NativeVLM.from_pretrained(folder).eval()
    tok = Tokenizer.load(folder)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    yes, no = tok.encode("yes"), tok.encode("no")
    if len(yes) != 1 or len(no) != 1:
        sys.exit(f"{folder}: 'yes' and 'no' are not one token each in its tokenizer ({yes}, {no})")
    samples, _ = read_samples(args.data)
    rows = []
    for s in samples:
        if s.meta.get("family") != "yes/no":
            continue
        answer = s.messages[-1]["content"].strip().lower().rstrip(".")
        question = s.messages[0]["content"]
        s.messages = s.messages[:-1]
        enc = encode_sample(s, tok, processor, add_generation_prompt=True)
        with torch.no_grad():
            logits = model(torch.tensor([enc.input_ids]), pixel_values=enc.pixel_values).logits[0, -1]
        row = {"score": (logits[yes[0]] - logits[no[0]]).item(), "label": answer == "yes"}
        asked = re.search(r"(\w+) (\w+)\?\s*$", question)
        if asked and "objects" in s.meta:
            colour, shape = asked.groups()
            row["colour present"] = any(o[0] == colour for o in s.meta["objects"])
            row["shape present"] = any(o[1] == shape for o in s.meta["objects"])
            row["both present"] = row["colour present"] and row["shape present"]
        rows.append(row)
        if len(rows) >= args.limit:
            break
    if not rows:
        sys.exit(f"{args.data}: no record with meta.family 'yes/no'")
    scores = [r["score"] for r in rows]
    print(f"{len(rows)} yes/no questions; greedy 'yes' on {sum(x > 0 for x in scores)}; "
          f"right answer 'yes' on {sum(r['label'] for r in rows)}")
    print(f"AUC against the right answer: {auc(scores, [r['label'] for r in rows]):.3f}")
    for key in ("colour present", "shape present", "both present"):
        if all(key in r for r in rows):
            print(f"AUC against {key}: {auc(scores, [r[key] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
