"""Autoregressive generation for LanguageModel and NativeVLM (the same forward as training).

Batched prompts are left-padded: `attention_mask` marks real tokens and positions count real tokens only,
so each row decodes exactly as it would alone. With `use_cache` the prompt is prefilled once into a static
KV cache and each step feeds one token; without it every step re-runs the whole sequence (the reference
the cached path is tested against)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..model.batch import Batch
from ..model.vlm import NativeVLM


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """logits [B, V] -> next ids [B]. temperature 0 = greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def image_token_ids(model) -> list[int]:
    """The image placeholder and framing token ids of a NativeVLM (none for a text LM): never valid output,
    since a generated placeholder would need image features that do not exist."""
    if not isinstance(model, NativeVLM):
        return []
    return sorted({v for k, v in vars(model.config).items()
                   if k.startswith("image_") and k.endswith("_id") and isinstance(v, int)})


def generate(
    model,
    input_ids: Union[torch.Tensor, Batch],
    attention_mask: Optional[torch.Tensor] = None,
    pixel_values: Optional[Sequence[torch.Tensor]] = None,
    max_new_tokens: int = 32,
    eos_token_id: Optional[int] = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Returns the new tokens [B, <= max_new_tokens]; rows that finished are filled with eos. `input_ids`
    may be a prompt `Batch` (`data.collate.prompt_batch`), which brings its mask, images and their rates."""
    image_downsample = None
    if isinstance(input_ids, Batch):
        batch = input_ids
        input_ids, attention_mask = batch.input_ids, batch.attention_mask
        pixel_values, image_downsample = batch.pixel_values or None, batch.image_downsample or None
    b, t = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones(b, t, dtype=torch.bool, device=device)
    attention_mask = attention_mask.bool()
    extra = {"pixel_values": pixel_values, "image_downsample": image_downsample} if pixel_values is not None else {}
    cache = model.new_kv_cache(b, t + max_new_tokens) if use_cache else None
    seq, mask = input_ids, attention_mask
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out = []
    step_ids = input_ids
    banned = image_token_ids(model)
    for step in range(max_new_tokens):
        if use_cache:
            logits = model(step_ids, attention_mask=mask, kv_cache=cache, **(extra if step == 0 else {})).logits
        else:
            logits = model(seq, attention_mask=mask, **extra).logits
        last = logits[:, -1]
        if banned:
            last = last.clone()
            last[:, banned] = float("-inf")
        nxt = sample_next(last, temperature, top_p, generator)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out.append(nxt)
        step_ids = nxt[:, None]
        seq = torch.cat([seq, step_ids], dim=1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=device)], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    return torch.stack(out, dim=1)
