"""`nativevlm ui MODEL`: a Gradio chat page with image upload, served on 127.0.0.1."""
from __future__ import annotations

from pathlib import Path

from ..data.tokenizer import Tokenizer
from ..infer.engine import Engine
from ..serve.ui import build_ui
from .serve import load_model


def register(sub) -> None:
    p = sub.add_parser("ui", help="a web chat page (Gradio) with image upload, on 127.0.0.1")
    p.add_argument("model", help="a model folder written by training (holds its tokenizer too)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--tokenizer", help="tokenizer path, if not stored in the model folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.set_defaults(func=run)


def run(args) -> int:
    engine = Engine(load_model(args.model, args.device), Tokenizer.load(args.tokenizer or args.model)).start()
    build_ui(engine, f"nativevlm: {Path(args.model).resolve().name}", args.max_new_tokens).launch(
        server_name="127.0.0.1", server_port=args.port)
    return 0
