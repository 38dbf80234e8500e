"""Data parallelism under `torchrun`: one process per device, DDP or FSDP2 (`fully_shard`) by config,
gloo on CPU and NCCL on GPU. Without torchrun's environment everything here is a no-op on one process.

Full (unsharded) state dicts go through `torch.distributed.checkpoint.state_dict`, which gives the same
FQN-keyed model and optimizer state for a plain module, DDP and FSDP2 alike, so checkpoints do not depend
on how the run was launched.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

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
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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
