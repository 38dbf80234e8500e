"""The inference engine: continuous batching gives each request what it gets alone, and that equals the
reference generation; joins mid-decode, cache compaction, stop strings, seeds, cancellation."""
import pytest
import torch

from nativevlm.data.image import ImageProcessor
from nativevlm.data.sample import user_turn
from nativevlm.infer.chat import encode_prompt
from nativevlm.infer.engine import Engine, Request, SamplingParams
from reference import generate
from servekit import image, make_model, make_tokenizer


@pytest.fixture(scope="module")
def kit():
    tok = make_tokenizer()
    model = make_model(tok)
    return model, tok, ImageProcessor.from_config(model.config.vision, model.config.connector)


def prompts(kit):
    """Text-only and image prompts of different lengths and image sizes."""
    model, tok, proc = kit
    specs = [("how many red", []), ("the blue square is left of", [image()]),
             ("a", [image((10, 200, 10), (64, 32))]), ("what is above the small circle and the large", []),
             ("compare", [image(), image((0, 0, 0), (32, 64))]), ("red", [image((90, 90, 90), (48, 48))])]
    out = []
    for text, imgs in specs:
        content = user_turn(text, len(imgs))
        enc = encode_prompt([{"role": "user", "content": content}], imgs, tok, proc)
        out.append((enc.input_ids, enc.pixel_values))
    return out


def run_alone(model, tok, ids, pixels, params, **kw):
    engine = Engine(model, tok, max_batch_size=1, **kw)
    return engine.generate([Request(ids, params, pixel_values=pixels)])[0]


def test_engine_alone_equals_reference_generation(kit):
    model, tok, _ = kit
    for ids, pixels in prompts(kit)[:3]:
        got = run_alone(model, tok, ids, pixels, SamplingParams(max_new_tokens=12, ignore_eos=True))
        ref = generate(model, torch.tensor([ids]), pixel_values=pixels or None, max_new_tokens=12, use_cache=False)
        assert got.token_ids == ref[0].tolist()
        assert got.finish_reason == "length" and got.prompt_tokens == len(ids)


def test_batched_equals_alone_greedy(kit):
    model, tok, _ = kit
    ps = prompts(kit)
    params = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (5, 17, 9, 13, 3, 11)]
    alone = [run_alone(model, tok, ids, px, p).token_ids for (ids, px), p in zip(ps, params)]
    engine = Engine(model, tok, max_batch_size=8)
    batched = engine.generate([Request(ids, p, pixel_values=px) for (ids, px), p in zip(ps, params)])
    assert [c.token_ids for c in batched] == alone
    assert [len(t) for t in alone] == [p.max_new_tokens for p in params]


def test_requests_joining_mid_decode_and_compaction_equal_alone(kit):
    """Staggered arrivals into a small batch with a short cache: requests join the running batch, leave it,
    and the shared timeline runs off the end of the buffer, so rows get compacted; nothing changes."""
    model, tok, _ = kit
    ps = prompts(kit) * 2
    params = [SamplingParams(max_new_tokens=8 + 3 * (i % 4), ignore_eos=True) for i in range(len(ps))]
    max_len = max(len(ids) for ids, _ in ps) + 20
    alone = [run_alone(model, tok, ids, px, p, max_len=max_len).token_ids for (ids, px), p in zip(ps, params)]
    engine = Engine(model, tok, max_batch_size=3, max_len=max_len)
    reqs = [Request(ids, p, pixel_values=px) for (ids, px), p in zip(ps, params)]
    compactions = 0
    original = engine.cache.compact

    def counting(starts):
        nonlocal compactions
        compactions += 1
        return original(starts)

    engine.cache.compact = counting
    for r in reqs:
        engine.submit(r)
        engine.step()
        engine.step()
    joined_mid_decode = engine.num_running > 0
    while not all(r.done.is_set() for r in reqs):
        engine.step()
    assert joined_mid_decode and compactions > 0
    assert [r.completion.token_ids for r in reqs] == alone


def test_stop_strings_and_streaming(kit):
    model, tok, _ = kit
    ids, px = prompts(kit)[1]
    full = run_alone(model, tok, ids, px, SamplingParams(max_new_tokens=24, ignore_eos=True)).text
    stop = next(full[i:i + 2] for i in range(4, len(full)) if full[i:i + 2].isalpha())
    engine = Engine(model, tok, max_batch_size=2)
    events = list(engine.stream(Request(ids, SamplingParams(max_new_tokens=24, stop=[stop], ignore_eos=True),
                                        pixel_values=px)))
    streamed = "".join(e.text for e in events)
    assert streamed == full[:full.find(stop)]
    assert events[-1].finish_reason == "stop" and all(e.finish_reason is None for e in events[:-1])
    assert "".join(e.text for e in engine.stream(Request(ids, SamplingParams(max_new_tokens=24, ignore_eos=True),
                                                         pixel_values=px))) == full


def test_seeded_sampling_is_reproducible_in_any_batch(kit):
    model, tok, _ = kit
    ps = prompts(kit)
    sampled = SamplingParams(max_new_tokens=16, temperature=1.5, top_p=0.95, top_k=50, seed=7, ignore_eos=True)
    ids, px = ps[1]
    alone = run_alone(model, tok, ids, px, sampled).token_ids
    engine = Engine(model, tok, max_batch_size=8)
    others = [Request(i, SamplingParams(max_new_tokens=10, temperature=1.0), pixel_values=p) for i, p in ps]
    mine = Request(ids, sampled, pixel_values=px)
    engine.generate(others[:3] + [mine] + others[3:])
    assert mine.completion.token_ids == alone
    other_seed = run_alone(model, tok, ids, px, SamplingParams(**{**vars(sampled), "seed": 8})).token_ids
    assert other_seed != alone
    greedy = run_alone(model, tok, ids, px, SamplingParams(max_new_tokens=16, ignore_eos=True)).token_ids
    top1 = run_alone(model, tok, ids, px, SamplingParams(max_new_tokens=16, temperature=1.0, top_k=1,
                                                         ignore_eos=True)).token_ids
    assert top1 == greedy


def test_cancel_frees_the_slot_and_the_engine_thread_keeps_serving(kit):
    model, tok, _ = kit
    (ids, px), (ids2, px2) = prompts(kit)[:2]
    engine = Engine(model, tok, max_batch_size=1).start()
    try:
        long = engine.submit(Request(ids, SamplingParams(max_new_tokens=900, ignore_eos=True), pixel_values=px))
        queued = engine.submit(Request(ids2, SamplingParams(max_new_tokens=4, ignore_eos=True), pixel_values=px2))
        engine.cancel(long.id)
        assert queued.done.wait(30) and long.done.wait(30)
        assert long.completion.finish_reason == "cancelled" and queued.completion.finish_reason == "length"
        assert engine.num_running == 0
    finally:
        engine.stop()


def test_requests_that_cannot_run_are_refused_with_a_reason(kit):
    model, tok, _ = kit
    engine = Engine(model, tok, max_len=32)
    with pytest.raises(ValueError, match="context of 32 tokens"):
        engine.submit(Request(list(range(20)), SamplingParams(max_new_tokens=13)))
    with pytest.raises(ValueError, match="top_p"):
        engine.submit(Request([1, 2], SamplingParams(top_p=0)))


def test_prefill_token_budget_spreads_admission_over_steps(kit):
    model, tok, _ = kit
    ps = prompts(kit)[:3]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    alone = [run_alone(model, tok, ids, px, params).token_ids for ids, px in ps]
    engine = Engine(model, tok, max_batch_size=8, max_prefill_tokens=1)  # one prompt per prefill
    reqs = [engine.submit(Request(ids, params, pixel_values=px)) for ids, px in ps]
    engine.step()
    assert (engine.num_running, engine.num_waiting) == (1, 2)
    while not all(r.done.is_set() for r in reqs):
        engine.step()
    assert [r.completion.token_ids for r in reqs] == alone


def test_a_failing_request_fails_alone(kit):
    model, tok, _ = kit
    (ids, px), (ids2, px2) = prompts(kit)[1:3]
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    alone = run_alone(model, tok, ids2, px2, params).token_ids
    engine = Engine(model, tok)
    bad = Request(ids, params, image_features=[torch.zeros(3, model.config.language.hidden_size)])
    good = Request(ids2, params, pixel_values=px2)
    engine.generate([bad, good])  # admitted into the same prefill
    assert bad.completion.finish_reason == "error" and "image tokens" in bad.completion.error
    assert good.completion.token_ids == alone
