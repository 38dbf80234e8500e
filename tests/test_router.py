"""The visual resolution router and ViCO: per-region rates and their token layout, the released router's
decision rule (and its batch dependence against the per-request mode), ViCO's consistency loss (0 when both
sides see the fine rate) and the router's labels (percentile over a sliding window), a trained-recipe run
with its window checkpointed, and the visual tokens a served request reports."""
from __future__ import annotations

from collections import deque

import pytest
import torch
from PIL import Image

from nativevlm import LanguageConfig, LanguageModel, NativeVLM, VisionConfig
from nativevlm.config import ConnectorConfig, RouterConfig
from nativevlm.data.collate import Collator, image_block
from nativevlm.data.image import ImageProcessor
from nativevlm.data.sample import Sample
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.model.connector import pixel_shuffle, regions, token_blocks
from nativevlm.model.router import COMPRESS, KEEP, decide
from nativevlm.train.objectives import MicroBatch, StageContext, StepInfo
from nativevlm.train.objectives.vico import Consistency, ConsistencyOptions, keep_labels, relayout

CONNECTOR = ConnectorConfig(extra_downsample=4, region_size=4)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["a red square", "a blue circle", "what colour is it"] * 20, vocab_size=300,
                           min_frequency=1)


def tiny_vlm(tok, router: bool = True, **router_kw) -> NativeVLM:
    torch.manual_seed(0)
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                                      num_kv_heads=1, intermediate_size=64, max_position_embeddings=512))
    vision = VisionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=8,
                          min_patches=4, max_patches=256)
    vlm = NativeVLM.from_language_model(lm, vision=vision, connector=CONNECTOR, image_token_ids=tok.image_token_ids())
    vlm.add_router(CONNECTOR, RouterConfig(enabled=router, num_heads=2, pool_layers=2, mlp_blocks=2, **router_kw))
    return vlm.eval()


def test_regions_and_token_layout():
    """A 64x96-px image (8x12 patches of 8 px) with 4-patch regions: 2x3 regions, row-major; each region is
    2x2 tokens at 1/4 and 1x1 at 1/16; the text is one block of rows per region, each row ending in eol."""
    assert regions(8, 12, 4) == [(0, 4, 0, 4), (0, 4, 4, 8), (0, 4, 8, 12), (4, 8, 0, 4), (4, 8, 4, 8), (4, 8, 8, 12)]
    assert regions(8, 12, 0) == [(0, 8, 0, 12)]
    assert regions(8, 6, 4) == [(0, 4, 0, 4), (0, 4, 4, 6), (4, 8, 0, 4), (4, 8, 4, 6)]  # edge regions smaller
    rates = (2, 4, 2, 4, 4, 2)
    assert token_blocks(64, 96, 8, rates, 4) == [(2, 2), (1, 1), (2, 2), (1, 1), (1, 1), (2, 2)]
    assert token_blocks(64, 96, 8, 2, 0) == [(4, 6)]  # one region: NaViL's layout
    ids = {"image_token_id": 9, "image_start_id": 1, "image_end_id": 2, "image_eol_id": 3}
    assert image_block([(2, 2), (1, 1)], ids) == [1, 9, 9, 3, 9, 9, 3, 9, 3, 2]
    with pytest.raises(ValueError, match="3 compression rates for an image of 6 regions"):
        token_blocks(64, 96, 8, (2, 4, 2), 4)


def test_coarse_path_tokens_are_each_regions_own_pixel_shuffle(tok):
    """The 1/16 path: each region's tokens are mlp2 of the 4x4 pixel shuffle of that region's features
    alone, at its place in the layout; a fine region beside it is mlp1 of its own 2x2 shuffle."""
    vlm = tiny_vlm(tok)
    img = torch.randn(3, 32, 64)  # 4x8 patches: two 4x4-patch regions
    grid = vlm.vision([img])[0]
    with torch.no_grad():
        got = vlm.encode_images([img], [(4, 2)])[0]
        left = vlm.connector.mlp2(pixel_shuffle(grid[None, :, :4], 4)).reshape(-1, 32)
        right = vlm.connector.mlp1(pixel_shuffle(grid[None, :, 4:], 2)).reshape(-1, 32)
    assert got.shape == (1 + 4, 32)
    torch.testing.assert_close(got, torch.cat([left, right]))
    with torch.no_grad():  # an int rate is every region at that rate
        torch.testing.assert_close(vlm.encode_images([img], 4)[0], vlm.encode_images([img], [(4, 4)])[0])


def test_collator_and_model_agree_on_per_region_token_counts(tok, tmp_path):
    vlm = tiny_vlm(tok)
    proc = ImageProcessor.from_config(vlm.config.vision, vlm.config.connector)
    Image.new("RGB", (96, 64), (200, 30, 30)).save(tmp_path / "a.png")
    sample = Sample("s", [{"role": "user", "content": "<image> what colour is it"},
                          {"role": "assistant", "content": "a red square"}], [str(tmp_path / "a.png")],
                    image_downsample=[(2, 4, 2, 4, 4, 2)])
    batch = Collator(tok, proc, max_length=512)([sample])
    n_slots = int((batch.input_ids == vlm.config.image_token_id).sum())
    assert n_slots == 3 * 4 + 3 * 1 == vlm.encode_images(batch.pixel_values, batch.image_downsample)[0].shape[0]
    assert int((batch.input_ids == vlm.config.image_eol_id).sum()) == 3 * 2 + 3 * 1
    assert vlm(batch).loss is not None


def test_decide_follows_the_released_rule_on_fixed_inputs():
    """compress where p > quantile(p, relative) and p >= absolute (the released comparison: strict for the
    quantile, inclusive for the absolute threshold)."""
    p = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    assert decide(p, 0.5, 0.1).tolist() == [False, False, False, True, True, True]  # quantile 0.5 = 0.5
    assert decide(p, 0.0, 0.1).tolist() == [False, True, True, True, True, True]  # quantile 0 = min: 0.05 stays
    assert decide(p, 0.0, 0.4).tolist() == [False, False, True, True, True, True]  # absolute is inclusive
    assert decide(p, 1.0, 0.0).tolist() == [False] * 6  # nothing is above the maximum
    assert decide(p, 0.5, 0.1, groups=[[0, 1, 2], [3, 4, 5]]).tolist() == [False, False, True, False, False, True]


def test_router_decision_depends_on_the_batch_except_in_request_mode(tok):
    """In `batch` mode the same image gets different rates next to different images (the quantile is over
    the batch); in `request` mode its rates are those it gets alone, whatever it is encoded with."""
    torch.manual_seed(1)
    images = [torch.randn(3, 32, 32) * (1 + i) for i in range(5)]  # one region each
    for mode, dependent in (("batch", True), ("request", False)):
        vlm = tiny_vlm(tok, mode=mode, relative_threshold=0.5, absolute_threshold=0.0)
        with torch.no_grad():
            order = vlm.route_images(images).p_compress.argsort().tolist()
            probe, low, high = images[order[2]], [images[i] for i in order[:2]], [images[i] for i in order[3:]]
            alone = vlm.route_images([probe]).rates[0]
            with_low = vlm.route_images([probe, *low], requests=[[0], [1, 2]]).rates[0]
            with_high = vlm.route_images([probe, *high], requests=[[0], [1, 2]]).rates[0]
        assert alone == (2,)  # alone, a region is its own quantile: not above it
        if dependent:  # ranked above both neighbours it is compressed, below them it is kept
            assert with_low == (4,) and with_high == (2,)
        else:
            assert with_low == with_high == alone


def test_routed_features_match_the_rates_they_report(tok):
    vlm = tiny_vlm(tok, relative_threshold=0.25, absolute_threshold=0.0)
    images = [torch.randn(3, 32, 64), torch.randn(3, 64, 64)]
    with torch.no_grad():
        routed = vlm.route_images(images)
        again = vlm.encode_images(images, routed.rates)
    assert len(routed.p_compress) == 2 + 4 and any(4 in r for r in routed.rates)
    for f, g, img, r in zip(routed.features, again, images, routed.rates):
        torch.testing.assert_close(f, g)
        assert f.shape[0] == sum(a * b for a, b in token_blocks(*img.shape[-2:], 8, r, 4))


def test_keep_labels_use_the_percentile_of_the_window():
    """The window holds the last values (current included); keep the fine rate above its percentile."""
    window = deque([1.0, 1.0, 1.0, 1.0], maxlen=6)
    labels = keep_labels(torch.tensor([1.5, 3.0]), window, 50.0)
    assert list(window) == [1.0, 1.0, 1.0, 1.0, 1.5, 3.0]  # percentile 50 of these = 1.0
    assert labels.tolist() == [1, 1]
    labels = keep_labels(torch.tensor([1.25, 2.0]), window, 50.0)  # window: 1, 1, 1.5, 3, 1.25, 2 -> median 1.375
    assert list(window) == [1.0, 1.0, 1.5, 3.0, 1.25, 2.0] and labels.tolist() == [0, 1]
    assert KEEP == 1 and COMPRESS == 0


def consistency_case(tok, tmp_path, compress_prob: float, question_weight: float = 0.0):
    vlm = tiny_vlm(tok)
    proc = ImageProcessor.from_config(vlm.config.vision, vlm.config.connector)
    Image.new("RGB", (64, 64), (30, 30, 200)).save(tmp_path / "b.png")
    samples = [Sample(f"s{i}", [{"role": "user", "content": "<image> what colour is it"},
                                {"role": "assistant", "content": "a blue circle"}], [str(tmp_path / "b.png")])
               for i in range(2)]
    batch = Collator(tok, proc, max_length=512, question_weight=question_weight)(samples)
    obj = Consistency(ConsistencyOptions(compress_prob=compress_prob))
    obj.setup(StageContext(model=vlm, tokenizer=tok, stage=None, data=None, processor=proc, device=torch.device("cpu")))
    info = StepInfo(0, 0, 1, 1, 0, batch.loss_weights.sum())
    return vlm, batch, obj, obj.loss(vlm, MicroBatch(vlm, batch, 0), info)


def test_consistency_kl_is_zero_when_both_sides_see_the_fine_rate(tok, tmp_path):
    _, _, _, out = consistency_case(tok, tmp_path, compress_prob=0.0)
    assert float(out.loss.detach()) == pytest.approx(0.0, abs=1e-6)
    _, _, _, out = consistency_case(tok, tmp_path, compress_prob=1.0)
    assert float(out.loss.detach()) > 1e-4  # the coarse side differs: the loss sees it
    assert out.metrics["compressed"] == (8, 8)


def test_relayout_keeps_answers_and_positions(tok, tmp_path):
    vlm, batch, _, _ = consistency_case(tok, tmp_path, compress_prob=0.0)
    coarse = relayout(batch, [(4, 2, 2, 4), 4], vlm.config)
    # 4 regions of 2x2 tokens (+ an eol per row: 6 ids) at 1/4, of 1 token + eol at 1/16
    n = int(batch.attention_mask[0].sum())
    assert coarse.attention_mask.sum(1).tolist() == [n - 2 * 4, n - 4 * 4]
    assert torch.equal(coarse.targets[coarse.targets != -100], batch.targets[batch.targets != -100])
    assert coarse.position_ids[0].tolist() == list(range(coarse.input_ids.shape[1]))
    assert torch.equal(relayout(batch, [2, 2], vlm.config).input_ids, batch.input_ids)
    assert vlm(coarse).loss is not None


def test_relayout_keeps_the_questions_targets_apart(tok, tmp_path):
    """With a question loss, the rebuilt batch keeps which targets are the question's (and their weights):
    the consistency loss still compares answers only."""
    vlm, batch, _, _ = consistency_case(tok, tmp_path, compress_prob=0.0, question_weight=0.5)
    coarse = relayout(batch, [(4, 2, 2, 4), 4], vlm.config)
    assert int(batch.question_mask.sum()) > 0
    for field in ("targets", "loss_weights"):
        assert torch.equal(getattr(coarse, field)[coarse.question_mask], getattr(batch, field)[batch.question_mask])
    answers, coarse_answers = batch.answer_targets(), coarse.answer_targets()
    assert torch.equal(coarse_answers[coarse_answers != -100], answers[answers != -100])
    assert torch.equal(relayout(batch, [2, 2], vlm.config).question_mask, batch.question_mask)


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory, tok):
    """A tiny model with a router (request mode, so a request's rates don't depend on its neighbours) whose
    thresholds compress about half of the regions."""
    root = tmp_path_factory.mktemp("router") / "model"
    tiny_vlm(tok, mode="request", relative_threshold=0.5, absolute_threshold=0.0).save_pretrained(root)
    tok.save(root)
    return root


def test_served_requests_report_the_visual_tokens_the_model_consumed(router_dir):
    """Monolithic and decoupled (DvD) servers with the router: each response's usage counts the image tokens
    of the prompt the engine ran, whose <img> slots equal the features it was given, fewer than at the fine
    rate; the two servers give the same answers and the same counts."""
    import asyncio

    import openai

    from nativevlm.model.loading import load_pretrained
    from nativevlm.serve.api import ChatServer, ServeConfig
    from nativevlm.serve.vision_worker import VisionClient, VisionServer
    from servekit import ServerThread, data_uri, image

    tok = Tokenizer.load(router_dir)
    ids = tok.image_token_ids()
    framing = {ids["image_start_id"], ids["image_end_id"], ids["image_eol_id"]}

    def ask(chat: ChatServer, url: str) -> list[tuple]:
        seen = []
        submit = chat.engine.submit
        chat.engine.submit = lambda req: seen.append(req) or submit(req)
        out = []
        for i, size in enumerate([(64, 64), (96, 64), (64, 32)]):
            r = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0).chat.completions.create(
                model="m", temperature=0, max_tokens=4, messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_uri(image((40 * i, 90, 30), size))}},
                    {"type": "text", "text": "what colour is it"}]}])
            req = seen[-1]
            slots = req.input_ids.count(ids["image_token_id"])
            assert r.usage.prompt_tokens == len(req.input_ids)
            assert r.usage.prompt_tokens_details.image_tokens == slots + sum(t in framing for t in req.input_ids)
            assert slots == sum(f.shape[0] for f in req.image_features)
            regions_ = (size[0] // 32) * (size[1] // 32)
            assert slots < 4 * regions_  # the router compressed some of the 2x2-token regions
            out.append((r.choices[0].message.content, r.usage.prompt_tokens_details.image_tokens))
        return out

    config = ServeConfig(model_name="m", max_len=1024, api_key="k", image_workers=1)
    mono = ChatServer(load_pretrained(router_dir), tok, config)
    with ServerThread(mono.app()) as s:
        monolithic = ask(mono, s.url)
    vision_model = load_pretrained(router_dir)
    vision_model.language = None
    with ServerThread(VisionServer(vision_model).app()) as vs:
        lang = ChatServer(load_pretrained(router_dir), tok, config, vision=VisionClient(vs.url))
        with ServerThread(lang.app()) as ls:
            decoupled = ask(lang, ls.url)
            asyncio.run(lang.vision.aclose())
    assert decoupled == monolithic


def test_local_answerer_routes_and_counts_visual_tokens(router_dir):
    from nativevlm.eval.local import LocalAnswerer
    from nativevlm.infer.types import Request
    from nativevlm.model.loading import load_pretrained
    from servekit import image

    model, tok = load_pretrained(router_dir), Tokenizer.load(router_dir)
    replies = LocalAnswerer(model, tok, max_new_tokens=3)([Request([image(size=(64, 64))], "what colour"),
                                                          Request([], "what colour")])
    assert replies[1].visual_tokens == 0
    assert replies[0].visual_tokens == 2 * 4 + 2 * 1  # 4 regions, the 2 above the median compressed


def vico_recipe(world: dict, init: str = "") -> dict:
    """ViCO's two stages on the tiny world: consistency (all but the router), then the router alone."""
    from trainkit import tiny_model

    model = tiny_model(vocab=420)
    model["vision"].update(min_patches=16, max_patches=64)
    model.update(connector={"extra_downsample": 4, "region_size": 4},
                 router={"enabled": True, "num_heads": 2, "pool_layers": 2, "mlp_blocks": 2})
    data = [{"path": str(world["root"] / "train.json")}]
    return {"kind": "vlm", "model": model, "tokenizer": str(world["tok"]), "max_length": 256, "seed": 0,
            "device": "cpu", "checkpoint_every": 1, "keep_checkpoints": 10, "progress": False,
            "init": {"path": init},
            "stages": [{"name": "consistency", "data": data, "trainable": ["vision.*", "connector.*", "language.*"],
                        "steps": 2, "batch_size": 4, "lr": 1e-3, "objectives": [{"name": "vico_consistency"}]},
                       {"name": "router", "data": data, "trainable": ["router.*"], "steps": 3, "batch_size": 4,
                        "lr": 1e-3, "objectives": [{"name": "vico_router", "window": 64, "percentile": 30}]}]}


def test_vico_stages_train_from_a_checkpoint_and_resume_exactly(tiny_world, tmp_path):
    """A trained model without the coarse path or a router is grown by the recipe (its weights kept); stage 1
    moves the model but not the router, stage 2 only the router, whose labels keep half the regions at
    the fine rate; stopped inside stage 2 and resumed, the run ends bit-identical, which needs the sliding
    window restored from the checkpoint."""
    import json

    from safetensors.torch import load_file

    from nativevlm.train.export import build_model
    from nativevlm.train.recipe import recipe_from_dict
    from nativevlm.train.trainer import train

    quiet = dict(log=lambda *a, **k: None)
    plain = vico_recipe(tiny_world)
    plain["model"].update(connector={}, router={})
    plain_cfg = recipe_from_dict(plain)
    torch.manual_seed(0)
    base = build_model(plain_cfg, Tokenizer.load(tiny_world["tok"]))
    base.save_pretrained(tmp_path / "base")
    assert base.router is None and base.connector.mlp2 is None

    cfg = recipe_from_dict(vico_recipe(tiny_world, init=str(tmp_path / "base")))
    train(cfg, tmp_path / "run", **quiet)
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [("vico_consistency/loss" in r, "vico_router/loss" in r) for r in rows] == [(True, False)] * 2 + [(False, True)] * 3
    assert all(0 < r["vico_router/keep"] < 1 for r in rows[2:])
    ckpt = lambda step: load_file(tmp_path / f"run/checkpoints/step-{step:08d}/model.safetensors")  # noqa: E731
    start, s1, s2 = load_file(tmp_path / "base/model.safetensors"), ckpt(2), ckpt(5)
    assert torch.equal(start["connector.mlp1.1.weight"], base.connector.mlp1[1].weight)
    assert not torch.equal(s1["connector.mlp1.1.weight"], start["connector.mlp1.1.weight"])
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if not k.startswith("router."))
    assert not torch.equal(s1["router.gate_proj.weight"], s2["router.gate_proj.weight"])
    final = load_file(tmp_path / "run/final/model.safetensors")
    assert json.loads((tmp_path / "run/final/config.json").read_text())["router"]["enabled"]

    train(cfg, tmp_path / "resumed", max_steps=4, **quiet)
    train(cfg, tmp_path / "resumed", resume=True, **quiet)
    resumed = load_file(tmp_path / "resumed/final/model.safetensors")
    assert resumed.keys() == final.keys() and all(torch.equal(resumed[k], final[k]) for k in final)


def test_hf_export_refuses_a_routed_model(router_dir, tmp_path):
    from nativevlm.errors import UserError
    from nativevlm.export.hf import export_hf

    with pytest.raises(UserError, match="routes image regions"):
        export_hf(router_dir, tmp_path / "hf")
