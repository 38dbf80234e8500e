"""`nativevlm quickstart`: the whole pipeline, tiny, on the built-in world (the README's main job)."""
from __future__ import annotations

from pathlib import Path

from ..quickstart import quickstart


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="world data -> tokenizer -> text LM -> native VLM -> evaluation, "
                                          "tiny, in about 10 minutes on a laptop CPU")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--test-scenes", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="native_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the native VLM recipe, e.g. stages.2.steps=2000")
    p.add_argument("--set-text-lm", dest="text_lm_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the text-LM recipe")
    p.set_defaults(func=run)


def run(args) -> int:
    quickstart(Path(args.out), args.train_scenes, args.test_scenes, args.seed,
               args.text_lm_overrides, args.native_overrides)
    return 0
