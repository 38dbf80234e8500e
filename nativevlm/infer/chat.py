"""One question about zero or more images, answered by a trained model (the same prompt encoding as
training and evaluation)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..data.collate import EncodedSample, encode_sample
from ..data.image import ImageProcessor
from ..data.sample import IMAGE_MARKER, Sample, user_turn
from ..model.vlm import NativeVLM
from .engine import Completion, Engine, Request, SamplingParams, think_opening


def encode_prompt(messages: list[dict], images: Sequence, tokenizer, processor: Optional[ImageProcessor]) -> EncodedSample:
    """A conversation (`content` strings with one `<image>` marker per entry of `images`: paths or PIL
    images) -> the prompt that asks for the next assistant turn, tokenised exactly as in training."""
    sample = Sample(id="prompt", messages=messages, images=list(images))
    return encode_sample(sample, tokenizer, processor, add_generation_prompt=True)


def reply(model, tokenizer, question: str, images: Sequence[str] = (), max_new_tokens: int = 64,
          temperature: float = 0.0, processor: Optional[ImageProcessor] = None, think: Optional[bool] = None,
          thinking_budget: Optional[int] = None) -> Completion:
    """The engine's completion (answer, and thinking when the reply thought: `infer.engine.Request`). Images go
    before the question, one marker each, as in the training data."""
    processor = processor or (ImageProcessor.from_config(model.config.vision, model.config.connector)
                              if images else None)
    enc = encode_prompt([{"role": "user", "content": user_turn(question, len(images))}], images, tokenizer, processor)
    req = Request(enc.input_ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature),
                  pixel_values=enc.pixel_values, think=think, thinking_budget=thinking_budget)
    opening = len(think_opening(tokenizer)) if think else 0
    engine = Engine(model, tokenizer, max_batch_size=1, max_len=len(enc.input_ids) + opening + max_new_tokens)
    return engine.generate([req])[0]


def ask(model, tokenizer, question: str, images: Sequence[str] = (), max_new_tokens: int = 64,
        temperature: float = 0.0, processor: Optional[ImageProcessor] = None) -> str:
    """The answer alone."""
    return reply(model, tokenizer, question, images, max_new_tokens, temperature, processor).text.strip()


@torch.no_grad()
def answer_logprob(model, tokenizer, image: str, prompt: str, answer: str,
                   processor: Optional[ImageProcessor] = None) -> float:
    """Summed log-likelihood of `answer` to `prompt` about `image` (teacher forcing, the training template):
    the score a model-based curation judge compares between an image and mismatched ones."""
    model.eval()
    prompt = prompt.replace(IMAGE_MARKER, "").strip()  # the image goes first, once, whatever the record said
    sample = Sample(id="score", images=[image], messages=[
        {"role": "user", "content": user_turn(prompt, 1)}, {"role": "assistant", "content": answer}])
    processor = processor or ImageProcessor.from_config(model.config.vision, model.config.connector)
    enc = encode_sample(sample, tokenizer, processor)
    device = next(model.parameters()).device
    ids = torch.tensor([enc.input_ids], device=device)
    targets = torch.tensor([enc.targets], device=device)
    out = model(ids, pixel_values=[p.to(device) for p in enc.pixel_values], targets=targets)
    return -float(out.loss_sum)  # the training loss with unit weights is the summed answer NLL


def load_model_and_tokenizer(model_dir, tokenizer_path=None):
    """A trained model folder and its tokenizer (stored in the folder unless `tokenizer_path` says where),
    the tokenizer given the model's image tokens."""
    from ..data.tokenizer import Tokenizer
    from ..model.loading import load_pretrained

    model = load_pretrained(model_dir)
    special = model.config.special_tokens if isinstance(model, NativeVLM) else None
    return model, Tokenizer.load(tokenizer_path or model_dir, special_tokens=special)


def model_logprob_fn(model_dir: str):
    """`logprob_fn(image_path, prompt, answer)` backed by a trained NativeVLM folder (with its tokenizer)."""
    model, tokenizer = load_model_and_tokenizer(model_dir)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    return lambda image, prompt, answer: answer_logprob(model, tokenizer, str(image), prompt, answer, processor)
