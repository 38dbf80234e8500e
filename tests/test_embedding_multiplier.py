"""`LanguageConfig.embedding_multiplier`: the input embeddings (text and spliced image tokens) are scaled
before the first layer and the output head is not; a language model with one has no Llama/Qwen folder."""
from __future__ import annotations

import pytest
import torch

from nativevlm import LanguageConfig, LanguageModel
from nativevlm.model.hub import save_language_model


def lm(mult: float, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(LanguageConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                        intermediate_size=48, embedding_multiplier=mult)).eval()


def test_the_multiplier_scales_the_inputs_only():
    scaled, plain = lm(4.0), lm(1.0)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        want = plain(inputs_embeds=plain.embed_tokens(ids) * 4.0).logits
        got = scaled(ids).logits
        assert torch.allclose(got, want, atol=1e-6)
        assert not torch.allclose(got, plain(ids).logits, atol=1e-3)  # it does change the model


def test_cached_decoding_equals_the_full_forward():
    model = lm(6.0)
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        cache = model.new_kv_cache(1, 16)
        model(ids[:, :-1], kv_cache=cache)
        step = model(ids[:, -1:], kv_cache=cache).logits[:, -1]
    assert torch.allclose(full, step, atol=1e-5)


def test_no_transformers_folder_for_a_scaled_language_model(tmp_path):
    with pytest.raises(ValueError, match="embedding_multiplier 2.0"):
        save_language_model(lm(2.0), tmp_path / "lm")
