"""One question about zero or more images, answered by a trained model (the same prompt encoding as
training and evaluation)."""
from __future__ import annotations

from itertools import accumulate
from typing import Optional, Sequence

import torch

from ..data.collate import EncodedSample, encode_sample
from ..data.image import ImageProcessor
from ..data.sample import IMAGE_MARKER, Sample, user_turn
from ..model.connector import Rate
from ..model.vlm import NativeVLM
from .engine import Completion, Engine, Request, SamplingParams, think_opening


def encode_prompt(messages: list[dict], images: Sequence, tokenizer, processor: Optional[ImageProcessor],
                  rates: Sequence[Rate] = ()) -> EncodedSample:
    """A conversation (`content` strings with one `<image>` marker per entry of `images`: paths or PIL
    images) -> the prompt that asks for the next assistant turn, tokenised exactly as in training, each image
    at its rate in `rates` (default: the model's fine rate)."""
    sample = Sample(id="prompt", messages=messages, images=list(images), image_downsample=list(rates))
    return encode_sample(sample, tokenizer, processor, add_generation_prompt=True)


def routed_prompts(model, conversations: Sequence[tuple[list[dict], Sequence]], tokenizer,
                   processor: ImageProcessor) -> list[tuple[EncodedSample, list[torch.Tensor]]]:
    """Prompts for a model with a router: every conversation's images are preprocessed once and routed
    together (each conversation one request, for the router's `request` mode), then each prompt is laid out
    at the rates its images got. Returns each prompt and its images' features, for `Request.image_features`."""
    encoded = [encode_prompt(m, images, tokenizer, processor) for m, images in conversations]
    pixels = [p for e in encoded for p in e.pixel_values]
    out = []
    if not pixels:
        return [(e, []) for e in encoded]
    device = next(model.parameters()).device
    with torch.inference_mode():
        starts = list(accumulate((len(e.pixel_values) for e in encoded[:-1]), initial=0))
        routed = model.route_images([p.to(device) for p in pixels],
                                    requests=[list(range(s, s + len(e.pixel_values))) for s, e in zip(starts, encoded)])
    for (m, _), e, s in zip(conversations, encoded, starts):
        k = len(e.pixel_values)
        out.append((encode_prompt(m, e.pixel_values, tokenizer, processor, routed.rates[s:s + k]),
                    routed.features[s:s + k]))
    return out


def prompts(model, conversations: Sequence[tuple[list[dict], Sequence]], tokenizer,
            processor: Optional[ImageProcessor]) -> list[tuple[EncodedSample, list[torch.Tensor]]]:
    """Each conversation's prompt and its images' features: routed first (`routed_prompts`) for a model with
    a router, else no features (the engine encodes the prompt's pixels)."""
    if getattr(model, "router", None) is not None:
        return routed_prompts(model, conversations, tokenizer, processor)
    return [(encode_prompt(m, images, tokenizer, processor), []) for m, images in conversations]


def engine_request(enc: EncodedSample, features: list[torch.Tensor], params: SamplingParams, **kwargs) -> Request:
    """The engine's request for a prompt from `prompts`: its images as features when routed, else as pixels."""
    vision = dict(image_features=features) if features else dict(pixel_values=enc.pixel_values)
    return Request(enc.input_ids, params, **vision, **kwargs)


def reply(model, tokenizer, question: str, images: Sequence[str] = (), max_new_tokens: int = 64,
          temperature: float = 0.0, processor: Optional[ImageProcessor] = None, think: Optional[bool] = None,
          thinking_budget: Optional[int] = None) -> Completion:
    """The engine's completion (answer, and thinking when the reply thought: `infer.engine.Request`). Images go
    before the question, one marker each, as in the training data; a model with a router routes them first."""
    processor = processor or (ImageProcessor.from_config(model.config.vision, model.config.connector)
                              if images else None)
    messages = [{"role": "user", "content": user_turn(question, len(images))}]
    [(enc, feats)] = prompts(model, [(messages, images)], tokenizer, processor)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    req = engine_request(enc, feats, params, think=think, thinking_budget=thinking_budget)
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
