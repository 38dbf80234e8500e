"""Byte-level BPE tokenizer with the ChatML chat template and NaViL's image tokens.

A thin wrapper over a `tokenizers.Tokenizer`, so a tokenizer trained here, one loaded from a Hugging Face
folder (SmolLM2, Qwen) and one built from a GGUF file all behave the same: the chat and image special
tokens are always present as single tokens (added to an existing vocabulary when missing), and
`image_token_ids()` fills a `ModelConfig`. A tokenizer trained here also has the thinking tags `<think>` and
`</think>` as single tokens (`Tokenizer.train`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Union

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from ..config import SpecialTokens
from .gguf_tokenizer import load_gguf_tokenizer
from .thinking import THINK_END, THINK_START

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
CHAT_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# Reserved by `Tokenizer.train` as plain (non-special) added tokens, as in Qwen3's tokenizer: one id each, kept
# by decode, since the engine and `data.thinking` read them in the decoded text.
THINK_TOKENS = (THINK_START, THINK_END)

# The same ChatML template as SmolLM2-Instruct and Qwen, written into tokenizer_config.json so that
# transformers renders conversations exactly as `apply_chat_template` below does.
CHATML_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ModelConfig field -> SpecialTokens field.
IMAGE_TOKEN_FIELDS = {
    "image_token_id": "image",
    "image_start_id": "image_start",
    "image_end_id": "image_end",
    "image_eol_id": "image_eol",
}


def _token_content(value) -> Optional[str]:
    """tokenizer_config.json writes special tokens as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
    """`Tokenizer(tk)` wraps an existing `tokenizers.Tokenizer`, adding any missing special tokens.
    `pad_token` / `bos_token` name the source's own tokens when it has them (HF folders declare them in
    tokenizer_config.json); without a pad token `<|pad|>` is added, without a BOS token `bos_id` is None."""

    def __init__(
        self,
        tk: HFTokenizer,
        pad_token: Optional[str] = None,
        bos_token: Optional[str] = None,
        special_tokens: Optional[SpecialTokens] = None,
    ):
        self.tk = tk
        self.special_tokens = special_tokens or SpecialTokens()
        self.pad_token = pad_token or PAD
        self.bos_token = bos_token
        image_tokens = [getattr(self.special_tokens, name) for name in IMAGE_TOKEN_FIELDS.values()]
        wanted = [*CHAT_TOKENS, self.pad_token, *image_tokens]
        if bos_token:
            wanted.append(bos_token)
        added = {t.content for t in tk.get_added_tokens_decoder().values()}
        missing = [t for t in dict.fromkeys(wanted) if t not in added]
        if missing:
            # An id already in the vocabulary is reused; special=True makes decode skip them and encode
            # recognise them in text as single tokens.
            tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              think_tags: bool = True) -> "Tokenizer":
        """Train a byte-level BPE (GPT-2 / SmolLM style: no unknown tokens, no prefix space) on `texts`.
        The special tokens take the first ids, so `<|endoftext|>` = 0, `<|im_start|>` = 1, `<|im_end|>` = 2,
        then `<|pad|>` and the image tokens; the thinking tags `<think>` and `</think>` follow them as plain
        added tokens: single ids wherever they appear in text, kept by `decode` (they are content) and not in
        `special_ids()`. Spelt out they would take ~8 tokens each, which a small model learns to misspell.
        `think_tags=False` leaves them out (spelt out in text, as a tokenizer without them has them)."""
        specials = [*CHAT_TOKENS, PAD, *(getattr(SpecialTokens(), f) for f in IMAGE_TOKEN_FIELDS.values())]
        reserved = [*specials, *(THINK_TOKENS if think_tags else ())]
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(reserved):
            raise ValueError(
                f"vocab_size {vocab_size} is too small: the byte alphabet and reserved tokens alone take "
                f"{len(alphabet) + len(reserved)}"
            )
        tk = HFTokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in reserved],
            initial_alphabet=alphabet,
            show_progress=False,
        )
        tk.train_from_iterator(texts, trainer=trainer)
        # The trainer marks every token it reserves as special (whatever the AddedToken says), and decode
        # drops special tokens: the thinking tags are made plain added tokens again, keeping their ids.
        data = json.loads(tk.to_str())
        for token in data["added_tokens"]:
            if token["content"] in THINK_TOKENS:
                token["special"] = False
        return cls(HFTokenizer.from_str(json.dumps(data)))

    @classmethod
    def load(cls, path: Union[str, Path], special_tokens: Optional[SpecialTokens] = None) -> "Tokenizer":
        """Load a `tokenizer.json` file, or a folder holding one (with its tokenizer_config.json, if any,
        naming the pad and BOS tokens), or the tokenizer embedded in a `.gguf` model file. `special_tokens`
        are the image tokens of the model it serves (its `ModelConfig.special_tokens`; default: ours)."""
        path = Path(path)
        if path.suffix == ".gguf":
            tk, names = load_gguf_tokenizer(path)
            return cls(tk, **names, special_tokens=special_tokens)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}: expected tokenizer.json or a folder holding one")
        config_file = file.parent / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        return cls(
            HFTokenizer.from_file(str(file)),
            pad_token=_token_content(config.get("pad_token")),
            bos_token=_token_content(config.get("bos_token")),
            special_tokens=special_tokens,
        )

    def save(self, directory: Union[str, Path]) -> None:
        """Write tokenizer.json plus a tokenizer_config.json (special tokens, chat template) so the folder
        also loads with transformers' `AutoTokenizer`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tk.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": IM_END,
            "pad_token": self.pad_token,
            "chat_template": CHATML_JINJA,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    # -- use ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it become single ids. Nothing is prepended
        (the chat template starts every turn with `<|im_start|>` instead of a BOS)."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        token_id = self.tk.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return self.token_to_id(IM_END)

    @property
    def pad_id(self) -> int:
        return self.token_to_id(self.pad_token)

    @property
    def bos_id(self) -> Optional[int]:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    def special_ids(self) -> set[int]:
        """Ids of the special tokens (chat, padding, image framing): the ones `decode` skips."""
        return {i for i, t in self.tk.get_added_tokens_decoder().items() if t.special}

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, then `<|im_start|>assistant\\n`
        when a reply is to be generated."""
        text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return text + f"{IM_START}assistant\n" if add_generation_prompt else text

    def image_token_ids(self) -> dict[str, int]:
        """`ModelConfig` field -> id, for `dataclasses.replace(cfg, **tok.image_token_ids())`."""
        return {
            cfg_field: self.token_to_id(getattr(self.special_tokens, tok_field))
            for cfg_field, tok_field in IMAGE_TOKEN_FIELDS.items()
        }
