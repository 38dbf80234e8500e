"""`nativevlm info CKPT`: the config and parameter counts per part of a saved model."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config and parameter counts per module")
    p.add_argument("checkpoint", help="a folder written by save_pretrained (config.json + model.safetensors)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import to_dict
    from ..model.vlm import NativeVLM

    model = NativeVLM.from_pretrained(Path(args.checkpoint), device="meta")
    counts = model.parameter_counts()
    config = to_dict(model.config)
    if args.json:
        print(json.dumps({"config": config, "parameters": counts}, indent=2))
        return 0
    print(f"checkpoint: {args.checkpoint}")
    for section in ("vision", "connector", "language", "moe"):
        values = ", ".join(f"{k}={v}" for k, v in config[section].items())
        print(f"  {section:10s} {values}")
    print("parameters:")
    for part, n in counts.items():
        print(f"  {part:15s} {n:>14,d}  ({n / 1e6:.2f}M)")
    return 0
