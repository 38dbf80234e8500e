"""The naive generation loop the engine is checked against: greedy, one batch, every step re-running the
whole sequence (or, with `use_cache`, feeding one token through the model's own static KV cache, which
checks that cache). Left-padded rows: `attention_mask` marks real tokens and positions count them only."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from nativevlm.infer.engine import banned_token_ids


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
             pixel_values: Optional[Sequence[torch.Tensor]] = None, max_new_tokens: int = 32,
             eos_token_id: Optional[int] = None, use_cache: bool = False) -> torch.Tensor:
    """The new tokens [B, <= max_new_tokens]; rows that finished are filled with eos."""
    b, t = input_ids.shape
    mask = torch.ones(b, t, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    images = {"pixel_values": list(pixel_values)} if pixel_values else {}
    cache = model.new_kv_cache(b, t + max_new_tokens) if use_cache else None
    seq, step_ids = input_ids, input_ids
    done = torch.zeros(b, dtype=torch.bool)
    banned = banned_token_ids(model)
    out = []
    for step in range(max_new_tokens):
        if use_cache:
            logits = model(step_ids, attention_mask=mask, kv_cache=cache, **(images if step == 0 else {})).logits
        else:
            logits = model(seq, attention_mask=mask, **images).logits
        last = logits[:, -1].clone()
        last[:, banned] = float("-inf")
        nxt = last.argmax(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out.append(nxt)
        step_ids = nxt[:, None]
        seq = torch.cat([seq, step_ids], dim=1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool)], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    return torch.stack(out, dim=1)
