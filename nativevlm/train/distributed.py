"""Data parallelism under `torchrun`: one process per device, DDP or FSDP2 (`fully_shard`) by config,
gloo on CPU and NCCL on GPU. Without torchrun's environment everything here is a no-op on one process.

Full (unsharded) state dicts go through `torch.distributed.checkpoint.state_dict`, which gives the same
FQN-keyed model and optimizer state for a plain module, DDP and FSDP2 alike, so checkpoints do not depend
on how the run was launched.

Teardown joins the backend's threads before the process exits. `destroy_process_group` only drops c10d's
own references to the group; the group object (and, for gloo, its worker and TCP loop threads) lives on
while anything else references it, and after an FSDP2 run two things did: `torch.distributed.nn.functional`,
imported lazily during the run, evaluates `group=group.WORLD` defaults at import time and so captured the
group in ten functions' defaults; and DTensor's caches (sharding propagation, redistribute plans, mesh
topology) keep DeviceMeshes, which hold their groups. The group was then destroyed, with its threads still
running, somewhere in interpreter and static destruction at exit, whose order is unspecified: about one
run in 18 aborted there ("terminate called without an active exception"). So `setup` imports that module
before the group exists (its defaults stay None), and `teardown` clears the DTensor caches and collects
garbage right after `destroy_process_group`, while the interpreter is whole; `gloo_threads` lets the tests
check that nothing of the group is left running.
"""
from __future__ import annotations

import gc
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> DistContext:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext(device=torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        importlib.import_module("torch.distributed.nn.functional")  # before the group exists: module docstring
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)


def teardown() -> None:
    """Destroy the process group and release what still references it, so its threads are joined now."""
    if not dist.is_initialized():
        return
    dist.destroy_process_group()
    _clear_dtensor_caches()
    gc.collect()


def _clear_dtensor_caches() -> None:
    """DTensor's global caches hold DeviceMeshes, and through them process groups (torch 2.13 names)."""
    try:
        from torch.distributed.tensor import _collective_utils, _redistribute, debug
        from torch.distributed.tensor._sharding_prop import ShardingPropagator
    except ImportError:  # a torch without DTensor: nothing cached
        return
    debug._clear_sharding_prop_cache()
    _redistribute._gen_transform_infos.cache_clear()
    _redistribute.clear_redistribute_planner_cache()
    ShardingPropagator._propagate_tensor_meta_cached.cache_clear()
    _collective_utils.MeshTopoInfo.build_from_mesh.cache_clear()


def gloo_threads() -> list[str]:
    """Names of this process's live gloo threads (Linux; empty elsewhere): none once `teardown` is done."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return [n for n in names if n.startswith(("pt_gloo", "gloo_"))]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
    return t


def wrap(model: nn.Module, strategy: str, ctx: DistContext) -> nn.Module:
    """The module the training step calls. DDP is rebuilt per stage (its buckets follow requires_grad);
    FSDP2 shards `model` in place once: each decoder layer, then the root."""
    if ctx.world == 1:
        return model
    if strategy == "fsdp":
        # Deferred here and below: torch builds without distributed support lack these modules, and only a
        # multi-process run needs them.
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if not isinstance(model, FSDPModule):
            lm = getattr(model, "language", model)
            for layer in lm.layers:
                fully_shard(layer)
            fully_shard(model)
            # Ranks use different experts (a text-only shard skips the visual ones): reduce zeros for
            # unused parameters so every rank issues the same collectives (FSDP's find_unused_parameters).
            model.set_reduce_scatter_unused_params(True)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Every trainable parameter gets a gradient each backward (see `step.train_step(touch_all=True)`),
    # so DDP needs no unused-parameter search although experts see no tokens in some micro-batches.
    return DistributedDataParallel(model, device_ids=ids)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state on CPU (a collective under FSDP: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


def full_model_state(model: nn.Module) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
