"""Configuration of a NativeVLM exported by `nativevlm export hf` (transformers remote code).

The language model's settings use transformers' usual names at the top level (so generation and caches read
them as for any decoder); the vision encoder and the connector are plain dicts with nativevlm's field names.
"""
from transformers import PretrainedConfig


class NativeVLMConfig(PretrainedConfig):
    model_type = "nativevlm"

    def __init__(
        self,
        vocab_size=8192,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=None,
        rms_norm_eps=1e-6,
        text_rope_theta=10000.0,
        attention_bias=False,
        qk_norm=False,
        embedding_multiplier=1.0,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        modality_experts=False,
        per_modality_norms=False,
        num_experts=0,
        num_experts_per_tok=2,
        moe_intermediate_size=0,
        vision=None,
        connector=None,
        image_token_id=None,
        image_start_id=None,
        image_end_id=None,
        image_eol_id=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.rms_norm_eps = rms_norm_eps
        self.text_rope_theta = text_rope_theta
        self.attention_bias = attention_bias
        self.qk_norm = qk_norm
        self.embedding_multiplier = embedding_multiplier
        self.max_position_embeddings = max_position_embeddings
        self.modality_experts = modality_experts
        self.per_modality_norms = per_modality_norms
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size
        self.vision = dict(vision or {})
        self.connector = dict(connector or {})
        self.image_token_id = image_token_id
        self.image_start_id = image_start_id
        self.image_end_id = image_end_id
        self.image_eol_id = image_eol_id
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
