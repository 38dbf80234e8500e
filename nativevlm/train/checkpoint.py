"""Full-state checkpoints that a kill at any moment cannot corrupt.

A checkpoint is a folder `checkpoints/step-00000042/` holding `model.safetensors` (weights),
`optimizer.pt` (the AdamW state dict, loaded back with `weights_only=True`), `trainer.json` (stage, step,
sampler position, Python and NumPy RNG state), one `rng-<rank>.json` per process (its RNG states, and
under `rank` what only that process knows: its position in each streamed data source) and one
`objectives-<rank>.pt` per process (the stage's objectives' own state, `Objective.state_dict`).
It is written into `.tmp-step-...` in the same folder, then `COMPLETE` (a manifest of every file's size and
SHA-256) is written last and the folder committed with `utils.atomic.commit_dir` (fsync, rename into place).
Resume takes the newest folder whose manifest verifies, so a half-written checkpoint is never loaded.
`atomic.fault_point("checkpoint.weights", tmp)` marks the moment after the weights are written, where the
resume tests kill a run.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..utils import atomic
from . import distributed

MARKER = "COMPLETE"
PREFIX = "step-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict:
    state = {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state()),
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


def save(root: Path, global_step: int, model_state: dict, optim_state: dict, trainer_state: dict,
         rank: int, keep: int, objective_state: Optional[list] = None, rank_state: Optional[dict] = None) -> Path:
    """Collective: every rank calls it (each writes its RNG file, with its `rank_state`, and its objectives
    file); rank 0 writes the rest and commits."""
    final = root / f"{PREFIX}{global_step:08d}"
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a run killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    distributed.barrier()
    (tmp / f"rng-{rank}.json").write_text(json.dumps({**rng_state(), "rank": rank_state or {}}))
    torch.save(objective_state or [], tmp / f"objectives-{rank}.pt")
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        atomic.fault_point("checkpoint.weights", tmp)
        torch.save(optim_state, tmp / "optimizer.pt")
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
    distributed.barrier()
    if rank == 0:
        manifest = {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(tmp.iterdir())}
        (tmp / MARKER).write_text(json.dumps(manifest, indent=1))
        atomic.commit_dir(tmp, final)
        _prune(root, keep)
    distributed.barrier()
    return final


def is_complete(path: Path) -> bool:
    marker = path / MARKER
    try:
        manifest = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all((path / name).is_file() and (path / name).stat().st_size == meta["bytes"]
               and _sha256(path / name) == meta["sha256"] for name, meta in manifest.items())


def latest(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under `root`, or None."""
    if not root.is_dir():
        return None
    candidates = sorted((p for p in root.iterdir() if p.name.startswith(PREFIX)), reverse=True)
    return next((p for p in candidates if is_complete(p)), None)


def load(path: Path, rank: int) -> tuple[dict, dict, dict, dict, list]:
    """(model state, optimizer state, trainer state, this rank's RNG state with its `rank` state, this rank's
    objectives' states; empty in a checkpoint written before objectives had state)."""
    model_state = load_file(str(path / "model.safetensors"))
    optim_state = torch.load(path / "optimizer.pt", weights_only=True)
    trainer_state = json.loads((path / "trainer.json").read_text())
    rng = json.loads((path / f"rng-{rank}.json").read_text())
    objectives = path / f"objectives-{rank}.pt"
    objective_state = torch.load(objectives, weights_only=True) if objectives.exists() else []
    return model_state, optim_state, trainer_state, rng, objective_state


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.iterdir() if p.name.startswith(PREFIX))
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
