"""The training loop: stages in order, each with its contract (what trains), data mix, schedule, eval
cadence and checkpoints; resumable exactly from the newest complete checkpoint."""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml
from tqdm import tqdm

from ..config import ConfigError, save_config, to_dict
from ..data.collate import Collator
from ..data.image import ImageProcessor
from ..model.vlm import NativeVLM
from . import checkpoint, distributed
from .data import StageData
from .export import build_model, load_tokenizer, save_model
from .freeze import apply_trainable, check_patterns, contract_table
from .lora import add_lora, merge_lora
from .metrics import MetricsLog, flop_params, throughput
from .objectives import StageContext, Weighted, build as build_objectives
from .optim import build_optimizer, set_lr
from .plots import plot_objectives
from .recipe import stage_steps
from .schedule import stage_lr
from .step import evaluate, keep_graph, module_groups, train_step


@dataclass
class TrainResult:
    out_dir: Path
    model: nn.Module  # the trained model (LoRA merged) on this rank
    global_step: int
    final: Optional[Path]  # the exported model; None when stopped early by max_steps


def train(cfg, out_dir, resume: bool = False, max_steps: Optional[int] = None, log=print,
          hooks: Sequence = ()) -> TrainResult:
    """Run recipe `cfg` (a validated TrainConfig) into `out_dir`. `resume` continues from the newest
    complete checkpoint there; `max_steps` stops after that many optimizer steps in total (checkpointed,
    so a later `resume` carries on). `hooks` measure the model while it trains (see `TrainHook`), at the
    points `cfg.curves` sets: before the first step, every `curves.every` steps and at each stage end."""
    ctx = distributed.setup(cfg.device)
    log = log if ctx.is_main else (lambda *a, **k: None)
    out_dir = Path(out_dir)
    ckpt = checkpoint.latest(out_dir / "checkpoints") if resume else None
    if not resume and any((out_dir / "checkpoints").glob(checkpoint.PREFIX + "*")):
        raise ConfigError(f"--out {out_dir} already holds checkpoints: pass --resume to continue, or pick a new --out")
    if resume and ckpt is None:
        log(f"--resume: no complete checkpoint in {out_dir / 'checkpoints'}; starting from the beginning")
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg.tokenizer, cfg.model.special_tokens)
    model = build_model(cfg, tokenizer).to(ctx.device)
    stage_objectives = [build_objectives(st.objectives, f"stages[{i}].objectives") for i, st in enumerate(cfg.stages)]
    owned = attach_objective_modules(model, stage_objectives, ctx.device)
    check_patterns(model, cfg.stages)
    vlm = isinstance(model, NativeVLM)
    mcfg = model.config if vlm else cfg.model
    collator = Collator(tokenizer, ImageProcessor.from_config(mcfg.vision, mcfg.connector), cfg.max_length,
                        pack=cfg.pack, square_average=cfg.square_average, question_weight=cfg.question_loss)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and ctx.device.type == "cuda")
    loaded = checkpoint.load(ckpt, ctx.rank) if ckpt is not None else None
    state = loaded[2] if loaded else {"stage": 0, "step": 0, "global_step": 0}
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is not None and (out_dir / "config.yaml").read_text() != yaml.safe_dump(to_dict(cfg), sort_keys=False):
            log(f"warning: the recipe differs from the one {out_dir} was started with (its config.yaml); "
                "resuming is exact only with the same recipe")
        save_config(cfg, out_dir / "config.yaml")
    metrics = MetricsLog(out_dir, ctx.is_main, state["global_step"] if ckpt else None)
    log(f"run dir: {out_dir}" + (f" (resuming from {ckpt.name})" if ckpt else "")
        + f"; resume an interrupted run with: nativevlm train RECIPE --out {out_dir} --resume")
    n_flop = flop_params(model)
    gs = state["global_step"]
    train_seconds = state.get("train_seconds", 0.0)  # optimizer steps only: the x axis of "accuracy per CPU minute"
    if cfg.curves.data and not hooks:
        log("warning: curves.data is set but no evaluation hook is attached (nativevlm train attaches one; "
            "from Python pass hooks=[nativevlm.eval.curves.LearningCurves(cfg)]): no learning curves")
    groups = module_groups(model) if cfg.diagnostics.grad_norms else None

    def measure(step_in_stage: int, si: int) -> dict:
        """What the hooks measure now (every rank runs them: FSDP needs all ranks in each forward), with
        the RNG untouched so an interrupted run resumes exactly."""
        row = {"samples": samples_seen(cfg.stages, si, step_in_stage), "train_seconds": round(train_seconds, 3)}
        with preserved_rng():
            for hook in hooks:
                row.update(hook.on_eval(model, tokenizer=tokenizer, step=gs, stage=cfg.stages[si].name,
                                        samples=row["samples"], out_dir=out_dir, is_main=ctx.is_main))
        model.train()
        return row

    if hooks and gs == 0:
        metrics.log({"step": 0, "stage": cfg.stages[0].name, "stage_step": 0, **measure(0, 0)})

    with keep_graph(model):
        for si in range(state["stage"], len(cfg.stages)):
            stage = cfg.stages[si]
            if stage.lora.rank:
                add_lora(model, stage.lora.modules, stage.lora.rank, stage.lora.alpha)
            apply_trainable(model, stage.trainable)
            objs = stage_objectives[si]
            for name, module in owned.items():  # an objective's own parameters train where it runs
                module.requires_grad_(any(o.objective.name == name for o in objs))
            log(contract_table(model, f"stage {si + 1}/{len(cfg.stages)} '{stage.name}'"))
            wrapped = distributed.wrap(model, cfg.distributed, ctx)
            optimizer = build_optimizer(model, stage)
            params = [p for p in model.parameters() if p.requires_grad]
            data = StageData(stage, collator, seed=f"{cfg.seed}:{si}", rank=ctx.rank, world=ctx.world, log=log)
            val = data.val_batches()
            for o in objs:
                o.objective.setup(StageContext(model=model, tokenizer=tokenizer, stage=stage, data=data,
                                               processor=collator.image_processor, device=ctx.device,
                                               module=owned.get(o.objective.name), log=log))
            total, step = stage_steps(stage), 0
            if loaded and si == state["stage"]:
                _restore(loaded, model, optimizer, data, objs)
                step, loaded = state["step"], None
            bar = tqdm(total=total, initial=step, desc=stage.name, disable=not (ctx.is_main and cfg.progress))
            shown = {f"{o.objective.name}/{m}": None for o in objs for m in o.objective.progress}
            while step < total and (max_steps is None or gs < max_steps):
                lr = stage_lr(stage, step, total)
                set_lr(optimizer, lr)
                t0 = time.perf_counter()
                res = train_step(wrapped, data.next_batches(), optimizer, params, stage.grad_clip, ctx.world,
                                 ctx.device, bf16, objs, touch_all=ctx.world > 1 and cfg.distributed == "ddp",
                                 groups=groups, step=gs, stage_step=step, rank=ctx.rank)
                step, gs = step + 1, gs + 1
                train_seconds += time.perf_counter() - t0
                row = {"step": gs, "stage": stage.name, "stage_step": step, "loss": res.pop("loss"), "lr": lr,
                       "train_seconds": round(train_seconds, 3),
                       **throughput(res.pop("tokens"), time.perf_counter() - t0, n_flop, cfg.peak_tflops), **res}
                if val and ((stage.eval_every and step % stage.eval_every == 0) or step == total):
                    row["val_loss"] = evaluate(wrapped, val, ctx.device, bf16)
                if hooks and ((cfg.curves.every and gs % cfg.curves.every == 0) or step == total):
                    row.update(measure(step, si))
                if gs % cfg.log_every == 0 or "val_loss" in row or "samples" in row or step == total:
                    metrics.log(row)
                bar.update(1)
                shown.update({k: row[k] for k in shown if k in row})  # a rollout's reward: shown until the next
                extra = {k.split("/", 1)[1]: f"{v:.3f}" for k, v in shown.items() if v is not None}
                bar.set_postfix({"loss": f"{row['loss']:.4f}", **extra, "tok_s": f"{row['tokens_per_s']:.0f}"})
                if gs % cfg.checkpoint_every == 0 or step == total or gs == max_steps:
                    trainer_state = {"stage": si, "step": step, "global_step": gs, "sampler": data.sampler.state_dict(),
                                     "train_seconds": train_seconds}
                    _save(out_dir, cfg, ctx, model, optimizer, trainer_state, [o.objective.state_dict() for o in objs],
                          {"streams": data.stream_state()})
            bar.close()
            if collator.dropped:
                log(f"samples dropped so far (longer than max_length {cfg.max_length}, or a corrupt image): "
                    f"{dict(collator.dropped)}")
            if step < total:
                log(f"stopped at step {gs} (--max-steps); continue with --resume")
                metrics.close()
                draw_objectives(out_dir, ctx.is_main, log)
                return TrainResult(out_dir, detach_objective_modules(model), gs, None)
            if stage.lora.rank:
                merge_lora(model)

        final_state = {k: v for k, v in distributed.full_model_state(model).items() if not k.startswith("objectives.")}
        if ctx.is_main:
            save_model(model, final_state, out_dir / "final", tokenizer)
        distributed.barrier()
        metrics.close()
        draw_objectives(out_dir, ctx.is_main, log)
        for hook in hooks:
            if ctx.is_main:
                hook.on_end(out_dir)
        log(f"final model: {out_dir / 'final'} (load with nativevlm.model.loading.load_pretrained)")
        return TrainResult(out_dir, detach_objective_modules(model), gs, out_dir / "final")


def draw_objectives(out_dir: Path, is_main: bool, log) -> None:
    """`objectives.png` from the run's metrics so far (at the end, and where --max-steps stops a run)."""
    if is_main and plot_objectives(out_dir / "metrics.jsonl", out_dir / "objectives.png"):
        log(f"the objectives' curves (reward, clip fraction, ...): {out_dir / 'objectives.png'}")


class TrainHook(Protocol):
    """Measures the model during training. `on_eval` returns scalars for the metrics row (every rank calls
    it; only `is_main` should write files); `on_end` runs once on the main rank after the export."""

    def on_eval(self, model: nn.Module, *, tokenizer, step: int, stage: str, samples: int, out_dir: Path,
                is_main: bool) -> dict: ...

    def on_end(self, out_dir: Path) -> None: ...


def samples_seen(stages, si: int, step: int) -> int:
    """Training samples seen after `step` optimizer steps of stage `si` (all earlier stages complete)."""
    return sum(stage_steps(s) * s.batch_size for s in stages[:si]) + step * stages[si].batch_size


@contextlib.contextmanager
def preserved_rng():
    """Python, NumPy and torch RNG states restored on exit."""
    state = checkpoint.rng_state()
    try:
        yield
    finally:
        checkpoint.set_rng_state(state)


def attach_objective_modules(model: nn.Module, stage_objectives: list[list[Weighted]], device) -> dict:
    """Register the parameters objectives own (`Objective.module`) on the model as `objectives.<name>`,
    one module per objective name for the whole run, before anything wraps or checkpoints the model: DDP
    and FSDP then average their gradients, the optimizer and checkpoints hold them like the model's own."""
    owned: dict[str, nn.Module] = {}
    for objs in stage_objectives:
        for o in objs:
            if o.objective.name not in owned:
                module = o.objective.module(model)
                if module is not None:
                    owned[o.objective.name] = module.to(device)
    if owned:
        model.objectives = nn.ModuleDict(owned)
    return owned


def detach_objective_modules(model: nn.Module) -> nn.Module:
    """The model as exported: without the objectives' own modules."""
    if isinstance(getattr(model, "objectives", None), nn.ModuleDict):
        del model.objectives
    return model


def _save(out_dir: Path, cfg, ctx, model: nn.Module, optimizer, trainer_state: dict, objective_state: list,
          rank_state: dict) -> None:
    model_state, optim_state = distributed.full_state(model, optimizer)
    checkpoint.save(out_dir / "checkpoints", trainer_state["global_step"], model_state, optim_state, trainer_state,
                    ctx.rank, cfg.keep_checkpoints, objective_state, rank_state)


def _restore(loaded: tuple, model: nn.Module, optimizer, data: StageData, objs: list[Weighted]) -> None:
    """Everything a checkpoint holds, restored after the stage is set up (LoRA added, optimizer built,
    objectives set up), RNG last, so the run continues exactly as the uninterrupted one did."""
    model_state, optim_state, trainer_state, rng, objective_state = loaded
    distributed.load_full_state(model, optimizer, model_state, optim_state)
    data.sampler.load_state_dict(trainer_state["sampler"])
    for o, state in zip(objs, objective_state):
        o.objective.load_state_dict(state)
    data.load_stream_state(rng.get("rank", {}).get("streams", []))
    checkpoint.set_rng_state(rng)
