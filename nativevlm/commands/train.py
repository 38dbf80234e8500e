"""`nativevlm train RECIPE.yaml --out DIR [--resume] [--max-steps N] [--set key=value ...]`; the same
command runs data-parallel under `torchrun --nproc_per_node N -m nativevlm train ...`."""
from __future__ import annotations

from ..eval.curves import hooks_for
from ..train import distributed
from ..train.recipe import load_recipe
from ..train.trainer import train


def register(sub) -> None:
    p = sub.add_parser("train", help="run a training recipe (stages of data, trainable modules, schedules)")
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("--out", required=True, help="run directory: config.yaml, metrics.jsonl, tensorboard/, "
                                                "checkpoints/, final/")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total (checkpointed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set stages.0.lr=1e-4 (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_recipe(args.recipe, args.overrides)
    try:
        train(cfg, args.out, resume=args.resume, max_steps=args.max_steps, hooks=hooks_for(cfg))
    finally:
        distributed.teardown()
    return 0
