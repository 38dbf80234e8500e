"""Think-fusion targets: an assistant turn with `thinking` is encoded as `<think>...</think>` before the
answer with the loss on both; a direct turn has the loss on its answer only; readers and the LLaVA writer
carry `thinking`."""
import json

import pytest

from nativevlm.data.collate import IGNORE, encode_sample
from nativevlm.data.formats import read_samples, write_llava
from nativevlm.data.image import ImageProcessor
from nativevlm.data.sample import Sample
from nativevlm.data.thinking import render_thinking
from nativevlm.data.tokenizer import IM_END, Tokenizer

CORPUS = ["the red square is left of the blue circle", "count the circles one two three", "answer three"] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=300)


def qa(answer: str, thinking=None) -> Sample:
    reply = {"role": "assistant", "content": answer, **({"thinking": thinking} if thinking else {})}
    return Sample("s", [{"role": "user", "content": "how many circles?"}, reply])


def loss_tokens(enc) -> list[int]:
    """The tokens the loss is on (targets are pre-shifted: the token after each loss position)."""
    return [t for t in enc.targets if t != IGNORE]


def test_thinking_and_answer_carry_the_loss_direct_only_the_answer(tok):
    proc = ImageProcessor(patch_size=4, factor=8)
    direct = encode_sample(qa("three"), tok, proc)
    thinking = encode_sample(qa("three", "count the circles: one two three"), tok, proc)
    end = [tok.token_to_id(IM_END)]
    assert loss_tokens(direct) == tok.encode("three") + end
    assert loss_tokens(thinking) == tok.encode(render_thinking("count the circles: one two three", "three")) + end
    assert tok.decode(loss_tokens(thinking)) == "<think>\ncount the circles: one two three\n</think>\nthree"
    # the prompt (everything before the reply) is the same, so the model is asked the same question
    prompt = encode_sample(Sample("s", qa("x").messages[:1]), tok, proc, add_generation_prompt=True).input_ids
    assert direct.input_ids[:len(prompt)] == thinking.input_ids[:len(prompt)] == prompt
    assert all(t == IGNORE for t in thinking.targets[:len(prompt) - 1])
    assert thinking.n_loss_tokens > direct.n_loss_tokens


def test_readers_and_writer_carry_thinking(tmp_path):
    llava = tmp_path / "llava.json"
    llava.write_text(json.dumps([{"id": "a", "conversations": [
        {"from": "human", "value": "how many?"}, {"from": "gpt", "value": "3", "thinking": "one two three"}]}]))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"id": "b", "messages": [
        {"role": "user", "content": "how many?"},
        {"role": "assistant", "content": "3", "thinking": "one two three"}]}) + "\n")
    for path in (llava, chat):
        [s], _ = read_samples(path)
        assert s.messages[1] == {"role": "assistant", "content": "3", "thinking": "one two three"}
        assert "thinking" not in s.messages[0]
    write_llava([s], tmp_path / "out.json")
    assert read_samples(tmp_path / "out.json")[0][0].messages == s.messages
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "c", "conversations": [
        {"from": "human", "value": "q", "thinking": "no"}, {"from": "gpt", "value": "a"}]}]))
    samples, report = read_samples(bad)
    assert not samples and "'thinking' must be a string, on an assistant turn" in report.summary()
