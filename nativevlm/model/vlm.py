"""NativeVLM: vision encoder -> connector -> image tokens spliced into the text -> language model.

The vision half (`encode_images`) and the language half (`forward(..., image_features=...)`) are separable
so that the encoder can run in another process (decoupled serving) and features can be cached.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import (ConnectorConfig, ModelConfig, RouterConfig, SpecialTokens, VisionConfig, from_dict,
                      read_json_object, to_dict)
from ..errors import CheckpointError
from ..utils.atomic import atomic_dir
from .batch import Batch
from .connector import Connector, ProjectorMLP, Rate
from .language import LanguageModel, ModelOutput
from .layers import KVCache
from .router import Router, decide
from .vision import VisionEncoder


@dataclass
class Routed:
    """What the router made of some images: each image's rates (one per region), its tokens at those rates
    and the regions' compress-probabilities (flattened over images, in layout order)."""

    rates: list[tuple[int, ...]]
    features: list[torch.Tensor]
    p_compress: torch.Tensor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class NativeVLM(nn.Module):
    def __init__(self, config: ModelConfig, language: Optional[LanguageModel] = None):
        """The model owns a copy of `config` (and its parts share that copy): changing it later, or the
        model changing its own (a vocabulary grown, experts added), never touches the caller's."""
        super().__init__()
        config = copy.deepcopy(config)
        self.vision = VisionEncoder(config.vision)
        self.connector = Connector(config.vision.hidden_size, config.language.hidden_size, config.connector)
        self.router = self._new_router(config) if config.router.enabled else None
        self.language = language if language is not None else LanguageModel(config.language, config.moe)
        self.config = dataclasses.replace(config, vision=self.vision.config, connector=self.connector.config,
                                          language=self.language.config, moe=self.language.moe_config)
        if config.connector.match_text_scale and self.language.embed_tokens.weight.device.type != "meta":
            self._match_text_scale()

    # -- construction ---------------------------------------------------------------------------------

    def _match_text_scale(self, paths: Optional[tuple[str, ...]] = None) -> None:
        """Start the connector's image tokens (all paths, or `paths`) at the RMS of the LM's token embeddings."""
        table = self.language.embed_tokens.weight.detach().float()
        self.connector.match_output_scale(float(table.pow(2).mean().sqrt()), paths)

    @staticmethod
    def _new_router(config: ModelConfig) -> Router:
        if not config.connector.extra_downsample:
            raise ValueError("router.enabled needs a coarse path to route to: set connector.extra_downsample=4")
        return Router(config.vision.hidden_size, config.router)

    def add_router(self, connector: ConnectorConfig, router: RouterConfig) -> None:
        """Grow a trained model for ViCO: the coarse path `mlp2` (output scaled to the text embeddings, as a
        new connector's is) and the router, where `connector` / `router` ask for them and the model has
        none, and `connector.region_size`. Trained weights are kept; a model that has them is unchanged."""
        cfg = self.connector.config
        if connector.extra_downsample and self.connector.mlp2 is None:
            f, table = connector.extra_downsample, self.language.embed_tokens.weight
            self.connector.config = cfg = dataclasses.replace(cfg, extra_downsample=f)
            self.connector.mlp2 = ProjectorMLP(self.config.vision.hidden_size * f * f,
                                               self.connector.mlp1[1].out_features,
                                               self.config.language.hidden_size).to(table)
            self._match_text_scale(("mlp2",))
        if connector.region_size != cfg.region_size:
            self.connector.config = cfg = dataclasses.replace(cfg, region_size=connector.region_size)
        self.config = dataclasses.replace(self.config, connector=cfg)
        if router.enabled and self.router is None:
            self.config = dataclasses.replace(self.config, router=router)
            self.router = self._new_router(self.config).to(self.language.embed_tokens.weight)

    @classmethod
    def from_language_model(
        cls,
        lm: LanguageModel,
        vision: Optional[VisionConfig] = None,
        connector: Optional[ConnectorConfig] = None,
        modality_experts: bool = True,
        per_modality_norms: bool = False,
        image_token_ids: Optional[dict] = None,
        special_tokens: Optional[SpecialTokens] = None,
    ) -> "NativeVLM":
        """A native VLM around a (pretrained) LM: a new encoder and connector; with `modality_experts` the
        visual experts start as copies of the LM's text weights. `image_token_ids` maps the ModelConfig id
        fields (image_token_id, image_start_id, ...) to ids; ids beyond the LM's vocabulary grow it."""
        language = copy.deepcopy(lm)  # the copy owns copies of lm's configs: lm is left as it was
        ids = image_token_ids or {}
        language.resize_token_embeddings(max([language.config.vocab_size - 1, *ids.values()]) + 1)
        if modality_experts:
            language.add_visual_experts(per_modality_norms)
        config = ModelConfig(vision=vision or VisionConfig(), connector=connector or ConnectorConfig(),
                             language=language.config, moe=language.moe_config,
                             special_tokens=special_tokens or SpecialTokens(), **ids)
        return cls(config, language=language)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32, device=None) -> "NativeVLM":
        """A folder written by `save_pretrained`; `device="meta"` reads the structure only (no tensor data)."""
        path = Path(path)
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        holds = f"a NativeVLM folder holds {CONFIG_NAME} and {WEIGHTS_NAME} (written by save_pretrained)"
        if not weights.exists():
            raise FileNotFoundError(f"{weights} not found: {holds}")
        data = read_json_object(cfg_file, holds)
        data.pop("image_eos_id", None)  # written before the unused <img_eos> token was dropped
        # Written while the world's cell-loss head lived in the connector; it now belongs to the training
        # objective that uses it (train.objectives.cells) and never reaches an exported model.
        cell_head = isinstance(data.get("connector"), dict) and bool(data["connector"].pop("cell_classes", 0))
        if isinstance(data.get("special_tokens"), dict):
            data["special_tokens"].pop("image_eos", None)
        config = from_dict(ModelConfig, data)
        with torch.device("meta"):
            model = cls(config)
        state = read_weights(weights, device)
        if cell_head:
            state = {k: v for k, v in state.items() if not k.startswith("connector.cell_head.")}
        load_state_strict(model, state, weights)
        return model if str(device) == "meta" else model.to(dtype)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors, replacing `path` atomically (utils.atomic)."""
        with atomic_dir(path) as tmp:
            self.write_files(tmp)

    def write_files(self, folder: Path) -> None:
        """config.json + model.safetensors into `folder` (what `save_pretrained` commits)."""
        (folder / CONFIG_NAME).write_text(json.dumps(to_dict(self.config), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "library": "nativevlm"})

    # -- forward ---------------------------------------------------------------------------------------

    def image_rates(self, n: int, downsample: Union[Rate, Sequence[Rate], None]) -> list[Rate]:
        """Per-image rates from one rate for all (an int), one per image, or None (the fine rate)."""
        if downsample is None or isinstance(downsample, int):
            return [downsample or self.config.connector.downsample] * n
        rates = list(downsample)
        if len(rates) != n:
            raise ValueError(f"{len(rates)} compression rates for {n} images")
        return rates

    def encode_images(self, pixel_values: Sequence[torch.Tensor],
                      downsample: Union[Rate, Sequence[Rate], None] = None) -> list[torch.Tensor]:
        """The vision half: images -> per-image LLM-width tokens [n, D] in the layout of
        `connector.token_blocks`, which is the order of the image's <img> placeholders in the text.
        `downsample` is the compression rate, one for all images or one per image, each an int or a tuple
        with one rate per region (default: the connector's `downsample`)."""
        rates = self.image_rates(len(pixel_values), downsample)
        return self.connector.connect(self.vision(pixel_values), rates)

    def route_images(self, pixel_values: Sequence[torch.Tensor],
                     requests: Optional[Sequence[Sequence[int]]] = None) -> Routed:
        """Encode images with the router choosing each region's rate (`model.router`'s thresholds; in
        `request` mode each list of `requests`, image indices, is ranked on its own, by default each image).
        The prompt must then be laid out at the returned rates."""
        if self.router is None:
            raise ValueError("this model has no router; train one with the vico recipe (router.enabled)")
        cfg, conn = self.config.router, self.config.connector
        grids = self.vision(pixel_values)
        parts = [self.connector.regions(g) for g in grids]
        p = self.router([r for ps in parts for r in ps])
        starts = list(accumulate((len(ps) for ps in parts[:-1]), initial=0))
        groups = None
        if cfg.mode == "request":
            requests = requests if requests is not None else [[i] for i in range(len(parts))]
            groups = [[starts[i] + j for i in req for j in range(len(parts[i]))] for req in requests]
        compress = decide(p, cfg.relative_threshold, cfg.absolute_threshold, groups).tolist()
        rates = [tuple(conn.extra_downsample if compress[s + j] else conn.downsample for j in range(len(ps)))
                 for s, ps in zip(starts, parts)]
        return Routed(rates, self.connector.connect(grids, rates), p)

    def embed(self, input_ids: torch.Tensor, pixel_values=None, image_features=None, image_downsample=None):
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
            image_features = self.encode_images(pixel_values, image_downsample)
        feats = torch.cat(list(image_features), dim=0) if not torch.is_tensor(image_features) else image_features
        if feats.shape[0] != n_slots:
            raise ValueError(f"input_ids hold {n_slots} image tokens but the images give {feats.shape[0]} "
                             "features; build input_ids with nativevlm.data.collate so each image gets "
                             "rows*cols <img> tokens for its size")
        embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), feats.to(embeds.dtype))
        return embeds, image_mask

    def forward(
        self,
        input_ids: Union[torch.Tensor, Batch, None],
        pixel_values: Optional[Sequence[torch.Tensor]] = None,
        image_features: Optional[Sequence[torch.Tensor]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        document_ids: Optional[torch.Tensor] = None,
        targets: Optional[torch.Tensor] = None,
        loss_weights: Optional[torch.Tensor] = None,
        kv_cache: Optional[KVCache] = None,
        image_downsample: Optional[Sequence[int]] = None,
    ) -> ModelOutput:
        """`model(batch)` with a collated `Batch`, or the tensors one by one. The output carries the image
        tokens the forward spliced in (`ModelOutput.image_features`), so a training objective over them
        (a loss on the connector's output) reads them without encoding the images a second time. With
        `input_ids` None, only the vision encoder runs: `ModelOutput.image_grids` holds each image's grid."""
        if isinstance(input_ids, Batch):
            return self.forward(**input_ids.model_inputs(), kv_cache=kv_cache)
        if input_ids is None:  # the encoder alone (an objective on its output), still through any DDP/FSDP wrapper
            if pixel_values is None or len(pixel_values) == 0:
                raise ValueError("a forward without input_ids encodes images only; give pixel_values")
            return ModelOutput(image_grids=self.vision(pixel_values))
        if image_features is None and pixel_values is not None and len(pixel_values) > 0:
            image_features = self.encode_images(pixel_values, image_downsample)
        embeds, image_mask = self.embed(input_ids, image_features=image_features)
        out = self.language(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
            document_ids=document_ids, kv_cache=kv_cache, image_mask=image_mask,
            targets=targets, loss_weights=loss_weights,
        )
        out.image_features = image_features
        return out

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        return self.language.new_kv_cache(batch_size, max_len)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: vision, connector, router, language (text), visual experts."""
        counts = {"vision": 0, "connector": 0, "router": 0, "language": 0, "visual_experts": 0}
        for name, p in self.named_parameters():
            part = name.split(".")[0]
            if part == "language" and ".visual_" in name:
                part = "visual_experts"
            counts[part] += p.numel()
        counts["total"] = sum(counts.values())
        return counts


def read_weights(path: Path, device=None) -> dict:
    """A safetensors file's tensors on `device`; with device "meta", names and shapes only (the header)."""
    try:
        if str(device) != "meta":
            return load_file(str(path), device=str(device or "cpu"))
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as e:  # safetensors raises several exception types for corrupt files
        raise CheckpointError(f"{path} could not be read as safetensors ({e}); the file is corrupt or "
                              "truncated: export the model again") from None


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
        raise CheckpointError(f"{source} does not match its config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=True)
