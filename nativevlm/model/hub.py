"""Pretrained weights in and out: Hugging Face checkpoint folders (Llama / Qwen2 / Qwen3 language models,
SigLIP vision towers), llama.cpp GGUF files, and an HF-format writer for `LanguageModel`.

This module sits below the model classes: it reads a checkpoint into (our config, our state dict) and
`assemble` builds whichever class it is given, so `LanguageModel.from_hf` / `VisionEncoder.from_hf` call down
into it and nothing here imports them back.

Every mapping is an explicit table from our parameter names to the source's names, so a checkpoint with
a missing or misshapen tensor (or, in a GGUF, one we would ignore) fails loudly, naming the file and the
tensor, instead of silently loading half a model. Models are built on the meta device and the loaded tensors are assigned, so no time
is spent on a random initialisation that would be overwritten.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Union

import gguf
import numpy as np
import torch
from gguf.quants import dequantize
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import LanguageConfig, VisionConfig, read_json_object
from ..errors import CheckpointError

PathLike = Union[str, Path]

# Our parameter name -> [(source tensor name, rows)]; several sources are concatenated along dim 0 into
# one of our fused tensors (q/k/v, gate/up), and `rows` tells the writer how to split them again.
KeyMap = dict[str, list[tuple[str, int]]]

LM_MODEL_TYPES = ("llama", "qwen2", "qwen3")
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")


# ---------------------------------------------------------------------------------------------------
# Public API


def read_language_checkpoint(path: PathLike) -> tuple[LanguageConfig, dict[str, torch.Tensor]]:
    """A Hugging Face Llama / Qwen2 / Qwen3 checkpoint folder, or a llama.cpp `.gguf` file, as our language
    config and our state dict (`LanguageModel.from_hf` assembles them)."""
    path = Path(path)
    if path.suffix == ".gguf":
        return _read_gguf_language_model(path)
    cfg = language_config_from_hf(_read_config(path), path / "config.json")
    return cfg, _read_folder_tensors(path, _language_keys(cfg, "hf"))


def read_vision_checkpoint(path: PathLike) -> tuple[VisionConfig, dict[str, torch.Tensor]]:
    """A SigLIP checkpoint folder (`siglip_vision_model`, or a full `siglip` model whose vision tower is
    taken) as the config and state dict of the `arch="vit"` VisionEncoder. The attention-pooling head is not
    part of the encoder."""
    path = Path(path)
    cfg = vision_config_from_hf(_read_config(path), path / "config.json")
    files = _tensor_files(path)
    tensors = _read_folder_tensors(path, _siglip_keys(cfg, _siglip_prefix(files, path)), files)
    tensors["patch_embed.weight"] = tensors["patch_embed.weight"].reshape(cfg.hidden_size, -1)
    return cfg, tensors


def assemble(cls: type[torch.nn.Module], cfg, tensors: dict[str, torch.Tensor], dtype: torch.dtype):
    """`cls(cfg)` built on the meta device (no random init) with the loaded tensors assigned; strict, so a
    parameter left without a tensor is an error, not a silently random weight."""
    with torch.device("meta"):
        model = cls(cfg)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=True)
    return model.eval()


def save_language_model(lm: torch.nn.Module, directory: PathLike) -> None:
    """Write `lm` (a `LanguageModel`) as a standard Hugging Face folder (config.json + model.safetensors with
    HF tensor names) that transformers' `AutoModelForCausalLM.from_pretrained` loads as is."""
    moe = lm.moe_config
    if moe.modality_experts or moe.num_experts > 0:
        raise ValueError("save_language_model: visual experts and sparse MoE layers have no Hugging Face "
                         "Llama/Qwen equivalent; save these models with the native checkpoint format instead")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = lm.config
    hf_config = language_config_to_hf(cfg, lm.embed_tokens.weight.dtype)
    state = lm.state_dict()
    tensors = {}
    for ours, sources in _language_keys(cfg, "hf").items():
        parts = state[ours].split([rows for _, rows in sources], dim=0)
        tensors.update({name: part.contiguous() for (name, _), part in zip(sources, parts)})
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------
# Hugging Face configs


def _read_config(folder: Path) -> dict:
    return read_json_object(folder / "config.json", "expected a Hugging Face checkpoint folder (config.json + "
                                                    "safetensors) or a .gguf file")


def _field(cfg: dict, name: str, source: Path, default=None):
    """A config field; the architecture sizes have no default, so a config lacking one is an error that
    names the field rather than a model of some other shape."""
    if name in cfg and cfg[name] is not None:
        return cfg[name]
    if default is None:
        raise CheckpointError(f"{source}: missing field {name!r}")
    return default


def _first_id(value) -> Optional[int]:
    """eos_token_id may be a list (several stop tokens); the first is the canonical one."""
    return value[0] if isinstance(value, list) and value else (value if isinstance(value, int) else None)


def _rope_theta(cfg: dict, source: Path) -> float:
    """transformers 5 nests RoPE settings in `rope_parameters`; older configs use `rope_theta` and
    `rope_scaling`. Only plain RoPE is supported: a scaled one would silently change every position."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for name, block in (("rope_parameters", params), ("rope_scaling", scaling)):
        rope_type = block.get("rope_type", block.get("type", "default"))
        if rope_type not in (None, "default"):
            raise CheckpointError(f"{source}: {name}.rope_type={rope_type!r} is not supported "
                                  "(only unscaled RoPE, rope_type 'default')")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _check_no_sliding_window(cfg: dict, source: Path) -> None:
    layer_types = cfg.get("layer_types") or []
    if cfg.get("use_sliding_window") or "sliding_attention" in layer_types:
        raise CheckpointError(f"{source}: sliding-window attention (use_sliding_window / layer_types) is not "
                              "supported; every layer must use full attention")


def language_config_from_hf(cfg: dict, source: Path) -> LanguageConfig:
    """Map a transformers Llama / Qwen2 / Qwen3 config onto ours, refusing what our decoder cannot run
    (biases on o_proj or the MLP, other activations, scaled RoPE, sliding windows)."""
    model_type = cfg.get("model_type")
    if model_type not in LM_MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type={model_type!r} is not supported "
                              f"(supported: {', '.join(LM_MODEL_TYPES)})")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act={cfg['hidden_act']!r} is not supported (only 'silu')")
    # Llama's and Qwen3's attention_bias also puts a bias on o_proj, which our decoder does not have.
    if model_type in ("llama", "qwen3") and cfg.get("attention_bias"):
        raise CheckpointError(f"{source}: attention_bias=true (a bias on o_proj too) is not supported")
    if cfg.get("mlp_bias"):
        raise CheckpointError(f"{source}: mlp_bias=true is not supported")
    _check_no_sliding_window(cfg, source)
    hidden = _field(cfg, "hidden_size", source)
    heads = _field(cfg, "num_attention_heads", source)
    return LanguageConfig(
        vocab_size=_field(cfg, "vocab_size", source),
        hidden_size=hidden,
        num_layers=_field(cfg, "num_hidden_layers", source),
        num_heads=heads,
        num_kv_heads=_field(cfg, "num_key_value_heads", source, heads),
        head_dim=_explicit_head_dim(_field(cfg, "head_dim", source, hidden // heads), hidden, heads),
        intermediate_size=_field(cfg, "intermediate_size", source),
        rope_theta=_rope_theta(cfg, source),
        norm_eps=float(_field(cfg, "rms_norm_eps", source, 1e-6)),
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=_field(cfg, "max_position_embeddings", source, 4096),
        bos_token_id=_first_id(cfg.get("bos_token_id")),
        eos_token_id=_first_id(cfg.get("eos_token_id")),
        pad_token_id=_first_id(cfg.get("pad_token_id")),
    )


def _explicit_head_dim(head_dim: int, hidden: int, heads: int) -> int:
    """Our config keeps head_dim 0 when it is the derived hidden/heads, so a saved and reloaded model
    compares equal to the one it came from."""
    return 0 if head_dim == hidden // heads else head_dim


def _hf_model_type(cfg: LanguageConfig) -> str:
    """Qwen2 is the family with q/k/v biases, Qwen3 the one with q/k norms, Llama has neither."""
    if cfg.qk_norm and cfg.qkv_bias:
        raise ValueError("no Hugging Face architecture has both qk_norm and a q/k/v-only bias")
    return "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"


def language_config_to_hf(cfg: LanguageConfig, dtype: torch.dtype) -> dict:
    """config.json for transformers. RoPE is written both the transformers 5 way (`rope_parameters`) and
    the older way (`rope_theta`) so either generation of the library reads it."""
    if cfg.embedding_multiplier != 1.0:
        raise ValueError(f"embedding_multiplier {cfg.embedding_multiplier}: transformers' Llama and Qwen have no "
                         "input-embedding multiplier, so this language model has no Hugging Face equivalent; "
                         "export it inside a VLM (remote code), or train it with embedding_multiplier 1.0")
    model_type = _hf_model_type(cfg)
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]
    out = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if model_type == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out.update(use_sliding_window=False)
    if model_type == "qwen3":
        out.update(attention_bias=False)
    return out


def vision_config_from_hf(cfg: dict, source: Path) -> VisionConfig:
    """A `siglip_vision_model` config, or the `vision_config` of a full `siglip` one. Nested configs may
    omit fields equal to SigLIP's defaults, hence the defaults here."""
    model_type = cfg.get("model_type")
    if model_type == "siglip":
        cfg = cfg.get("vision_config") or {}
    elif model_type != "siglip_vision_model":
        raise CheckpointError(f"{source}: model_type={model_type!r} is not a SigLIP vision checkpoint "
                              "(expected 'siglip_vision_model' or 'siglip')")
    act = cfg.get("hidden_act", "gelu_pytorch_tanh")
    if act not in ("gelu_pytorch_tanh", "gelu_new"):
        raise CheckpointError(f"{source}: hidden_act={act!r} is not supported (only tanh GELU)")
    if cfg.get("num_channels", 3) != 3:
        raise CheckpointError(f"{source}: num_channels={cfg['num_channels']} is not supported (only RGB)")
    return VisionConfig(
        arch="vit",
        patch_size=cfg.get("patch_size", 16),
        hidden_size=cfg.get("hidden_size", 768),
        num_layers=cfg.get("num_hidden_layers", 12),
        num_heads=cfg.get("num_attention_heads", 12),
        intermediate_size=cfg.get("intermediate_size", 3072),
        image_size=cfg.get("image_size", 224),
        norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
        bias=True,
        post_norm=True,
    )


# ---------------------------------------------------------------------------------------------------
# Key maps


# Our parameter name -> its sources as (Hugging Face name, llama.cpp GGUF name, rows); several sources are
# concatenated into one fused tensor of ours. Per-layer names are relative to the layer's prefix.
_LM_KEYS = {
    "embed_tokens.weight": [("model.embed_tokens.weight", "token_embd.weight", "vocab")],
    "norm.weight": [("model.norm.weight", "output_norm.weight", "d")],
    "lm_head.weight": [("lm_head.weight", "output.weight", "vocab")],
}
_LM_LAYER_KEYS = {
    "attn.qkv_proj.weight": [("self_attn.q_proj.weight", "attn_q.weight", "q"),
                             ("self_attn.k_proj.weight", "attn_k.weight", "kv"),
                             ("self_attn.v_proj.weight", "attn_v.weight", "kv")],
    "attn.qkv_proj.bias": [("self_attn.q_proj.bias", "attn_q.bias", "q"),
                           ("self_attn.k_proj.bias", "attn_k.bias", "kv"),
                           ("self_attn.v_proj.bias", "attn_v.bias", "kv")],
    "attn.o_proj.weight": [("self_attn.o_proj.weight", "attn_output.weight", "d")],
    "attn.q_norm.weight": [("self_attn.q_norm.weight", "attn_q_norm.weight", "head")],
    "attn.k_norm.weight": [("self_attn.k_norm.weight", "attn_k_norm.weight", "head")],
    "input_norm.weight": [("input_layernorm.weight", "attn_norm.weight", "d")],
    "post_attn_norm.weight": [("post_attention_layernorm.weight", "ffn_norm.weight", "d")],
    "mlp.gate_up_proj.weight": [("mlp.gate_proj.weight", "ffn_gate.weight", "inter"),
                                ("mlp.up_proj.weight", "ffn_up.weight", "inter")],
    "mlp.down_proj.weight": [("mlp.down_proj.weight", "ffn_down.weight", "d")],
}


def _language_keys(cfg: LanguageConfig, source: str) -> KeyMap:
    """The key map of a language model with config `cfg` for `source` "hf" (safetensors) or "gguf"."""
    column = {"hf": 0, "gguf": 1}[source]
    hd = cfg.resolved_head_dim
    rows = {"vocab": cfg.vocab_size, "d": cfg.hidden_size, "q": cfg.num_heads * hd, "kv": cfg.num_kv_heads * hd,
            "head": hd, "inter": cfg.intermediate_size}
    absent = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    absent |= set() if cfg.qkv_bias else {"attn.qkv_proj.bias"}
    absent |= set() if cfg.qk_norm else {"attn.q_norm.weight", "attn.k_norm.weight"}

    def entries(table: dict, ours_prefix: str, src_prefix: str) -> KeyMap:
        return {ours_prefix + ours: [(src_prefix + names[column], rows[names[2]]) for names in sources]
                for ours, sources in table.items() if ours not in absent}

    keys = entries(_LM_KEYS, "", "")
    for i in range(cfg.num_layers):
        keys.update(entries(_LM_LAYER_KEYS, f"layers.{i}.", (f"model.layers.{i}.", f"blk.{i}.")[column]))
    return keys


def _siglip_prefix(files: dict[str, Path], folder: Path) -> str:
    """Full SigLIP checkpoints (and transformers 4's SiglipVisionModel) prefix the vision tower's tensors
    with `vision_model.`; transformers 5 saves a SiglipVisionModel without it."""
    for prefix in ("vision_model.", ""):
        if prefix + "embeddings.patch_embedding.weight" in files:
            return prefix
    raise CheckpointError(f"{folder}: no SigLIP vision tensors (vision_model.embeddings.patch_embedding.weight)")


def _siglip_keys(cfg: VisionConfig, prefix: str) -> KeyMap:
    d, inter = cfg.hidden_size, cfg.intermediate_size
    emb = prefix + "embeddings."
    keys: KeyMap = {
        "patch_embed.weight": [(emb + "patch_embedding.weight", d)],
        "patch_embed.bias": [(emb + "patch_embedding.bias", d)],
        "position_embedding.weight": [(emb + "position_embedding.weight", (cfg.image_size // cfg.patch_size) ** 2)],
        "norm.weight": [(prefix + "post_layernorm.weight", d)],
        "norm.bias": [(prefix + "post_layernorm.bias", d)],
    }
    for i in range(cfg.num_layers):
        hf, ours = f"{prefix}encoder.layers.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            keys[f"{ours}norm1.{p}"] = [(f"{hf}layer_norm1.{p}", d)]
            keys[f"{ours}qkv_proj.{p}"] = [(f"{hf}self_attn.{x}_proj.{p}", d) for x in "qkv"]
            keys[f"{ours}o_proj.{p}"] = [(f"{hf}self_attn.out_proj.{p}", d)]
            keys[f"{ours}norm2.{p}"] = [(f"{hf}layer_norm2.{p}", d)]
            keys[f"{ours}mlp.fc1.{p}"] = [(f"{hf}mlp.fc1.{p}", inter)]
            keys[f"{ours}mlp.fc2.{p}"] = [(f"{hf}mlp.fc2.{p}", d)]
    return keys


def _gather(keys: KeyMap, get: Callable[[str], torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Build our state dict, checking each source tensor has the rows the config implies (a wrong
    head count or head_dim shows up here, naming the tensor, rather than as garbage outputs)."""
    out = {}
    for ours, sources in keys.items():
        parts = []
        for name, rows in sources:
            t = get(name)
            if t.shape[0] != rows:
                raise CheckpointError(f"{source}: tensor {name} has shape {tuple(t.shape)}, expected {rows} rows "
                                      "from the config")
            parts.append(t)
        out[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return out


# ---------------------------------------------------------------------------------------------------
# safetensors folders


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the file that holds it, for a single-file or a sharded (index.json) checkpoint."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index (expected a 'weight_map' object): {e}") from None
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    with _open_safetensors(single) as f:
        return {name: single for name in f.keys()}


def _open_safetensors(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read safetensors file ({e})") from None


def _read_folder_tensors(folder: Path, keys: KeyMap, files: Optional[dict[str, Path]] = None) -> dict[str, torch.Tensor]:
    """Read only the tensors `keys` needs, file by file (a full SigLIP checkpoint also holds a text tower).
    `files` is `_tensor_files(folder)` when the caller already has it."""
    files = files if files is not None else _tensor_files(folder)
    wanted = [name for sources in keys.values() for name, _ in sources]
    missing = [n for n in wanted if n not in files]
    if missing:
        raise CheckpointError(f"{folder}: checkpoint has no tensor {missing[0]} ({len(missing)} missing in all)")
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(files[name], []).append(name)
    loaded = {}
    for file, names in by_file.items():
        with _open_safetensors(file) as f:
            try:
                loaded.update({n: f.get_tensor(n) for n in names})
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{file}: cannot read tensor ({e})") from None
    return _gather(keys, loaded.__getitem__, folder)


# ---------------------------------------------------------------------------------------------------
# GGUF


def _gguf_reader(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, struct/numpy errors or OSError on bad files
        raise CheckpointError(f"{path}: cannot parse GGUF file ({type(e).__name__}: {e})") from None


def _gguf_metadata(reader, key: str, default=None):
    """A scalar or string metadata value (arrays come back as lists)."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _gguf_language_config(reader, path: Path, tensors: dict) -> LanguageConfig:
    """Sizes from `{arch}.*` metadata; biases, q/k norms and an untied head from which tensors exist."""
    arch = _gguf_metadata(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(f"{path}: general.architecture={arch!r} is not supported "
                              f"(supported: {', '.join(GGUF_ARCHITECTURES)})")

    def meta(name: str, default=None):
        value = _gguf_metadata(reader, f"{arch}.{name}", default)
        if value is None:
            raise CheckpointError(f"{path}: missing metadata {arch}.{name}")
        return value

    scaling = _gguf_metadata(reader, f"{arch}.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensors:
        raise CheckpointError(f"{path}: scaled RoPE ({arch}.rope.scaling.type={scaling!r} / rope_freqs) "
                              "is not supported")
    hidden, heads = meta("embedding_length"), meta("attention.head_count")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: GGUF has no tensor token_embd.weight")
    return LanguageConfig(
        # GGML lists dimensions innermost first: the embedding's last one is the vocabulary.
        vocab_size=int(tensors["token_embd.weight"].shape[-1]),
        hidden_size=hidden,
        num_layers=meta("block_count"),
        num_heads=heads,
        num_kv_heads=meta("attention.head_count_kv", heads),
        head_dim=_explicit_head_dim(meta("attention.key_length", hidden // heads), hidden, heads),
        intermediate_size=meta("feed_forward_length"),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        qkv_bias="blk.0.attn_q.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        tie_word_embeddings="output.weight" not in tensors,
        max_position_embeddings=meta("context_length", 4096),
        bos_token_id=_gguf_metadata(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_gguf_metadata(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_gguf_metadata(reader, "tokenizer.ggml.padding_token_id"),
    )


def _unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter reorders each Llama q/k head from the half-rotation RoPE layout (HF) to the
    interleaved one (GGML's rope); this is its inverse, as in transformers' LlamaTensorProcessor."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _read_gguf_language_model(path: Path) -> tuple[LanguageConfig, dict[str, torch.Tensor]]:
    """Dequantise every tensor to fp32 (the GGUF block formats have no PyTorch kernel here) and map the
    llama.cpp names onto ours."""
    reader = _gguf_reader(path)
    by_name = {t.name: t for t in reader.tensors}
    cfg = _gguf_language_config(reader, path, by_name)
    keys = _language_keys(cfg, "gguf")
    used = {name for sources in keys.values() for name, _ in sources}
    extra = sorted(set(by_name) - used)
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]} ({len(extra)} unmapped); this GGUF has "
                              "parts our decoder does not model")
    permuted = {"attn_q": cfg.num_heads, "attn_k": cfg.num_kv_heads}
    arch = _gguf_metadata(reader, "general.architecture")

    def get(name: str) -> torch.Tensor:
        if name not in by_name:
            raise CheckpointError(f"{path}: GGUF has no tensor {name}")
        t = by_name[name]
        # A copy: unquantised tensors come back as read-only views of the memory-mapped file.
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)
        kind = name.split(".")[2] if name.startswith("blk.") else ""
        if arch == "llama" and kind in permuted:
            w = _unpermute_rope_rows(w, permuted[kind])
        return torch.from_numpy(np.ascontiguousarray(w))

    return cfg, _gather(keys, get, path)
