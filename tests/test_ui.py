"""The Gradio page in a real browser (Playwright driving Debian's Chromium): upload an image, ask, see the
answer the engine gives for that image and question."""
import shutil

import pytest

from nativevlm.data.image import ImageProcessor
from nativevlm.infer.chat import encode_prompt
from nativevlm.infer.engine import Engine, Request, SamplingParams
from servekit import free_port, image, make_model, make_tokenizer

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH: `apt-get install chromium` "
                                "(`make test` installs it when run as root on Debian/Ubuntu)")


def test_upload_an_image_ask_and_see_the_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import expect, sync_playwright

    from nativevlm.serve.ui import build_ui

    tok = make_tokenizer()
    model = make_model(tok)
    path = tmp_path / "shapes.png"
    image((200, 30, 30), (64, 32)).save(path)
    question = "how many squares"
    proc = ImageProcessor.from_config(model.config.vision, model.config.connector)
    enc = encode_prompt([{"role": "user", "content": f"<image>\n{question}"}], [image((200, 30, 30), (64, 32))],
                        tok, proc)
    expected = Engine(model, tok).generate([Request(enc.input_ids, SamplingParams(max_new_tokens=12),
                                                    pixel_values=enc.pixel_values)])[0].text
    assert expected.strip()

    engine = Engine(model, tok).start()
    seen = []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda req: seen.append(req) or submit(req))
    port = free_port()
    demo = build_ui(engine, "tiny", max_new_tokens=12)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator('input[type="file"]').first.set_input_files(str(path))
            box = page.get_by_placeholder("Ask about an image")
            box.fill(question)
            expect(page.locator("img").first).to_be_visible(timeout=20_000)  # the upload's preview
            box.press("Enter")
            bot = page.locator(".bot").last
            expect(bot).not_to_be_empty(timeout=30_000)
            expect(bot).to_contain_text(expected.strip()[:3], timeout=30_000)
            browser.close()
    finally:
        demo.close()
        engine.stop()
    assert len(seen) == 1 and seen[0].input_ids == enc.input_ids  # the uploaded image and the question, as asked
