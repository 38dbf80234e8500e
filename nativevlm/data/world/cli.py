"""`nativevlm data world`: generate one split of the built-in visual world."""
from __future__ import annotations

from .generate import generate_world
from .scene import KINDS, PRESETS, SPLIT_BUCKETS

PRESET_HELP = ("basic: objects only, 1-3 large shapes, 4 colours, 4 shapes, sides 64-128 (a tiny model learns "
               "it in minutes); full: objects, text and charts, up to 6 objects of 2 sizes, 8 colours, "
               "5 shapes, sides 64-256")


def register(sub) -> None:
    p = sub.add_parser("world", help="generate the built-in procedurally generated visual world")
    p.add_argument("--out", required=True, help="output directory (shared by all splits)")
    p.add_argument("--n", type=int, default=1000, help="number of scenes in this split (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--split", default="train", choices=tuple(SPLIT_BUCKETS), help="(default: train)")
    p.add_argument("--preset", default="basic", choices=sorted(PRESETS), help=PRESET_HELP + " (default: basic)")
    p.add_argument("--min-side", type=int, help="smallest image side, a multiple of 32 (default: preset's)")
    p.add_argument("--max-side", type=int, help="largest image side, a multiple of 32 (default: preset's)")
    p.add_argument("--max-objects", type=int, help="most objects per objects scene (default: preset's)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, help="scene kinds to draw (default: preset's)")
    p.add_argument("--questions-per-scene", type=int, help="(default: preset's)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=handler)


def handler(args) -> int:
    counts = generate_world(
        args.out, args.n, seed=args.seed, split=args.split, preset=args.preset, progress=not args.no_progress,
        min_side=args.min_side, max_side=args.max_side, max_objects=args.max_objects,
        kinds=tuple(args.kinds) if args.kinds else None, questions_per_scene=args.questions_per_scene,
    )
    print(f"wrote {counts['scenes']} scenes, {counts['qa']} QA pairs, {counts['text_documents']} text documents "
          f"of split {args.split} to {args.out}")
    return 0
