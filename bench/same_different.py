"""Same or different: how fast does a from-scratch decoder learn to compare a word of the question with one
given earlier in the context? The decoder-side half of a yes/no question such as "Is there a teal shape?",
with no image and no vision encoder in the way.

    python bench/same_different.py [--task pair|objects] [--steps 1500] [--seeds 0 1 2] [--arms ...] [--out DIR]

Each sequence is synthetic tokens: 3 filler words, "colour is" c1, 4 fillers, "is there" c2, 3 fillers, "?"
(8 colours, c1 == c2 half the time), and the answer (yes / no) is read at the last position with a
cross-entropy loss there only. Batch 16, AdamW (weight decay 0.05), constant learning rate, held-out accuracy
on 1,000 sequences every 100 steps. Arms, each of width 192 and 3 layers unless said otherwise:
- `plain causal`: `nn.TransformerEncoder` (pre-LayerNorm, GELU, learned absolute positions, 4 heads, an
  untied head), causal mask, the last position's state;
- `plain bidirectional, pooled`: the same, no mask, the mean over positions (the learnability peer's read-out);
- `ours`: `LanguageModel` as the BYOD recipe has it (RMSNorm, SwiGLU, RoPE, 3 heads, tied embeddings);
- `ours + qk_norm`; `ours + qk_norm + embedding_multiplier 4`; `... x sqrt(192), lr 5e-4`;
- that last one with a 4th layer, or with 4 heads of 48 instead of 3 of 64.
`--task objects` asks instead whether a colour-shape pair is one of 2-4 objects written out as words
("Can you see a cobalt bar?" with perfect perception; see `objects_batch`).
Writes same_different.json (every curve) and same_different.png.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nativevlm import LanguageConfig, LanguageModel  # noqa: E402

V, C, YES, NO, WIDTH = 64, 8, 2, 3, 192


def batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Task `pair`: "colour is" c1 ... "is there" c2 ?, yes when c1 == c2."""
    c1 = torch.randint(0, C, (n,), generator=g)
    same = torch.rand(n, generator=g) < 0.5
    c2 = torch.where(same, c1, (c1 + torch.randint(1, C, (n,), generator=g)) % C)
    filler = lambda k: torch.randint(30, 60, (n, k), generator=g)  # noqa: E731
    word = lambda w: torch.full((n, 1), w)  # noqa: E731
    x = torch.cat([filler(3), word(20), word(21), (c1 + 10)[:, None], filler(4), word(22), (c2 + 10)[:, None],
                   filler(3), word(23)], 1)
    return x, torch.where(same, YES, NO)


def objects_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Task `objects`, the text half of "Can you see a cobalt bar?" over several objects: 2-4 objects, each a
    colour word and a shape word (5 colours, 4 shapes, written as "c s ,"; empty slots up to 4 are a "none"
    pair), then "is there" c s ?, yes (58%, as in the benchmark's `multi`) when that pair is one of the
    objects, else a pair that is not, drawn at random."""
    k = torch.randint(2, 5, (n,), generator=g)
    col, shp = torch.randint(0, 5, (n, 4), generator=g), torch.randint(0, 4, (n, 4), generator=g)
    used = torch.arange(4)[None] < k[:, None]
    col_tok, shp_tok = torch.where(used, col + 10, 24), torch.where(used, shp + 40, 24)
    yes = torch.rand(n, generator=g) < 0.58
    pick = (torch.rand(n, generator=g) * k).long()
    qc, qs = col[torch.arange(n), pick], shp[torch.arange(n), pick]
    for i in (~yes).nonzero().flatten().tolist():  # a pair absent from the image
        while True:
            c, s = torch.randint(0, 5, (1,), generator=g).item(), torch.randint(0, 4, (1,), generator=g).item()
            if not any(col[i, j] == c and shp[i, j] == s for j in range(k[i])):
                qc[i], qs[i] = c, s
                break
    sep = torch.full((n, 4), 25)
    objs = torch.stack([col_tok, shp_tok, sep], 2).flatten(1)
    filler = lambda m: torch.randint(30, 40, (n, m), generator=g)  # noqa: E731
    word = lambda w: torch.full((n, 1), w)  # noqa: E731
    x = torch.cat([filler(2), word(20), objs, filler(2), word(22), (qc + 10)[:, None], (qs + 40)[:, None],
                   word(23)], 1)
    return x, torch.where(yes, YES, NO)


TASKS = {"pair": batch, "objects": objects_batch}
PRIOR = {"pair": 0.5, "objects": 0.58}
TITLE = {"pair": "same or different: is the colour asked about the colour given?",
         "objects": "is the colour-shape pair asked about one of the 2-4 objects given?"}


class Ours(nn.Module):
    def __init__(self, **overrides):
        super().__init__()
        cfg = dict(vocab_size=V, hidden_size=WIDTH, num_layers=3, num_heads=3, num_kv_heads=3, intermediate_size=576,
                   max_position_embeddings=64)
        self.lm = LanguageModel(LanguageConfig(**{**cfg, **overrides}))

    def forward(self, x):
        return self.lm(x).logits[:, -1]


class Plain(nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal
        self.emb = nn.Embedding(V, WIDTH)
        self.pos = nn.Parameter(torch.randn(1, 32, WIDTH) * 0.02)
        layer = nn.TransformerEncoderLayer(WIDTH, 4, 4 * WIDTH, 0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, V)

    def forward(self, x):
        h = self.emb(x) + self.pos[:, :x.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1]) if self.causal else None
        h = self.norm(self.enc(h, mask=mask, is_causal=self.causal))
        return self.head(h[:, -1] if self.causal else h.mean(1))


ARMS = {
    "plain causal": (lambda: Plain(True), 1e-3),
    "plain bidirectional, pooled": (lambda: Plain(False), 1e-3),
    "ours": (lambda: Ours(), 1e-3),
    "ours + qk_norm": (lambda: Ours(qk_norm=True), 1e-3),
    "ours + qk_norm + embedding x4": (lambda: Ours(qk_norm=True, embedding_multiplier=4.0), 1e-3),
    "ours + qk_norm + embedding x sqrt(d), lr 5e-4": (lambda: Ours(qk_norm=True, embedding_multiplier=math.sqrt(WIDTH)),
                                                       5e-4),
    # the previous arm (the BYOD recipe's decoder) with one more layer, or with 4 heads of 48
    "... + a 4th layer": (lambda: Ours(qk_norm=True, embedding_multiplier=math.sqrt(WIDTH), num_layers=4), 5e-4),
    "... + 4 heads": (lambda: Ours(qk_norm=True, embedding_multiplier=math.sqrt(WIDTH), num_heads=4,
                                   num_kv_heads=4), 5e-4),
}


def train(make, lr: float, seed: int, steps: int, task: str = "pair") -> list[float]:
    batch = TASKS[task]
    torch.manual_seed(seed)
    model = make()
    g, gv = torch.Generator().manual_seed(1000 + seed), torch.Generator().manual_seed(7)
    xv, yv = batch(1000, gv)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    curve = []
    for step in range(1, steps + 1):
        x, y = batch(16, g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                curve.append(round((model(xv).argmax(-1) == yv).float().mean().item(), 3))
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--task", default="pair", choices=list(TASKS))
    ap.add_argument("--out", help="default bench/results/same_different, or ..._objects for --task objects")
    args = ap.parse_args()
    args.out = args.out or "bench/results/same_different" + ("" if args.task == "pair" else "_" + args.task)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "same_different.json"
    # Arms accumulate over runs: every command that wrote to this record is kept, each with its arms. The
    # record is read again before each write, so two commands with different arms may share an --out.
    command = "python bench/same_different.py " + " ".join(
        [f"--task {args.task}"] * (args.task != "pair")
        + [f"--steps {args.steps}", "--seeds " + " ".join(map(str, args.seeds)),
           "--arms " + " ".join(map(shlex.quote, args.arms))])

    def update(change) -> dict:
        with open(out / ".lock", "w") as lock:  # one read-change-write at a time across processes
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = json.loads(path.read_text()) if path.exists() else {"arms": {}}
            if record.get("task", "pair") != args.task and record["arms"]:
                sys.exit(f"{path} holds task {record.get('task', 'pair')!r}, not {args.task!r}: "
                         "choose another --out")
            commands = record.pop("commands", [record.pop("command")] if "command" in record else [])
            record.update(task=args.task, steps=args.steps, batch=16, eval_every=100,
                          commands=commands + [command] * (command not in commands))
            change(record)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, path)
            return record

    record = update(lambda r: None)
    for name in args.arms:
        make, lr = ARMS[name]
        for seed in args.seeds:
            t0 = time.time()
            curve = train(make, lr, seed, args.steps, args.task)
            first = next((100 * (i + 1) for i, a in enumerate(curve) if a >= 0.9), None)
            record = update(lambda r: r["arms"].setdefault(name, {}).__setitem__(
                str(seed), {"lr": lr, "accuracy": curve, "steps_to_90": first}))
            print(f"{name:48s} seed {seed}: " + " ".join(f"{a * 100:.0f}" for a in curve)
                  + f"  (90% at step {first}; {time.time() - t0:.0f} s)", flush=True)
    plot(record, out / "same_different.png")


def plot(record: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(record["arms"], key=lambda n: list(ARMS).index(n) if n in ARMS else len(ARMS))  # ARMS' order
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        for seed, run in record["arms"][name].items():
            xs = [100 * (i + 1) * record["batch"] for i in range(len(run["accuracy"]))]
            ax.plot(xs, run["accuracy"], "-", alpha=0.8, label=f"seed {seed}")
        ax.axhline(PRIOR[record.get("task", "pair")], ls="--", c="grey", lw=0.8)
        ax.set_title(name, fontsize=8, wrap=True)
        ax.set_xlabel("samples seen", fontsize=8)
        ax.set_ylim(0.4, 1.02)
        ax.legend(fontsize=7)
    for row in axes:
        row[0].set_ylabel("held-out accuracy")
    fig.suptitle(TITLE[record.get("task", "pair")] + " (the answer prior dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
