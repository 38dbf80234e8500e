"""Hugging Face checkpoint loading and saving, checked against transformers on tiny random models.

Every parameter (norms and biases included) is re-drawn at random, so a tensor mapped to the wrong place,
a missing bias or a wrong head layout changes the outputs instead of hiding behind an init of ones or
zeros."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nativevlm.config import LanguageConfig  # noqa: E402
from nativevlm.model.hub import CheckpointError, save_language_model  # noqa: E402
from nativevlm.model.language import LanguageModel  # noqa: E402
from nativevlm.model.vision import VisionEncoder  # noqa: E402
from hfkit import random_hf_lm, randomize  # noqa: E402

TOL = 1e-4
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


HF_CONFIGS = {
    "qwen2_gqa_bias": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=True, rope_theta=1e6),
    "qwen3_qknorm_headdim": lambda: transformers.Qwen3Config(**TINY, head_dim=24, tie_word_embeddings=False),
    "llama_gqa_untied": lambda: transformers.LlamaConfig(**TINY, tie_word_embeddings=False, rms_norm_eps=1e-5),
    "llama_tied": lambda: transformers.LlamaConfig(**dict(TINY, num_key_value_heads=4), tie_word_embeddings=True),
}


def _batch():
    """Two rows, the first left-padded by 3: mask True = real token."""
    ids = torch.randint(0, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :3] = False
    return ids, mask


def _reference_logits(hf_model, ids, mask):
    """transformers does not derive positions from the mask in a plain forward (generate does), so pass
    the positions a left-padded row needs."""
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return hf_model(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits


def _assert_matches(ours: LanguageModel, hf_model):
    ids, mask = _batch()
    with torch.no_grad():
        plain = ours(ids).logits
        padded = ours(ids, attention_mask=mask).logits
    assert (plain - hf_model(input_ids=ids).logits).abs().max() < TOL
    diff = (padded - _reference_logits(hf_model, ids, mask))[mask]
    assert diff.abs().max() < TOL


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_language_model_matches_transformers(name, tmp_path):
    hf_model = random_hf_lm(HF_CONFIGS[name]())
    hf_model.save_pretrained(tmp_path)
    ours = LanguageModel.from_hf(tmp_path)
    assert ours.config.tie_word_embeddings == hf_model.config.tie_word_embeddings
    _assert_matches(ours, hf_model)


def test_load_in_bfloat16(tmp_path):
    random_hf_lm(HF_CONFIGS["qwen2_gqa_bias"]()).save_pretrained(tmp_path)
    ours = LanguageModel.from_hf(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in ours.parameters())


def test_sharded_checkpoint(tmp_path):
    hf_model = random_hf_lm(HF_CONFIGS["llama_gqa_untied"]())
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _assert_matches(LanguageModel.from_hf(tmp_path), hf_model)


@pytest.mark.parametrize("kind", [
    dict(),  # Llama
    dict(qkv_bias=True),  # Qwen2
    dict(qk_norm=True, head_dim=24, tie_word_embeddings=False),  # Qwen3
])
def test_save_round_trip_through_transformers(kind, tmp_path):
    cfg = LanguageConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=96, rope_theta=5e5, norm_eps=1e-5, eos_token_id=2, **kind)
    ours = randomize(LanguageModel(cfg))
    save_language_model(ours, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    _assert_matches(ours, hf_model)
    again = LanguageModel.from_hf(tmp_path)
    assert again.config == cfg
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("patch,image,full_siglip", [(14, 56, False), (16, 64, True)])
def test_siglip_vision_encoder(patch, image, full_siglip, tmp_path):
    vision = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  patch_size=patch, image_size=image, layer_norm_eps=1e-6)
    if full_siglip:
        # A full SigLIP checkpoint: the vision tower is taken, the text tower and pooling head ignored.
        cfg = transformers.SiglipConfig(
            vision_config=vision,
            text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=16),
        )
        full = randomize(transformers.SiglipModel(cfg))
        full.save_pretrained(tmp_path)
        hf_model = full.vision_model
    else:
        hf_model = randomize(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision)))
        hf_model.save_pretrained(tmp_path)
    ours = VisionEncoder.from_hf(tmp_path)
    pixels = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = ours.encode_batch(pixels).flatten(1, 2)
        ref = hf_model(pixel_values=pixels).last_hidden_state
    assert feats.shape == ref.shape
    assert (feats - ref).abs().max() < TOL


# ---------------------------------------------------------------------------------------------------
# Errors name the file at fault


@pytest.fixture
def llama_dir(tmp_path):
    random_hf_lm(HF_CONFIGS["llama_tied"]()).save_pretrained(tmp_path)
    return tmp_path


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_corrupt_safetensors_names_file(llama_dir):
    (llama_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        LanguageModel.from_hf(llama_dir)


def test_bad_config_json_names_file(llama_dir):
    (llama_dir / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="config.json"):
        LanguageModel.from_hf(llama_dir)


@pytest.mark.parametrize("changes,field", [
    (dict(model_type="gpt2"), "model_type"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "rope_parameters"),
    (dict(hidden_size=None), "hidden_size"),
])
def test_unsupported_config_names_file_and_field(llama_dir, changes, field):
    _edit_config(llama_dir, **changes)
    with pytest.raises(CheckpointError, match=rf"config\.json.*{field}"):
        LanguageModel.from_hf(llama_dir)


def test_sliding_window_in_use_is_refused(tmp_path):
    random_hf_lm(HF_CONFIGS["qwen2_gqa_bias"]()).save_pretrained(tmp_path)
    _edit_config(tmp_path, use_sliding_window=True, sliding_window=4)
    with pytest.raises(CheckpointError, match="sliding"):
        LanguageModel.from_hf(tmp_path)


def test_wrong_head_count_names_tensor(llama_dir):
    _edit_config(llama_dir, num_key_value_heads=2)
    with pytest.raises(CheckpointError, match="k_proj"):
        LanguageModel.from_hf(llama_dir)


def test_vision_loader_refuses_a_language_checkpoint(llama_dir):
    with pytest.raises(CheckpointError, match=r"config\.json.*model_type"):
        VisionEncoder.from_hf(llama_dir)
