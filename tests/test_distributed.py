"""Data parallel equivalence: 2 gloo processes (DDP, FSDP2) follow the single-process loss curve at the
same global batch, because the loss is normalised by the all-reduced sum of weights."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from nativevlm.train.recipe import load_recipe
from trainkit import make_world, vlm_recipe, write_recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, recipe: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from nativevlm.train import distributed
    from nativevlm.train.trainer import train

    try:
        train(load_recipe(recipe), out, log=lambda *a, **k: None)
    finally:
        distributed.teardown()


def losses(out: Path) -> list[tuple[float, float | None]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r.get("val_loss")) for r in rows]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    world = make_world(root / "world")
    recipe = vlm_recipe(world, checkpoint_every=100)
    for stage in recipe["stages"]:
        # 1 sample per rank per micro-batch: some micro-batches are text only, so in stage 1 (vision side
        # trains) one rank's micro-batch reaches no trainable parameter while the other's does.
        stage.update(batch_size=4, grad_accum=2, steps=2)
    recipe["stages"][1]["grad_accum"] = 1
    path = write_recipe(root / "recipe.yaml", recipe)
    mp.spawn(_worker, args=(1, free_port(), str(path), str(root / "single")), nprocs=1)
    return root, path, losses(root / "single")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_loss_curve(single, strategy):
    root, recipe, reference = single
    cfg_path = root / f"{strategy}.yaml"
    cfg_path.write_text(recipe.read_text() + f"distributed: {strategy}\n")
    load_recipe(cfg_path)
    out = root / strategy
    mp.spawn(_worker, args=(2, free_port(), str(cfg_path), str(out)), nprocs=2)
    got = losses(out)
    assert len(got) == len(reference) == 4
    for (loss, val), (ref_loss, ref_val) in zip(got, reference):
        assert abs(loss - ref_loss) < 1e-5
        assert (val is None and ref_val is None) or abs(val - ref_val) < 1e-5
    assert (out / "final" / "model.safetensors").exists()
