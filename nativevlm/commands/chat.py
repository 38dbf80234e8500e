"""`nativevlm chat MODEL [--image PATH ...]`: a multi-turn conversation in the terminal, answers streamed.

Images given with --image go with the first question; `/image PATH` attaches one to the next question,
`/reset` starts over, `/quit` (or end of input) leaves. With --think each reply's thinking streams first, on
its own `thinking:` line; the conversation keeps the answers only (earlier thinking is not shown to the model
again, as in Qwen3's template)."""
from __future__ import annotations

import sys
from pathlib import Path

from .ask import add_thinking_arguments, check_thinking

HELP = "commands: /image PATH (attach to the next question), /reset, /quit"


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal (streaming, multi-turn, images)")
    p.add_argument("model", help="a model folder written by training (holds its tokenizer too)")
    p.add_argument("--image", action="append", default=[], help="an image for the first question (repeatable)")
    p.add_argument("--tokenizer", help="tokenizer path, if not stored in the model folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    add_thinking_arguments(p)
    p.set_defaults(func=run)


def run(args, stdin=None, stdout=None) -> int:
    from ..data.image import ImageProcessor, load_image
    from ..data.sample import user_turn
    from ..data.tokenizer import Tokenizer
    from ..infer.chat import encode_prompt
    from ..infer.engine import Engine, Request, SamplingParams
    from .serve import load_model

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    check_thinking(args)
    for image in args.image:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
    model = load_model(args.model, args.device)
    tokenizer = Tokenizer.load(args.tokenizer or args.model)
    engine = Engine(model, tokenizer, max_batch_size=1)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector) if engine.is_vlm else None
    messages, images, pending = [], [], list(args.image)
    print(HELP, file=stdout)
    while True:
        print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        line = line.strip()
        if line == "/reset":
            messages, images, pending = [], [], []
            continue
        if line.startswith("/image "):
            path = line[len("/image "):].strip()
            if not Path(path).is_file():
                print(f"no image at {path}", file=stdout)
            elif processor is None:
                print("this model takes text only", file=stdout)
            else:
                pending.append(path)
            continue
        if not line or line.startswith("/"):
            print(HELP, file=stdout)
            continue
        turn_images = [load_image(p) for p in pending]
        messages.append({"role": "user", "content": user_turn(line, len(turn_images))})
        images += turn_images
        pending = []
        enc = encode_prompt(messages, images, tokenizer, processor)
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                seed=args.seed)
        try:
            engine.check(len(enc.input_ids), params, args.think, args.thinking_budget)
        except ValueError as e:
            print(f"{e}; /reset to start a new conversation", file=stdout)
            messages.pop()
            continue
        answer, thought = "", False
        req = Request(enc.input_ids, params, pixel_values=enc.pixel_values, think=args.think,
                      thinking_budget=args.thinking_budget)
        for ev in engine.stream(req):
            if ev.thinking:
                print(("" if thought else "thinking: ") + ev.thinking, end="", file=stdout, flush=True)
                thought = True
            if ev.text and thought and not answer:
                print(file=stdout)
            answer += ev.text
            print(ev.text, end="", file=stdout, flush=True)
        print(file=stdout)
        messages.append({"role": "assistant", "content": answer})
