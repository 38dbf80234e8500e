"""How much a model's yes/no answers depend on the image: the area under the ROC curve (AUC) of
logit("yes") - logit("no") at the answer position against the right answer, over the yes/no questions of a
LLaVA JSON file (records with `meta.family` "yes/no"). 0.5 means no signal; greedy answers can all be the
same ("yes") while the AUC is above 0.5. Where a record lists its objects (`meta.objects`, [colour, shape]
pairs, as the learnability benchmark's `multi` set does) and the question ends in "<colour> <shape>?", the
AUC is also given against the asked colour's presence, the asked shape's and both.

    python bench/yes_no_signal.py RUN_OR_MODEL_DIR DATA.json [--limit 400]
    python bench/yes_no_signal.py RUN_OR_MODEL_DIR DATA.json --probe TRAIN.json [--json OUT.json]

`--probe` (records with `meta.objects`) asks where the answer is lost, with linear probes (logistic
regression) fitted on TRAIN.json's yes/no questions and scored (AUC) on DATA.json's:
- the image tokens (their mean, as the LM's input and after each layer): does the image say which colours it
  holds? (one probe per colour, the mean AUC);
- the answer position after each LM layer: does it hold the asked colour's presence, the asked shape's, the
  answer?
- the answer position's attention, per layer and head: its share on the image tokens and on the asked colour
  word of the question.
A model whose image tokens know the colours but whose answer position does not know whether the asked one is
there has not learnt to bring the question's word and the image together.

A run folder is read at its `final/`. Prints its findings; `--json` also writes them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nativevlm import NativeVLM  # noqa: E402
from nativevlm.data.collate import encode_sample  # noqa: E402
from nativevlm.data.formats import read_samples  # noqa: E402
from nativevlm.data.image import ImageProcessor  # noqa: E402
from nativevlm.data.tokenizer import Tokenizer  # noqa: E402
from nativevlm.eval.diagnostics import recorded_attention  # noqa: E402


def auc(scores: list[float], positive: list[bool]) -> float:
    """P(score of a positive > score of a negative), ties counted half (the Mann-Whitney statistic)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return float("nan")
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def probe_auc(x_train: torch.Tensor, y_train: list[bool], x_test: torch.Tensor, y_test: list[bool],
              l2: float = 1e-2) -> float:
    """Held-out AUC of an L2-regularised logistic regression (features standardised on the train split)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(a.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    y = torch.tensor(y_train, dtype=torch.float32)
    opt = torch.optim.LBFGS([w, bias], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a @ w + bias, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return auc((b @ w + bias).tolist(), y_test)


def yes_no_rows(model, tok, processor, path: str, limit: int, probe: bool = False) -> list[dict]:
    """One row per yes/no question of `path` (at most `limit`): the yes-no logit gap, the label, the asked
    words' presence; with `probe`, the hidden states and attention the probes read."""
    yes, no = tok.encode("yes"), tok.encode("no")
    if len(yes) != 1 or len(no) != 1:
        sys.exit(f"'yes' and 'no' are not one token each in the model's tokenizer ({yes}, {no})")
    samples, _ = read_samples(path)
    lm = model.language
    rows = []
    for s in samples:
        if s.meta.get("family") != "yes/no":
            continue
        answer = s.messages[-1]["content"].strip().lower().rstrip(".")
        question = s.messages[0]["content"]
        s.messages = s.messages[:-1]
        enc = encode_sample(s, tok, processor, add_generation_prompt=True)
        ids = torch.tensor([enc.input_ids])
        states: list[torch.Tensor] = []
        attention: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(lambda m, i, o: states.append(o[0][0])) for layer in lm.layers] \
            if probe else []
        # attention is recorded only for the probes (the plain AUCs need the last logits alone)
        with torch.no_grad(), (recorded_attention(model, attention) if probe else contextlib.nullcontext()):
            out = model(ids, pixel_values=enc.pixel_values)
        for h in hooks:
            h.remove()
        logits = out.logits[0, -1]
        row = {"score": (logits[yes[0]] - logits[no[0]]).item(), "label": answer == "yes"}
        asked = re.search(r"(\w+) (\w+)\?\s*$", question)
        if asked and "objects" in s.meta:
            colour, shape = asked.groups()
            row["colour present"] = any(o[0] == colour for o in s.meta["objects"])
            row["shape present"] = any(o[1] == shape for o in s.meta["objects"])
            row["both present"] = row["colour present"] and row["shape present"]
            if probe:
                image = ids[0] == model.config.image_token_id
                word = set(tok.encode(" " + colour)) | set(tok.encode(colour))
                at_word = torch.tensor([i in word for i in ids[0].tolist()])
                features = out.image_features[0]
                row.update(
                    colours={o[0] for o in s.meta["objects"]},
                    image_in=features.reshape(-1, features.shape[-1]).mean(0),
                    image_out=[h[image].mean(0) for h in states],
                    answer_states=[h[-1] for h in states],
                    on_image=[a[0][:, image].sum(-1) for a in attention],
                    on_word=[a[0][:, at_word].sum(-1) for a in attention],
                )
        rows.append(row)
        if len(rows) >= limit:
            break
    if not rows:
        sys.exit(f"{path}: no record with meta.family 'yes/no'")
    return rows


def probes(train: list[dict], test: list[dict]) -> dict:
    """The probes' held-out AUCs and the attention shares (see the module docstring)."""
    if not all("colours" in r for r in train + test):
        sys.exit("--probe needs meta.objects on every yes/no record and questions ending in '<colour> <shape>?'")
    n_layers = len(train[0]["answer_states"])
    colours = sorted(set().union(*(r["colours"] for r in train)))

    def presence(get) -> float:
        x_tr, x_te = torch.stack([get(r) for r in train]), torch.stack([get(r) for r in test])
        return sum(probe_auc(x_tr, [c in r["colours"] for r in train], x_te, [c in r["colours"] for r in test])
                   for c in colours) / len(colours)

    out = {"image tokens: each colour's presence (mean AUC)": {
        "LM input": round(presence(lambda r: r["image_in"]), 3),
        **{f"after layer {i}": round(presence(lambda r, i=i: r["image_out"][i]), 3) for i in range(n_layers)}}}
    for key in ("colour present", "shape present", "label"):
        name = "the answer" if key == "label" else f"the asked {key.split()[0]}'s presence"
        out[f"answer position: {name} (AUC)"] = {
            f"after layer {i}": round(probe_auc(torch.stack([r["answer_states"][i] for r in train]),
                                                [r[key] for r in train],
                                                torch.stack([r["answer_states"][i] for r in test]),
                                                [r[key] for r in test]), 3)
            for i in range(n_layers)}
    for key, name in (("on_image", "on the image tokens"), ("on_word", "on the asked colour word")):
        out[f"answer position's attention {name}, per head"] = {
            f"layer {i}": [round(x, 3) for x in torch.stack([r[key][i] for r in test]).mean(0).tolist()]
            for i in range(n_layers)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a run folder (its final/ is read) or a saved model folder")
    ap.add_argument("data", help="LLaVA JSON with meta.family on each record")
    ap.add_argument("--limit", type=int, default=400, help="at most this many yes/no questions")
    ap.add_argument("--probe", metavar="TRAIN.json", help="fit linear probes on this file's yes/no questions")
    ap.add_argument("--probe-limit", type=int, default=1500, help="at most this many to fit the probes on")
    ap.add_argument("--json", metavar="OUT.json", help="also write the findings here")
    args = ap.parse_args()
    folder = Path(args.model)
    folder = folder / "final" if (folder / "final").is_dir() else folder
    model = NativeVLM.from_pretrained(folder).eval()
    tok = Tokenizer.load(folder)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    rows = yes_no_rows(model, tok, processor, args.data, args.limit, probe=bool(args.probe))
    scores = [r["score"] for r in rows]
    found: dict = {"model": str(folder), "data": args.data, "questions": len(rows),
                   "greedy yes": sum(x > 0 for x in scores), "right answer yes": sum(r["label"] for r in rows),
                   "AUC against the right answer": round(auc(scores, [r["label"] for r in rows]), 3)}
    for key in ("colour present", "shape present", "both present"):
        if all(key in r for r in rows):
            found[f"AUC against {key}"] = round(auc(scores, [r[key] for r in rows]), 3)
    if args.probe:
        found["probes"] = probes(yes_no_rows(model, tok, processor, args.probe, args.probe_limit, probe=True), rows)
    for key, value in found.items():
        if key != "probes":
            print(f"{key}: {value}")
    for key, table in found.get("probes", {}).items():
        print(f"{key}:")
        for where, value in table.items():
            print(f"  {where}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
