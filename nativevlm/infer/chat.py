"""One question about zero or more images, answered by a trained model (the same prompt encoding as
training and evaluation)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..data.collate import encode_sample, prompt_batch
from ..data.image import ImageProcessor
from ..data.sample import IMAGE_MARKER, Sample
from ..model.vlm import NativeVLM
from .generate import generate


@torch.no_grad()
def ask(model, tokenizer, question: str, images: Sequence[str] = (), max_new_tokens: int = 64,
        temperature: float = 0.0, processor: Optional[ImageProcessor] = None) -> str:
    """Images go before the question, one marker each, as in the training data."""
    model.eval()
    content = "".join(f"{IMAGE_MARKER}\n" for _ in images) + question
    sample = Sample(id="ask", messages=[{"role": "user", "content": content}], images=list(images))
    processor = processor or (ImageProcessor.from_config(model.config.vision, model.config.connector)
                              if images else None)
    enc = encode_sample(sample, tokenizer, processor, add_generation_prompt=True)
    batch = prompt_batch([enc], tokenizer.pad_id).to(next(model.parameters()).device)
    out = generate(model, batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id,
                   temperature=temperature)
    return tokenizer.decode([t for t in out[0].tolist() if t != tokenizer.eos_id]).strip()


@torch.no_grad()
def answer_logprob(model, tokenizer, image: str, prompt: str, answer: str,
                   processor: Optional[ImageProcessor] = None) -> float:
    """Summed log-likelihood of `answer` to `prompt` about `image` (teacher forcing, the training template):
    the score a model-based curation judge compares between an image and mismatched ones."""
    model.eval()
    prompt = prompt.replace(IMAGE_MARKER, "").strip()  # the image goes first, once, whatever the record said
    sample = Sample(id="score", images=[image], messages=[
        {"role": "user", "content": f"{IMAGE_MARKER}\n{prompt}"}, {"role": "assistant", "content": answer}])
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
