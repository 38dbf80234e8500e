"""Shared by the tests that compare with transformers: random weights that expose a misplaced tensor."""
from __future__ import annotations

import torch


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter re-drawn from a fixed seed: norm weights near 1, everything else small normal, so a
    tensor mapped to the wrong place changes the outputs instead of hiding behind an init of ones or zeros."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.1 * noise)
    return model.eval()


def random_hf_lm(config) -> torch.nn.Module:
    """A transformers causal LM of `config` with eager attention and `randomize`d weights."""
    import transformers

    return randomize(transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager"))
