"""Shared by the engine, server and UI tests: a tiny random native VLM with its tokenizer, saved as a model
folder the way training writes one, and small test images."""
from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import torch
from PIL import Image

WORDS = "red blue green square circle triangle small large left right above below a the is of and how many".split()


def make_tokenizer(think_tokens: bool = True):
    """`Tokenizer.train` on random lines of WORDS; with `think_tokens=False` the same BPE without the `<think>`
    and `</think>` tokens, as a pretrained tokenizer may be: the tags are spelt out."""
    from nativevlm.data.tokenizer import Tokenizer

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(200)]
    return Tokenizer.train(lines, vocab_size=300, min_frequency=1, think_tags=think_tokens)


def make_model(tokenizer, seed: int = 0):
    from nativevlm import LanguageConfig, LanguageModel, NativeVLM, VisionConfig

    torch.manual_seed(seed)
    lm = LanguageModel(LanguageConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                                      num_kv_heads=2, intermediate_size=128, max_position_embeddings=4096,
                                      tie_word_embeddings=False))
    vision = VisionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=8,
                          min_patches=4, max_patches=256)
    vlm = NativeVLM.from_language_model(lm, vision=vision, image_token_ids=tokenizer.image_token_ids())
    with torch.no_grad():
        for n, p in vlm.named_parameters():
            if ".visual_" in n:  # visual experts that differ from the text ones, as after training
                p.add_(torch.randn_like(p) * 0.05)
            if n.startswith("language.") and p.dim() == 2:
                # Larger weights than the 0.02 init make attention sharp and every token depend on its context
                # (at init the answers barely depend on it), so a cache or mask error shows within a few tokens.
                p.mul_(6.0)
    return vlm.eval()


def make_model_dir(root: Path) -> Path:
    """config.json + model.safetensors + the tokenizer, like a training run's final/."""
    tok = make_tokenizer()
    make_model(tok).save_pretrained(root)
    tok.save(root)
    return root


def image(color=(200, 30, 30), size=(32, 32)) -> Image.Image:
    img = Image.new("RGB", size, color)
    img.paste((20, 20, 220), (0, 0, size[0] // 2, size[1] // 3))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(img: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """An ASGI app under uvicorn on 127.0.0.1 in a background thread, for `with` blocks."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))

    def __enter__(self) -> "ServerThread":
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
