"""The post-training objectives inside the trainer: MPO's loss is `rl.losses.mpo_loss` on the pairs of the
micro-batch (each answer scored alone, against the stage's starting weights); GSPO's rollout loss is the mean
of its sequences' losses however they are padded together; its clip acts only with several steps per rollout;
and a run killed in the middle of an MPO stage or of a GSPO rollout window resumes bit-identically.

A random tiny model answers almost nothing right, so the GSPO tests swap the reward for the parity of the
reply's length (`PARITY_REWARD`): mixed rewards within each group, as a model in RL's useful regime gets
(the real reward is tested against labelled answers in test_rl_reward.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import faultkit
from nativevlm.config import ConfigError
from nativevlm.data.collate import IGNORE, Collator
from nativevlm.data.image import ImageProcessor
from nativevlm.data.thinking import THINK_END, THINK_START
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.infer.engine import think_opening
from nativevlm.rl.losses import RunningRewardMean, SequenceLogProbs, gspo_loss, mpo_loss, sequence_logprobs
from nativevlm.rl.preferences import read_pairs
from nativevlm.rl.reward import Reward
from nativevlm.train.data import StageData
from nativevlm.train.export import build_model
from nativevlm.train.objectives import MicroBatch, StageContext, StepInfo, build
from nativevlm.train.objectives import gspo as gspo_module
from nativevlm.train.recipe import recipe_from_dict
from nativevlm.train.trainer import train
from trainkit import tiny_model, write_recipe

QUIET = dict(log=lambda *a, **k: None)
PARITY_REWARD = """
from nativevlm.rl.reward import Reward

def parity(sample, reply, thinking=False, weights=None, strict=False):
    right = len(reply) % 2 == 0
    return Reward(right, True, "correct" if right else "wrong", float(right))
"""


def use_parity_reward(monkeypatch) -> None:
    namespace: dict = {}
    exec(PARITY_REWARD, namespace)
    monkeypatch.setattr(gspo_module, "reward", namespace["parity"])


@pytest.fixture(scope="module")
def pairs(tiny_world) -> Path:
    """A preference file over the world's training questions: chosen = the reference answer, rejected = a
    wrong one of a different length (so padding differs between the two sides)."""
    root = tiny_world["root"]
    out = root / "pairs.jsonl"
    with out.open("w") as f:
        for r in json.loads((root / "train.json").read_text())[:12]:
            answer = r["conversations"][1]["value"]
            f.write(json.dumps({"id": r["id"], "messages": [{"role": "user", "content": r["conversations"][0]["value"]}],
                                "images": [r["image"]], "chosen": answer, "rejected": f"not {answer} at all",
                                "meta": r["meta"]}) + "\n")
    return out


def recipe(world: dict, stages: list[dict], **top) -> dict:
    model = tiny_model(vocab=420)
    model["vision"].update(patch_size=16, min_patches=16, max_patches=64)
    return {"kind": "vlm", "model": model, "tokenizer": str(world["tok"]), "max_length": 200, "seed": 0,
            "device": "cpu", "checkpoint_every": 100, "progress": False, "stages": stages, **top}


def mpo_stage(pairs: Path, **extra) -> dict:
    return {"name": "mpo", "data": [{"path": str(pairs)}], "objectives": [{"name": "mpo"}], "steps": 3,
            "batch_size": 4, "grad_accum": 2, "lr": 1e-3, **extra}


def gspo_stage(world: dict, steps_per_rollout: int, **extra) -> dict:
    return {"name": "gspo", "data": [{"path": str(world["root"] / "train.json")}], "steps": 6, "batch_size": 4,
            "lr": 1e-3, "objectives": [{"name": "gspo", "group_size": 4, "steps_per_rollout": steps_per_rollout,
                                        "max_new_tokens": 6, "accuracy_low": 0.0, "accuracy_high": 1.0}], **extra}


def setup_objective(world: dict, stage: dict):
    """(model, objective set up on `stage`, the stage's data) as the trainer would make them."""
    cfg = recipe_from_dict(recipe(world, [stage]))
    tok = Tokenizer.load(cfg.tokenizer, cfg.model.special_tokens)
    torch.manual_seed(0)
    model = build_model(cfg, tok)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    data = StageData(cfg.stages[0], Collator(tok, processor, cfg.max_length), seed="0:0", log=lambda *a: None)
    objective = build(cfg.stages[0].objectives, "stages[0].objectives")[0].objective
    objective.setup(StageContext(model=model, tokenizer=tok, stage=cfg.stages[0], data=data, processor=processor,
                                 device=torch.device("cpu")))
    return model, objective, data


def info(micro_batches: int = 1, stage_step: int = 0) -> StepInfo:
    return StepInfo(step=stage_step, stage_step=stage_step, micro_batches=micro_batches, world=1, rank=0,
                    target_weight=torch.tensor(0.0))


def test_mpo_objective_is_mpo_loss_on_its_pairs(tiny_world, pairs):
    model, objective, data = setup_objective(tiny_world, mpo_stage(pairs))
    with torch.no_grad():  # the policy moves away from the reference the stage started from
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    batch = data.collator(data.sources[0][:4])
    out = objective.loss(model, MicroBatch(model, batch, 0), info(micro_batches=2))

    by_id = {c.id: (c, r) for c, r in read_pairs(pairs)}

    def alone(m, sample) -> SequenceLogProbs:  # one answer in a batch of its own: no padding
        b = data.collator([sample])
        return sequence_logprobs(m(**{**b.model_inputs(), "targets": None}).logits, b.targets)

    chosen = [alone(model, by_id[i][0]) for i in batch.sample_ids]
    rejected = [alone(model, by_id[i][1]) for i in batch.sample_ids]
    with torch.no_grad():
        ref_c = torch.cat([alone(objective.reference, by_id[i][0]).sum for i in batch.sample_ids])
        ref_r = torch.cat([alone(objective.reference, by_id[i][1]).sum for i in batch.sample_ids])
    cat = lambda xs: SequenceLogProbs(torch.cat([x.sum for x in xs]), torch.cat([x.count for x in xs]))  # noqa: E731
    expected, metrics = mpo_loss(cat(chosen), cat(rejected), ref_c, ref_r, RunningRewardMean())
    assert metrics["dpo"] != pytest.approx(0.6931, abs=1e-3), "the reference must differ from the policy here"
    assert (out.loss * 2).item() == pytest.approx(expected.item(), rel=1e-5)  # its share of a 2-micro-batch step
    assert out.metrics["delta"][0] == pytest.approx(metrics["delta"], rel=1e-5)
    # The reference is a frozen copy: no gradient reaches it.
    out.loss.backward()
    assert all(p.grad is None for p in objective.reference.parameters())


@pytest.mark.parametrize("objective, message", [
    ({"name": "gspo", "group_size": 1}, r"stages\[0\].objectives\[0\]: objective gspo: group_size must be >= 2"),
    ({"name": "gspo", "accuracy_low": 0.9, "accuracy_high": 0.1}, r"objectives\[0\]: .*accuracy_low <= accuracy_high"),
    ({"name": "gspo", "steps_per_rollout": 0}, r"objectives\[0\]: .*steps_per_rollout"),
    ({"name": "mpo", "beta": 0}, r"objectives\[0\]: objective mpo: beta must be > 0"),
    ({"name": "gspo", "thinking_budget": 4}, r"objectives\[0\]: .*thinking_budget needs think: true"),
    ({"name": "gspo", "think": True, "thinking_budget": 16, "max_new_tokens": 16}, r"room for the answer"),
])
def test_bad_rl_options_fail_naming_the_entry(tiny_world, objective, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(recipe(tiny_world, [{**gspo_stage(tiny_world, 2), "objectives": [objective]}]))


def test_mpo_stage_refuses_data_that_is_not_a_pair_file(tiny_world):
    with pytest.raises(ConfigError, match="not a preference file.*nativevlm data preferences"):
        setup_objective(tiny_world, mpo_stage(tiny_world["root"] / "train.json"))


def test_gspo_stage_refuses_questions_without_answers(tiny_world, tmp_path):
    records = json.loads((tiny_world["root"] / "train.json").read_text())[:4]
    for r in records:
        r["conversations"], r["meta"] = r["conversations"][:1], {}
        r["image"] = str(tiny_world["root"] / r["image"])
    (tmp_path / "questions.json").write_text(json.dumps(records))
    stage = {**gspo_stage(tiny_world, 2), "data": [{"path": str(tmp_path / "questions.json")}]}
    with pytest.raises(ConfigError, match="questions.json has questions without an answer"):
        setup_objective(tiny_world, stage)


def test_gspo_rollout_loss_is_the_mean_of_its_sequences_alone(tiny_world, monkeypatch):
    use_parity_reward(monkeypatch)
    model, objective, data = setup_objective(tiny_world, gspo_stage(tiny_world, 2))
    batch = data.collator(data.sources[0][:4])
    out = objective.loss(model, MicroBatch(model, batch, 0), info())
    rollout = objective.rollouts[0]
    assert len(rollout.ids) == 16 and rollout.batch.attention_mask.sum(1).unique().numel() > 1, \
        "the rows must have unequal lengths (padding) for this test to mean anything"
    assert rollout.advantages.abs().sum() > 0
    with torch.no_grad():  # move the policy, so ratios differ from 1 and some are clipped
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    batched = objective.loss(model, MicroBatch(model, batch, 0), info(stage_step=1))
    alone = []
    for j, (i, reply) in enumerate(zip(rollout.ids, rollout.replies)):
        row = objective.sequences([i], [reply])
        logps, mask = gspo_module.answer_logprobs(model, row)
        old = rollout.old_logps[j:j + 1, :mask.shape[1]]
        alone.append(gspo_loss(logps, old, mask, rollout.advantages[j:j + 1])[0])
    assert batched.loss.item() == pytest.approx(torch.stack(alone).mean().item(), rel=1e-4, abs=1e-7)
    assert 0 < batched.metrics["clip_fraction"][0] < 16
    assert out.metrics["clip_fraction"][0] == 0  # the rollout step itself is on-policy


def test_a_step_where_the_filter_keeps_no_question_leaves_the_weights(tiny_world, monkeypatch):
    """A GSPO step with nothing kept has a zero gradient; an optimizer step would still move the weights through
    Adam's momentum from the step before. The training step skips it: weights and optimizer state unchanged."""
    from nativevlm.train.objectives import Weighted
    from nativevlm.train.step import train_step
    use_parity_reward(monkeypatch)
    model, objective, data = setup_objective(tiny_world, gspo_stage(tiny_world, 1))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    step = lambda k: train_step(model, [data.collator(data.sources[0][:4])], optimizer, params, 1.0, 1,  # noqa: E731
                                torch.device("cpu"), False, [Weighted(objective, 1.0)], step=k, stage_step=k)
    first = step(0)
    assert first["gspo/kept"] > 0 and first["grad_norm"] > 0  # a step that trains: Adam has momentum now
    before = [p.detach().clone() for p in params]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in params]
    monkeypatch.setattr(objective, "rollout", lambda ids, info, device: (None, {"kept": (0, len(ids))}))
    second = step(1)
    assert second["gspo/kept"] == 0 and second["grad_norm"] == 0
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    assert all(torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, params))
    assert step(2)["gspo/kept"] == 0 and all(torch.equal(a, p) for a, p in zip(before, params))


def test_gspo_thinking_rollouts_open_think_and_are_rewarded_whole(tiny_world, monkeypatch):
    """think: true asks every reply with the engine's `<think>` opening and budget, trains on prompt + opening +
    reply with the loss on the reply alone, and hands the reward the whole reply in thinking mode."""
    calls = []

    def record(sample, reply, thinking=False, weights=None, strict=False):
        calls.append((reply, thinking))
        right = len(reply) % 2 == 0
        return Reward(right, True, "correct" if right else "wrong", float(right))

    monkeypatch.setattr(gspo_module, "reward", record)
    stage = gspo_stage(tiny_world, 2)
    stage["objectives"][0].update(think=True, thinking_budget=3, max_new_tokens=24)
    model, objective, data = setup_objective(tiny_world, stage)
    batch = data.collator(data.sources[0][:4])
    objective.loss(model, MicroBatch(model, batch, 0), info())
    opening, close = think_opening(objective.tokenizer), objective.tokenizer.encode("\n" + THINK_END + "\n")
    assert len(calls) == 16 and all(thinking is True and text.startswith(THINK_START) for text, thinking in calls)
    rollout = objective.rollouts[0]
    forced = 0
    for j, (i, reply) in enumerate(zip(rollout.ids, rollout.replies)):
        prompt = objective.prompt(objective.samples[i]).input_ids
        row = rollout.batch.input_ids[j].tolist()
        assert row[:len(prompt) + len(opening) + len(reply)] == prompt + opening + reply
        scored = (rollout.batch.targets[j] != IGNORE).nonzero().flatten().tolist()
        assert scored == list(range(len(prompt) + len(opening) - 1, len(prompt) + len(opening) - 1 + len(reply)))
        if len(reply) >= 3 + len(close):  # thought through the budget: `</think>` was forced right after it
            assert reply[3:3 + len(close)] == close
            forced += 1
    assert forced > 0, "a random model never closes its thinking itself: the budget must have acted"
    calls.clear()  # direct mode (the default), as before: the reward is asked for a reply without thinking
    direct_model, direct, direct_data = setup_objective(tiny_world, gspo_stage(tiny_world, 2))
    direct.loss(direct_model, MicroBatch(direct_model, batch, 0), info())
    assert len(calls) == 16 and all(thinking is False for _, thinking in calls)


def test_gspo_in_both_modes_asks_each_group_one_way_and_trains_it_that_way(tiny_world, monkeypatch):
    """think: true with direct_share: each question's group is asked either thinking (the `<think>` opening in
    its trained rows, the thinking reward) or directly (no opening, think blocks banned, the direct reward), as
    a stable hash of (seed, step, question) decides; each mode's accuracy is reported apart."""
    calls = []

    def record(sample, reply, thinking=False, weights=None, strict=False):
        calls.append((sample.id, reply, thinking))
        right = len(reply) % 2 == 0
        return Reward(right, True, "correct" if right else "wrong", float(right))

    asked = []

    class Recording(gspo_module.Engine):
        def generate(self, requests):
            asked.extend((r.think, r.thinking_budget) for r in requests)
            return super().generate(requests)

    monkeypatch.setattr(gspo_module, "reward", record)
    monkeypatch.setattr(gspo_module, "Engine", Recording)
    stage = gspo_stage(tiny_world, 2)
    stage["objectives"][0].update(think=True, thinking_budget=3, max_new_tokens=24, direct_share=0.5,
                                  accuracy_low=0.0, accuracy_high=1.0)
    model, objective, data = setup_objective(tiny_world, stage)
    batch = data.collator(data.sources[0][:8])
    out = objective.loss(model, MicroBatch(model, batch, 0), info())
    modes = {i: objective.thinks(i, 0) for i in batch.sample_ids}
    assert set(modes.values()) == {True, False}, "eight questions at a share of 0.5 should be asked both ways"
    assert modes == {i: objective.thinks(i, 0) for i in batch.sample_ids}  # stable
    assert len(calls) == 32 and all(thinking is modes[i] for i, _, thinking in calls)
    # asked to think with the budget, or directly with think blocks banned (not left to the model)
    assert asked == [(True, 3) if modes[i] else (False, None) for i in batch.sample_ids for _ in range(4)]
    assert all(text.startswith(THINK_START) == modes[i] for i, text, _ in calls)
    opening = think_opening(objective.tokenizer)
    rollout = objective.rollouts[0]
    assert rollout.thinks == [modes[i] for i in rollout.ids]
    for j, (i, reply) in enumerate(zip(rollout.ids, rollout.replies)):
        head = objective.prompt(objective.samples[i]).input_ids + (opening if modes[i] else [])
        assert rollout.batch.input_ids[j].tolist()[:len(head) + len(reply)] == head + reply
        scored = (rollout.batch.targets[j] != IGNORE).nonzero().flatten().tolist()
        assert scored == list(range(len(head) - 1, len(head) - 1 + len(reply)))
    right = {m: [len(text) % 2 == 0 for i, text, _ in calls if modes[i] is m] for m in (True, False)}
    for name, m in (("think_accuracy", True), ("direct_accuracy", False)):
        total, count = out.metrics[name]
        assert (float(total), count) == (sum(right[m]), len(right[m]))
    # the batch is rebuilt from the saved state as it was (a resumed run trains on the same rows)
    state = objective.state_dict()["rollouts"][0]
    again = gspo_module.Rollout(**state)
    rebuilt = objective.sequences(again.ids, again.replies, again.thinks)
    assert torch.equal(rebuilt.input_ids, rollout.batch.input_ids)
    with pytest.raises(ConfigError, match="direct_share .* needs think: true"):
        setup_objective(tiny_world, {**gspo_stage(tiny_world, 2), "objectives": [
            {**gspo_stage(tiny_world, 2)["objectives"][0], "direct_share": 0.5}]})


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_gspo_raises_the_reward_it_is_given(tiny_world, monkeypatch):
    """The whole loop learns: rollouts through the engine, rewards, group advantages, the clipped loss and the
    optimizer step raise the share of replies the reward pays for. Reward: the reply's first character has an
    even code point, which the random tiny model writes about a quarter of the time; 30 rollouts of 4 questions x
    8 replies (2 steps each, lr 3e-3) take it from 27.5% over the first five rollouts to 50.0% over the last
    five. With the advantages' sign flipped it goes from 24.4% to 19.4% (checked by hand), so this fails if
    anything in the chain pushes the wrong way."""
    from nativevlm.train.objectives import Weighted
    from nativevlm.train.step import train_step

    def even_first(sample, reply, thinking=False, weights=None, strict=False):
        right = len(reply) > 0 and ord(reply[0]) % 2 == 0
        return Reward(right, True, "correct" if right else "wrong", float(right))

    monkeypatch.setattr(gspo_module, "reward", even_first)
    stage = gspo_stage(tiny_world, 2)
    stage["objectives"][0].update(group_size=8, eps_low=0.2, eps_high=0.28)  # filter off (gspo_stage's [0, 1])
    model, objective, data = setup_objective(tiny_world, stage)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    questions, rewards = data.sources[0], []
    for k in range(60):  # a new rollout every 2 steps, on the next 4 questions
        batch = data.collator([questions[(4 * (k // 2) + j) % len(questions)] for j in range(4)])
        m = train_step(model, [batch], optimizer, params, 1.0, 1, torch.device("cpu"), False,
                       [Weighted(objective, 1.0)], step=k, stage_step=k)
        if "gspo/reward" in m:
            rewards.append(m["gspo/reward"])
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert len(rewards) == 30 and first < 0.35
    assert last >= first + 0.15, (first, last, rewards)


@pytest.mark.parametrize("steps_per_rollout", [1, 3])
def test_clip_acts_only_with_several_steps_per_rollout(tiny_world, tmp_path, monkeypatch, steps_per_rollout):
    use_parity_reward(monkeypatch)
    cfg = recipe_from_dict(recipe(tiny_world, [gspo_stage(tiny_world, steps_per_rollout)]))
    train(cfg, tmp_path / "run", **QUIET)
    got = rows(tmp_path / "run")
    rollout_steps = [r for r in got if "gspo/reward" in r]
    assert len(rollout_steps) == 6 // steps_per_rollout
    assert all({"gspo/accuracy", "gspo/response_length", "gspo/kept"} <= r.keys() for r in rollout_steps)
    clipped = [r["gspo/clip_fraction"] for r in got]
    if steps_per_rollout == 1:
        assert clipped == [0.0] * 6
    else:
        assert all(r["gspo/clip_fraction"] == 0 for r in rollout_steps) and max(clipped) > 0
    assert (tmp_path / "run" / "objectives.png").is_file()  # the run's reward and clip-fraction curves


def start(recipe_path: Path, out: Path, kill_at: str, *extra: str) -> subprocess.Popen:
    """`nativevlm train` with the parity reward; dies (os._exit) right after checkpoint `kill_at`'s weights are
    written, so the resume starts from the checkpoint before it."""
    code = PARITY_REWARD + ("from nativevlm.train.objectives import gspo\ngspo.reward = parity\n"
                            "from nativevlm.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    cmd = faultkit.script("checkpoint.weights", kill_at, "exit", code, "train", str(recipe_path), "--out", str(out),
                          *extra)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def cascade(tiny_world, pairs, tmp_path_factory):
    """SFT (2 steps), MPO (3 steps), GSPO (6 steps, 3 per rollout), a checkpoint every step, uninterrupted.
    The SFT stage makes the weights MPO starts from differ from the freshly built model a resume begins with."""
    root = tmp_path_factory.mktemp("rl_resume")
    sft = {"name": "sft", "data": [{"path": str(tiny_world["root"] / "train.json")}], "steps": 2, "batch_size": 4,
           "lr": 3e-3}
    path = write_recipe(root / "recipe.yaml", recipe(tiny_world, [sft, mpo_stage(pairs), gspo_stage(tiny_world, 3)],
                                                     checkpoint_every=1, keep_checkpoints=3))
    proc = start(path, root / "reference", "never")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return path, load_file(root / "reference" / "final" / "model.safetensors"), rows(root / "reference")


@pytest.mark.parametrize("kill_at", ["step-00000004", "step-00000011"])
def test_rl_stage_killed_midway_resumes_bit_identically(cascade, tmp_path, kill_at):
    """step-00000004 dies mid-MPO (resumes from step 3, MPO's first: the reference and delta come from the
    checkpoint); step-00000011 dies in GSPO's second rollout window (resumes from step 10, before the window's
    third step: the rollout comes from the checkpoint, since the policy that sampled it is gone)."""
    path, reference, reference_rows = cascade
    out = tmp_path / "run"
    proc = start(path, out, kill_at)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == faultkit.KILLED, output
    proc = start(path, out, "never", "--resume")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    resumed = load_file(out / "final" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())
    keys = ["mpo/delta", "gspo/clip_fraction", "gspo/reward"]
    assert [[r.get(k) for k in keys] for r in rows(out)[-4:]] == [[r.get(k) for k in keys] for r in reference_rows[-4:]]
    assert max(r.get("gspo/clip_fraction", 0) for r in reference_rows) > 0


def test_a_run_stopped_by_max_steps_draws_its_objectives_so_far(tiny_world, tmp_path, monkeypatch):
    use_parity_reward(monkeypatch)
    cfg = recipe_from_dict(recipe(tiny_world, [gspo_stage(tiny_world, 3)]))
    result = train(cfg, tmp_path / "run", max_steps=2, **QUIET)
    assert result.final is None and (tmp_path / "run" / "objectives.png").is_file()
