"""Opening and writing any model folder this project makes, in the model package so that inference,
evaluation and serving load models without importing training.

Three layouts: a NativeVLM (`save_pretrained`: config.json + model.safetensors); a dense language model as a
standard Hugging Face Llama / Qwen folder (`hub.save_language_model`), which transformers loads too; and a
language model with visual experts or sparse MoE layers, which HF Llama / Qwen can't hold, in our layout with
config.json `{"model_type": "language", "language": ..., "moe": ...}`. `load_pretrained` also opens any HF
Llama / Qwen folder and any `.gguf` file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..config import LanguageConfig, MoEConfig, from_dict, read_json_object, to_dict
from .hub import language_config_from_hf, save_language_model
from .language import LanguageModel
from .vlm import CONFIG_NAME, WEIGHTS_NAME, NativeVLM, load_state_strict, read_weights

LANGUAGE_TYPE = "language"


def load_pretrained(path, device=None) -> Union[NativeVLM, LanguageModel]:
    """The model in a folder written by this project (a training run's final/, `save_pretrained`), an HF
    Llama / Qwen folder or a .gguf file. `device="meta"` builds the structure only, reading no tensor data
    (instant for any size: `nativevlm info`)."""
    path = Path(path)
    meta = str(device) == "meta"
    if path.suffix == ".gguf":
        return LanguageModel.from_hf(path)
    file = path / CONFIG_NAME
    config = read_json_object(file, f"a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME} (written by training "
                                    "or save_pretrained), or use a .gguf file")
    if "architectures" in config:
        if not meta:
            return LanguageModel.from_hf(path)
        with torch.device("meta"):
            return LanguageModel(language_config_from_hf(config, file))
    if config.get("model_type") != LANGUAGE_TYPE:
        return NativeVLM.from_pretrained(path, device=device)
    language, moe = from_dict(LanguageConfig, config["language"]), from_dict(MoEConfig, config["moe"])
    with torch.device("meta"):
        model = LanguageModel(language, moe)
    load_state_strict(model, read_weights(path / WEIGHTS_NAME, device), path / WEIGHTS_NAME)
    return model


def write_model(model: Union[NativeVLM, LanguageModel], folder: Path) -> None:
    """Write `model` into the (empty, temporary) `folder` in the layout `load_pretrained` reads back."""
    if isinstance(model, NativeVLM):
        model.write_files(folder)
    elif model.moe_config.modality_experts or model.moe_config.num_experts > 0:
        config = {"model_type": LANGUAGE_TYPE, "language": to_dict(model.config), "moe": to_dict(model.moe_config)}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_NAME))
    else:
        save_language_model(model, folder)


def config_dict(model: nn.Module) -> dict:
    """The model's config as plain data, sections named as in its config.json."""
    if isinstance(model, NativeVLM):
        return to_dict(model.config)
    return {"language": to_dict(model.config), "moe": to_dict(model.moe_config)}
