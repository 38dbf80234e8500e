"""Where does a trained VLM lose what the image shows? For a run's final model, on LLaVA JSON records of
the given families (answer in `meta.answer`): how well a nearest-centroid probe (2-fold) reads the answer
from the mean of the image's connector tokens, from the mean input pixel, and from each decoder layer's
state at the answer position; and the attention of the answer position on image tokens per layer.

    python bench/probe_reading.py runs/custom-vlm data/custom/train.json --families colour shape --n 800

A family whose answer the connector's tokens carry but the answer position does not is lost in the
decoder's reading; one the tokens do not carry was never learnt by the encoder (docs/learnability.md)."""
from __future__ import annotations

import argparse
import collections
import json
import math

import torch

from nativevlm.data.collate import IGNORE, Collator
from nativevlm.data.formats import read_samples
from nativevlm.data.image import ImageProcessor
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.model.loading import load_pretrained


def centroid_accuracy(X: list[torch.Tensor], y: list[str]) -> float:
    """Standardise, fit class means on even items, classify odd items by the nearest mean."""
    X = torch.stack(X).float()
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    classes = sorted(set(y))
    yi = torch.tensor([classes.index(a) for a in y])
    fit = torch.arange(len(y)) % 2 == 0
    means = torch.stack([X[fit & (yi == c)].mean(0) if (fit & (yi == c)).any() else torch.full_like(X[0], 1e9)
                         for c in range(len(classes))])
    return float((torch.cdist(X[~fit], means).argmin(1) == yi[~fit]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--families", nargs="+", default=["colour", "shape"])
    ap.add_argument("--n", type=int, default=800, help="records probed (of the given families)")
    a = ap.parse_args()
    model = load_pretrained(f"{a.run}/final").eval()
    tok = Tokenizer.load(f"{a.run}/final")
    samples = [s for s in read_samples(a.data)[0] if s.meta.get("family") in a.families][: a.n]
    collate = Collator(tok, ImageProcessor.from_config(model.config.vision, model.config.connector), 512)
    lm = model.language
    attn: list[torch.Tensor] = []

    def recording_attention(q, k, v, mask, causal):
        if k.shape[1] != q.shape[1]:
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], 1) for t in (k, v))
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        m = torch.ones(s.shape[-2:], dtype=torch.bool).tril() if mask is None else mask
        p = s.masked_fill(~m, float("-inf")).softmax(-1)
        attn.append(p)
        return p @ v

    lm.attention_fn = recording_attention
    states: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: states.append(o[0] if isinstance(o, tuple) else o))
             for layer in lm.layers]
    pix, tokens, answer_pos = [], [], collections.defaultdict(list)
    share = collections.defaultdict(list)
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            batch = collate(samples[i:i + 16])
            attn.clear()
            states.clear()
            out = model(batch)
            image = batch.input_ids == model.config.image_token_id
            first = (batch.targets != IGNORE).float().argmax(1)  # predicts the first answer token
            for j in range(batch.input_ids.shape[0]):
                for layer, p in enumerate(attn):
                    share[layer].append(float(p[j, :, first[j]][:, image[j]].sum(-1).mean()))
                for layer, h in enumerate(states):
                    answer_pos[layer].append(h[j, first[j]])
            tokens += [f.mean(0) for f in out.image_features]
            pix += [p.flatten(1).mean(1) for p in batch.pixel_values]
    for h in hooks:
        h.remove()
    report = {"attention_on_image": [round(sum(v) / len(v), 3) for _, v in sorted(share.items())]}
    fams = [s.meta["family"] for s in samples]
    answers = [str(s.meta["answer"]) for s in samples]
    for fam in a.families:
        sel = [i for i, f in enumerate(fams) if f == fam]
        y = [answers[i] for i in sel]
        report[fam] = {"n": len(sel), "pixel_mean": centroid_accuracy([pix[i] for i in sel], y),
                       "connector_tokens": centroid_accuracy([tokens[i] for i in sel], y),
                       "answer_position": [centroid_accuracy([answer_pos[L][i] for i in sel], y)
                                           for L in sorted(answer_pos)]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
