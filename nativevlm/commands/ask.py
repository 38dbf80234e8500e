"""`nativevlm ask MODEL --image IMG "question"`: one answer from a trained model."""
from __future__ import annotations

from pathlib import Path

from ..infer.chat import ask, load_model_and_tokenizer


def register(sub) -> None:
    p = sub.add_parser("ask", help="ask a trained model a question about an image")
    p.add_argument("model", help="a model folder written by training (holds its tokenizer too)")
    p.add_argument("question")
    p.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    p.add_argument("--tokenizer", help="tokenizer path, if not stored in the model folder")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(func=run)


def run(args) -> int:
    for image in args.image:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer)
    print(ask(model, tokenizer, args.question, args.image, args.max_new_tokens, args.temperature))
    return 0
