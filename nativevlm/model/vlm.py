"""NativeVLM: vision encoder -> connector -> image tokens spliced into the text -> language model.

The vision half (`encode_images`) and the language half (`forward(..., image_features=...)`) are separable
so that the encoder can run in another process (decoupled serving) and features can be cached.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..config import ConfigError, ConnectorConfig, ModelConfig, VisionConfig, from_dict, to_dict
from .connector import Connector
from .language import LanguageModel, ModelOutput
from .layers import KVCache
from .vision import VisionEncoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class NativeVLM(nn.Module):
    def __init__(self, config: ModelConfig, language: Optional[LanguageModel] = None):
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.connector = Connector(config.vision.hidden_size, config.language.hidden_size, config.connector)
        self.language = language if language is not None else LanguageModel(config.language, config.moe)

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_language_model(
        cls,
        lm: LanguageModel,
        vision: Optional[VisionConfig] = None,
        connector: Optional[ConnectorConfig] = None,
        modality_experts: bool = True,
        per_modality_norms: bool = False,
        image_token_ids: Optional[dict] = None,
    ) -> "NativeVLM":
        """A native VLM around a (pretrained) LM: a new encoder and connector; with `modality_experts` the
        visual experts start as copies of the LM's text weights. `image_token_ids` maps the ModelConfig id
        fields (image_token_id, image_start_id, ...) to ids; ids beyond the LM's vocabulary grow it."""
        language = copy.deepcopy(lm)
        ids = image_token_ids or {}
        language.resize_token_embeddings(max([language.config.vocab_size - 1, *ids.values()]) + 1)
        if modality_experts:
            language.moe_config.per_modality_norms = per_modality_norms
            language.add_visual_experts()
        config = ModelConfig(vision=vision or VisionConfig(), connector=connector or ConnectorConfig(),
                             language=language.config, moe=language.moe_config, **ids)
        return cls(config, language=language)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32, device=None) -> "NativeVLM":
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (cfg_file, weights):
            if not f.exists():
                raise FileNotFoundError(f"{f} not found: a NativeVLM folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                                        "(written by save_pretrained)")
        try:
            config = from_dict(ModelConfig, json.loads(cfg_file.read_text()))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cfg_file} is not valid JSON: {e}") from None
        with torch.device("meta"):
            model = cls(config)
        meta = str(device) == "meta"  # structure only (e.g. `nativevlm info`): read the header, not the data
        try:
            state = _read_header(weights) if meta else load_file(str(weights), device=str(device or "cpu"))
        except Exception as e:  # safetensors raises several exception types for corrupt files
            raise ValueError(f"{weights} could not be read as safetensors ({e}); the file is corrupt or "
                             "truncated: re-export it with save_pretrained") from None
        load_state_strict(model, state, weights)
        return model if meta else model.to(dtype)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors atomically (into a temporary folder, then renamed)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            (tmp / CONFIG_NAME).write_text(json.dumps(to_dict(self.config), indent=2) + "\n")
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "library": "nativevlm"})
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- forward ---------------------------------------------------------------------------------------

    def encode_images(self, pixel_values: Sequence[torch.Tensor], compressed: bool = False) -> list[torch.Tensor]:
        """The vision half: images -> per-image LLM-width tokens [rows * cols, D] (row-major), which is the
        order of the <img> placeholders in the text."""
        grids = self.vision(pixel_values)
        out = []
        for g in grids:
            tokens = self.connector(g.unsqueeze(0), compressed=compressed)[0]
            out.append(tokens.reshape(-1, tokens.shape[-1]))
        return out

    def embed(self, input_ids: torch.Tensor, pixel_values=None, image_features=None):
        """Token embeddings with image features written into the <img> placeholders (one masked
        assignment), plus the image-token mask that routes tokens to the visual experts."""
        embeds = self.language.embed_tokens(input_ids)
        image_mask = input_ids == self.config.image_token_id
        n_slots = int(image_mask.sum())
        if n_slots == 0:
            return embeds, None
        if image_features is None:
            if pixel_values is None or len(pixel_values) == 0:
                raise ValueError(f"input_ids hold {n_slots} image tokens but no pixel_values were given")
            image_features = self.encode_images(pixel_values)
        feats = torch.cat(list(image_features), dim=0) if not torch.is_tensor(image_features) else image_features
        if feats.shape[0] != n_slots:
            raise ValueError(f"input_ids hold {n_slots} image tokens but the images give {feats.shape[0]} "
                             "features; build input_ids with nativevlm.data.collate so each image gets "
                             "rows*cols <img> tokens for its size")
        embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), feats.to(embeds.dtype))
        return embeds, image_mask

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: Optional[Sequence[torch.Tensor]] = None,
        image_features: Optional[Sequence[torch.Tensor]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        document_ids: Optional[torch.Tensor] = None,
        targets: Optional[torch.Tensor] = None,
        loss_weights: Optional[torch.Tensor] = None,
        kv_cache: Optional[KVCache] = None,
        cell_targets: Optional[torch.Tensor] = None,
        **_batch_extras,
    ) -> ModelOutput:
        """`cell_targets` (all images' token classes, concatenated) also returns the connector's cell loss
        (`ModelOutput.cell_loss`, a mean over image tokens; the caller weighs it)."""
        if cell_targets is not None and image_features is None:
            image_features = self.encode_images(pixel_values)
        embeds, image_mask = self.embed(input_ids, pixel_values, image_features)
        out = self.language(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
            document_ids=document_ids, kv_cache=kv_cache, image_mask=image_mask,
            targets=targets, loss_weights=loss_weights,
        )
        if cell_targets is not None:
            tokens = torch.cat(list(image_features))
            words = getattr(self, "cell_words", None)
            out.cell_loss = (self.word_cell_loss(tokens, cell_targets, *words) if words is not None
                             else self.connector.cell_loss(tokens, cell_targets))
        return out

    def word_cell_loss(self, tokens: torch.Tensor, targets: torch.Tensor, colour_ids, shape_ids) -> torch.Tensor:
        """Word-aligned cell loss: each occupied image token should point (cosine) toward the LM's own
        embedding of its colour word and of its shape word, among the other colours and shapes, so that the
        text circuits the LM learnt on words ("a green triangle ... What color is the triangle? green") meet
        image tokens that look like those words. `colour_ids` / `shape_ids`: token ids of each colour / shape
        word in class order (`nativevlm.data.world.cells`), a list of ids each (their embeddings averaged)."""
        table = self.language.embed_tokens.weight.detach()
        cols = torch.stack([table[ids].mean(0) for ids in colour_ids])
        shps = torch.stack([table[ids].mean(0) for ids in shape_ids])
        keep = targets > 0
        t = torch.nn.functional.normalize(tokens[keep].float(), dim=-1)
        cls = targets[keep] - 1
        n_shapes = len(shape_ids)
        loss_c = torch.nn.functional.cross_entropy(10 * t @ torch.nn.functional.normalize(cols.float(), dim=-1).T,
                                                   cls // n_shapes)
        loss_s = torch.nn.functional.cross_entropy(10 * t @ torch.nn.functional.normalize(shps.float(), dim=-1).T,
                                                   cls % n_shapes)
        return (loss_c + loss_s) / 2

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        return self.language.new_kv_cache(batch_size, max_len)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: vision, connector, language (text), visual experts."""
        counts = {"vision": 0, "connector": 0, "language": 0, "visual_experts": 0}
        for name, p in self.named_parameters():
            part = name.split(".")[0]
            if part == "language" and ".visual_" in name:
                part = "visual_experts"
            counts[part] += p.numel()
        counts["total"] = sum(counts.values())
        return counts


def _read_header(path: Path) -> dict:
    """Tensor names and shapes of a safetensors file as meta tensors, without reading the data."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}


def load_state_strict(model: nn.Module, state: dict, source) -> None:
    """Strict load with a readable error naming the file and the first mismatched keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"shape mismatch for {k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}")
        raise ValueError(f"{source} does not match its config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=True)
