"""Invariance and known-answer tests of the model on tiny configs."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nativevlm import LanguageConfig, LanguageModel, ModelConfig, MoEConfig, NativeVLM, VisionConfig, VisionEncoder
from reference import generate
from nativevlm.model.experts import SparseMoE
from nativevlm.model.layers import apply_rope, rope_cos_sin_2d

IMG = 99  # image placeholder id in the tiny vocabulary


def tiny_lm_config(**kw) -> LanguageConfig:
    base = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96)
    base.update(kw)
    return LanguageConfig(**base)


def tiny_vision(**kw) -> VisionConfig:
    base = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    base.update(kw)
    return VisionConfig(**base)


def tiny_vlm(modality_experts=True, per_modality_norms=False, seed=0, **lm_kw) -> NativeVLM:
    torch.manual_seed(seed)
    lm = LanguageModel(tiny_lm_config(**lm_kw))
    vlm = NativeVLM.from_language_model(lm, vision=tiny_vision(), modality_experts=modality_experts,
                                        per_modality_norms=per_modality_norms,
                                        image_token_ids={"image_token_id": IMG})
    # Make the visual experts differ from the text ones, as they would after training.
    with torch.no_grad():
        for n, p in vlm.named_parameters():
            if ".visual_" in n:
                p.add_(torch.randn_like(p) * 0.05)
    return vlm.eval()


def image_prompt(rows: int, cols: int, prefix=(5, 6), suffix=(7, 8, 9)) -> torch.Tensor:
    return torch.tensor([*prefix, *([IMG] * (rows * cols)), *suffix])


LM_VARIANTS = [
    dict(),
    dict(qkv_bias=True),
    dict(qk_norm=True, head_dim=24),
    dict(tie_word_embeddings=False, num_kv_heads=4),
]


@pytest.mark.parametrize("kw", LM_VARIANTS)
def test_cached_greedy_equals_uncached(kw):
    torch.manual_seed(0)
    lm = LanguageModel(tiny_lm_config(**kw)).eval()
    ids = torch.randint(0, 128, (3, 7))
    a = generate(lm, ids, max_new_tokens=10, use_cache=True)
    b = generate(lm, ids, max_new_tokens=10, use_cache=False)
    assert torch.equal(a, b)
    # Logits too, not only argmax: prefill + one step vs the full sequence.
    cache = lm.new_kv_cache(3, 8)
    lm(ids, kv_cache=cache)
    nxt = torch.randint(0, 128, (3, 1))
    step = lm(nxt, kv_cache=cache).logits[:, -1]
    full = lm(torch.cat([ids, nxt], 1)).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_vlm_cached_generation_equals_uncached():
    vlm = tiny_vlm(per_modality_norms=True)
    ids = image_prompt(2, 2)[None]
    px = [torch.randn(3, 64, 64)]
    a = generate(vlm, ids, pixel_values=px, max_new_tokens=8, use_cache=True)
    b = generate(vlm, ids, pixel_values=px, max_new_tokens=8, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_alone(side):
    torch.manual_seed(0)
    lm = LanguageModel(tiny_lm_config(qk_norm=True)).eval()
    seqs = [torch.randint(0, 128, (n,)) for n in (9, 4, 6)]
    t = max(len(s) for s in seqs)
    ids = torch.zeros(3, t, dtype=torch.long)
    mask = torch.zeros(3, t, dtype=torch.bool)
    for i, s in enumerate(seqs):
        sl = slice(t - len(s), t) if side == "left" else slice(0, len(s))
        ids[i, sl] = s
        mask[i, sl] = True
    batched = lm(ids, attention_mask=mask).logits
    for i, s in enumerate(seqs):
        alone = lm(s[None]).logits[0]
        torch.testing.assert_close(batched[i][mask[i]], alone, atol=1e-5, rtol=1e-5)
    # Batched left-padded generation decodes each row as it would alone.
    if side == "left":
        gen = generate(lm, ids, attention_mask=mask, max_new_tokens=6, use_cache=True)
        for i, s in enumerate(seqs):
            assert torch.equal(gen[i], generate(lm, s[None], max_new_tokens=6, use_cache=True)[0])


def test_packed_documents_equal_separate_runs():
    vlm = tiny_vlm()
    docs = [image_prompt(1, 2), torch.randint(0, 90, (5,)), image_prompt(2, 1, prefix=(3,), suffix=(4,))]
    images = [torch.randn(3, 32, 64), torch.randn(3, 64, 32)]
    ids = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    pos = torch.cat([torch.arange(len(d)) for d in docs])[None]
    packed = vlm(ids, pixel_values=images, document_ids=doc_ids, position_ids=pos).logits[0]
    sep = [vlm(docs[0][None], pixel_values=images[:1]).logits[0], vlm(docs[1][None]).logits[0],
           vlm(docs[2][None], pixel_values=images[1:]).logits[0]]
    torch.testing.assert_close(packed, torch.cat(sep), atol=1e-5, rtol=1e-5)


def test_text_only_through_experts_equals_dense():
    torch.manual_seed(0)
    lm = LanguageModel(tiny_lm_config(qkv_bias=True)).eval()
    vlm = tiny_vlm(modality_experts=True, per_modality_norms=True, qkv_bias=True)
    vlm.language.load_state_dict(
        {**vlm.language.state_dict(), **{k: v for k, v in lm.state_dict().items() if k != "embed_tokens.weight"}})
    ids = torch.randint(0, 90, (2, 11))
    dense = lm(ids).logits
    experts = vlm(ids).logits[..., :128]
    torch.testing.assert_close(experts, dense, atol=1e-6, rtol=1e-6)


def test_visual_experts_start_as_copies_of_text_weights():
    torch.manual_seed(0)
    lm = LanguageModel(tiny_lm_config())
    vlm = NativeVLM.from_language_model(lm, vision=tiny_vision(), image_token_ids={"image_token_id": IMG})
    layer = vlm.language.layers[0]
    assert torch.equal(layer.visual_attn.qkv_proj.weight, layer.attn.qkv_proj.weight)
    assert torch.equal(layer.visual_mlp.gate_up_proj.weight, layer.mlp.gate_up_proj.weight)
    assert layer.visual_attn.qkv_proj.weight.data_ptr() != layer.attn.qkv_proj.weight.data_ptr()
    # The source LM is left untouched.
    assert lm.layers[0].visual_attn is None


def test_tokens_are_routed_by_modality():
    """Changing the visual FFN of the last layer changes outputs at image positions only."""
    vlm = tiny_vlm()
    ids = image_prompt(1, 2)[None]
    px = [torch.randn(3, 32, 64)]
    before = vlm(ids, pixel_values=px).logits[0]
    with torch.no_grad():
        vlm.language.layers[-1].visual_mlp.down_proj.weight.add_(1.0)
    after = vlm(ids, pixel_values=px).logits[0]
    is_img = ids[0] == IMG
    assert torch.allclose(before[~is_img], after[~is_img])
    assert not torch.allclose(before[is_img], after[is_img])


def test_images_of_different_sizes_batch_equals_alone():
    torch.manual_seed(0)
    enc = VisionEncoder(tiny_vision()).eval()
    images = [torch.randn(3, 64, 32), torch.randn(3, 32, 96), torch.randn(3, 64, 32), torch.randn(3, 96, 64)]
    batched = enc(images)
    for img, feats in zip(images, batched):
        assert feats.shape == (img.shape[1] // 16, img.shape[2] // 16, 32)
        torch.testing.assert_close(feats, enc([img])[0], atol=1e-6, rtol=1e-6)


def test_rope_2d_depends_on_relative_offset_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(r1, c1, r2, c2):
        cq, sq = rope_cos_sin_2d(torch.tensor([r1]), torch.tensor([c1]), 16, 100.0)
        ck, sk = rope_cos_sin_2d(torch.tensor([r2]), torch.tensor([c2]), 16, 100.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(1, 2, 3, 5), score(11, 7, 13, 10))
    assert not torch.allclose(score(1, 2, 3, 5), score(1, 2, 5, 3))  # rows and columns are not swapped


def test_vit_rejects_wrong_size_and_native_rejects_non_multiple():
    enc = VisionEncoder(tiny_vision(arch="vit", image_size=64, bias=True))
    assert enc([torch.randn(3, 64, 64)])[0].shape == (4, 4, 32)
    with pytest.raises(ValueError, match="64px square"):
        enc([torch.randn(3, 32, 64)])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        VisionEncoder(tiny_vision())([torch.randn(3, 40, 64)])


def test_image_token_count_mismatch_is_a_clear_error():
    vlm = tiny_vlm()
    with pytest.raises(ValueError, match="4 image tokens but the images give 2"):
        vlm(image_prompt(2, 2)[None], pixel_values=[torch.randn(3, 32, 64)])


def test_weighted_loss_matches_manual():
    torch.manual_seed(0)
    lm = LanguageModel(tiny_lm_config())
    ids = torch.randint(0, 128, (2, 6))
    targets = torch.randint(0, 128, (2, 6))
    targets[0, :3] = -100
    w = torch.rand(2, 6)
    out = lm(ids, targets=targets, loss_weights=w)
    logits = lm(ids).logits
    valid = targets != -100
    ce = F.cross_entropy(logits[valid], targets[valid], reduction="none")
    torch.testing.assert_close(out.loss, (w[valid] * ce).sum() / w[valid].sum())


def test_sparse_moe_matches_per_token_reference_and_balance_loss():
    torch.manual_seed(0)
    moe = SparseMoE(dim=8, hidden=16, num_experts=4, top_k=2)
    x = torch.randn(3, 5, 8)
    y, _ = moe(x)
    probs = F.softmax(moe.router(x.reshape(-1, 8)), -1)
    ref = torch.zeros(15, 8)
    for i, tok in enumerate(x.reshape(-1, 8)):
        w, e = probs[i].topk(2)
        w = w / w.sum()
        for wj, ej in zip(w, e):
            g, u = (tok @ moe.gate_up[ej]).chunk(2)
            ref[i] += wj * ((F.silu(g) * u) @ moe.down[ej])
    torch.testing.assert_close(y.reshape(-1, 8), ref, atol=1e-5, rtol=1e-5)
    # Known answer: a router that is exactly uniform gives balance loss 1 whatever the token split.
    with torch.no_grad():
        moe.router.weight.zero_()
    _, balance = moe(x)
    torch.testing.assert_close(balance, torch.tensor(1.0))


def test_sparse_moe_language_model_trains_with_aux_loss():
    torch.manual_seed(0)
    lm = LanguageModel(tiny_lm_config(), MoEConfig(num_experts=4, top_k=2))
    ids = torch.randint(0, 128, (2, 8))
    out = lm(ids, targets=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    (out.loss + out.aux_loss).backward()
    assert lm.layers[0].mlp.router.weight.grad.abs().sum() > 0


def test_save_and_load_round_trip(tmp_path):
    vlm = tiny_vlm(per_modality_norms=True)
    vlm.save_pretrained(tmp_path / "m")
    again = NativeVLM.from_pretrained(tmp_path / "m").eval()
    assert again.config == vlm.config
    ids = image_prompt(2, 1)[None]
    px = [torch.randn(3, 64, 32)]
    torch.testing.assert_close(again(ids, pixel_values=px).logits, vlm(ids, pixel_values=px).logits)
    vlm.save_pretrained(tmp_path / "m")  # overwriting an existing checkpoint works
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_corrupt_checkpoint_error_names_the_file(tmp_path):
    vlm = tiny_vlm()
    vlm.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors"):
        NativeVLM.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="config.json"):
        NativeVLM.from_pretrained(tmp_path / "missing")


def test_config_mismatch_names_the_tensor(tmp_path):
    vlm = tiny_vlm()
    vlm.save_pretrained(tmp_path / "m")
    cfg = (tmp_path / "m" / "config.json")
    cfg.write_text(cfg.read_text().replace('"hidden_size": 32', '"hidden_size": 48'))
    with pytest.raises(ValueError, match="does not match its config"):
        NativeVLM.from_pretrained(tmp_path / "m")


def test_parameter_counts_cover_every_parameter():
    vlm = tiny_vlm()
    counts = vlm.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in vlm.parameters())
    assert counts["visual_experts"] > 0 and counts["vision"] > 0 and counts["connector"] > 0


def test_compressed_connector_path():
    torch.manual_seed(0)
    lm = LanguageModel(tiny_lm_config())
    from nativevlm.config import ConnectorConfig
    vlm = NativeVLM.from_language_model(lm, vision=tiny_vision(), connector=ConnectorConfig(extra_downsample=4),
                                        image_token_ids={"image_token_id": IMG})
    img = torch.randn(3, 128, 64)
    assert vlm.encode_images([img])[0].shape == (4 * 2, 64)
    assert vlm.encode_images([img], downsample=4)[0].shape == (2 * 1, 64)
    assert dataclasses.asdict(vlm.config)["connector"]["extra_downsample"] == 4


def test_collator_token_count_equals_model_feature_count_at_both_rates(tmp_path):
    """One function (`connector.token_grid`) sizes an image's token block in the collator and its features in
    the model; a batch mixes rates per image (the visual resolution router's choice), and the model takes
    that batch as it is."""
    from PIL import Image

    from nativevlm.config import ConnectorConfig
    from nativevlm.data.collate import Collator
    from nativevlm.data.image import ImageProcessor
    from nativevlm.data.sample import Sample
    from nativevlm.data.tokenizer import Tokenizer
    from nativevlm.model.connector import token_grid

    tok = Tokenizer.train(["a red square", "a blue circle"] * 20, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    lm = LanguageModel(tiny_lm_config(vocab_size=tok.vocab_size))
    vlm = NativeVLM.from_language_model(lm, vision=tiny_vision(patch_size=8, min_patches=4, max_patches=256),
                                        connector=ConnectorConfig(extra_downsample=4),
                                        image_token_ids=tok.image_token_ids()).eval()
    proc = ImageProcessor.from_config(vlm.config.vision, vlm.config.connector)
    assert proc.factor == 8 * 4 and proc.downsample == 2  # sides on the 4x4 cell, so either rate tiles them
    for i, size in enumerate([(64, 32), (96, 64), (64, 32)]):
        Image.new("RGB", size, (40 * i, 80, 120)).save(tmp_path / f"{i}.png")
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    samples = [Sample("mixed", [{"role": "user", "content": "<image><image> same?"},
                                {"role": "assistant", "content": "a red square"}], paths[:2], image_downsample=[2, 4]),
               Sample("default", [{"role": "user", "content": "<image> what?"},
                                  {"role": "assistant", "content": "a blue circle"}], paths[2:])]
    batch = Collator(tok, proc, max_length=512)(samples)
    assert batch.image_downsample == [2, 4, 2]
    features = vlm.encode_images(batch.pixel_values, batch.image_downsample)
    per_image = [token_grid(*p.shape[-2:], 8, r) for p, r in zip(batch.pixel_values, batch.image_downsample)]
    assert [f.shape[0] for f in features] == [rows * cols for rows, cols in per_image] == [8, 6, 8]
    assert int((batch.input_ids == vlm.config.image_token_id).sum()) == sum(f.shape[0] for f in features)
    assert vlm(batch).loss is not None  # embed's slot check passes: the counts agree token for token


def test_modality_route_gradients_match_dense_computation():
    """The custom split/merge autograd functions give the gradients of the obvious masked computation."""
    from nativevlm.model.experts import ModalityRoute, route_apply

    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.rand(2, 5) > 0.5
    wt, wi = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    y = route_apply(x, ModalityRoute.from_mask(mask), lambda h: h @ wt, lambda h: h @ wi)
    ref = torch.where(mask[..., None], x @ wi, x @ wt)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(y, (x, wt, wi), g)
    ref_grads = torch.autograd.grad(ref, (x, wt, wi), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_models_own_copies_of_their_configs():
    """Growing the vocabulary, adding experts or building a VLM around an LM never edits a config object the
    caller holds (they were shared and mutated: from_language_model edited the LM's moe config)."""
    lm_cfg, moe_cfg = tiny_lm_config(), MoEConfig()
    lm = LanguageModel(lm_cfg, moe_cfg)
    lm.resize_token_embeddings(140)
    lm.add_visual_experts(per_modality_norms=True)
    assert (lm_cfg.vocab_size, moe_cfg.modality_experts, moe_cfg.per_modality_norms) == (128, False, False)
    assert (lm.config.vocab_size, lm.moe_config.modality_experts) == (140, True)
    plain = LanguageModel(tiny_lm_config())
    vlm = NativeVLM.from_language_model(plain, vision=tiny_vision(), image_token_ids={"image_token_id": 150})
    assert plain.config.vocab_size == 128 and not plain.moe_config.modality_experts
    assert vlm.config.language is vlm.language.config and vlm.config.language.vocab_size == 151
    cfg = ModelConfig(vision=tiny_vision(), language=tiny_lm_config(), image_token_id=IMG)
    model = NativeVLM(cfg)
    model.language.resize_token_embeddings(200)
    assert cfg.language.vocab_size == 128 and model.config.language.vocab_size == 200


def test_encode_images_runs_the_connector_once_per_size_group():
    vlm = tiny_vlm()
    calls = []
    vlm.connector.mlp1.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images = [torch.randn(3, 64, 32), torch.randn(3, 32, 64), torch.randn(3, 64, 32)]
    together = vlm.encode_images(images)
    assert sorted(calls) == [1, 2]  # two sizes: one call of 2 images, one of 1
    for img, feats in zip(images, together):
        torch.testing.assert_close(vlm.encode_images([img])[0], feats, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("embed_std", [0.02, 1.0])
def test_image_tokens_start_at_the_scale_of_the_words_around_them(embed_std):
    """A grown VLM's image tokens start at the RMS of the LM's token embeddings (whatever that is), so the
    pretrained LM's first steps see inputs of the scale it was trained on; without the match they are many
    times larger."""
    def grown(match: bool) -> NativeVLM:
        torch.manual_seed(0)
        lm = LanguageModel(tiny_lm_config())
        with torch.no_grad():
            lm.embed_tokens.weight.normal_(0, embed_std)
        from nativevlm.config import ConnectorConfig

        return NativeVLM.from_language_model(lm, vision=tiny_vision(), connector=ConnectorConfig(match_text_scale=match),
                                             image_token_ids={"image_token_id": IMG})

    images = [torch.rand(3, 64, 96) * 2 - 1 for _ in range(3)]
    rms = lambda t: float(torch.cat(t).pow(2).mean().sqrt())  # noqa: E731
    with torch.no_grad():
        matched, default = rms(grown(True).encode_images(images)), rms(grown(False).encode_images(images))
    assert matched == pytest.approx(embed_std, rel=0.25)
    assert abs(default / embed_std - 1) > 0.5  # what the match is for: the MLP's own scale is not the words'
    vlm = grown(True)
    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    vlm.connector.match_output_scale(0.5)  # its probe has its own generator: the global RNG stream is untouched
    assert torch.equal(torch.rand(4), expected)


def test_loss_on_target_positions_equals_the_full_logits_path():
    """The training forward projects only target positions onto the vocabulary (image and prompt tokens
    get no LM head): its loss and every gradient equal those of the loss over full [B, T, V] logits."""
    vlm = tiny_vlm()
    torch.manual_seed(1)
    ids = image_prompt(2, 2)[None].repeat(2, 1)
    targets = torch.randint(0, 98, ids.shape)
    targets[:, :6] = -100  # prompt and image positions
    targets[1, -1] = -100
    w = torch.rand(ids.shape)
    pixels = [torch.randn(3, 64, 64) for _ in range(2)]

    out = vlm(ids, pixel_values=pixels, targets=targets, loss_weights=w)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None}
    vlm.zero_grad()
    logits = vlm(ids, pixel_values=pixels).logits
    valid = targets != -100
    ce = F.cross_entropy(logits[valid], targets[valid], reduction="none")
    full = (w[valid] * ce).sum() / w[valid].sum()
    full.backward()
    torch.testing.assert_close(out.loss, full)
    assert grads.keys() == {n for n, p in vlm.named_parameters() if p.grad is not None}
    for n, p in vlm.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, msg=n)


def test_conv_stem_gives_the_same_grid_batched_or_alone():
    torch.manual_seed(0)
    enc = VisionEncoder(tiny_vision(stem="conv")).eval()
    images = [torch.randn(3, 64, 32), torch.randn(3, 32, 96), torch.randn(3, 64, 32)]
    for img, feats in zip(images, enc(images)):
        assert feats.shape == (img.shape[1] // 16, img.shape[2] // 16, 32)
        torch.testing.assert_close(feats, enc([img])[0], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        enc([torch.randn(3, 40, 64)])


def test_conv_stem_tokens_see_their_neighbourhood_only():
    """Four 3x3 stride-2 convolutions see 31 px: a pixel in the top-left corner moves the first tokens of the
    stem's grid, not the far corner's (no attention layers here to spread it)."""
    torch.manual_seed(0)
    enc = VisionEncoder(tiny_vision(stem="conv", num_layers=0)).eval()
    img = torch.randn(3, 64, 64)
    poked = img.clone()
    poked[:, 0, 0] += 5.0
    a, b = enc([img])[0], enc([poked])[0]
    assert not torch.allclose(a[0, 0], b[0, 0])
    torch.testing.assert_close(a[2:, 2:], b[2:, 2:])


def test_conv_stem_starts_with_tokens_that_differ_like_linear_patches():
    """He init: at the start the stem's tokens vary across patches about as linear patches do (PyTorch's
    default conv init would leave them nearly one constant vector)."""
    torch.manual_seed(0)
    img = torch.rand(3, 64, 64) * 2 - 1
    spread = {stem: VisionEncoder(tiny_vision(stem=stem, num_layers=0, hidden_size=64))([img])[0].flatten(0, 1)
              .std(0).mean().item() for stem in ("linear", "conv")}
    assert 0.2 < spread["conv"] / spread["linear"] < 5


def test_conv_stem_config_errors_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="power-of-two"):
        VisionEncoder(tiny_vision(stem="conv", patch_size=12))
    with pytest.raises(ValueError, match="arch='native'"):
        VisionEncoder(tiny_vision(stem="conv", arch="vit", image_size=64))
    with pytest.raises(ValueError, match="'linear' or 'conv'"):
        VisionEncoder(tiny_vision(stem="cnn"))
    torch.manual_seed(0)
    vlm = NativeVLM.from_language_model(LanguageModel(tiny_lm_config()), vision=tiny_vision(stem="conv"),
                                        image_token_ids={"image_token_id": IMG}).eval()
    vlm.save_pretrained(tmp_path / "m")
    again = NativeVLM.from_pretrained(tmp_path / "m").eval()
    ids, px = image_prompt(2, 1)[None], [torch.randn(3, 64, 32)]
    torch.testing.assert_close(again(ids, pixel_values=px).logits, vlm(ids, pixel_values=px).logits)
