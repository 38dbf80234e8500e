"""A Gradio chat page with image upload (`nativevlm ui MODEL`), on the same engine as the server: several
browser tabs are batched together like API clients."""
from __future__ import annotations

from typing import Iterator

from ..data.image import ImageProcessor, load_image
from ..data.sample import user_turn
from ..infer.chat import encode_prompt
from ..infer.engine import Engine, Request, SamplingParams


def _parts(content) -> Iterator[tuple[str, str]]:
    """("text", str) and ("image", path) pieces of a Gradio message, whatever shape its content has: a string,
    a file dict ({"path"} or {"type": "file", "file": {"path"}}), a text part, or a list of those."""
    if isinstance(content, str):
        yield "text", content
    elif isinstance(content, (list, tuple)):
        for c in content:
            yield from _parts(c)
    elif isinstance(content, dict):
        if content.get("type") == "text":
            yield "text", content.get("text", "")
        elif "path" in content or "file" in content:
            yield "image", (content.get("file") or content)["path"]


def conversation(history: list[dict], message: dict) -> tuple[list[dict], list[str]]:
    """Gradio's history + the new multimodal message -> our messages (image markers first in each turn, as in
    training) and the image paths in marker order."""
    turns = [*history, {"role": "user", "content": [*({"path": f} for f in message.get("files", [])),
                                                    message.get("text", "")]}]
    messages, images = [], []
    for turn in turns:
        texts, paths = [], []
        for kind, value in _parts(turn["content"]):
            (paths if kind == "image" else texts).append(value)
        if not messages or messages[-1]["role"] != turn["role"]:  # Gradio may split a turn's files and text
            messages.append({"role": turn["role"], "content": ""})
        messages[-1]["content"] += user_turn("".join(texts), len(paths))
        images += paths
    return messages, images


def build_ui(engine: Engine, title: str, max_new_tokens: int = 128):
    import gradio as gr  # deferred: optional (the `serve` extra) and slow to import; only `nativevlm ui` needs it

    model = engine.model
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector) if engine.is_vlm else None

    def respond(message: dict, history: list[dict]):
        messages, paths = conversation(history, message)
        if paths and processor is None:
            raise gr.Error("this model takes text only")
        enc = encode_prompt(messages, [load_image(p) for p in paths], engine.tokenizer, processor)
        params = SamplingParams(max_new_tokens=max_new_tokens)
        try:
            engine.check(len(enc.input_ids), params)
        except ValueError as e:
            raise gr.Error(f"{e}: start a new conversation") from None
        answer = ""
        for ev in engine.stream(Request(enc.input_ids, params, pixel_values=enc.pixel_values)):
            answer += ev.text
            yield answer

    return gr.ChatInterface(respond, multimodal=True, title=title,
                            textbox=gr.MultimodalTextbox(file_types=["image"], placeholder="Ask about an image"))
