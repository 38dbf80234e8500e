"""A plain from-scratch image-QA model: the yardstick our native VLM's learning is measured against.

What a practitioner would write in 60 lines of PyTorch: a ViT over 8-px patches of the image resized to a
fixed square, a transformer over [image tokens; question words] (bidirectional), the answer read as a class
from the pooled state. Everything from random init, one stage, everything trainable, AdamW at a constant
learning rate. It reads the same LLaVA JSON through our readers (`nativevlm.data.formats.read_samples`), one
(question, answer) pair per user/assistant turn, and reports held-out accuracy per `meta.family` against
samples seen and training seconds, like our learning curves.

    python bench/peer.py --train data/learnsets/solo/train.json --eval data/learnsets/solo/test.json \
        --minutes 8 --out runs/peer-solo.json
"""
from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from nativevlm.data.formats import read_samples
from nativevlm.data.sample import strip_image_markers
from nativevlm.eval.matching import majority_counts, normalize_answer

WORD = re.compile(r"[a-z0-9]+")


def read_turns(path: str) -> tuple[list[tuple[str, str, str, str, str]], Counter]:
    """(image path, question, answer, family, record id) for every user -> assistant turn of single-image
    records; what is skipped is counted by reason."""
    samples, _ = read_samples(path)
    out, skipped = [], Counter()
    for s in samples:
        if len(s.images) != 1:
            skipped["not exactly one image"] += 1
            continue
        fam = str(s.meta.get("family", "unknown"))
        msgs = [m for m in s.messages if m["role"] != "system"]
        for q, a in zip(msgs[::2], msgs[1::2]):
            if q["role"] == "user" and a["role"] == "assistant":
                out.append((s.images[0], strip_image_markers(q["content"]), a["content"].strip(), fam, s.id))
            else:
                skipped["turns out of order"] += 1
    return out, skipped


def answer_priors(turns) -> dict[str, float]:
    """Per family, the share of its most common answer: what always giving that answer scores."""
    return {f: n / t for f, (n, t) in majority_counts((t[3], t[2]) for t in turns).items()}


def load_images(paths: list[str], size: int) -> torch.Tensor:
    """uint8 [N, 3, size, size]; each distinct file decoded once."""
    cache: dict[str, np.ndarray] = {}
    arr = np.empty((len(paths), 3, size, size), np.uint8)
    for i, p in enumerate(paths):
        if p not in cache:
            cache[p] = np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)).transpose(2, 0, 1)
        arr[i] = cache[p]
    return torch.from_numpy(arr)


READOUTS = ("mean", "last", "last+mean")


class Peer(nn.Module):
    def __init__(self, vocab: int, classes: int, image_size: int, patch: int = 8, dim: int = 192,
                 vision_layers: int = 3, fusion_layers: int = 3, heads: int = 4, max_words: int = 32,
                 readout: str = "mean", causal: bool = False):
        """`readout`: the answer from the mean over every position (`mean`, the peer as shipped), from the
        question's last word (`last`, where a decoder reads its answer), or from the last word with a second
        head on the mean trained beside it (`last+mean`: its loss is added, its answer unused); `causal`: fusion
        attends only to earlier positions, as a decoder does. All but the first are ablations
        (docs/learnability.md, points 13-14)."""
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, not {readout!r}")
        self.patch, self.readout, self.causal = patch, readout, causal
        n = (image_size // patch) ** 2
        self.patch_embed = nn.Linear(3 * patch * patch, dim)
        self.image_pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.word_embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.word_pos = nn.Parameter(torch.randn(1, max_words, dim) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(2, dim) * 0.02)

        def stack(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        self.vision, self.fusion = stack(vision_layers), stack(fusion_layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        if readout == "last+mean":
            self.mean_norm, self.mean_head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def fuse(self, images: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion layers' states over [image tokens; words] and the padding mask (True: padding)."""
        b, c, h, w = images.shape
        p = self.patch
        x = images.float().div(127.5).sub(1).view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.vision(self.patch_embed(x.reshape(b, -1, c * p * p)) + self.image_pos + self.type_embed[0])
        t = self.word_embed(words) + self.word_pos[:, : words.shape[1]] + self.type_embed[1]
        pad = torch.cat([torch.zeros(b, x.shape[1], dtype=torch.bool), words == 0], dim=1)
        n = pad.shape[1]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=pad.device), 1) if self.causal else None
        return self.fusion(torch.cat([x, t], dim=1), mask=mask, src_key_padding_mask=pad), pad

    def heads(self, images: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(the answer's logits, the `last+mean` read-out's mean-pool head's logits or None)."""
        z, pad = self.fuse(images, words)
        keep = (~pad).unsqueeze(-1).float()
        mean = (z * keep).sum(1) / keep.sum(1)
        if self.readout == "mean":
            return self.head(self.norm(mean)), None
        last = z[torch.arange(z.shape[0]), (~pad).sum(1) - 1]  # words are left-aligned, padding after them
        aux = self.mean_head(self.mean_norm(mean)) if self.readout == "last+mean" else None
        return self.head(self.norm(last)), aux

    def forward(self, images: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        return self.heads(images, words)[0]

    def loss(self, images: torch.Tensor, words: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the answer, plus the mean-pool head's for `last+mean`."""
        logits, aux = self.heads(images, words)
        loss = nn.functional.cross_entropy(logits, labels)
        return loss if aux is None else loss + nn.functional.cross_entropy(aux, labels)


class Encoded:
    """A split as tensors: images, padded word ids, answer classes (-1: an answer never seen in training)."""

    def __init__(self, turns, vocab: dict, classes: dict, image_size: int, max_words: int):
        self.turns = turns
        self.images = load_images([t[0] for t in turns], image_size)
        ids = [[vocab.get(w, 1) for w in WORD.findall(t[1].lower())][:max_words] for t in turns]
        self.words = torch.zeros(len(turns), max(map(len, ids)), dtype=torch.long)
        for i, row in enumerate(ids):
            self.words[i, : len(row)] = torch.tensor(row)
        self.labels = torch.tensor([classes.get(normalize_answer(t[2]), -1) for t in turns])
        self.families = [t[3] for t in turns]


@torch.no_grad()
def predict(model: Peer, data: Encoded, batch: int = 256) -> torch.Tensor:
    """The answer class of every turn."""
    model.eval()
    pred = torch.cat([model(data.images[i:i + batch], data.words[i:i + batch]).argmax(-1)
                      for i in range(0, len(data.labels), batch)])
    model.train()
    return pred


def accuracy(model: Peer, data: Encoded, batch: int = 256, pred: torch.Tensor | None = None) -> dict[str, float]:
    pred = predict(model, data, batch) if pred is None else pred
    right = (pred == data.labels).tolist()
    per: dict[str, list] = defaultdict(list)
    for fam, r in zip(data.families, right):
        per[fam].append(r)
    out = {f"acc/{f}": sum(v) / len(v) for f, v in sorted(per.items())}
    out["acc/all"] = sum(right) / len(right)
    return out


def train_peer(train_path: str, eval_path: str, minutes: float, image_size: int = 64, batch: int = 64,
               lr: float = 1e-3, eval_every: int = 4096, max_samples: int = 0, seed: int = 0,
               test_path: str = "", readout: str = "mean", causal: bool = False, log=print) -> dict:
    """Train the peer for `minutes` of training time (evaluation excluded) or `max_samples`; returns the
    curve on `eval_path` (samples, train_seconds, acc/<family>) with that split's answer priors, and with
    `test_path` the final model's accuracy on that split (`test`) and its answers (`test_answers`: [record id,
    answer] per turn)."""
    torch.manual_seed(seed)
    train_turns, skipped = read_turns(train_path)
    eval_turns, _ = read_turns(eval_path)
    if skipped:
        log(f"peer: skipped {dict(skipped)} of {train_path}")
    words = Counter(w for t in train_turns for w in WORD.findall(t[1].lower()))
    vocab = {w: i + 2 for i, w in enumerate(sorted(words))}  # 0 pad, 1 unknown
    answers = sorted({normalize_answer(t[2]) for t in train_turns})
    classes = {a: i for i, a in enumerate(answers)}
    max_words = max(len(WORD.findall(t[1].lower())) for t in train_turns + eval_turns)
    train = Encoded(train_turns, vocab, classes, image_size, max_words)
    held = Encoded(eval_turns, vocab, classes, image_size, max_words)
    model = Peer(len(vocab) + 2, len(classes), image_size, max_words=max_words, readout=readout, causal=causal)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    curve = [{"samples": 0, "train_seconds": 0.0, **accuracy(model, held)}]
    seen, seconds, next_eval = 0, 0.0, eval_every
    order = torch.randperm(len(train.labels), generator=g)
    pos = 0
    while seconds < minutes * 60 and (not max_samples or seen < max_samples):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(train.labels), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        t0 = time.perf_counter()
        loss = model.loss(train.images[idx], train.words[idx], train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t0
        seen += batch
        if seen >= next_eval:
            next_eval += eval_every
            curve.append({"samples": seen, "train_seconds": round(seconds, 2), "loss": float(loss.detach()), **accuracy(model, held)})
            log(f"peer: {seen} samples, {seconds / 60:.1f} min, " +
                ", ".join(f"{k[4:]} {v:.1%}" for k, v in curve[-1].items() if k.startswith("acc/")))
    if curve[-1]["samples"] != seen:
        curve.append({"samples": seen, "train_seconds": round(seconds, 2), **accuracy(model, held)})
    out = {"model": "peer", "parameters": sum(p.numel() for p in model.parameters()), "curve": curve,
           "priors": answer_priors(eval_turns), "final": curve[-1]}
    if test_path:
        test_turns, _ = read_turns(test_path)
        test = Encoded(test_turns, vocab, classes, image_size, max_words)
        pred = predict(model, test)
        out["test"] = accuracy(model, test, pred=pred)
        out["test_answers"] = [[t[4], answers[i]] for t, i in zip(test_turns, pred.tolist())]
        out["test_priors"] = answer_priors(test_turns)
        out["test_questions"] = len(test_turns)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--minutes", type=float, default=8.0, help="training time (evaluation excluded)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=4096)
    ap.add_argument("--readout", choices=READOUTS, default="mean",
                    help="answer from the mean over all positions, or from the question's last word (ablation; "
                         "last+mean: with a mean-pool head trained beside it)")
    ap.add_argument("--causal", action="store_true", help="causal fusion attention, as a decoder's (ablation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", default="", help="a held-out split: the final model's accuracy on it and its answers")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = train_peer(a.train, a.eval, a.minutes, a.image_size, eval_every=a.eval_every, seed=a.seed,
                     readout=a.readout, causal=a.causal, test_path=a.test)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["final"]))


if __name__ == "__main__":
    main()
