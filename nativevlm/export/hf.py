"""`nativevlm export hf`: a trained model as a folder that transformers loads with `trust_remote_code=True`.

The folder holds config.json (with `auto_map`), model.safetensors (our state dict as it is: the remote code
uses our parameter names), the remote code (`remote/*.py`, copied as they are: they import transformers and
torch, never nativevlm), the tokenizer, the processor configs and generation_config.json (end of turn, and
the image tokens suppressed, as our engine bans them). A dense text-only language model needs no remote code:
it is written as a standard Llama / Qwen folder (`hub.save_language_model`) with its tokenizer.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional, Union

from ..config import to_dict
from ..data.tokenizer import Tokenizer
from ..errors import CheckpointError, UserError
from ..model.hub import save_language_model
from ..model.language import LanguageModel
from ..model.loading import load_pretrained
from ..model.vlm import CONFIG_NAME, WEIGHTS_NAME, NativeVLM
from ..utils.atomic import atomic_dir

REMOTE = Path(__file__).parent / "remote"
MODULE = "nativevlm"  # the remote files are {configuration,modeling,processing}_nativevlm.py
# Training-only parameters the exported model has no use for.
TRAINING_ONLY = ("connector.cell_head.",)


def hf_config(model: NativeVLM) -> dict:
    """config.json: the language model under transformers' usual names, the encoder and connector as
    nativevlm writes them, and the auto classes the remote code provides."""
    c, lm, moe = model.config, model.config.language, model.config.moe
    return {
        "architectures": ["NativeVLMForConditionalGeneration"],
        "model_type": MODULE,
        "auto_map": {
            "AutoConfig": f"configuration_{MODULE}.NativeVLMConfig",
            "AutoModelForCausalLM": f"modeling_{MODULE}.NativeVLMForConditionalGeneration",
            "AutoModelForImageTextToText": f"modeling_{MODULE}.NativeVLMForConditionalGeneration",
        },
        "vocab_size": lm.vocab_size,
        "hidden_size": lm.hidden_size,
        "intermediate_size": lm.intermediate_size,
        "num_hidden_layers": lm.num_layers,
        "num_attention_heads": lm.num_heads,
        "num_key_value_heads": lm.num_kv_heads,
        "head_dim": lm.resolved_head_dim,
        "rms_norm_eps": lm.norm_eps,
        "text_rope_theta": lm.rope_theta,
        "attention_bias": lm.qkv_bias,
        "qk_norm": lm.qk_norm,
        "embedding_multiplier": lm.embedding_multiplier,
        "max_position_embeddings": lm.max_position_embeddings,
        "tie_word_embeddings": lm.tie_word_embeddings,
        "bos_token_id": lm.bos_token_id,
        "eos_token_id": lm.eos_token_id,
        "pad_token_id": lm.pad_token_id,
        "modality_experts": moe.modality_experts,
        "per_modality_norms": moe.per_modality_norms,
        "num_experts": moe.num_experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.expert_intermediate_size,
        "vision": to_dict(c.vision),
        "connector": to_dict(c.connector),
        "image_token_id": c.image_token_id,
        "image_start_id": c.image_start_id,
        "image_end_id": c.image_end_id,
        "image_eol_id": c.image_eol_id,
        "dtype": str(model.language.embed_tokens.weight.dtype).removeprefix("torch."),
    }


def processor_configs(model: NativeVLM) -> tuple[dict, dict]:
    """(preprocessor_config.json, processor_config.json): `data.image.ImageProcessor.from_config`'s
    settings and the image token strings."""
    from ..data.image import ImageProcessor

    ip = ImageProcessor.from_config(model.config.vision, model.config.connector)
    auto = {"AutoProcessor": f"processing_{MODULE}.NativeVLMProcessor",
            "AutoImageProcessor": f"processing_{MODULE}.NativeVLMImageProcessor"}
    image = {"image_processor_type": "NativeVLMImageProcessor", "processor_class": "NativeVLMProcessor",
             "auto_map": auto, "patch_size": ip.patch_size, "factor": ip.factor, "downsample": ip.downsample,
             "min_patches": ip.min_patches, "max_patches": ip.max_patches, "fixed_size": ip.fixed_size}
    st = model.config.special_tokens
    processor = {"processor_class": "NativeVLMProcessor", "auto_map": {"AutoProcessor": auto["AutoProcessor"]},
                 "image_token": st.image, "image_start_token": st.image_start, "image_end_token": st.image_end,
                 "image_eol_token": st.image_eol}
    return image, processor


def generation_config(model: Union[NativeVLM, LanguageModel], tokenizer: Tokenizer) -> dict:
    """Greedy until <|im_end|>; the image tokens can never be generated (the engine's list)."""
    from ..infer.engine import banned_token_ids

    return {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.bos_id,
            "do_sample": False, "suppress_tokens": banned_token_ids(model)}


def check_tokenizer(model: NativeVLM, tokenizer: Tokenizer, source) -> None:
    """The tokenizer must give the image tokens the ids the model was trained with."""
    ids = tokenizer.image_token_ids()
    trained = {k: getattr(model.config, k) for k in ids}
    if ids != trained:
        raise CheckpointError(f"tokenizer {source} gives the image tokens ids {ids}, but the model was trained "
                              f"with {trained}: pass the tokenizer the model was trained with (--tokenizer)")
    if tokenizer.vocab_size > model.config.language.vocab_size:
        raise CheckpointError(f"tokenizer {source} has {tokenizer.vocab_size} tokens, more than the model's "
                              f"{model.config.language.vocab_size}: pass the tokenizer it was trained with")


def write_vlm(model: NativeVLM, tokenizer: Tokenizer, folder: Path) -> None:
    from safetensors.torch import save_file

    (folder / CONFIG_NAME).write_text(json.dumps(hf_config(model), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not k.startswith(TRAINING_ONLY)}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    for kind in ("configuration", "modeling", "processing"):
        shutil.copyfile(REMOTE / f"{kind}_{MODULE}.py", folder / f"{kind}_{MODULE}.py")
    tokenizer.save(folder)
    image, processor = processor_configs(model)
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def export_hf(model_path: Union[str, Path], out: Union[str, Path], tokenizer_path: Optional[Union[str, Path]] = None
              ) -> Union[NativeVLM, LanguageModel]:
    """Write the model in `model_path` (a folder written by training or `save_pretrained`) and its tokenizer
    (stored in that folder unless `tokenizer_path` says where) into `out`, replacing it atomically."""
    if Path(out).resolve() == Path(model_path).resolve():
        raise UserError(f"--out {out} is the model folder itself, which the export would replace: choose "
                        "another folder")
    model = load_pretrained(model_path)
    if isinstance(model, LanguageModel) and (model.moe_config.modality_experts or model.moe_config.num_experts):
        raise UserError(f"{model_path} is a language model with visual experts or sparse MoE layers, which only "
                        "a NativeVLM export carries: export the NativeVLM trained from it, or a dense language "
                        "model (written as a standard Llama / Qwen folder)")
    if isinstance(model, NativeVLM) and (model.router is not None or model.config.connector.region_size):
        raise UserError(f"{model_path} routes image regions (connector.region_size / router), which the Hugging "
                        "Face remote code does not implement: serve it with nativevlm serve, or export a model "
                        "without regions")
    if isinstance(model, NativeVLM) and model.config.vision.stem != "linear":
        raise UserError(f"{model_path} encodes patches with a convolutional stem (vision.stem: "
                        f"{model.config.vision.stem}), which the Hugging Face remote code does not implement: "
                        "serve it with nativevlm serve")
    special = model.config.special_tokens if isinstance(model, NativeVLM) else None
    tokenizer = Tokenizer.load(tokenizer_path or model_path, special_tokens=special)
    with atomic_dir(Path(out)) as tmp:
        if isinstance(model, NativeVLM):
            check_tokenizer(model, tokenizer, tokenizer_path or model_path)
            write_vlm(model, tokenizer, tmp)
        else:
            save_language_model(model, tmp)
            tokenizer.save(tmp)
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(model, tokenizer), indent=2) + "\n")
    return model
