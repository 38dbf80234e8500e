"""Loading any model folder this project writes (a NativeVLM, an HF-format LM, our MoE LM layout) or an HF
LM folder / .gguf file, without importing the trainer: inference, evaluation and serving load models
through here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch

from ..config import LanguageConfig, MoEConfig, from_dict
from .language import LanguageModel
from .vlm import CONFIG_NAME, WEIGHTS_NAME, NativeVLM, load_state_strict

LANGUAGE_TYPE = "language"


def load_pretrained(path) -> Union[NativeVLM, LanguageModel]:
    """A folder written by a training run (or any HF LM folder / .gguf file)."""
    path = Path(path)
    config = json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).is_file() else {}
    if "architectures" in config or path.suffix == ".gguf":
        return LanguageModel.from_hf(path)
    if config.get("model_type") != LANGUAGE_TYPE:
        return NativeVLM.from_pretrained(path)
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = LanguageModel(from_dict(LanguageConfig, config["language"]), from_dict(MoEConfig, config["moe"]))
    load_state_strict(model, load_file(str(path / WEIGHTS_NAME)), path / WEIGHTS_NAME)
    return model
