"""Tokenizer: training, special tokens, the thinking tags, save/load round trip, ChatML template, the
`tokenizer train` CLI."""
import argparse
import dataclasses
import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from nativevlm.commands import tokenizer as tokenizer_command
from nativevlm.config import ModelConfig, SpecialTokens
from nativevlm.data.thinking import THINK_END, THINK_START, split_thinking
from nativevlm.data.tokenizer import CHAT_TOKENS, PAD, Tokenizer

CORPUS = [f"The {c} {s} is left of the {c2} circle number {i}." for i, (c, s, c2) in enumerate(
    [("red", "square", "blue"), ("green", "triangle", "red"), ("blue", "circle", "green")] * 40)]
MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Where is the red square?"},
    {"role": "assistant", "content": "Left of the blue circle."},
]
SPECIALS = [*CHAT_TOKENS, PAD, "<img>", "<img_start>", "<img_end>", "<img_eol>"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=400)


def test_train_special_tokens_are_single_ids(tok):
    assert [tok.token_to_id(t) for t in SPECIALS] == list(range(len(SPECIALS)))
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (2, 3, None)
    for t in SPECIALS:
        assert tok.encode(f"a{t}b") == [*tok.encode("a"), tok.token_to_id(t), *tok.encode("b")]
    text = "The red square is left of the blue circle."
    ids = tok.encode(text)
    assert len(ids) < len(text) / 2  # merges were learned
    assert tok.decode(ids) == text
    assert tok.decode([tok.token_to_id("<img>"), *ids]) == text
    assert tok.decode([tok.token_to_id("<img>")], skip_special_tokens=False) == "<img>"
    assert tok.decode(tok.encode("unseen ÜTF-8 ✓ text")) == "unseen ÜTF-8 ✓ text"  # byte level: no unknowns
    with pytest.raises(KeyError, match="nope"):
        tok.token_to_id("nope")


THOUGHT_REPLY = f"{THINK_START}\nx\n{THINK_END}\nred"


def assert_single_think_tags(tok):
    """`<think>` and `</think>` are one id each wherever they stand, decode (skipping special tokens, the
    default) keeps them, and they are not special ids."""
    start, end = tok.token_to_id(THINK_START), tok.token_to_id(THINK_END)
    ids = tok.encode(THOUGHT_REPLY)
    assert ids == [start, *tok.encode("\nx\n"), end, *tok.encode("\nred")]
    assert tok.encode(f"a{THINK_END}b") == [*tok.encode("a"), end, *tok.encode("b")]
    assert tok.decode(ids) == THOUGHT_REPLY
    assert split_thinking(tok.decode(ids)) == split_thinking(THOUGHT_REPLY)
    assert tok.decode([start, tok.pad_id, end]) == THINK_START + THINK_END  # the pad between them is skipped
    assert not {start, end} & tok.special_ids()


def test_train_reserves_the_think_tags_as_single_plain_tokens(tok):
    assert (tok.token_to_id(THINK_START), tok.token_to_id(THINK_END)) == (len(SPECIALS), len(SPECIALS) + 1)
    assert_single_think_tags(tok)


def test_image_token_ids_fill_a_model_config(tok):
    cfg = dataclasses.replace(ModelConfig(), **tok.image_token_ids())
    assert (cfg.image_token_id, cfg.image_start_id, cfg.image_end_id, cfg.image_eol_id) == (4, 5, 6, 7)


def test_tokenizer_takes_the_model_configs_image_tokens(tmp_path, tok):
    """A model whose config names other image tokens gets a tokenizer with those tokens (added as single
    special tokens), and its ids fill the config's id fields."""
    tok.save(tmp_path)
    special = SpecialTokens(image="<pic>", image_start="<pic_start>", image_end="<pic_end>", image_eol="<pic_eol>")
    loaded = Tokenizer.load(tmp_path, special_tokens=special)
    ids = loaded.image_token_ids()
    assert [loaded.decode([i], skip_special_tokens=False) for i in ids.values()] == \
        ["<pic>", "<pic_start>", "<pic_end>", "<pic_eol>"]
    assert loaded.encode("a<pic>b").count(ids["image_token_id"]) == 1


def test_chat_template(tok):
    assert tok.apply_chat_template(MESSAGES[:2], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nWhere is the red square?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(MESSAGES).endswith("<|im_start|>assistant\nLeft of the blue circle.<|im_end|>\n")


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "tk")
    text = tok.apply_chat_template(MESSAGES)
    for path in (tmp_path / "tk", tmp_path / "tk" / "tokenizer.json"):
        loaded = Tokenizer.load(path)
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.image_token_ids() == tok.image_token_ids()
        assert (loaded.eos_id, loaded.pad_id) == (tok.eos_id, tok.pad_id)
        assert loaded.special_ids() == tok.special_ids()
        assert_single_think_tags(loaded)
        assert loaded.encode(THOUGHT_REPLY) == tok.encode(THOUGHT_REPLY)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_matches_transformers(tok, tmp_path):
    """The saved folder loads in transformers with the same ids, chat template and special tokens."""
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    rendered = hf.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert rendered == tok.apply_chat_template(MESSAGES[:2], add_generation_prompt=True)
    assert hf.encode(rendered, add_special_tokens=False) == tok.encode(rendered)
    assert (hf.eos_token_id, hf.pad_token_id) == (tok.eos_id, tok.pad_id)
    ids = hf.encode(THOUGHT_REPLY, add_special_tokens=False)
    assert ids == tok.encode(THOUGHT_REPLY) and hf.decode(ids, skip_special_tokens=True) == THOUGHT_REPLY


def test_existing_vocabulary_gets_missing_tokens(tmp_path):
    """A foreign tokenizer (HF folder, GGUF-built) keeps its ids; missing special tokens are appended and
    the folder's own pad/BOS tokens are used."""
    vocab = {"<s>": 0, "</pad>": 1, "a": 2, "b": 3, "ab": 4}
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    wrapped = Tokenizer(tk, pad_token="</pad>", bos_token="<s>")
    assert wrapped.encode("ab") == [4]
    assert (wrapped.pad_id, wrapped.bos_id) == (1, 0)
    assert wrapped.encode("<|im_start|><img>") == [wrapped.token_to_id("<|im_start|>"), wrapped.token_to_id("<img>")]
    assert min(wrapped.image_token_ids().values()) >= len(vocab)
    assert wrapped.vocab_size == len(vocab) + len(CHAT_TOKENS) + 4  # the four image tokens
    assert wrapped.tk.token_to_id(THINK_START) is None  # the thinking tags are only reserved when training

    tk.save(str(tmp_path / "tokenizer.json"))
    config = {"pad_token": {"content": "</pad>"}, "bos_token": "<s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.pad_id, loaded.bos_id) == (1, 0)
    assert loaded.image_token_ids() == wrapped.image_token_ids()


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    tokenizer_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_train(tmp_path, capsys):
    (tmp_path / "docs.txt").write_text("\n".join(CORPUS) + "\n")
    (tmp_path / "conv.json").write_text(json.dumps([{"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat shape?"}, {"from": "gpt", "value": "A triangle."}]}]))
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Count the circles."}]}]}) + "\n")
    texts = [t for name in ("conv.json", "chat.jsonl") for t in tokenizer_command.corpus_texts(tmp_path / name)]
    assert texts == ["\nWhat shape?", "A triangle.", "Count the circles."]
    assert run_cli("tokenizer", "train", str(tmp_path / "docs.txt"), str(tmp_path / "conv.json"),
                   str(tmp_path / "chat.jsonl"), "--vocab-size", "300", "--out", str(tmp_path / "out")) == 0
    assert "300-token" in capsys.readouterr().out
    assert Tokenizer.load(tmp_path / "out").vocab_size == 300
