"""A NativeVLM for transformers (remote code written by `nativevlm export hf`): a native-resolution encoder
with 2D RoPE, a pixel-shuffle connector, and a Llama / Qwen decoder whose image tokens may run through their
own attention and FFN weights (modality experts, hard-routed by the image-token mask).

The computation is nativevlm's own, step for step (the same fused projections, fp32 norms, SDPA calls and
token routing), so logits match the model it was exported from to float rounding; parameter names are
nativevlm's too, so model.safetensors is its state dict. Images arrive as the processor makes them: all
patches of all images in one [patches, 3 * p * p] tensor, with each image's patch grid (`image_grid_hw`) and
the compression rate its tokens were laid out at (`image_downsample`).
"""
from collections import defaultdict
from dataclasses import fields
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_nativevlm import NativeVLMConfig

# transformers 5 names the cache `cache`, earlier versions `past_key_values`.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def rope_frequencies(dim, theta, device=None):
    return 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def rope_cos_sin(position_ids, head_dim, theta):
    """1D RoPE, half-rotation layout (channel i pairs with channel i + head_dim / 2)."""
    angles = position_ids.float().unsqueeze(-1) * rope_frequencies(head_dim, theta, position_ids.device)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rope_cos_sin_2d(rows, cols, head_dim, theta):
    """2D RoPE: half of the rotary pairs turn with the patch row, the other half with its column."""
    inv = rope_frequencies(head_dim // 2, theta, rows.device)
    angles = torch.cat([rows.float().unsqueeze(-1) * inv, cols.float().unsqueeze(-1) * inv], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    cos, sin = cos.unsqueeze(-3).to(x.dtype), sin.unsqueeze(-3).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention(q, k, v, mask, causal):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                          enable_gqa=k.shape[1] != q.shape[1])


def causal_mask(q_len, past_len, attention_mask, device):
    """Boolean SDPA mask (True = attend), or None when plain causal attention suffices. Every query attends
    to itself, so padded rows never produce NaNs."""
    if attention_mask is None and past_len == 0:
        return None
    kv_len = past_len + q_len
    q_pos = torch.arange(past_len, kv_len, device=device)
    k_pos = torch.arange(kv_len, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :kv_len].bool()
    diag = torch.zeros(q_len, kv_len, dtype=torch.bool, device=device)
    diag[torch.arange(q_len), torch.arange(past_len, kv_len)] = True
    return mask | diag


def default_position_ids(b, t, past, attention_mask, device):
    """Positions count real tokens only, so a left-padded row numbers its first real token 0."""
    if attention_mask is None:
        return torch.arange(past, past + t, device=device).expand(b, t)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, past:past + t]


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class GeluMLP(nn.Module):
    def __init__(self, dim, hidden, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


# ---------------------------------------------------------------------------------------------------
# Vision encoder and connector


class VisionBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, native = cfg.hidden_size, cfg.arch == "native"
        self.num_heads = cfg.num_heads
        self.norm1 = RMSNorm(d, cfg.norm_eps) if native else nn.LayerNorm(d, eps=cfg.norm_eps)
        self.qkv_proj = nn.Linear(d, 3 * d, bias=cfg.bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.bias)
        self.norm2 = RMSNorm(d, cfg.norm_eps) if native else nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = SwiGLU(d, cfg.intermediate_size) if native else GeluMLP(d, cfg.intermediate_size, bias=cfg.bias)

    def forward(self, x, rope):
        b, n, d = x.shape
        q, k, v = self.qkv_proj(self.norm1(x)).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = attention(q, k, v, mask=None, causal=False).transpose(1, 2).reshape(b, n, d)
        x = x + self.o_proj(y)
        return x + self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    """[3, H, W] images -> per-image feature grids [H/p, W/p, D]; images of equal size run as one batch."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        p, d, native = cfg.patch_size, cfg.hidden_size, cfg.arch == "native"
        self.patch_embed = nn.Linear(cfg.num_channels * p * p, d, bias=True)
        self.position_embedding = None if native else nn.Embedding((cfg.image_size // p) ** 2, d)
        self.layers = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = (RMSNorm(d, cfg.norm_eps) if native else nn.LayerNorm(d, eps=cfg.norm_eps)) \
            if cfg.post_norm else None

    def encode_batch(self, images):
        b, c, h, w = images.shape
        p = self.config.patch_size
        gh, gw = h // p, w // p
        patches = images.view(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        rope = None
        if self.position_embedding is not None:
            x = x + self.position_embedding.weight
        else:
            rows = torch.arange(gh, device=x.device).repeat_interleave(gw)
            cols = torch.arange(gw, device=x.device).repeat(gh)
            rope = rope_cos_sin_2d(rows, cols, self.config.hidden_size // self.config.num_heads,
                                   self.config.rope_theta)
        for layer in self.layers:
            x = layer(x, rope)
        if self.norm is not None:
            x = self.norm(x)
        return x.view(b, gh, gw, -1)

    def forward(self, images):
        groups = defaultdict(list)
        for i, img in enumerate(images):
            groups[tuple(img.shape)].append(i)
        out = [None] * len(images)
        for idx in groups.values():
            feats = self.encode_batch(torch.stack([images[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return out


def pixel_shuffle(x, factor):
    """[B, h, w, D] -> [B, h/f, w/f, f*f*D]: each f x f block of neighbouring patches becomes one token."""
    b, h, w, d = x.shape
    x = x.view(b, h // factor, factor, w // factor, factor, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // factor, w // factor, factor * factor * d)


class ProjectorMLP(nn.Sequential):
    def __init__(self, in_dim, hidden, out_dim):
        super().__init__(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class Connector(nn.Module):
    """Pixel shuffle then an MLP: `mlp1` at rate `downsample`, `mlp2` (if any) at `extra_downsample`."""

    def __init__(self, vision_dim, llm_dim, cfg):
        super().__init__()
        self.config = cfg
        hidden = cfg.hidden_size or llm_dim
        f, e = cfg.downsample, cfg.extra_downsample
        self.mlp1 = ProjectorMLP(vision_dim * f * f, hidden, llm_dim)
        self.mlp2 = ProjectorMLP(vision_dim * e * e, hidden, llm_dim) if e else None

    def forward(self, features, downsample):
        if downsample == self.config.downsample:
            return self.mlp1(pixel_shuffle(features, downsample))
        if self.mlp2 is not None and downsample == self.config.extra_downsample:
            return self.mlp2(pixel_shuffle(features, downsample))
        rates = (self.config.downsample,) + ((self.config.extra_downsample,) if self.mlp2 is not None else ())
        raise ValueError(f"this model has no connector path for downsample {downsample} (it has {rates})")


# ---------------------------------------------------------------------------------------------------
# Language model


class ModalityRoute:
    """Flat indices of the text and image tokens of a [B, T] batch, shared by every layer."""

    def __init__(self, text, image, num_tokens):
        self.text, self.image, self.num_tokens = text, image, num_tokens

    @classmethod
    def from_mask(cls, image_mask):
        if image_mask is None:
            return None
        flat = image_mask.reshape(-1)
        image = flat.nonzero(as_tuple=True)[0]
        if image.numel() == 0:
            return None
        return cls((~flat).nonzero(as_tuple=True)[0], image, flat.numel())


def route_apply(x, route, text_fn, image_fn):
    """`text_fn` on text tokens and `image_fn` on image tokens of x [B, T, D], scattered back in order."""
    if route is None or image_fn is None:
        return text_fn(x)
    b, t = x.shape[:2]
    flat = x.reshape(b * t, x.shape[-1])
    y_text = text_fn(flat.index_select(0, route.text))
    y_image = image_fn(flat.index_select(0, route.image))
    out = y_text.new_empty(b * t, y_text.shape[-1])
    out.index_copy_(0, route.text, y_text)
    out.index_copy_(0, route.image, y_image.to(y_text.dtype))
    return out.view(b, t, -1)


class SparseMoE(nn.Module):
    """Top-k routed SwiGLU experts (weights renormalised over the chosen k)."""

    def __init__(self, dim, hidden, num_experts, top_k):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(num_experts, dim, 2 * hidden))
        self.down = nn.Parameter(torch.empty(num_experts, hidden, dim))

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = F.softmax(self.router(flat).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        slot_expert = experts.reshape(-1)
        order = slot_expert.argsort()
        counts = torch.bincount(slot_expert, minlength=self.num_experts)
        token_of_slot = order // self.top_k
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            slots, tokens = order[start:start + n], token_of_slot[start:start + n]
            start += n
            gate, up = (flat[tokens] @ self.gate_up[e]).chunk(2, dim=-1)
            y = (F.silu(gate) * up) @ self.down[e]
            out.index_add_(0, tokens, y * weights.reshape(-1)[slots, None])
        return out.view(shape)


class AttentionProjections(nn.Module):
    """One modality's attention weights: fused qkv, optional per-head q/k RMSNorm, output projection."""

    def __init__(self, cfg):
        super().__init__()
        hd = cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * hd,
                                  bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * hd, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps) if cfg.qk_norm else None

    def qkv(self, x):
        y = self.qkv_proj(x)
        if self.q_norm is None:
            return y
        hd, nq, nk = self.head_dim, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = y.split([nq, nk, nk], dim=-1)
        q = self.q_norm(q.unflatten(-1, (-1, hd))).flatten(-2)
        k = self.k_norm(k.unflatten(-1, (-1, hd))).flatten(-2)
        return torch.cat([q, k, v], dim=-1)


def make_ffn(cfg):
    if cfg.num_experts > 0:
        return SparseMoE(cfg.hidden_size, cfg.moe_intermediate_size or cfg.intermediate_size, cfg.num_experts,
                         cfg.num_experts_per_tok)
    return SwiGLU(cfg.hidden_size, cfg.intermediate_size)


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = AttentionProjections(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = make_ffn(cfg)
        experts = cfg.modality_experts
        norms = experts and cfg.per_modality_norms
        self.visual_attn = AttentionProjections(cfg) if experts else None
        self.visual_mlp = make_ffn(cfg) if experts else None
        self.visual_input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if norms else None
        self.visual_post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if norms else None

    def forward(self, x, cos, sin, mask, causal, cache, layer_idx, route):
        b, t, _ = x.shape
        vin = self.visual_input_norm or self.input_norm
        vpost = self.visual_post_attn_norm or self.post_attn_norm
        vattn = self.visual_attn
        qkv = route_apply(x, route, lambda h: self.attn.qkv(self.input_norm(h)),
                          (lambda h: vattn.qkv(vin(h))) if vattn is not None else None)
        hd, nh, nkv = self.attn.head_dim, self.attn.num_heads, self.attn.num_kv_heads
        q, k, v = qkv.view(b, t, nh + 2 * nkv, hd).transpose(1, 2).split([nh, nkv, nkv], dim=1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        y = attention(q, k, v, mask, causal).transpose(1, 2).reshape(b, t, nh * hd)
        x = x + route_apply(y, route, self.attn.o_proj, vattn.o_proj if vattn is not None else None)
        vmlp = self.visual_mlp
        return x + route_apply(x, route, lambda h: self.mlp(self.post_attn_norm(h)),
                               (lambda h: vmlp(vpost(h))) if vmlp is not None else None)


class LanguageModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def output_weight(self):
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, inputs_embeds, attention_mask, position_ids, cache, image_mask, logits_to_keep):
        x = inputs_embeds * getattr(self.config, "embedding_multiplier", 1.0)
        b, t = x.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(b, t, past, attention_mask, x.device)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.text_rope_theta)
        mask = causal_mask(t, past, attention_mask, x.device)
        route = ModalityRoute.from_mask(image_mask) if self.config.modality_experts else None
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, True, cache, i, route)
        x = self.norm(x)
        return F.linear(x[:, -logits_to_keep:] if logits_to_keep else x, self.output_weight)


# ---------------------------------------------------------------------------------------------------
# The transformers model


class NativeVLMPreTrainedModel(PreTrainedModel):
    config_class = NativeVLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DecoderLayer", "VisionBlock"]
    _supports_sdpa = True

    def _init_weights(self, module):
        """Normal(0, 0.02) weights, zero biases, unit norms (only weights a checkpoint lacks are initialised)."""
        if isinstance(module, SparseMoE):
            module.gate_up.data.normal_(std=0.02)
            module.down.data.normal_(std=0.02)
        else:
            super()._init_weights(module)


class NativeVLMForConditionalGeneration(NativeVLMPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        vision = SimpleNamespace(**config.vision)
        self.vision = VisionEncoder(vision)
        self.connector = Connector(vision.hidden_size, config.hidden_size, SimpleNamespace(**config.connector))
        self.language = LanguageModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language.embed_tokens

    def set_input_embeddings(self, value):
        self.language.embed_tokens = value

    def get_output_embeddings(self):
        return self.language.lm_head

    def image_features(self, pixel_values, image_grid_hw, image_downsample):
        """Per-image LLM-width tokens [rows * cols, D], row-major: the order of the image's <img> tokens."""
        p = self.config.vision["patch_size"]
        c = self.config.vision["num_channels"]
        images, start = [], 0
        for gh, gw in image_grid_hw.tolist():
            patches = pixel_values[start:start + gh * gw]
            start += gh * gw
            images.append(patches.view(gh, gw, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, gh * p, gw * p))
        grids = self.vision(images)
        rates = image_downsample.tolist()
        groups = defaultdict(list)
        for i, (hw, rate) in enumerate(zip(image_grid_hw.tolist(), rates)):
            groups[(tuple(hw), rate)].append(i)
        out = [None] * len(images)
        for (_, rate), idx in groups.items():
            tokens = self.connector(torch.stack([grids[i] for i in idx]), rate)
            for j, i in enumerate(idx):
                out[i] = tokens[j].reshape(-1, tokens.shape[-1])
        return out

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        past_key_values=None,
        inputs_embeds=None,
        pixel_values=None,
        image_grid_hw=None,
        image_downsample=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        """Image features replace the <img> placeholders of `input_ids` (one masked assignment); those
        positions are the image tokens the visual experts take. `labels` (unshifted, -100 = none) give the
        mean next-token loss."""
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        image_mask = None
        if inputs_embeds is None:
            inputs_embeds = self.language.embed_tokens(input_ids)
            image_mask = input_ids == self.config.image_token_id
            n_slots = int(image_mask.sum())
            if n_slots == 0:
                image_mask = None
            else:
                if pixel_values is None:
                    raise ValueError(f"input_ids hold {n_slots} image tokens but no pixel_values were given")
                feats = torch.cat(self.image_features(pixel_values, image_grid_hw, image_downsample))
                if feats.shape[0] != n_slots:
                    raise ValueError(f"input_ids hold {n_slots} image tokens but the images give {feats.shape[0]} "
                                     "features: build inputs with this model's processor")
                inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1),
                                                             feats.to(inputs_embeds.dtype))
        logits = self.language(inputs_embeds, attention_mask, position_ids, cache, image_mask,
                               logits_to_keep if labels is None else 0)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})
