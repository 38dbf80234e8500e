"""`nativevlm ask MODEL --image IMG "question"`: one answer from a trained model."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import ConfigError
from ..infer.chat import load_model_and_tokenizer, reply


def register(sub) -> None:
    p = sub.add_parser("ask", help="ask a trained model a question about an image")
    p.add_argument("model", help="a model folder written by training (holds its tokenizer too)")
    p.add_argument("question")
    p.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    p.add_argument("--tokenizer", help="tokenizer path, if not stored in the model folder")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    add_thinking_arguments(p)
    p.set_defaults(func=run)


def add_thinking_arguments(p) -> None:
    """--think / --no-think / --thinking-budget: the engine's thinking mode (ask, chat, eval)."""
    p.add_argument("--think", action="store_true", default=None,
                   help="open the reply with <think>: the model reasons first (thinking is shown apart, never "
                        "part of the answer)")
    p.add_argument("--no-think", dest="think", action="store_false",
                   help="keep a think-fusion model from thinking: it answers directly")
    p.add_argument("--thinking-budget", type=int, metavar="N",
                   help="with --think: at most N thinking tokens, then </think> is forced")


def check_thinking(args) -> None:
    if args.thinking_budget is not None and (args.think is not True or args.thinking_budget < 0):
        raise ConfigError(f"--thinking-budget {args.thinking_budget}: give a number of tokens >= 0, with --think")


def run(args) -> int:
    check_thinking(args)
    for image in args.image:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer)
    done = reply(model, tokenizer, args.question, args.image, args.max_new_tokens, args.temperature,
                 think=args.think, thinking_budget=args.thinking_budget)
    if done.thinking is not None:  # on stderr: stdout is the answer alone, for scripts
        print(f"thinking: {done.thinking}", file=sys.stderr)
    print(done.text.strip())
    return 0
