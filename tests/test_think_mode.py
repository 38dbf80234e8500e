"""Thinking mode at inference: the engine opens `<think>`, forces `</think>` exactly at the budget, keeps a
think-fusion model from thinking when asked not to, and returns thinking apart from the answer, streamed and
whole; the API carries the fields and returns `reasoning_content`; evaluation scores the answer only."""
import json

import httpx
import openai
import pytest
import torch

from nativevlm.data.collate import encode_sample
from nativevlm.data.sample import Sample, user_turn
from nativevlm.data.thinking import THINK_END, THINK_START, split_thinking
from nativevlm.eval.benchmarks import Benchmark, Item
from nativevlm.eval.harness import evaluate
from nativevlm.eval.local import LocalAnswerer
from nativevlm.infer.chat import encode_prompt
from nativevlm.infer.engine import Engine, Request, SamplingParams, split_reply
from nativevlm.serve.api import ChatServer, ServeConfig
from reference import generate
from servekit import ServerThread, make_model, make_tokenizer

QUESTION, THOUGHT, ANSWER = "how many red", "one red circle and one red square", "two"


@pytest.fixture(scope="module")
def kit():
    tok = make_tokenizer()
    return make_model(tok), tok


@pytest.fixture(scope="module")
def fused(kit):
    """A tiny LM taught think-fusion on one question: the thinking reply twice as often as the direct one, so
    left alone it thinks, and banned from opening `<think>` its next choice is the direct answer."""
    from nativevlm import LanguageConfig, LanguageModel

    _, tok = kit
    torch.manual_seed(0)
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                                      num_kv_heads=2, intermediate_size=128, max_position_embeddings=256))
    rows = [encode_sample(Sample("s", [{"role": "user", "content": QUESTION},
                                       {"role": "assistant", "content": ANSWER, **extra}]), tok, None)
            for extra in ({"thinking": THOUGHT}, {"thinking": THOUGHT}, {})]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r.input_ids + [tok.pad_id] * (width - len(r)) for r in rows])
    targets = torch.tensor([r.targets + [-100] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        lm(ids, targets=targets).loss.backward()
        opt.step()
    return lm.eval(), tok


def prompt(tok, text=QUESTION) -> list[int]:
    return encode_prompt([{"role": "user", "content": text}], [], tok, None).input_ids


def test_think_true_prefills_the_opening_tag_and_generates_as_the_reference_does(kit):
    model, tok = kit
    ids = prompt(tok)
    engine = Engine(model, tok, max_batch_size=2)
    got = engine.generate([Request(ids, SamplingParams(max_new_tokens=10, ignore_eos=True), think=True)])[0]
    ref = generate(model, torch.tensor([ids + tok.encode(THINK_START + "\n")]), max_new_tokens=10, use_cache=False)
    assert got.token_ids == ref[0].tolist()
    assert got.prompt_tokens == len(ids) + len(engine.think_open)


@pytest.mark.parametrize("budget", [0, 1, 5])
def test_the_budget_forces_the_closing_tag_exactly_there(kit, budget):
    model, tok = kit
    engine = Engine(model, tok, max_batch_size=4)
    params = SamplingParams(max_new_tokens=budget + 12, ignore_eos=True)
    plain = Request(prompt(tok, "the blue square"), params)
    thinking = Request(prompt(tok), params, think=True, thinking_budget=budget)
    events = []
    thinking.on_event = events.append
    done = engine.generate([plain, thinking])[1]
    close = tok.encode("\n" + THINK_END + "\n")
    assert done.token_ids[budget:budget + len(close)] == close
    assert THINK_END not in tok.decode(done.token_ids[:budget])
    assert done.thinking == tok.decode(done.token_ids[:budget]).strip()
    assert done.text == tok.decode(done.token_ids[budget + len(close):]).strip()
    # streamed pieces add up to the finished parts, and the answer never streams thinking
    assert "".join(e.thinking for e in events) == done.thinking
    assert "".join(e.text for e in events) == done.text
    # the budget is per request: the plain one beside it is what it is alone
    alone = Engine(model, tok, max_batch_size=1).generate([Request(plain.input_ids, params)])[0]
    assert plain.completion.token_ids == alone.token_ids and plain.completion.thinking is None


class EndsAt(Engine):
    """The engine over a model that samples end-of-sequence as its `k`-th reply token (whatever it is asked)."""

    def __init__(self, *args, k: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.k = k

    def _emit(self, r0, logits):
        for i, row in enumerate(self.running[r0:r0 + logits.shape[0]]):
            if len(row.tokens) == self.k:
                logits[i, self.eos_id] = 1e9
        super()._emit(r0, logits)


@pytest.mark.parametrize("k", [0, 3])
def test_an_end_inside_the_think_block_closes_it_and_the_answer_follows(kit, k):
    """A reply asked to think that samples end-of-sequence before `</think>` gets `</think>` in its place and
    goes on to answer, as the model continues that text; one not asked to think, or already past its
    `</think>`, still ends there."""
    model, tok = kit
    engine = EndsAt(model, tok, max_batch_size=4, k=k)
    n = k + len(engine.think_close) + 12  # long enough that feeding anything but the tag would show
    thinking = Request(prompt(tok), SamplingParams(max_new_tokens=n), think=True, thinking_budget=k + 2)
    plain = Request(prompt(tok, "the blue square"), SamplingParams(max_new_tokens=n))
    engine.generate([thinking, plain])
    done = thinking.completion
    close = done.token_ids[k:k + len(engine.think_close)]
    assert close == engine.think_close and done.finish_reason == "length" and len(done.token_ids) == n
    ids = prompt(tok) + engine.think_open + done.token_ids[:k + len(close)]
    ref = generate(model, torch.tensor([ids]), max_new_tokens=n - k - len(close), use_cache=False)
    assert done.token_ids[k + len(close):] == ref[0].tolist()  # the answer: the model's own continuation
    assert done.thinking == tok.decode(done.token_ids[:k]).strip() and done.text
    assert plain.completion.finish_reason == "stop" and len(plain.completion.token_ids) == k
    # past its (budget-forced) `</think>`, an end-of-sequence ends the reply
    late = EndsAt(model, tok, k=k + 2 + len(engine.think_close) + 1)
    after = late.generate([Request(prompt(tok), SamplingParams(max_new_tokens=n + 8), think=True,
                                   thinking_budget=k + 2)])[0]
    assert after.finish_reason == "stop" and len(after.token_ids) == late.k
    assert after.token_ids[k + 2:k + 2 + len(engine.think_close)] == engine.think_close


@pytest.fixture(scope="module")
def spelled():
    """A tokenizer without the thinking tags as tokens (a pretrained one may lack them), and a model for it."""
    tok = make_tokenizer(think_tokens=False)
    return make_model(tok), tok


def test_the_tags_are_single_tokens_of_a_trained_tokenizer(kit, spelled):
    (_, tok), (_, bare) = kit, spelled
    assert tok.encode(THINK_START) == [tok.token_to_id(THINK_START)]
    assert tok.encode(THINK_END) == [tok.token_to_id(THINK_END)]
    assert len(bare.encode(THINK_START)) > 1 and len(bare.encode(THINK_END)) > 1


@pytest.mark.parametrize("which", ["kit", "spelled"])
def test_a_budgeted_reply_is_closed_once_and_parses(which, request):
    """The engine opens with `<think>` and a budget forces one `</think>` (between the newlines training
    renders): with a trained tokenizer each tag is one token, with one that spells them out the pieces; either
    way the reply as written reads as one well-formed think block."""
    model, tok = request.getfixturevalue(which)
    engine = Engine(model, tok)
    newline = tok.encode("\n")
    if which == "kit":
        start, end = tok.token_to_id(THINK_START), tok.token_to_id(THINK_END)
        assert engine.think_open == [start, *newline] and engine.think_close == [*newline, end, *newline]
    else:
        assert engine.think_open == tok.encode(THINK_START + "\n")
        assert engine.think_close == tok.encode("\n" + THINK_END + "\n")
    budget = 4
    params = SamplingParams(max_new_tokens=budget + len(engine.think_close) + 4, ignore_eos=True)
    done = engine.generate([Request(prompt(tok), params, think=True, thinking_budget=budget)])[0]
    close = done.token_ids[budget:budget + len(engine.think_close)]
    assert close == engine.think_close and tok.decode(close) == "\n" + THINK_END + "\n"
    text = tok.decode(engine.think_open + done.token_ids)
    assert text.count(THINK_START) == text.count(THINK_END) == 1
    reply = split_thinking(text)
    assert reply.well_formed and (reply.thinking, reply.answer) == (done.thinking, done.text)
    assert done.thinking == tok.decode(done.token_ids[:budget]).strip()


@pytest.mark.parametrize("which", ["kit", "spelled"])
def test_think_false_bans_what_would_open_a_think_block(which, request):
    """A model pushed toward the first token of `<think>` (the tag itself with a trained tokenizer, a piece of
    it otherwise) opens with it when left to choose, and never when asked not to think: that token is among
    those banned while the reply is blank."""
    model, tok = request.getfixturevalue(which)
    first = tok.encode(THINK_START)[0]
    if which == "kit":
        assert first == tok.token_to_id(THINK_START)
    engine = Engine(model, tok, max_batch_size=2)
    assert first in engine.think_start_ids()

    def push(module, args, out):
        out.logits[..., first] += 1e4

    hook = model.language.register_forward_hook(push)
    try:
        free, off = engine.generate([Request(prompt(tok), SamplingParams(max_new_tokens=3), think=mode)
                                     for mode in (None, False)])
    finally:
        hook.remove()
    assert free.token_ids[0] == first  # pushed, it opens a tag
    assert off.token_ids[0] != first and off.token_ids[0] not in engine.think_start_ids()
    assert off.thinking is None and not off.text.lstrip().startswith(THINK_START[0])


def test_a_fused_model_thinks_or_answers_directly_as_asked(fused):
    lm, tok = fused
    engine = Engine(lm, tok, max_batch_size=3)
    params = SamplingParams(max_new_tokens=48)
    free, on, off = engine.generate([Request(prompt(tok), params, think=mode) for mode in (None, True, False)])
    assert (free.thinking, free.text) == (THOUGHT, ANSWER)  # left alone, it thinks
    assert (on.thinking, on.text) == (THOUGHT, ANSWER)
    assert off.thinking is None and off.text == ANSWER  # think=False: the direct answer, no tag anywhere
    assert THINK_START not in tok.decode(off.token_ids) and "<" not in off.text
    assert not set(off.token_ids[:1]) & set(engine.think_start_ids())
    short = engine.generate([Request(prompt(tok), params, think=True, thinking_budget=2)])[0]
    assert len(tok.encode(short.thinking)) <= 2 and short.thinking == tok.decode(short.token_ids[:2]).strip()


def test_requests_that_can_never_think_right_are_refused(kit):
    model, tok = kit
    engine = Engine(model, tok)
    for think, budget in ((None, 4), (False, 4), (True, -1)):
        with pytest.raises(ValueError, match="thinking_budget"):
            engine.submit(Request(prompt(tok), think=think, thinking_budget=budget))


@pytest.mark.parametrize("raw,opened,final,want", [
    ("<think>\na b\n</think>\nyes", False, True, ("a b", "yes")),
    ("  <think>a</think> no ", False, True, ("a", "no")),
    ("a b\n</think>\n3", True, True, ("a b", "3")),
    ("a b\n</th", True, False, ("a b", "")),  # a partial tag is held back
    ("a b\n</th", True, True, ("a b\n</th", "")),  # ran out while thinking: no answer
    ("<thi", False, False, (None, "")),  # undecided
    ("<b>", False, False, (None, "<b>")),
    (" yes ", False, True, (None, " yes ")),  # no think block: the text as generated
])
def test_split_reply(raw, opened, final, want):
    assert split_reply(raw, opened, final) == want


def test_evaluation_scores_the_answer_never_the_thinking(fused):
    """The thinking holds other numbers: a scorer that read it would find three and no single answer."""
    lm, tok = fused
    bench = Benchmark("b", "mem", [Item("q", QUESTION, ANSWER, category="count", kind="reasoning")])
    result = evaluate(bench, LocalAnswerer(lm, tok, max_new_tokens=48, think=True))
    [record] = result.records
    assert record["prediction"] == ANSWER and record["status"] == "correct"
    assert record["trace"] == {"thinking": THOUGHT}
    direct = evaluate(bench, LocalAnswerer(lm, tok, max_new_tokens=48, think=False)).records[0]
    assert direct["prediction"] == ANSWER and "trace" not in direct


def test_the_api_carries_thinking_fields_and_returns_reasoning_apart(fused):
    lm, tok = fused
    server = ChatServer(lm, tok, ServeConfig(model_name="fused", max_len=256))
    with ServerThread(server.app()) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x")
        ask = dict(model="fused", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=48)
        on = client.chat.completions.create(**ask, extra_body={"think": True}).choices[0].message
        assert (on.content, on.reasoning_content, on.reasoning) == (ANSWER, THOUGHT, THOUGHT)
        vllm_names = {"chat_template_kwargs": {"enable_thinking": True}, "thinking_token_budget": 2}
        short = client.chat.completions.create(**ask, extra_body=vllm_names).choices[0].message
        assert len(tok.encode(short.reasoning_content)) <= 2 and short.reasoning_content != THOUGHT
        off = client.chat.completions.create(**ask, extra_body={"think": False}).choices[0].message
        assert off.content == ANSWER and getattr(off, "reasoning_content", None) is None
        stream = client.chat.completions.create(**ask, stream=True, extra_body={"think": True})
        deltas = [c.choices[0].delta for c in stream if c.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == THOUGHT
        assert "".join(d.content or "" for d in deltas) == ANSWER
        bad = httpx.post(s.url + "/v1/chat/completions", json={**ask, "thinking_budget": 3})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "thinking_budget"
        bad = httpx.post(s.url + "/v1/chat/completions", json={**ask, "think": "yes"})
        assert bad.status_code == 400 and "think must be true or false" in bad.json()["error"]["message"]


def test_ask_and_chat_show_thinking_apart_from_the_answer(fused, tmp_path, capsys):
    import argparse
    import io

    from nativevlm.cli import main
    from nativevlm.commands.chat import run
    from nativevlm.model.hub import save_language_model

    lm, tok = fused
    save_language_model(lm, tmp_path / "m")
    tok.save(tmp_path / "m")
    assert main(["ask", str(tmp_path / "m"), QUESTION, "--think", "--max-new-tokens", "48"]) == 0
    printed = capsys.readouterr()
    assert printed.out == ANSWER + "\n" and printed.err == f"thinking: {THOUGHT}\n"
    assert main(["ask", str(tmp_path / "m"), QUESTION, "--no-think", "--max-new-tokens", "48"]) == 0
    assert capsys.readouterr().out == ANSWER + "\n"
    assert main(["ask", str(tmp_path / "m"), QUESTION, "--thinking-budget", "3"]) == 2
    assert "--thinking-budget 3: give a number of tokens >= 0, with --think" in capsys.readouterr().err
    args = argparse.Namespace(model=str(tmp_path / "m"), image=[], tokenizer=None, device="cpu", max_new_tokens=48,
                              temperature=0.0, top_p=1.0, seed=None, think=True, thinking_budget=None)
    out = io.StringIO()
    assert run(args, stdin=io.StringIO(f"{QUESTION}\n/quit\n"), stdout=out) == 0
    assert f"> thinking: {THOUGHT}\n{ANSWER}\n> " in out.getvalue()


def test_eval_think_records_thinking_in_the_trace_and_scores_the_answer(fused, tmp_path):
    from nativevlm.cli import main
    from nativevlm.model.hub import save_language_model

    lm, tok = fused
    save_language_model(lm, tmp_path / "m")
    tok.save(tmp_path / "m")
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"id": "q", "conversations": [{"from": "human", "value": QUESTION},
                                                            {"from": "gpt", "value": ANSWER}]}]))
    common = [str(tmp_path / "m"), "--bench", f"llava:{qa}", "--max-new-tokens", "48"]
    assert main(["eval", *common, "--think", "--thinking-budget", "40", "--out", str(tmp_path / "e")]) == 0
    [record] = [json.loads(line) for line in (tmp_path / "e" / "qa" / "records.jsonl").read_text().splitlines()]
    assert (record["prediction"], record["status"], record["trace"]) == (ANSWER, "correct", {"thinking": THOUGHT})
    run = json.loads((tmp_path / "e" / "run.json").read_text())
    assert run["think"] is True and run["thinking_budget"] == 40
    assert main(["eval", *common, "--no-think", "--out", str(tmp_path / "e")]) == 2  # another run's folder
