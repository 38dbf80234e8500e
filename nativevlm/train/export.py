"""Building the model a recipe starts from, and writing the trained one.

The trained model goes to `final/` in the layout `model.loading` reads (a NativeVLM folder, an HF LM
folder, or our LM layout for LMs with experts), with its tokenizer, replacing any previous `final/`
atomically: a kill at any moment leaves the old or the new model, never none. A later `kind: vlm` recipe can
start from such a folder with `init.vision: true` (NaViL: pretrain the LM, then grow it into a native VLM).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from ..config import ConfigError
from ..data.tokenizer import Tokenizer
from ..model.language import LanguageModel
from ..model.loading import load_pretrained, write_model
from ..model.vlm import NativeVLM, load_state_strict
from ..utils.atomic import atomic_dir
from .recipe import resolve_path


def save_model(model: nn.Module, state: dict, path: Path, tokenizer: Optional[Tokenizer] = None) -> None:
    """Write `state` (a full, plain state dict, gathered from FSDP if need be) with `model`'s config, and
    `tokenizer` if given, as the folder `path`, replacing it atomically. The state goes into a fresh model
    of the same class so whatever wraps the training model never reaches the export."""
    with torch.device("meta"):
        clone = NativeVLM(model.config) if isinstance(model, NativeVLM) else LanguageModel(model.config, model.moe_config)
    load_state_strict(clone, state, "the trained model state")
    with atomic_dir(path) as tmp:
        write_model(clone, tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)


def load_tokenizer(path: str, special_tokens=None) -> Tokenizer:
    """`Tokenizer.load` after resolving `package:` paths (a recipe starting from a GGUF LM names the same
    file for its tokenizer), with the model config's image tokens."""
    return Tokenizer.load(resolve_path(path), special_tokens=special_tokens)


def build_model(cfg, tokenizer) -> Union[NativeVLM, LanguageModel]:
    """The model a recipe starts from (see `InitConfig`), its vocabulary checked against the tokenizer and
    its image token ids taken from it."""
    lm = load_pretrained(resolve_path(cfg.init.path)) if cfg.init.path else None
    if isinstance(lm, NativeVLM):
        if cfg.kind == "lm":
            raise ConfigError(f"init.path: {cfg.init.path} is a NativeVLM; kind lm needs a language model")
        lm.add_router(cfg.model.connector, cfg.model.router)  # what a ViCO recipe asks for and the model lacks
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
        per_modality_norms=cfg.init.per_modality_norms, image_token_ids=ids,
        special_tokens=cfg.model.special_tokens)


def _check_vocab(vocab_size: int, tokenizer, field_name: str) -> None:
    if vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"{field_name}: {vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} tokens")
