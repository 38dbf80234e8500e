"""Can the recipe's image encoder learn what a family needs when it is told the answer directly?

Trains only the vision encoder a recipe names (`model.vision`, from random init, images sized by our own
`ImageProcessor` as the recipe sizes them) with one linear classifier per family over the mean of the
encoder's output grid: no connector, no language model, no question. It reads the same LLaVA JSON as the
peer (`bench/peer.py`; one question per user/assistant turn, `meta.family`) and reports held-out accuracy
per family against samples seen, beside each family's answer prior.

A family the encoder learns here but the full model does not (at the same number of that family's
questions) is lost in the training signal that reaches the encoder or in the decoder's reading, not in
the encoder; one it does not learn here needs another encoder. Families whose answers depend on the
question (yes/no: "Is there a red shape?") cannot be learnt without the question and are left out.

    python bench/encoder_alone.py --sets solo glyphs multi --out bench/results/encoder_alone
    python bench/encoder_alone.py --train data/custom/train.json --eval data/custom/test.json --out runs/probe

By default each run sees as many questions of the probed families as the recipe's own run sees of them (its
steps x batch size x those families' share of the training questions), so its curve ends where the full
model's training ends.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import answer_priors, read_turns  # noqa: E402
from qa_sets import SETS, write_set  # noqa: E402

from nativevlm.data.image import ImageProcessor, load_image, to_tensor  # noqa: E402
from nativevlm.model.vision import VisionEncoder  # noqa: E402
from nativevlm.config import apply_overrides, from_dict, read_yaml  # noqa: E402
from nativevlm.train.config import TrainConfig  # noqa: E402

YES_NO = {"yes", "no"}


class SmallCNN(nn.Module):
    """The reference a practitioner would try first for small images: four 3x3 conv blocks (GroupNorm, ReLU,
    2x2 max-pool; 32, 64, 128, 128 channels). Same interface as VisionEncoder: images -> [h, w, D] grids."""

    width = 128

    def __init__(self):
        super().__init__()
        chans, blocks = [3, 32, 64, 128, 128], []
        for cin, cout in zip(chans, chans[1:]):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.net = nn.Sequential(*blocks)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        if len({x.shape for x in images}) == 1:  # one batch (the fixed square it is given)
            return list(self.net(torch.stack(images)).permute(0, 2, 3, 1).unbind(0))
        return [self.net(x[None])[0].permute(1, 2, 0) for x in images]


class EncoderProbe(nn.Module):
    """The encoder, the mean of its output grid, one linear head per family."""

    def __init__(self, vision_cfg, classes: dict[str, list[str]], arch: str = "recipe"):
        super().__init__()
        self.encoder = SmallCNN() if arch == "cnn" else VisionEncoder(vision_cfg)
        width = SmallCNN.width if arch == "cnn" else vision_cfg.hidden_size
        self.heads = nn.ModuleDict({f"f{i}": nn.Linear(width, len(c))
                                    for i, c in enumerate(classes.values())})
        self.key = {fam: f"f{i}" for i, fam in enumerate(classes)}

    def forward(self, images: list[torch.Tensor], families: list[str]) -> list[torch.Tensor]:
        pooled = [g.flatten(0, 1).mean(0) for g in self.encoder(images)]
        return [self.heads[self.key[f]](x) for x, f in zip(pooled, families)]


def question_free(turns) -> dict[str, list[str]]:
    """family -> its answer classes (sorted), for families whose answers are not all yes/no; a yes or no
    answer depends on the question, so it is never a class (a set without `meta.family` is one family)."""
    answers = defaultdict(set)
    for t in turns:
        answers[t[3]].add(t[2].lower().rstrip("."))
    return {f: sorted(a - YES_NO) for f, a in sorted(answers.items()) if not a <= YES_NO}


# families of the benchmark's sets whose answer the image alone gives (`multi`'s colour and shape questions
# name another object: "What colour is the pentagon?")
IMAGE_ONLY = {"solo": ["colour", "shape"], "glyphs": ["colour", "digit"], "multi": ["count"]}
SIZES = {"train": 16000, "val": 400, "test": 1500}  # bench/learnability.py's


def recipe_samples(cfg) -> int:
    """Training questions the recipe's full model sees: steps x batch size of its stages, less those that
    train the encoder alone (`answer_classes`: this script's own stage, built into the recipe)."""
    return sum(st.steps * st.batch_size for st in cfg.stages
               if not any(o.get("name") == "answer_classes" for o in st.objectives))


def probe(train_path: str, eval_path: str, cfg, families, samples: int, batch: int, lr: float, eval_every: int,
          seed: int, arch: str = "recipe", cnn_size: int = 64) -> dict:
    """Train the encoder with a head per family on `train_path`; held-out accuracy per family on
    `eval_path` every `eval_every` samples. `samples` 0: the probed families' share of the recipe's run."""
    torch.manual_seed(seed)
    if arch == "cnn":  # a practitioner's CNN takes the image as a small fixed square, as the peer does
        proc = lambda path: to_tensor(load_image(path), (cnn_size, cnn_size))  # noqa: E731
    else:
        proc = ImageProcessor.from_config(cfg.model.vision, cfg.model.connector)
    train, skipped = read_turns(train_path)
    test, _ = read_turns(eval_path)
    n_all = len(train)
    classes = question_free(train)
    if not classes:
        raise SystemExit(f"{train_path}: no family with answers other than yes/no; nothing to probe")
    if families:
        unknown = sorted(set(families) - set(classes))
        if unknown:
            raise SystemExit(f"--families {' '.join(unknown)}: not a family of {train_path} with answers other "
                             f"than yes/no (these are: {', '.join(classes)})")
        classes = {f: c for f, c in classes.items() if f in families}
    left_out = sorted({t[3] for t in train} - set(classes))  # yes/no, or not asked for
    train = [t for t in train if t[3] in classes and t[2].lower().rstrip(".") in classes[t[3]]]
    test = [t for t in test if t[3] in classes and t[2].lower().rstrip(".") in classes[t[3]]]
    samples = samples or round(recipe_samples(cfg) * len(train) / n_all)
    cache: dict[str, torch.Tensor] = {}

    def image(path: str) -> torch.Tensor:  # each file decoded and sized once
        if path not in cache:
            cache[path] = proc(path)
        return cache[path]

    def label(t) -> int:
        return classes[t[3]].index(t[2].lower().rstrip("."))

    model = EncoderProbe(cfg.model.vision, classes, arch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)

    def evaluate() -> dict[str, float]:
        model.eval()
        right, total = defaultdict(int), defaultdict(int)
        with torch.no_grad():
            for i in range(0, len(test), 128):
                chunk = test[i:i + 128]
                for t, logits in zip(chunk, model([image(t[0]) for t in chunk], [t[3] for t in chunk])):
                    right[t[3]] += int(logits.argmax()) == label(t)
                    total[t[3]] += 1
        model.train()
        return {f"acc/{f}": right[f] / total[f] for f in sorted(total)}

    print(f"{train_path}: families {', '.join(f'{f} ({len(c)} answers)' for f, c in classes.items())}; left "
          f"out: {', '.join(left_out) or 'none'}; {len(train)} of {n_all} training questions, {len(test)} test; "
          f"{samples} samples" + (f"; skipped {dict(skipped)}" if skipped else ""), flush=True)
    curve, seen, t0 = [], 0, time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    while seen < samples:
        idx = torch.randint(len(train), (batch,), generator=g).tolist()
        chunk = [train[i] for i in idx]
        logits = model([image(t[0]) for t in chunk], [t[3] for t in chunk])
        loss = torch.stack([F.cross_entropy(z, torch.tensor(label(t))) for z, t in zip(logits, chunk)]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += batch
        if seen % eval_every < batch or seen >= samples:
            point = {"samples": seen, "seconds": round(time.perf_counter() - t0, 1), "loss": round(loss.item(), 4),
                     **evaluate()}
            curve.append(point)
            print("  " + "  ".join(f"{k} {v:.3f}" if k.startswith("acc") else f"{k} {v}" for k, v in point.items()),
                  flush=True)
    probe.last_model = model  # for --init-vlm
    return {"train": train_path, "eval": eval_path, "seed": seed, "encoder": arch,
            **({"cnn_size": cnn_size} if arch == "cnn" else {}),
            "vision": {k: getattr(cfg.model.vision, k) for k in ("patch_size", "hidden_size", "num_layers",
                                                                  "min_patches", "max_patches")},
            "parameters": sum(p.numel() for p in model.encoder.parameters()), "batch": batch, "lr": lr,
            "classes": classes, "left_out": left_out, "priors": answer_priors(test), "curve": curve,
            "test": curve[-1], "train_questions": len(train), "all_train_questions": n_all,
            "test_questions": len(test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", choices=SETS, help="the learnability benchmark's generated sets "
                    "(written under --work), each with the families its images alone answer")
    ap.add_argument("--work", default="runs/learnability", help="where --sets are written (bench/learnability.py's "
                    "default, so its data is reused)")
    ap.add_argument("--train", help="your LLaVA JSON (instead of --sets)")
    ap.add_argument("--eval", help="its held-out split")
    ap.add_argument("--families", nargs="+", help="families to probe (default: every family whose answers are "
                    "not all yes/no); leave out those whose answer depends on the question")
    ap.add_argument("--encoder", choices=["recipe", "cnn"], default="recipe", help="the recipe's vision encoder, "
                    "or a plain 4-block CNN as a reference (on the image as a small square, --cnn-size)")
    ap.add_argument("--cnn-size", type=int, default=0, help="the CNN's square input side (0: 96 px for multi, "
                    "64 px otherwise, the peer's sizes)")
    ap.add_argument("--recipe", default=str(Path(__file__).resolve().parents[1] / "recipes/native-custom.yaml"))
    ap.add_argument("--set", action="append", default=[], help="recipe overrides, e.g. model.vision.num_layers=4")
    ap.add_argument("--samples", type=int, default=0, help="training questions seen (0: as many of the probed "
                    "families' questions as the recipe's run sees)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="folder: <set>.json and <set>.png for each set")
    ap.add_argument("--init-vlm", metavar="DIR", help="also write a NativeVLM of the recipe's shape whose image "
                    "encoder holds the trained weights (the rest random) to DIR, with --tokenizer: start the "
                    "recipe from it with --set init.path=DIR (one set or --train only)")
    ap.add_argument("--tokenizer", help="the tokenizer the recipe will train with (for --init-vlm)")
    a = ap.parse_args()
    if bool(a.sets) == bool(a.train and a.eval):
        ap.error("give --sets, or --train and --eval")
    if a.init_vlm and (not a.tokenizer or a.encoder != "recipe" or (a.sets and len(a.sets) > 1)):
        ap.error("--init-vlm needs --tokenizer, the recipe's encoder and one set")
    # the recipe's model and stages only (its data and tokenizer paths are not needed here)
    cfg = apply_overrides(from_dict(TrainConfig, read_yaml(a.recipe, "recipe")), list(a.set))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = ({name: (write_set(name, Path(a.work) / "data", SIZES), a.families or IMAGE_ONLY[name]) for name in a.sets}
            if a.sets else {Path(a.train).stem: ({"train": a.train, "test": a.eval}, a.families)})
    for name, (paths, families) in runs.items():
        result = {"set": name, "recipe": a.recipe, "overrides": a.set} | probe(
            str(paths["train"]), str(paths["test"]), cfg, families, a.samples, a.batch, a.lr, a.eval_every, a.seed,
            a.encoder, a.cnn_size or (96 if name == "multi" else 64))
        (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(result, out / f"{name}.png")
        print(f"[{name}] " + ", ".join(f"{k[4:]} {v:.1%} (prior {result['priors'][k[4:]]:.1%})"
                                       for k, v in result["test"].items() if k.startswith("acc/"))
              + f" after {result['test']['samples']} samples; wrote {out / name}.json / .png", flush=True)
        if a.init_vlm:
            write_init(cfg, a.tokenizer, probe.last_model.encoder, Path(a.init_vlm))


def write_init(cfg, tokenizer_path: str, encoder: nn.Module, out: Path) -> None:
    """A NativeVLM as the recipe builds it (random init, seeded by the recipe), its image encoder replaced by
    `encoder`'s weights, saved with the tokenizer: `init.path` for the recipe."""
    from nativevlm.train.export import build_model, load_tokenizer
    tok = load_tokenizer(tokenizer_path)
    torch.manual_seed(cfg.seed)
    vlm = build_model(cfg, tok)
    vlm.vision.load_state_dict(encoder.state_dict())
    vlm.save_pretrained(out)
    tok.save(out)
    print(f"wrote {out}: train the recipe from it with --set init.path={out}", flush=True)


def plot(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fams = list(result["classes"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, f in enumerate(fams):
        xs = [p["samples"] for p in result["curve"]]
        ax.plot(xs, [100 * p[f"acc/{f}"] for p in result["curve"]], marker="o", color=f"C{i}", label=f)
        ax.axhline(100 * result["priors"][f], color=f"C{i}", linestyle="--", linewidth=1)
    ax.set_xlabel("training questions seen (all kept families)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    who = "a plain CNN" if result["encoder"] == "cnn" else "the recipe's encoder alone"
    if result.get("overrides"):
        who += f" ({', '.join(result['overrides'])})"
    ax.set_title(f"{result['set']}: {who}, a classifier per family\n"
                 "(dashed: the family's answer prior)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
