"""The OpenAI-compatible server, driven with the official `openai` client: answers, streaming, every refusal
as a 4xx envelope, concurrency, the bounded queue, time-outs, disconnects, and DvD == monolithic."""
import asyncio
import base64
import http.server
import struct
import threading
import time
import zlib

import httpx
import openai
import pytest

from nativevlm.data.image import ImageProcessor
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.infer.chat import encode_prompt
from nativevlm.infer.engine import Engine, Request, SamplingParams
from nativevlm.model.loading import load_pretrained
from nativevlm.serve.api import ChatServer, ServeConfig
from nativevlm.serve.media import MediaPolicy, RequestError, image_bytes
from nativevlm.serve.vision_worker import ENCODE_PATH, VisionClient, VisionServer
from servekit import ServerThread, data_uri, image, make_model_dir, png_bytes

KEY = "sk-test"
NAME = "tiny"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve") / "tiny")


def chat_server(model_dir, vision=None, **kw) -> ChatServer:
    media = kw.pop("media", MediaPolicy())
    config = ServeConfig(model_name=NAME, max_len=2048, api_key=KEY, media=media, image_workers=2, **kw)
    return ChatServer(load_pretrained(model_dir), Tokenizer.load(model_dir), config, vision=vision)


class ImageHost(http.server.BaseHTTPRequestHandler):
    """Remote images for the fetch tests: /ok.png, /slow.png (answers after 3 s), /big.png (over the cap)."""

    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(3)
        body = png_bytes(image()) if self.path != "/big.png" else b"\x89PNG" + b"\0" * 300_000
        try:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the server under test gave up waiting, as it should
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def server(model_dir, image_host, tmp_path_factory):
    media_dir = tmp_path_factory.mktemp("media")
    image().save(media_dir / "ok.png")
    media = MediaPolicy(max_image_pixels=1_000_000, max_image_bytes=200_000, allow_remote=True,
                        allowed_domains=["127.0.0.1"], fetch_timeout_s=1.0, local_media_path=str(media_dir))
    chat = chat_server(model_dir, media=media, max_tokens_cap=1900)
    with ServerThread(chat.app()) as s:
        s.media_dir, s.chat = media_dir, chat
        yield s


def client(server, **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60, **kw)


def user(*parts):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": p}} if p.startswith(("data:", "http", "ftp:", "/"))
                                         else {"type": "text", "text": p} for p in parts]}]


GREEDY = dict(temperature=0, max_tokens=10, extra_body={"ignore_eos": True})


def test_image_question_gets_the_engines_answer(server, model_dir):
    img = image((30, 160, 40), (64, 32))
    r = client(server).chat.completions.create(model=NAME, messages=user(data_uri(img), "how many squares"), **GREEDY)
    tok, model = Tokenizer.load(model_dir), load_pretrained(model_dir)
    proc = ImageProcessor.from_config(model.config.vision, model.config.connector)
    enc = encode_prompt([{"role": "user", "content": "<image>\nhow many squares"}], [img], tok, proc)
    ref = Engine(model, tok).generate([Request(enc.input_ids, SamplingParams(max_new_tokens=10, ignore_eos=True),
                                               pixel_values=enc.pixel_values)])[0]
    assert r.choices[0].message.content == ref.text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(enc.input_ids) and r.usage.completion_tokens == 10
    # A 64x32 image is a 2x4 grid: <img_start>, 2 rows of 4 <img> + <img_eol>, <img_end>.
    assert r.usage.prompt_tokens_details.image_tokens == 1 + 2 * (4 + 1) + 1


def test_evaluation_answers_are_the_servers(server, model_dir):
    """What evaluation measures is what the server answers: the same benchmark, asked in process
    (`LocalAnswerer`, the path of the quickstart, curves and studies) and through the API (`EndpointAnswerer`),
    gets the same answers and the same scores."""
    from nativevlm.eval.benchmarks import Benchmark, Item
    from nativevlm.eval.endpoint import EndpointAnswerer
    from nativevlm.eval.harness import evaluate
    from nativevlm.eval.local import LocalAnswerer

    pictures = [png_bytes(image()), png_bytes(image((30, 160, 40), (64, 32))), png_bytes(image((0, 0, 0), (32, 64)))]
    items = [Item("q0", "how many red", "2", [pictures[0]]),
             Item("q1", "the blue square is left of", "red", [pictures[1]]),
             Item("q2", "which is larger", "A", [pictures[2]], options={"A": "circle", "B": "square"}),
             Item("q3", "compare the two", "no", [pictures[0], pictures[2]]),
             Item("q4", "a small green triangle is", "above", [])]
    bench = Benchmark("api", "api", items)
    local = evaluate(bench, LocalAnswerer(load_pretrained(model_dir), Tokenizer.load(model_dir), 3, 12))
    served = evaluate(bench, EndpointAnswerer(server.url + "/v1", NAME, KEY, concurrency=4, max_tokens=12, retries=0))
    assert [r["prediction"] for r in local.records] == [r["prediction"] for r in served.records]
    assert len({r["prediction"] for r in local.records}) > 1  # the answers depend on the question
    assert local.records == served.records


def test_streaming_yields_the_non_streaming_text(server):
    c = client(server)
    messages = user(data_uri(image()), "the red", data_uri(image((0, 0, 200), (32, 64))), "is left of")
    full = c.chat.completions.create(model=NAME, messages=messages, **GREEDY)
    chunks = list(c.chat.completions.create(model=NAME, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == full.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def bomb_png(width=5000, height=5000) -> bytes:
    """A PNG whose header claims width x height pixels around a few bytes of data. 25 M pixels is under
    Pillow's own bomb limit, so only the server's header check can refuse it as too large (decoding it would
    fail as a truncated file instead)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def bad_requests(server, image_host):
    ok = data_uri(image())
    truncated = png_bytes(image((1, 2, 3), (64, 64)))[:60]
    outside = server.media_dir.parent / "outside.png"
    image().save(outside)
    return [  # (body changes, status, code, param)
        (dict(messages=[{"role": "wizard", "content": "hi"}]), 400, "invalid_role", "messages[0].role"),
        (dict(model="gpt-4o"), 404, "model_not_found", "model"),
        (dict(messages=user("data:image/png;base64,%%%not-base64", "hi")), 400, "invalid_base64",
         "messages[0].content[0].image_url"),
        (dict(messages=user(b64(b"hello, I am text"), "hi")), 400, "invalid_image", "messages[0].content[0].image_url"),
        (dict(messages=user(b64(truncated), "hi")), 400, "invalid_image", "messages[0].content[0].image_url"),
        (dict(messages=user(b64(bomb_png()), "hi")), 400, "image_too_large", "messages[0].content[0].image_url"),
        (dict(messages=user(*[ok] * 9, "hi")), 400, "too_many_images", "messages"),
        (dict(messages=user(ok, "red " * 2100)), 400, "context_length_exceeded", "messages"),
        (dict(max_tokens=5000), 400, "max_tokens_too_large", "max_tokens"),
        (dict(temperature=-1), 400, "invalid_value", "temperature"),
        (dict(logprobs=True), 400, "unsupported_parameter", "logprobs"),
        (dict(messages=[{"role": "user", "content": "an <image> marker"}]), 400, "invalid_content",
         "messages[0].content[0]"),
        (dict(messages=user(str(outside), "hi")), 400, "path_not_allowed", "messages[0].content[0].image_url"),
        (dict(messages=user("ftp://example.com/a.png", "hi")), 400, "invalid_image_url", "messages[0].content[0].image_url"),
        (dict(messages=user(image_host.replace("127.0.0.1", "localhost") + "/ok.png", "hi")), 400,
         "domain_not_allowed", "messages[0].content[0].image_url"),
        (dict(messages=user(image_host + "/slow.png", "hi")), 400, "image_fetch_timeout", "messages[0].content[0].image_url"),
        (dict(messages=user(image_host + "/big.png", "hi")), 400, "image_too_large", "messages[0].content[0].image_url"),
    ]


def test_every_bad_request_gets_its_envelope_and_the_server_keeps_serving(server, image_host):
    c = client(server)
    good = dict(model=NAME, messages=user(data_uri(image()), "hi"), max_tokens=4, temperature=0)
    for change, status, code, param in bad_requests(server, image_host):
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(**{**good, **change})
        err = info.value.response.json()["error"]
        assert (info.value.status_code, err["code"], err["param"]) == (status, code, param), change
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert c.chat.completions.create(**good).choices[0].message.content is not None
    raw = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers={"authorization": f"Bearer {KEY}"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(**good)
    assert info.value.response.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.get(server.url + "/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    # Allowed sources work: a local file under the media folder, a remote image from an allowed host.
    for url in (str(server.media_dir / "ok.png"), image_host + "/ok.png"):
        assert c.chat.completions.create(**{**good, "messages": user(url, "hi")}).usage.prompt_tokens_details.image_tokens


def test_remote_and_local_images_are_refused_unless_enabled():
    async def refusal(url):
        with pytest.raises(RequestError) as info:
            await image_bytes(url, MediaPolicy(), "p", http=None)
        return info.value.code
    assert asyncio.run(refusal("https://example.com/a.png")) == "remote_images_disabled"
    assert asyncio.run(refusal("/etc/passwd")) == "local_images_disabled"


def prompts(n):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 0)]
    sizes = [(32, 32), (64, 32), (32, 64), (48, 48)]
    texts = ["how many", "the red square", "is the circle left", "a"]
    return [user(data_uri(image(colors[i % 4], sizes[(i // 4) % 4])), texts[(i // 2) % 4]) if i % 5
            else [{"role": "user", "content": texts[i % 4]}] for i in range(n)]


async def answer_all(url, messages, max_tokens=8):
    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)

    async def one(m):
        try:
            r = await c.chat.completions.create(model=NAME, messages=m, temperature=0, max_tokens=max_tokens,
                                                extra_body={"ignore_eos": True})
            return r.choices[0].message.content
        except openai.RateLimitError as e:
            return e.response.json()["error"]["code"]
    try:
        return await asyncio.gather(*(one(m) for m in messages))
    finally:
        await c.close()


def test_32_concurrent_requests_equal_sequential_answers(server):
    messages = prompts(32)
    c = client(server)
    sequential = [c.chat.completions.create(model=NAME, messages=m, **{**GREEDY, "max_tokens": 8}).choices[0].message.content
                  for m in messages]
    concurrent = asyncio.run(asyncio.wait_for(answer_all(server.url, messages), 120))
    assert concurrent == sequential
    assert len(set(sequential)) > 8  # the prompts really differ in their answers


def metric(url, name) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def wait_until(fn, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_its_slot(server, stream, monkeypatch):
    step = server.chat.engine.step
    monkeypatch.setattr(server.chat.engine, "step", lambda: time.sleep(0.002) or step())  # 1900 tokens >= 4 s
    cancelled = 'nativevlm_finished_requests_total{reason="cancelled"}'
    before = metric(server.url, cancelled) if cancelled in httpx.get(server.url + "/metrics").text else 0
    body = {"model": NAME, "messages": user("a"), "max_tokens": 1900, "ignore_eos": True, "stream": stream}
    headers = {"authorization": f"Bearer {KEY}"}
    if stream:
        with httpx.Client(timeout=30) as h:
            with h.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers) as r:
                lines = r.iter_lines()  # kept: a dropped iterator would close the stream early
                assert next(lines).startswith("data: ")
                assert wait_until(lambda: metric(server.url, "nativevlm_running_requests") == 1)
    else:  # the client gives up waiting and closes the connection
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=0.5)
    assert wait_until(lambda: metric(server.url, "nativevlm_running_requests") == 0
                      and metric(server.url, "nativevlm_in_flight_requests") == 0)
    assert metric(server.url, cancelled) == before + 1  # stopped, not run to its 1900 tokens


def test_models_health_metrics(server):
    assert client(server).models.list().data[0].id == NAME
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    for name in ("nativevlm_requests_total", "nativevlm_queue_depth", "nativevlm_generation_tokens_per_second",
                 "nativevlm_request_latency_seconds_bucket", "nativevlm_time_to_first_token_seconds_sum"):
        assert name in text


def test_bounded_queue_answers_429_and_time_outs_free_the_slot(model_dir):
    slow = chat_server(model_dir, max_batch_size=2, max_queue=1, request_timeout_s=4.0)
    step = slow.engine.step
    slow.engine.step = lambda: time.sleep(0.005) or step()  # >= 5 ms a token, however fast the machine
    with ServerThread(slow.app()) as s:
        answers = asyncio.run(asyncio.wait_for(answer_all(s.url, prompts(12), max_tokens=60), 60))
        refused = [a for a in answers if a == "queue_full"]
        assert 0 < len(refused) < 12 and all(isinstance(a, str) for a in answers)
        with pytest.raises(openai.APIStatusError) as info:  # 2000 tokens take 10 s
            client(s).chat.completions.create(model=NAME, messages=user("a"), max_tokens=2000, temperature=0,
                                              extra_body={"ignore_eos": True})
        assert info.value.status_code == 408 and info.value.response.json()["error"]["code"] == "timeout"
        assert wait_until(lambda: metric(s.url, "nativevlm_in_flight_requests") == 0)
        assert client(s).chat.completions.create(model=NAME, messages=user("a"), **GREEDY).usage.completion_tokens == 10


def test_decoupled_vision_answers_equal_monolithic(server, model_dir):
    vision_model = load_pretrained(model_dir)
    vision_model.language = None
    messages = prompts(10) + [user(data_uri(image()), "again the same image")]
    monolithic = asyncio.run(answer_all(server.url, messages))
    with ServerThread(VisionServer(vision_model).app()) as vs:
        remote = VisionClient(vs.url)
        lang = chat_server(model_dir, vision=remote)
        lang.engine.model.vision = lang.engine.model.connector = None  # the language server has no encoder
        with ServerThread(lang.app()) as ls:
            decoupled = asyncio.run(answer_all(ls.url, messages))
            assert decoupled == monolithic
            hits = remote.stats["hits"]
            assert asyncio.run(answer_all(ls.url, messages[-1:])) == monolithic[-1:]  # its image is cached now
            assert remote.stats["hits"] == hits + 1 and httpx.get(vs.url + "/health").json()["images"] == remote.stats["misses"]
            bad = client(ls).chat.completions.create
            with pytest.raises(openai.BadRequestError) as info:  # the vision server's refusals reach the client
                bad(model=NAME, messages=user(b64(b"not an image at all"), "hi"), max_tokens=2)
            assert info.value.response.json()["error"]["code"] == "invalid_image"


def test_terminal_chat_streams_multi_turn_answers(model_dir, tmp_path):
    import argparse
    import io

    from nativevlm.commands.chat import run

    path = tmp_path / "img.png"
    image().save(path)
    args = argparse.Namespace(model=str(model_dir), image=[str(path)], tokenizer=None, device="cpu", max_new_tokens=6,
                              temperature=0.0, top_p=1.0, seed=None, think=None, thinking_budget=None)
    out = io.StringIO()
    assert run(args, stdin=io.StringIO("how many\n/image nowhere.png\nand the red\n/quit\n"), stdout=out) == 0
    tok, model = Tokenizer.load(model_dir), load_pretrained(model_dir)
    proc = ImageProcessor.from_config(model.config.vision, model.config.connector)
    engine = Engine(model, tok)
    messages = [{"role": "user", "content": "<image>\nhow many"}]
    first = engine.generate([Request(encode_prompt(messages, [str(path)], tok, proc).input_ids,
                                     SamplingParams(max_new_tokens=6), pixel_values=[proc(str(path))])])[0].text
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "and the red"}]
    enc = encode_prompt(messages, [str(path)], tok, proc)
    second = engine.generate([Request(enc.input_ids, SamplingParams(max_new_tokens=6),
                                      pixel_values=enc.pixel_values)])[0].text
    printed = out.getvalue()
    assert f"> {first}\n" in printed and "no image at nowhere.png" in printed and f"> {second}\n" in printed


def test_decoupled_vision_work_overlaps_decoding(server, model_dir, monkeypatch):
    """While the vision server encodes a new request's image (slowed to 1 s here), the language server's
    engine keeps decoding the running request; then the new request gets the monolithic answer."""
    vision_model = load_pretrained(model_dir)
    vision_model.language = None
    vision = VisionServer(vision_model)
    encode = vision._encode
    monkeypatch.setattr(vision, "_encode", lambda pixels: time.sleep(1.0) or encode(pixels))
    question = user(data_uri(image((10, 90, 200), (48, 48))), "and this one")
    with ServerThread(vision.app()) as vs:
        lang = chat_server(model_dir, vision=VisionClient(vs.url))
        with ServerThread(lang.app()) as ls:
            body = {"model": NAME, "messages": user("a"), "max_tokens": 1900, "ignore_eos": True, "stream": True}
            with httpx.Client(timeout=30) as h, h.stream("POST", ls.url + "/v1/chat/completions", json=body,
                                                         headers={"authorization": f"Bearer {KEY}"}):
                assert wait_until(lambda: lang.engine.num_running == 1)

                async def image_request():
                    task = asyncio.create_task(answer_all(ls.url, [question]))
                    await asyncio.sleep(0.2)
                    steps = lang.engine.stats["steps"]
                    await asyncio.sleep(0.6)  # the vision server is still encoding
                    assert not task.done() and lang.engine.stats["steps"] > steps + 20
                    return await task
                decoupled = asyncio.run(image_request())
    assert decoupled == asyncio.run(answer_all(server.url, [question]))


def test_a_text_language_model_serves_text_and_refuses_images(tmp_path):
    from nativevlm import LanguageConfig, LanguageModel
    from nativevlm.model.hub import save_language_model
    from servekit import make_tokenizer

    tok = make_tokenizer()
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                      num_kv_heads=1, intermediate_size=64, max_position_embeddings=256))
    save_language_model(lm, tmp_path / "lm")
    tok.save(tmp_path / "lm")
    config = ServeConfig(model_name=NAME, api_key=KEY)
    with ServerThread(ChatServer(load_pretrained(tmp_path / "lm"), Tokenizer.load(tmp_path / "lm"), config).app()) as s:
        r = client(s).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "how many"}], **GREEDY)
        assert r.usage.completion_tokens == 10 and r.usage.prompt_tokens_details.image_tokens == 0
        with pytest.raises(openai.BadRequestError) as info:
            client(s).chat.completions.create(model=NAME, messages=user(data_uri(image()), "hi"), max_tokens=2)
        assert info.value.response.json()["error"]["code"] == "images_not_supported"


def test_image_decoding_runs_off_the_event_loop(server, monkeypatch):
    """A slow decode (1 s here) occupies a pool thread; the server keeps answering meanwhile."""
    decode = server.chat._decode
    monkeypatch.setattr(server.chat, "_decode", lambda data, param: time.sleep(1.0) or decode(data, param))

    async def meanwhile():
        task = asyncio.create_task(answer_all(server.url, [user(data_uri(image()), "slow")]))
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient() as h:
            t = time.perf_counter()
            assert (await h.get(server.url + "/health")).status_code == 200
            waited = time.perf_counter() - t
        assert not task.done()
        return waited, await task
    waited, answers = asyncio.run(meanwhile())
    assert waited < 0.5 and isinstance(answers[0], str)


def test_in_flight_and_running_gauges_return_to_zero_however_a_request_ends(server, monkeypatch):
    """Answered, streamed, closed mid-stream by the client, refused after admission (an undecodable image) and
    failed in the engine, each streamed and not: afterwards nothing is in flight and nothing runs."""
    url, headers = server.url + "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}
    in_flight = lambda: metric(server.url, "nativevlm_in_flight_requests")  # noqa: E731
    idle = lambda: in_flight() == 0 and metric(server.url, "nativevlm_running_requests") == 0  # noqa: E731

    def post(stream: bool, messages=None, **body) -> tuple[int, str]:
        body = {"model": NAME, "messages": messages or user("a"), "max_tokens": 4, "temperature": 0,
                "stream": stream, **body}
        r = httpx.post(url, json=body, headers=headers, timeout=30)
        return r.status_code, r.text

    for stream in (False, True):
        status, text = post(stream)
        assert status == 200 and ("[DONE]" in text) == stream and '"error"' not in text
        assert idle()
        status, text = post(stream, user(b64(b"not an image"), "hi"))
        assert status == 400 and "invalid_image" in text and idle()

    step = server.chat.engine.step
    monkeypatch.setattr(server.chat.engine, "step", lambda: time.sleep(0.002) or step())
    body = {"model": NAME, "messages": user("a"), "max_tokens": 1900, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as h, h.stream("POST", url, json=body, headers=headers) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert wait_until(lambda: in_flight() == 1 and metric(server.url, "nativevlm_running_requests") == 1)
    assert wait_until(idle)

    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")
    monkeypatch.setattr(server.chat.engine, "_forward", broken)
    status, text = post(False)
    assert status == 500 and "generation_failed" in text and "fell over" in text and idle()
    status, text = post(True)
    assert status == 200 and "generation_failed" in text and text.rstrip().endswith("[DONE]")
    assert wait_until(idle)


def test_the_api_and_the_vision_worker_refuse_the_same_images_with_the_same_error(server, model_dir):
    """Both servers take image bytes in through one intake: text, a truncated PNG, a decompression bomb and a
    file over the byte limit get the same code and message from either."""
    vision_model = load_pretrained(model_dir)
    vision_model.language = None
    bad = [b"hello, I am text", png_bytes(image((1, 2, 3), (64, 64)))[:60], bomb_png(), b"\x89PNG" + b"\0" * 300_000]
    with ServerThread(VisionServer(vision_model, media=server.chat.config.media).app()) as vs:
        refusals = []
        for data in bad:
            api = httpx.post(server.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                             json={"model": NAME, "messages": user(b64(data), "hi"), "max_tokens": 2})
            worker = httpx.post(vs.url + ENCODE_PATH, content=data)
            assert api.status_code == worker.status_code == 400
            api, worker = api.json()["error"], worker.json()["error"]
            assert (api["code"], api["message"]) == (worker["code"], worker["message"])
            refusals.append((api["code"], api["message"]))
    assert [code for code, _ in refusals] == ["invalid_image", "invalid_image", "image_too_large", "image_too_large"]
    assert len(set(refusals)) == 4 and refusals[1][1].startswith("the image could not be decoded")
