"""`nativevlm info CKPT`: the config and parameter counts per part of a saved model (a NativeVLM folder, or a
language-model folder: Hugging Face Llama / Qwen, or nativevlm's MoE LM export). Only configs are read:
the model is built on the meta device, so this is instant for any size."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config and parameter counts per module")
    p.add_argument("checkpoint", help="a folder written by save_pretrained (config.json + model.safetensors), "
                                      "or a language-model folder (a `kind: lm` run's final/, an HF Llama/Qwen)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import to_dict

    path = Path(args.checkpoint)
    language = _language_model(path)
    if language is None:
        from ..model.vlm import NativeVLM

        model = NativeVLM.from_pretrained(path, device="meta")
        counts, config = model.parameter_counts(), to_dict(model.config)
    else:
        counts = {"language": 0, "visual_experts": 0}
        for name, p in language.named_parameters():
            counts["visual_experts" if ".visual_" in name else "language"] += p.numel()
        counts["total"] = sum(counts.values())
        config = {"language": to_dict(language.config), "moe": to_dict(language.moe_config)}
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


def _language_model(path: Path):
    """The LM a language-model folder holds, built on the meta device; None for anything else."""
    import torch

    from ..config import LanguageConfig, MoEConfig, from_dict
    from ..model.hub import language_config_from_hf
    from ..model.language import LanguageModel
    from ..train.export import LANGUAGE_TYPE

    file = path / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError):
        return None  # NativeVLM.from_pretrained reports a missing or broken config.json
    if not isinstance(config, dict):
        return None
    if "architectures" in config:
        language, moe = language_config_from_hf(config, path), MoEConfig()
    elif config.get("model_type") == LANGUAGE_TYPE:
        language, moe = from_dict(LanguageConfig, config["language"]), from_dict(MoEConfig, config["moe"])
    else:
        return None
    with torch.device("meta"):
        return LanguageModel(language, moe)
