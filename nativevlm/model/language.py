"""The decoder language model (Llama / Qwen2 / Qwen3 family), optionally with NaViL's modality-specific
experts and a sparse MoE FFN.

Weights are stored fused (one qkv projection, one gate+up projection) because one larger GEMM is faster
than three small ones, on CPU especially; `hub.py` maps Hugging Face's separate q/k/v and gate/up tensors
onto them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LanguageConfig, MoEConfig
from .batch import Batch
from .experts import ModalityRoute, SparseMoE, route_apply
from .hub import assemble, read_language_checkpoint
from .layers import (AttentionInputs, KVCache, RMSNorm, SwiGLU, apply_rope, attention, build_causal_mask,
                     init_weights, rope_cos_sin)


@dataclass
class ModelOutput:
    """logits [B, T, V] (None when a loss was asked for: then only loss positions are projected);
    loss = loss_sum / weight_sum; the two parts are returned so that callers can normalise over a global
    batch (gradient accumulation, data parallel)."""

    logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    loss_sum: Optional[torch.Tensor] = None
    weight_sum: Optional[torch.Tensor] = None
    aux_loss: Optional[torch.Tensor] = None
    image_features: Optional[list[torch.Tensor]] = None  # NativeVLM: each image's tokens, as spliced in
    image_grids: Optional[list[torch.Tensor]] = None  # NativeVLM, images only: the encoder's [h, w, D] grids


class AttentionProjections(nn.Module):
    """One modality's attention weights: fused qkv (+ optional bias), optional per-head q/k RMSNorm (Qwen3),
    output projection. The attention itself is computed once over all tokens by the layer."""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        hd = cfg.resolved_head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.qkv_proj = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, (H + 2 Hkv) * hd], with q/k norms applied (they are per modality too)."""
        y = self.qkv_proj(x)
        if self.q_norm is None:
            return y
        hd, nq, nk = self.head_dim, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = y.split([nq, nk, nk], dim=-1)
        q = self.q_norm(q.unflatten(-1, (-1, hd))).flatten(-2)
        k = self.k_norm(k.unflatten(-1, (-1, hd))).flatten(-2)
        return torch.cat([q, k, v], dim=-1)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LanguageConfig, moe: MoEConfig):
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = AttentionProjections(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = self._make_ffn(cfg, moe)
        # Visual experts (NaViL): created by `add_visual_experts`, which copies the text weights.
        self.visual_attn: Optional[AttentionProjections] = None
        self.visual_mlp: Optional[nn.Module] = None
        self.visual_input_norm: Optional[RMSNorm] = None
        self.visual_post_attn_norm: Optional[RMSNorm] = None

    @staticmethod
    def _make_ffn(cfg: LanguageConfig, moe: MoEConfig) -> nn.Module:
        if moe.num_experts > 0:
            hidden = moe.expert_intermediate_size or cfg.intermediate_size
            return SparseMoE(cfg.hidden_size, hidden, moe.num_experts, moe.top_k)
        return SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def add_visual_experts(self, per_modality_norms: bool) -> None:
        """Visual experts start as copies of the (pretrained) text weights, as NaViL initialises them."""
        self.visual_attn = copy.deepcopy(self.attn)
        self.visual_mlp = copy.deepcopy(self.mlp)
        if per_modality_norms:
            self.visual_input_norm = copy.deepcopy(self.input_norm)
            self.visual_post_attn_norm = copy.deepcopy(self.post_attn_norm)

    def forward(self, x: torch.Tensor, ai: AttentionInputs, layer_idx: int, route: Optional[ModalityRoute]):
        """-> (x, the sparse MoE balance loss of this layer's FFNs or None)."""
        b, t, _ = x.shape
        vin = self.visual_input_norm or self.input_norm
        vpost = self.visual_post_attn_norm or self.post_attn_norm
        vattn = self.visual_attn

        # Norm + qkv, each modality with its own weights.
        qkv = route_apply(
            x, route, lambda h: self.attn.qkv(self.input_norm(h)),
            (lambda h: vattn.qkv(vin(h))) if vattn is not None else None,
        )
        hd, nh, nkv = self.attn.head_dim, self.attn.num_heads, self.attn.num_kv_heads
        q, k, v = qkv.view(b, t, nh + 2 * nkv, hd).transpose(1, 2).split([nh, nkv, nkv], dim=1)
        q = apply_rope(q, ai.cos, ai.sin)
        k = apply_rope(k, ai.cos, ai.sin)
        if ai.kv_cache is not None:
            k, v = ai.kv_cache.update(layer_idx, k, v)
        y = ai.attend(q, k, v, ai.mask, ai.causal).transpose(1, 2).reshape(b, t, nh * hd)
        x = x + route_apply(y, route, self.attn.o_proj, vattn.o_proj if vattn is not None else None)

        aux: list[torch.Tensor] = []

        def ffn(mlp: nn.Module, norm: nn.Module):
            def run(h: torch.Tensor) -> torch.Tensor:
                if isinstance(mlp, SparseMoE):
                    y, balance = mlp(norm(h))
                    aux.append(balance)
                    return y
                return mlp(norm(h))
            return run

        vmlp = self.visual_mlp
        x = x + route_apply(x, route, ffn(self.mlp, self.post_attn_norm),
                            ffn(vmlp, vpost) if vmlp is not None else None)
        return x, (sum(aux) if aux else None)


class LanguageModel(nn.Module):
    """Decoder LM. Call with `input_ids` (or `inputs_embeds`) -> `ModelOutput` with `.logits` [B, T, V].

    Masks, positions and the cache are explicit arguments: `attention_mask` [B, S] (True = real token, S
    counting cached positions too), `position_ids` [B, T] (default: derived from the mask, so left padding
    works), `document_ids` [B, T] (packed documents attend only within themselves), `kv_cache` (a
    `KVCache`, advanced by T), `image_mask` [B, T] (routes tokens to the visual experts), `logits_to_keep`
    (logits of the last N positions only).

    `attention_fn` is the function every decoder layer computes attention with, `(q, k, v, mask, causal)
    -> output` (default `layers.attention`, SDPA). It is this instance's own: a diagnostic that wraps it to
    record attention (`eval.diagnostics.recorded_attention`) changes no other model in the process.
    """

    def __init__(self, config: LanguageConfig, moe: Optional[MoEConfig] = None):
        """The model owns copies of `config` and `moe`: growing the vocabulary or adding experts changes
        its own, never the caller's."""
        super().__init__()
        self.config = copy.deepcopy(config)
        self.moe_config = copy.deepcopy(moe) if moe is not None else MoEConfig()
        config = self.config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, self.moe_config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.attention_fn = attention
        self.apply(init_weights)
        if self.moe_config.modality_experts:
            self.add_visual_experts()

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, path, dtype: torch.dtype = torch.float32) -> "LanguageModel":
        """Load a Hugging Face Qwen2 / Qwen3 / Llama checkpoint folder or a `.gguf` file."""
        return assemble(cls, *read_language_checkpoint(path), dtype)

    def add_visual_experts(self, per_modality_norms: Optional[bool] = None) -> None:
        """Visual experts in every layer, copies of the text weights (`per_modality_norms`: the norms too;
        default: as the MoE config says)."""
        if per_modality_norms is not None:
            self.moe_config.per_modality_norms = per_modality_norms
        self.moe_config.modality_experts = True
        for layer in self.layers:
            if layer.visual_attn is None:
                layer.add_visual_experts(self.moe_config.per_modality_norms)

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow the vocabulary (for added special tokens); new rows start at the mean embedding, which keeps
        the pretrained output distribution nearly unchanged."""
        old = self.config.vocab_size
        if vocab_size <= old:
            return

        def grown(w: torch.Tensor) -> torch.Tensor:
            new = w.new_empty(vocab_size, w.shape[1])
            new[:old] = w
            new[old:] = w.mean(0, keepdim=True)
            return new

        d = self.config.hidden_size
        self.embed_tokens = nn.Embedding(vocab_size, d, _weight=grown(self.embed_tokens.weight.data))
        if self.lm_head is not None:
            self.lm_head = nn.Linear(d, vocab_size, bias=False)
            self.lm_head.weight.data = grown(self.lm_head.weight.data)
        self.config.vocab_size = vocab_size

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: language (text), visual experts."""
        counts = {"language": 0, "visual_experts": 0}
        for name, p in self.named_parameters():
            counts["visual_experts" if ".visual_" in name else "language"] += p.numel()
        counts["total"] = sum(counts.values())
        return counts

    # -- forward --------------------------------------------------------------------------------------

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        input_ids: Union[torch.Tensor, Batch, None] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        document_ids: Optional[torch.Tensor] = None,
        kv_cache: Optional[KVCache] = None,
        image_mask: Optional[torch.Tensor] = None,
        targets: Optional[torch.Tensor] = None,
        loss_weights: Optional[torch.Tensor] = None,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        """`lm(batch)` with a collated text `Batch`, or the tensors one by one."""
        if isinstance(input_ids, Batch):
            return self.forward(**input_ids.model_inputs(), kv_cache=kv_cache)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.embedding_multiplier != 1.0:
            x = x * self.config.embedding_multiplier
        b, t = x.shape[:2]
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(b, t, past, attention_mask, x.device)
        cos, sin = rope_cos_sin(position_ids, self.config.resolved_head_dim, self.config.rope_theta)
        mask = build_causal_mask(t, past, attention_mask, document_ids, x.device)
        ai = AttentionInputs(cos=cos, sin=sin, mask=mask, causal=True, attend=self.attention_fn, kv_cache=kv_cache)
        route = ModalityRoute.from_mask(image_mask) if self.moe_config.modality_experts else None

        aux = None
        for i, layer in enumerate(self.layers):
            x, la = layer(x, ai, i, route)
            if la is not None:
                aux = la if aux is None else aux + la
        if kv_cache is not None:
            kv_cache.advance(t)
        x = self.norm(x)

        out = ModelOutput()
        if aux is not None:
            out.aux_loss = aux * self.moe_config.aux_loss_coef
        if targets is None:
            # Generation reads only the last position: projecting a whole prompt onto the vocabulary would
            # cost a small model's prefill more than its layers do (`logits_to_keep` 0 = every position).
            out.logits = F.linear(x[:, -logits_to_keep:] if logits_to_keep else x, self.output_weight)
            return out
        out.loss, out.loss_sum, out.weight_sum = lm_loss(x, self.output_weight, targets, loss_weights)
        return out

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.embed_tokens.weight
        c = self.config
        return KVCache(c.num_layers, batch_size, c.num_kv_heads, max_len, c.resolved_head_dim, p.dtype, p.device)


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, loss_weights: Optional[torch.Tensor]):
    """Weighted next-token loss over pre-shifted targets (targets[t] is predicted at position t; -100 =
    none). Only target positions are projected to the vocabulary, which saves most of the head's cost
    when the loss covers only answers. Returns (loss, sum of w*ce, sum of w)."""
    sel = targets.reshape(-1) != -100
    idx = sel.nonzero(as_tuple=True)[0]
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx)
    logits = F.linear(h, weight).float()
    ce = F.cross_entropy(logits, targets.reshape(-1).index_select(0, idx), reduction="none")
    if loss_weights is None:
        w = torch.ones_like(ce)
    else:
        w = loss_weights.reshape(-1).index_select(0, idx).to(ce.dtype)
    loss_sum = (w * ce).sum()
    weight_sum = w.sum()
    return loss_sum / weight_sum.clamp_min(1e-12), loss_sum, weight_sum


def default_position_ids(b: int, t: int, past: int, attention_mask: Optional[torch.Tensor], device) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded row numbers its first real token 0."""
    if attention_mask is None:
        return torch.arange(past, past + t, device=device).expand(b, t)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_min(0)[:, past:past + t]

