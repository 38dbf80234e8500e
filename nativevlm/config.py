"""Typed, nested dataclass configs that round-trip to JSON and YAML.

Every config is a plain dataclass. `to_dict` / `from_dict` convert to and from nested dicts; `from_dict`
rejects unknown keys and wrong types with a message that names the field (`vision.hidden_size`), so a bad
config fails before anything runs. `apply_overrides` takes `a.b=c` strings from the command line.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import CheckpointError, ConfigError


@dataclass
class VisionConfig:
    """The image encoder. `arch="native"` is NaViL's encoder (the LLM's block design: RMSNorm, SwiGLU,
    bidirectional attention, 2D RoPE, native resolution). `arch="vit"` is a SigLIP-style ViT (LayerNorm,
    GELU MLP, learned absolute positions, fixed square input) for the compositional baseline."""

    arch: str = "native"
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # Native resolution: image sides are multiples of patch_size * connector.downsample, and the patch
    # count is kept within [min_patches, max_patches] by resizing with the aspect ratio kept.
    min_patches: int = 16
    max_patches: int = 4096
    # NaViL multi-scale packing (native only, an inference option): each image also at tau^i of its size,
    # tau = sqrt(2)/2, up to `scales` scales while a scale keeps 16 patches, coarse to fine.
    scales: int = 1
    # vit only
    image_size: int = 224
    # InternVL dynamic tiling: up to max_tiles image_size tiles on the grid closest to the image's aspect
    # ratio, plus an image_size thumbnail when there is more than one tile; 1 = one resized square.
    max_tiles: int = 1
    bias: bool = False
    post_norm: bool = False
    # How patches become tokens. "linear": one linear map of each flattened patch (a stride-p convolution;
    # NaViL, SigLIP). "conv" (native only): log2(patch_size) 3x3 stride-2 convolutions with GELU over the
    # whole image, then a 1x1 convolution to hidden_size, as in "Early Convolutions Help Transformers See
    # Better" (Xiao et al., 2021); the same grid of patch tokens, with local image structure built in.
    # Not in any shipped recipe yet: docs/learnability.md points 15-16 say when it helps (an encoder trained
    # first on its own) and when not (from random init under the recipe's objectives).
    stem: str = "linear"


@dataclass
class ConnectorConfig:
    """Pixel shuffle (downsample x downsample neighbouring patches -> one token) then an MLP to the LLM
    width. `extra_downsample` adds a second, coarser path (InternVL3.5's 4x4 / mlp2 for ViR), chosen per
    region: `region_size` x `region_size` patches (0 = the whole image is one region; see
    `model.connector` for the token layout)."""

    downsample: int = 2
    extra_downsample: int = 0
    region_size: int = 0
    hidden_size: int = 0  # MLP hidden width; 0 = the LLM width
    # Start image tokens at the RMS of the LM's token embeddings (Connector.match_output_scale) rather than
    # at the MLP's default scale, which is many times a word's and throws a pretrained LM off its inputs.
    match_text_scale: bool = True


@dataclass
class RouterConfig:
    """InternVL3.5-Flash's visual resolution router (`model.router`): per region, the probability that the
    coarse rate (`connector.extra_downsample`) is enough. A region is compressed when that probability is
    above the `relative_threshold` quantile of the probabilities it is ranked with and at least
    `absolute_threshold`; `mode` says what it is ranked with: `batch` (every region encoded together, as
    released: a region's rate depends on the other requests) or `request` (the regions of its own request)."""

    enabled: bool = False
    num_heads: int = 4
    pool_layers: int = 4
    mlp_blocks: int = 4
    expansion: int = 4
    relative_threshold: float = 0.5
    absolute_threshold: float = 0.1
    mode: str = "batch"


@dataclass
class LanguageConfig:
    """A decoder LM covering Llama, Qwen2 (qkv_bias) and Qwen3 (qk_norm, explicit head_dim)."""

    vocab_size: int = 8192
    hidden_size: int = 384
    num_layers: int = 8
    num_heads: int = 6
    num_kv_heads: int = 2
    head_dim: int = 0  # 0 = hidden_size // num_heads
    intermediate_size: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False
    # Input embeddings (text and spliced image tokens alike) are multiplied by this before the first layer
    # (Gemma: sqrt(hidden_size)); the tied output head is not. 1.0 = Llama / Qwen.
    embedding_multiplier: float = 1.0
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 4096
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass
class MoEConfig:
    """NaViL's modality-specific experts (hard-routed by token modality, attention projections and FFN)
    and/or a SAIL-VL2-style sparse top-k FFN with a load-balancing loss (num_experts > 0)."""

    modality_experts: bool = False
    per_modality_norms: bool = False
    num_experts: int = 0
    top_k: int = 2
    expert_intermediate_size: int = 0  # 0 = language.intermediate_size
    aux_loss_coef: float = 0.001


@dataclass
class SpecialTokens:
    """Image framing tokens (NaViL): each image is <img_start> then, for each row of image tokens,
    that row's <img> placeholders and an <img_eol>, then <img_end>. The tokenizer a model is used with
    takes them from the model's config (`Tokenizer.load(..., special_tokens=...)`)."""

    image: str = "<img>"
    image_start: str = "<img_start>"
    image_end: str = "<img_end>"
    image_eol: str = "<img_eol>"


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    special_tokens: SpecialTokens = field(default_factory=SpecialTokens)
    # Token ids of the special tokens in the language vocabulary (filled in when the tokenizer is known).
    image_token_id: int = -1
    image_start_id: int = -1
    image_end_id: int = -1
    image_eol_id: int = -1


# ---------------------------------------------------------------------------------------------------
# dict / JSON / YAML round trip


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {_type_name(tp)}, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict. Unknown keys and wrong types raise ConfigError naming the
    dotted field path; missing keys take the dataclass default."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s}; valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


def read_json_object(file: Path, missing: str) -> dict:
    """A model folder's JSON config as a dict: FileNotFoundError (with `missing`, what the folder should
    hold) when absent, CheckpointError naming the file when it is not a JSON object."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {missing}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    data = to_dict(cfg)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=2) + "\n")


def read_yaml(path: str | Path, what: str) -> dict:
    """A YAML file's mapping (empty file: {}); ConfigError naming `what` and the path when it is missing or
    does not parse (recipes, study files)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} does not parse as YAML: {e}") from None


def load_config(cls: type, path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path} does not parse: {e}") from None
    return from_dict(cls, data or {})


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of `cfg` with `a.b.c=value` overrides applied; values are parsed as YAML scalars
    (so `true`, `3`, `1e-4`, `[1, 2]` work; an empty value is the empty string) and type-checked like a
    config file."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list) and p.isdigit() and int(p) < len(node):
                node = node[int(p)]
            elif isinstance(node, dict) and isinstance(node.get(p), (dict, list)):
                node = node[p]
            else:
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a config section")
        leaf = parts[-1]
        if isinstance(node, list):
            if not (leaf.isdigit() and int(leaf) < len(node)):
                raise ConfigError(f"override {item!r}: no list item {leaf}")
            node[int(leaf)] = _parse_value(raw)
        else:
            if leaf not in node:
                raise ConfigError(f"override {item!r}: unknown config key {key}")
            node[leaf] = _parse_value(raw)
    return from_dict(type(cfg), data)


def _parse_value(raw: str) -> Any:
    return yaml.safe_load(raw) if raw.strip() else ""
