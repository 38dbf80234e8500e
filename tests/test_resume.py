"""Exact resume: a run killed with SIGKILL, at a random moment or in the middle of writing a checkpoint,
then resumed with --resume, ends with weights bit-identical to an uninterrupted run."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import faultkit
from trainkit import vlm_recipe, write_recipe


def start(recipe: Path, out: Path, *extra: str, pause_at: str | None = None) -> subprocess.Popen:
    """`nativevlm train`; `pause_at` = a checkpoint folder name: sleep 60 s right after its weights are written."""
    argv = ["train", str(recipe), "--out", str(out), *extra]
    cmd = (faultkit.command("checkpoint.weights", pause_at, "60", *argv) if pause_at
           else [sys.executable, "-m", "nativevlm", *argv])
    # One thread per process: faster on a shared 2-core machine, and the same in every run compared.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    return output


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill the run"
        time.sleep(0.01)


def weights(out: Path) -> dict:
    return load_file(out / "final" / "model.safetensors")


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, train_world):
    root = tmp_path_factory.mktemp("resume")
    recipe = write_recipe(root / "recipe.yaml", vlm_recipe(train_world, checkpoint_every=1, keep_checkpoints=2))
    finish(start(recipe, root / "reference"))
    return recipe, weights(root / "reference")


def metrics_rows(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_at_random_moment_then_resume_is_bit_identical(setup, tmp_path):
    recipe, reference = setup
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    after_rows, extra_sleep = rng.randint(1, 5), rng.uniform(0, 0.3)
    print(f"kill seed {seed}: after {after_rows} logged steps + {extra_sleep:.2f}s")
    out = tmp_path / "run"
    proc = start(recipe, out)
    wait_for(lambda: metrics_rows(out) >= after_rows, proc)
    time.sleep(extra_sleep)
    proc.kill()
    proc.wait()
    finish(start(recipe, out, "--resume"))
    assert_bit_identical(weights(out), reference)


def test_sigkill_while_writing_a_checkpoint_then_resume_is_bit_identical(setup, tmp_path):
    recipe, reference = setup
    out = tmp_path / "run"
    proc = start(recipe, out, pause_at="step-00000004")
    tmp = out / "checkpoints" / ".tmp-step-00000004"
    wait_for(lambda: (tmp / "model.safetensors").exists(), proc)
    proc.kill()
    proc.wait()
    assert tmp.is_dir() and not (out / "checkpoints" / "step-00000004").exists()
    output = finish(start(recipe, out, "--resume"))
    assert "resuming from step-00000003" in output
    assert_bit_identical(weights(out), reference)
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # the rows after the checkpoint were dropped and re-logged once


def test_max_steps_then_resume_is_bit_identical(setup, tmp_path):
    recipe, reference = setup
    out = tmp_path / "run"
    assert "continue with --resume" in finish(start(recipe, out, "--max-steps", "2"))
    assert not (out / "final").exists()
    finish(start(recipe, out, "--resume"))
    assert_bit_identical(weights(out), reference)


def test_objective_state_resumes_bit_identically(train_world, tmp_path):
    """An objective's own state is saved with each checkpoint: `answer_words` with `table: initial` keeps the
    embeddings of its stage's first step as its code book. A run stopped mid-stage and resumed must read the
    same book, not the embeddings it would copy if it set up afresh (an earlier stage trained them)."""
    recipe = vlm_recipe(train_world, checkpoint_every=1)
    recipe["stages"][0]["trainable"] = ["*"]
    stage = recipe["stages"][1]
    stage["objectives"] = [{"name": "sft"}, {"name": "answer_words", "weight": 3.0, "pool": "max",
                                             "table": "initial", "max_share": 1.0}]
    stage["steps"] = 4
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    finish(start(path, tmp_path / "reference"))
    out = tmp_path / "run"
    assert "continue with --resume" in finish(start(path, out, "--max-steps", "5"))
    finish(start(path, out, "--resume"))
    assert_bit_identical(weights(out), weights(tmp_path / "reference"))
