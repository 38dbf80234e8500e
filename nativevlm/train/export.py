"""Building the model a recipe starts from, and writing the trained one.

A NativeVLM is written with its own `save_pretrained` (config.json + model.safetensors). A dense language
model (`kind: lm`) is written as a standard Hugging Face Llama/Qwen folder (`hub.save_language_model`), so
transformers and `LanguageModel.from_hf` load it; one with sparse MoE layers, which HF Llama/Qwen can't
hold, in our layout with config.json `{"model_type": "language", "language": ..., "moe": ...}`.
`load_pretrained` reads all three, and a later `kind: vlm` recipe can start from such a folder with
`init.vision: true` (NaViL: pretrain the LM, then grow it into a native VLM).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn

from ..config import ConfigError, LanguageConfig, MoEConfig, from_dict, to_dict
from ..data.tokenizer import Tokenizer
from ..model.hub import save_language_model
from ..model.language import LanguageModel
from ..model.vlm import CONFIG_NAME, WEIGHTS_NAME, NativeVLM, load_state_strict
from .recipe import resolve_path

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


def save_model(model: nn.Module, state: dict, path: Path) -> None:
    """Write `state` (a full, plain state dict, gathered from FSDP if need be) with `model`'s config, into
    a fresh model of the same class so whatever wraps the training model never reaches the export."""
    with torch.device("meta"):
        clone = NativeVLM(model.config) if isinstance(model, NativeVLM) else LanguageModel(model.config, model.moe_config)
    load_state_strict(clone, state, "the trained model state")
    if isinstance(clone, NativeVLM):
        clone.save_pretrained(path)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if clone.moe_config.modality_experts or clone.moe_config.num_experts > 0:
        from safetensors.torch import save_file

        tmp.mkdir(parents=True)
        config = {"model_type": LANGUAGE_TYPE, "language": to_dict(clone.config), "moe": to_dict(clone.moe_config)}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in clone.state_dict().items()}, str(tmp / WEIGHTS_NAME))
    else:
        save_language_model(clone, tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_tokenizer(path: str) -> Tokenizer:
    """`Tokenizer.load` after resolving `package:` paths (a recipe starting from a GGUF LM names the same
    file for its tokenizer)."""
    return Tokenizer.load(resolve_path(path))


def build_model(cfg, tokenizer) -> Union[NativeVLM, LanguageModel]:
    """The model a recipe starts from (see `InitConfig`), its vocabulary checked against the tokenizer and
    its image token ids taken from it."""
    lm = load_pretrained(resolve_path(cfg.init.path)) if cfg.init.path else None
    if isinstance(lm, NativeVLM):
        if cfg.kind == "lm":
            raise ConfigError(f"init.path: {cfg.init.path} is a NativeVLM; kind lm needs a language model")
        return lm
    if lm is not None:
        lm.resize_token_embeddings(tokenizer.vocab_size)
    if cfg.kind == "lm":
        model = lm or LanguageModel(cfg.model.language, cfg.model.moe)
        _check_vocab(model.config.vocab_size, tokenizer, "model.language.vocab_size")
        return model
    ids = tokenizer.image_token_ids()
    if lm is None:
        _check_vocab(cfg.model.language.vocab_size, tokenizer, "model.language.vocab_size")
        return NativeVLM(dataclasses.replace(cfg.model, **ids))
    if not cfg.init.vision:
        raise ConfigError(f"init.vision: {cfg.init.path} is a language model; set init.vision: true to grow it "
                          "into a NativeVLM")
    return NativeVLM.from_language_model(
        lm, vision=cfg.model.vision, connector=cfg.model.connector, modality_experts=cfg.init.modality_experts,
        per_modality_norms=cfg.init.per_modality_norms, image_token_ids=ids)


def _check_vocab(vocab_size: int, tokenizer, field_name: str) -> None:
    if vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"{field_name}: {vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} tokens")
