"""Trainer: stage contract, config validation before training, LoRA, schedules, sampler and checkpoint
completeness. Tiny models on CPU."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nativevlm import LanguageConfig, LanguageModel
from nativevlm.config import ConfigError
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.model.loading import load_pretrained
from nativevlm.train import checkpoint
from nativevlm.train.data import MixtureSampler
from nativevlm.train.export import build_model
from nativevlm.train.lora import add_lora, merge_lora
from nativevlm.train.recipe import load_recipe
from nativevlm.train.schedule import lr_at
from nativevlm.train.trainer import train
from trainkit import lm_recipe, vlm_recipe, write_recipe


def initial_state(cfg) -> dict:
    """The weights the trainer starts from (it seeds, then builds)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, Tokenizer.load(cfg.tokenizer))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_stage_contract_frozen_unchanged_trainable_changed(train_world, tmp_path):
    recipe = vlm_recipe(train_world, checkpoint_every=100, keep_checkpoints=5)
    cfg = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    before = initial_state(cfg)
    train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "objectives.png").exists()  # SFT's loss draws no objectives plot
    after_s1 = load_file(tmp_path / "run/checkpoints/step-00000003/model.safetensors")
    after_s2 = load_file(tmp_path / "run/checkpoints/step-00000006/model.safetensors")

    vision_side = ("vision.", "connector.", ".visual_")
    # The last layer's visual o_proj and FFN only write image positions, which no later layer reads and
    # which carry no loss: they get zero gradient, so they cannot change.
    no_gradient = ("language.layers.1.visual_attn.o_proj", "language.layers.1.visual_mlp")
    for name, w in before.items():
        if name.startswith(no_gradient):
            continue
        if any(s in name for s in vision_side):
            assert not torch.equal(w, after_s1[name]), f"{name} is trainable in stage 1 but did not change"
        else:
            assert torch.equal(w, after_s1[name]), f"{name} is frozen in stage 1 but changed"
    for name in ("language.layers.0.attn.qkv_proj.weight", "language.layers.1.mlp.down_proj.weight",
                 "language.embed_tokens.weight"):
        assert not torch.equal(after_s1[name], after_s2[name]), f"{name} trains in stage 2 but did not change"

    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["stage"] for r in rows] == ["vision"] * 3 + ["all"] * 3
    assert "val_loss" in rows[1] and "val_loss" in rows[2] and rows[0]["lr"] == pytest.approx(3e-3)
    assert list((tmp_path / "run/tensorboard").glob("events.out.tfevents.*"))
    model = load_pretrained(tmp_path / "run/final")
    assert all(torch.equal(v, after_s2[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["stages"][0].update(lrr=1e-3), "stages[0].lrr"),
    (lambda r: r["stages"][0].update(steps="many"), "stages[0].steps"),
    (lambda r: r["model"]["language"].update(hidden_size="wide"), "model.language.hidden_size"),
    (lambda r: r["stages"][1]["data"][0].update(path="missing.json"), "stages[1].data[0].path"),
    (lambda r: r["stages"][0].update(schedule="linear"), "stages[0].schedule"),
    (lambda r: r.update(tokenizer="no/such/tok"), "tokenizer"),
    (lambda r: r["stages"][0].update(batch_size=3), "stages[0].batch_size"),
    (lambda r: r.update(question_loss=-0.5), "question_loss"),
])
def test_bad_recipe_fails_naming_the_field(train_world, tmp_path, edit, field):
    recipe = vlm_recipe(train_world)
    edit(recipe)
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


@pytest.mark.parametrize("stage_edit, field", [
    ({"trainable": ["vison.*"]}, r"stages\[0\].trainable"),
    ({"lr_multipliers": {"conector.*": 2.0}}, r"stages\[0\].lr_multipliers"),
    ({"lora": {"rank": 2, "modules": ["*.qkv"]}}, r"stages\[0\].lora.modules"),
])
def test_pattern_matching_nothing_fails_before_training(train_world, tmp_path, stage_edit, field):
    recipe = vlm_recipe(train_world)
    recipe["stages"][0].update(stage_edit)
    cfg = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    with pytest.raises(ConfigError, match=field):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lora_base_frozen_and_merged_export_matches_adapter(train_world, tmp_path):
    recipe = lm_recipe(train_world, checkpoint_every=100)
    recipe["stages"][0].update(trainable=["norm.*"], lr=1e-2,
                               lora={"rank": 4, "alpha": 8, "modules": ["layers.*.attn.qkv_proj", "layers.*.mlp.*"]})
    cfg = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    before = initial_state(cfg)
    train(cfg, tmp_path / "run")
    adapted_state = load_file(tmp_path / "run/checkpoints/step-00000004/model.safetensors")
    base = {k.replace(".parametrizations.weight.original", ".weight"): v for k, v in adapted_state.items()
            if "lora_" not in k}
    for name, w in before.items():  # the base under the adapters, and everything frozen, is untouched
        if name != "norm.weight":
            assert torch.equal(w, base[name]), name
    assert not torch.equal(before["norm.weight"], base["norm.weight"])

    adapted = load_pretrained(tmp_path / "run/final")  # rebuild the adapted model from the checkpoint
    add_lora(adapted, cfg.stages[0].lora.modules, 4, 8.0)
    adapted.load_state_dict(adapted_state)
    assert any(not torch.equal(m.lora_B, torch.zeros_like(m.lora_B))
               for m in adapted.modules() if hasattr(m, "lora_B"))
    exported = load_pretrained(tmp_path / "run/final")
    assert not any("lora" in k or "parametrizations" in k for k in exported.state_dict())
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        adapted_logits = adapted(ids).logits
        assert torch.equal(adapted_logits, exported(ids).logits)
        merge_lora(adapted)
        assert torch.equal(adapted(ids).logits, adapted_logits)


def test_schedules():
    assert [lr_at(s, 10, 1.0, "constant", 4, 0.1) for s in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]
    cos = [lr_at(s, 10, 1.0, "cosine", 0, 0.1) for s in range(11)]
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.55) and cos[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cos, cos[1:]))


def test_mixture_sampler_resumes_exactly_and_follows_weights():
    a = MixtureSampler([5, 7], [3.0, 1.0], seed="0:0")
    a.draw(13)
    b = MixtureSampler([5, 7], [3.0, 1.0], seed="0:0")
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert a.draw(20) == b.draw(20)
    picks = MixtureSampler([5, 7], [3.0, 1.0], seed=1).draw(400)
    share = sum(s == 0 for s, _ in picks) / 400
    assert 0.68 < share < 0.82
    first_epoch = [i for s, i in MixtureSampler([5], [1.0], seed=2).draw(5)]
    assert sorted(first_epoch) == list(range(5))


def test_incomplete_or_corrupt_checkpoints_are_never_loaded(tmp_path):
    root = tmp_path / "checkpoints"
    state = {"w": torch.arange(4.0)}
    checkpoint.save(root, 1, state, {"state": {}}, {"step": 1}, rank=0, keep=3)
    good = checkpoint.save(root, 2, state, {"state": {}}, {"step": 2}, rank=0, keep=3)
    bad = checkpoint.save(root, 3, state, {"state": {}}, {"step": 3}, rank=0, keep=3)
    (root / ".tmp-step-00000004").mkdir()  # a write that was killed
    assert checkpoint.latest(root) == bad
    with (bad / "model.safetensors").open("r+b") as f:
        f.write(b"garbage")
    assert checkpoint.latest(root) == good
    (good / checkpoint.MARKER).unlink()
    assert checkpoint.latest(root).name == "step-00000001"
    checkpoint.save(root, 5, state, {"state": {}}, {"step": 5}, rank=0, keep=2)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000003", "step-00000005"]


def test_text_lm_export_grows_into_a_native_vlm(train_world, tmp_path):
    """NaViL's hand-off: the text LM's export (a Hugging Face folder) initialises the VLM's language model,
    and its visual experts start as copies of the trained text weights."""
    lm_cfg = load_recipe(write_recipe(tmp_path / "lm.yaml", lm_recipe(train_world)))
    lm_run = train(lm_cfg, tmp_path / "lm")
    assert json.loads((tmp_path / "lm/final/config.json").read_text())["architectures"]
    lm = load_pretrained(tmp_path / "lm/final")
    assert all(torch.equal(v, lm_run.model.state_dict()[k]) for k, v in lm.state_dict().items())

    recipe = vlm_recipe(train_world, init={"path": str(tmp_path / "lm/final"), "vision": True})
    recipe["stages"] = recipe["stages"][:1]
    vlm_cfg = load_recipe(write_recipe(tmp_path / "vlm.yaml", recipe))
    vlm = build_model(vlm_cfg, Tokenizer.load(vlm_cfg.tokenizer))
    text, visual = vlm.language.layers[0].attn.qkv_proj.weight, vlm.language.layers[0].visual_attn.qkv_proj.weight
    assert torch.equal(text, lm.layers[0].attn.qkv_proj.weight) and torch.equal(visual, text)


def test_cli_reports_a_bad_recipe_before_training(train_world, tmp_path):
    recipe = vlm_recipe(train_world)
    recipe["stages"][0]["trainable"] = ["language.layers.*.visaul_*"]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    proc = subprocess.run([sys.executable, "-m", "nativevlm", "train", str(path), "--out", str(tmp_path / "run"),
                           "--set", "stages.1.steps=2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "stages[0].trainable" in proc.stderr and "visaul" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_step_with_every_sample_dropped_is_an_error(train_world, tmp_path):
    """Silent success with no loss tokens would hide a max_length that drops the whole data set."""
    cfg = load_recipe(write_recipe(tmp_path / "r.yaml", vlm_recipe(train_world, max_length=4)))
    with pytest.raises(ValueError, match="no target tokens"):
        train(cfg, tmp_path / "run")


def test_training_leaves_no_hook_behind(tmp_path, train_world):
    """keep_graph's forward hook lives for the run only: a second train() in one process doesn't stack a
    second one on a model it reuses, and the returned model has none."""
    from nativevlm.train.step import keep_graph

    lm = LanguageModel(LanguageConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                      intermediate_size=64))
    with keep_graph(lm):
        assert len(lm.embed_tokens._forward_hooks) == 1
        assert lm(torch.randint(0, 64, (1, 4))).logits.requires_grad
    assert len(lm.embed_tokens._forward_hooks) == 0
    result = train(load_recipe(write_recipe(tmp_path / "r.yaml", lm_recipe(train_world))), tmp_path / "run",
                   log=lambda *a, **k: None)
    assert len(result.model.embed_tokens._forward_hooks) == 0


def test_optimizer_is_fused_and_steps_as_the_reference_adamw():
    """build_optimizer's fused AdamW (per-group decay and LR multipliers) gives the parameters PyTorch's
    reference single-tensor AdamW gives, step for step."""
    import copy

    from nativevlm.train.config import StageConfig
    from nativevlm.train.optim import build_optimizer

    torch.manual_seed(0)
    lm = LanguageModel(LanguageConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                      intermediate_size=48, tie_word_embeddings=False))
    ref = copy.deepcopy(lm)
    stage = StageConfig(lr=1e-2, weight_decay=0.1, lr_multipliers={"embed_tokens.*": 3.0})
    opt = build_optimizer(lm, stage)
    assert all(g["fused"] for g in opt.param_groups)
    name_of = {id(p): n for n, p in lm.named_parameters()}
    ref_params = dict(ref.named_parameters())
    ref_opt = torch.optim.AdamW([{"params": [ref_params[name_of[id(p)]] for p in g["params"]],
                                  "weight_decay": g["weight_decay"], "lr": g["lr"]} for g in opt.param_groups],
                                betas=tuple(stage.betas), eps=stage.eps, foreach=False)
    ids, targets = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    for _ in range(3):
        for model, o in ((lm, opt), (ref, ref_opt)):
            model(ids, targets=targets).loss.backward()
            o.step()
            o.zero_grad()
    for n, p in lm.named_parameters():
        torch.testing.assert_close(p, ref_params[n], msg=n)


def test_question_loss_trains_on_the_question_and_val_scores_the_answers(train_world, tmp_path):
    """`question_loss` reaches the trainer's collator: at lr 0 (the model never changes) the same steps log a
    different training loss with it, and the same val loss (val scores the answers only)."""
    rows = {}
    for weight in (0.0, 0.5):
        recipe = vlm_recipe(train_world, question_loss=weight)
        recipe["stages"] = [dict(recipe["stages"][1], steps=2, lr=0.0, val_data=str(train_world["val"]),
                                 eval_every=2, eval_samples=4)]
        train(load_recipe(write_recipe(tmp_path / f"r{weight}.yaml", recipe)), tmp_path / f"run{weight}",
              log=lambda *a, **k: None)
        rows[weight] = [json.loads(line) for line in (tmp_path / f"run{weight}/metrics.jsonl").read_text().splitlines()]
    losses = {w: [r["loss"] for r in rs if "loss" in r] for w, rs in rows.items()}
    vals = {w: [r["val_loss"] for r in rs if "val_loss" in r] for w, rs in rows.items()}
    assert len(losses[0.0]) == 2 and all(a != pytest.approx(b, rel=1e-4) for a, b in zip(losses[0.0], losses[0.5]))
    assert vals[0.0] and vals[0.0] == pytest.approx(vals[0.5], rel=1e-6)
