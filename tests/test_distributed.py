"""Data parallel: 2 gloo processes (DDP, FSDP2) follow the single-process loss curve at the same global
batch, because the loss is normalised by the all-reduced sum of weights; and they resume exactly."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from nativevlm.train.recipe import load_recipe
from trainkit import curve_recipe, vlm_recipe, write_recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, recipe: str, out: str, resume: bool = False,
            max_steps: int | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from nativevlm.train import distributed
    from nativevlm.train.trainer import train

    try:
        train(load_recipe(recipe), out, resume=resume, max_steps=max_steps, log=lambda *a, **k: None)
    finally:
        distributed.teardown()
    # Nothing of the process group may outlive teardown: gloo threads left running were destroyed in
    # arbitrary order at interpreter exit, which aborted about one run in 18.
    assert distributed.gloo_threads() == [], distributed.gloo_threads()


def losses(out: Path) -> list[tuple[float, float | None]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r.get("val_loss")) for r in rows]


@pytest.fixture(scope="module")
def single(tmp_path_factory, train_world):
    root = tmp_path_factory.mktemp("dist")
    recipe = vlm_recipe(train_world, checkpoint_every=100)
    for stage in recipe["stages"]:
        # 1 sample per rank per micro-batch: some micro-batches are text only, so in stage 1 (vision side
        # trains) one rank's micro-batch reaches no trainable parameter while the other's does.
        stage.update(batch_size=4, grad_accum=2, steps=2)
    recipe["stages"][1]["grad_accum"] = 1
    path = write_recipe(root / "recipe.yaml", recipe)
    mp.spawn(_worker, args=(1, free_port(), str(path), str(root / "single")), nprocs=1)
    return root, path, losses(root / "single")


def two_processes(root: Path, recipe: Path, strategy: str, out: Path, resume: bool = False, max_steps=None) -> Path:
    cfg_path = root / f"{strategy}.yaml"
    cfg_path.write_text(recipe.read_text() + f"distributed: {strategy}\n")
    mp.spawn(_worker, args=(2, free_port(), str(cfg_path), str(out), resume, max_steps), nprocs=2)
    return out


def uninterrupted(root: Path, recipe: Path, strategy: str) -> Path:
    """The plain 2-process run, shared by the tests of one strategy."""
    out = root / strategy
    return out if (out / "final").exists() else two_processes(root, recipe, strategy, out)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_loss_curve(single, strategy):
    root, recipe, reference = single
    out = uninterrupted(root, recipe, strategy)
    got = losses(out)
    assert len(got) == len(reference) == 4
    for (loss, val), (ref_loss, ref_val) in zip(got, reference):
        assert abs(loss - ref_loss) < 1e-5
        assert (val is None and ref_val is None) or abs(val - ref_val) < 1e-5


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_stop_and_resume_is_bit_identical(single, strategy):
    """Checkpoints hold the full (gathered) state and every rank's RNG: a 2-process run stopped after 3
    steps and resumed ends bit-identical to the uninterrupted 2-process run."""
    root, recipe, _ = single
    reference = load_file(uninterrupted(root, recipe, strategy) / "final" / "model.safetensors")
    out = two_processes(root, recipe, strategy, root / f"{strategy}-resumed", max_steps=3)
    assert not (out / "final").exists()
    two_processes(root, recipe, strategy, out, resume=True)
    resumed = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())


@pytest.fixture(scope="module")
def head_single(tmp_path_factory, tiny_world):
    """A stage with an objective that owns parameters (the cells objective's head), on one process in
    two micro-batches of 2 samples: the micro-batches each of two ranks takes with grad_accum 1. (The cell
    loss is a mean per micro-batch, so unlike sft its value depends on the split.)"""
    root = tmp_path_factory.mktemp("dist_head")
    recipe = curve_recipe(tiny_world, curves={})
    recipe["stages"] = [{**recipe["stages"][1], "steps": 3, "batch_size": 4, "grad_accum": 2,
                         "objectives": [{"name": "sft"}, {"name": "cells", "target": "head"}]}]
    path = write_recipe(root / "recipe.yaml", recipe)
    mp.spawn(_worker, args=(1, free_port(), str(path), str(root / "single")), nprocs=1)
    recipe["stages"][0]["grad_accum"] = 1
    return root, write_recipe(root / "two.yaml", recipe)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_objectives_own_head_trains_alike_on_two_processes(head_single, strategy):
    """The head is registered on the model before wrapping, so DDP and FSDP average its gradients like the
    model's: the two-process run logs the single-process losses, the head's included."""
    root, recipe = head_single
    out = two_processes(root, recipe, strategy, root / strategy)
    keys = ("loss", "sft/loss", "cells/loss")
    rows = {name: [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("single", strategy)}
    assert len(rows[strategy]) == len(rows["single"]) == 3
    for got, ref in zip(rows[strategy], rows["single"]):
        assert all(abs(got[k] - ref[k]) < 1e-5 for k in keys), (got, ref)
    assert not any(k.startswith("objectives.") for k in load_file(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def words_single(tmp_path_factory, tiny_world):
    """answer_words (with question_words) on one process in two micro-batches of 2, as `head_single`: the
    loss reads the LM's input embedding table, which FSDP2 shards across ranks."""
    root = tmp_path_factory.mktemp("dist_words")
    recipe = curve_recipe(tiny_world, curves={})
    out = {}
    for table in ("live", "initial"):
        recipe["stages"] = [{**recipe["stages"][0], "steps": 3, "batch_size": 4, "grad_accum": 2,
                             "objectives": [{"name": "sft"},
                                            {"name": "answer_words", "table": table, "question_words": True}]}]
        path = write_recipe(root / f"{table}.yaml", recipe)
        mp.spawn(_worker, args=(1, free_port(), str(path), str(root / f"single-{table}")), nprocs=1)
        recipe["stages"][0]["grad_accum"] = 1
        out[table] = write_recipe(root / f"two-{table}.yaml", recipe)
    return root, out


@pytest.mark.parametrize("strategy,table", [("fsdp", "live"), ("fsdp", "initial")])
def test_answer_words_trains_alike_on_two_processes(words_single, strategy, table):
    """The answer_words loss reads the embedding table (the live one, or a copy gathered whole at the stage's
    start): two FSDP2 ranks log the single-process losses, answer_words' included. (DDP leaves the table
    whole; the tests above cover it.)"""
    root, recipes = words_single
    two_processes(root, recipes[table], strategy, root / f"{strategy}-{table}")
    keys = ("loss", "sft/loss", "answer_words/loss")
    rows = {name: [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
            for name in (f"single-{table}", f"{strategy}-{table}")}
    assert len(rows[f"{strategy}-{table}"]) == len(rows[f"single-{table}"]) == 3
    for got, ref in zip(rows[f"{strategy}-{table}"], rows[f"single-{table}"]):
        assert "answer_words/loss" in ref
        assert all(abs(got[k] - ref[k]) < 1e-5 for k in keys), (got, ref)
