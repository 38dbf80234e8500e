"""Rebuild a `tokenizers.Tokenizer` from the tokenizer a llama.cpp GGUF file carries in its metadata.

A GGUF ships no tokenizer.json: it stores the vocabulary (`tokenizer.ggml.tokens`), the BPE merges, each
token's type and the special token ids, plus `tokenizer.ggml.pre`, llama.cpp's name for how the text is
split before BPE. That name decides the pre-tokenizer, which must be the one the merges were learned with
or numbers and whitespace runs tokenize differently from the original model. Only byte-level BPE
vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM, Qwen, Llama 3) are supported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

# llama.cpp's token types (`gguf.TokenType`).
CONTROL, USER_DEFINED = 3, 4

# Split patterns of the pre-tokenizers llama.cpp names in `tokenizer.ggml.pre` (from llama-vocab.cpp).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _gpt2_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm_split() -> pre_tokenizers.PreTokenizer:
    """SmolLM's own tokenizer.json: every digit on its own, then GPT-2's split."""
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_split()])


def _regex_split(pattern: str):
    return lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


PRE_TOKENIZERS = {
    "default": _gpt2_split,
    "gpt-2": _gpt2_split,
    "smollm": _smollm_split,
    "qwen2": _regex_split(_QWEN2_SPLIT),
    "llama-bpe": _regex_split(_LLAMA3_SPLIT),
    "llama3": _regex_split(_LLAMA3_SPLIT),
}


def _read_metadata(path: Path) -> dict:
    """All scalar and array metadata of the file (tensors are not read)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, struct/numpy errors or OSError on bad files
        raise ValueError(f"{path}: cannot parse GGUF file ({type(e).__name__}: {e})") from None
    return {name: field.contents() for name, field in reader.fields.items()}


def _special_tokens(tokens: list[str], token_types: list[int]) -> list[AddedToken]:
    """Tokens llama.cpp always matches whole in text: CONTROL ones (`<|im_start|>`) as special tokens,
    USER_DEFINED ones (`<think>`) as plain added tokens. Their text is already in the vocabulary, so
    `tokenizers` gives them their GGUF ids."""
    kinds = {CONTROL: True, USER_DEFINED: False}
    return [
        AddedToken(tok, special=kinds[kind], normalized=False)
        for tok, kind in zip(tokens, token_types) if kind in kinds
    ]


def _post_processor(meta: dict, tokens: list[str]):
    """Prepend BOS / append EOS only where the file asks for it (`add_bos_token`), as llama.cpp does."""
    bos = meta.get("tokenizer.ggml.bos_token_id") if meta.get("tokenizer.ggml.add_bos_token") else None
    eos = meta.get("tokenizer.ggml.eos_token_id") if meta.get("tokenizer.ggml.add_eos_token") else None
    if bos is None and eos is None:
        return None
    prefix = [tokens[bos]] if bos is not None else []
    suffix = [tokens[eos]] if eos is not None else []
    return processors.TemplateProcessing(
        single=" ".join([*prefix, "$A", *suffix]),
        pair=" ".join([*prefix, "$A", *suffix, *prefix, "$B", *suffix]),
        special_tokens=[(tokens[i], i) for i in dict.fromkeys(x for x in (bos, eos) if x is not None)],
    )


def tokenizer_from_gguf(path: Union[str, Path]) -> Tokenizer:
    """The byte-level BPE tokenizer described by a GGUF file's metadata, with its ids unchanged."""
    return load_gguf_tokenizer(path)[0]


def load_gguf_tokenizer(path: Union[str, Path]) -> tuple[Tokenizer, dict[str, Optional[str]]]:
    """The tokenizer and the text of the tokens the file names as BOS and padding, as
    `{"bos_token": ..., "pad_token": ...}` (the keyword arguments of `nativevlm.data.tokenizer.Tokenizer`),
    so a wrapper reuses the model's own tokens instead of adding new ids the embedding lacks."""
    path = Path(path)
    meta = _read_metadata(path)
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model={model!r} is not supported (only byte-level BPE, 'gpt2')")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported "
                         f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges", [])]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tk.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tk.decoder = decoders.ByteLevel()
    tk.add_tokens(_special_tokens(tokens, meta.get("tokenizer.ggml.token_type", [])))
    post = _post_processor(meta, tokens)
    if post is not None:
        tk.post_processor = post
    names = {role: _token_text(meta, tokens, key) for role, key in (("bos_token", "bos_token_id"),
                                                                    ("pad_token", "padding_token_id"))}
    return tk, names


def _token_text(meta: dict, tokens: list[str], key: str) -> Optional[str]:
    token_id = meta.get(f"tokenizer.ggml.{key}")
    return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None
