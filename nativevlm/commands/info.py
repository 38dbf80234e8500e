"""`nativevlm info CKPT`: the config and parameter counts per part of a saved model (any folder
`model.loading.load_pretrained` opens). Only configs and tensor headers are read: the model is built on the
meta device, so this is instant for any size."""
from __future__ import annotations

import json

from ..model.loading import config_dict, load_pretrained


def register(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config and parameter counts per module")
    p.add_argument("checkpoint", help="a folder written by save_pretrained (config.json + model.safetensors), "
                                      "or a language-model folder (a `kind: lm` run's final/, an HF Llama/Qwen)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    model = load_pretrained(args.checkpoint, device="meta")
    counts, config = model.parameter_counts(), config_dict(model)
    if args.json:
        print(json.dumps({"config": config, "parameters": counts}, indent=2))
        return 0
    print(f"checkpoint: {args.checkpoint}")
    for section in ("vision", "connector", "language", "moe"):
        if section in config:
            print(f"  {section:10s} " + ", ".join(f"{k}={v}" for k, v in config[section].items()))
    print("parameters:")
    for part, n in counts.items():
        print(f"  {part:15s} {n:>14,d}  ({n / 1e6:.2f}M)")
    return 0
