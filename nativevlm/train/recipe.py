"""Load a recipe YAML and check everything that can be checked before a model is built: keys and types
(by `from_dict`), choices, step counts, and that every file it names exists. Paths are relative to the
working directory, like the paths given to any other command. Checks that need the model's parameter names
(trainable and LoRA patterns) live in `freeze.check_patterns`."""
from __future__ import annotations

import importlib.util
from pathlib import Path


from ..config import ConfigError, apply_overrides, from_dict, read_yaml
from ..data.shards import is_sharded
from . import objectives
from .config import TrainConfig

CHOICES = {
    "kind": ("lm", "vlm"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16"),
    "distributed": ("ddp", "fsdp"),
}
SCHEDULES = ("constant", "cosine")
DATA_SUFFIXES = (".json", ".jsonl", ".txt", ".tar", ".parquet")


def load_recipe(path, overrides: list[str] = ()) -> TrainConfig:
    """Parse, override (`stages.0.lr=1e-4`), then validate; raises ConfigError naming the field."""
    return recipe_from_dict(read_yaml(path, "recipe"), overrides)


def relocate_paths(node, root: Path):
    """A recipe (or overrides, or a study's benchmark SPECs) with its `data/...` and `runs/...` paths moved
    under `root`: plain values, `key=data/...` overrides and `kind:data/...` specs alike. The quickstart and
    the study runner run shipped recipes inside their own output folder this way."""
    if isinstance(node, dict):
        return {k: relocate_paths(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [relocate_paths(v, root) for v in node]
    if isinstance(node, str):
        key, eq, value = node.rpartition("=")
        kind, colon, path = value.rpartition(":")  # a benchmark SPEC: world:data/world
        if path.startswith(("data/", "runs/")):
            return f"{key}{eq}{kind}{colon}{Path(root) / path}"
    return node


def recipe_from_dict(data: dict, overrides: list[str] = ()) -> TrainConfig:
    """A recipe from its parsed YAML (e.g. a shipped recipe whose paths a program rewrote), overridden and
    validated like `load_recipe`."""
    _refuse_cell_loss_keys(data)
    cfg = apply_overrides(from_dict(TrainConfig, data), list(overrides))
    validate(cfg)
    return cfg


def resolve_path(path: str) -> Path:
    """`package:NAME/FILE` -> that file inside installed package NAME (pretrained weights shipped as
    packages); anything else is a plain path."""
    if not path.startswith("package:"):
        return Path(path)
    package, _, rel = path[len("package:"):].partition("/")
    spec = importlib.util.find_spec(package)  # locates without importing: weight packages may import a runtime
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{path}: package {package} is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def validate(cfg: TrainConfig) -> None:
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name}: {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    if not cfg.tokenizer:
        raise ConfigError("tokenizer: a recipe needs a tokenizer path (see `nativevlm tokenizer train`)")
    if not resolve_path(cfg.tokenizer).exists():
        raise ConfigError(f"tokenizer: {cfg.tokenizer} does not exist")
    if cfg.init.path and not resolve_path(cfg.init.path).exists():
        raise ConfigError(f"init.path: {cfg.init.path} does not exist")
    if cfg.max_length < 2:
        raise ConfigError(f"max_length: must be at least 2, got {cfg.max_length}")
    if not cfg.question_loss >= 0:
        raise ConfigError(f"question_loss: the weight of a question token's loss must be >= 0 (0 = answers "
                          f"only), got {cfg.question_loss}")
    if not cfg.stages:
        raise ConfigError("stages: a recipe needs at least one stage")
    if cfg.curves.data and not Path(cfg.curves.data).is_file():
        raise ConfigError(f"curves.data: QA file {cfg.curves.data} does not exist")
    if cfg.curves.every < 0 or cfg.curves.samples <= 0:
        raise ConfigError(f"curves: every must be >= 0 and samples > 0, got every={cfg.curves.every}, "
                          f"samples={cfg.curves.samples}")
    if cfg.kind == "lm" and cfg.curves.data:
        raise ConfigError("curves.data: learning curves evaluate image questions; kind lm has no images")
    for i, stage in enumerate(cfg.stages):
        _validate_stage(stage, f"stages[{i}]")
        if stage.lora.rank and cfg.distributed == "fsdp":
            raise ConfigError(f"stages[{i}].lora: LoRA parametrizations don't compose with fsdp; use "
                              "distributed: ddp")


def _validate_stage(stage, where: str) -> None:
    if not stage.data:
        raise ConfigError(f"{where}.data: a stage needs at least one data source")
    for j, src in enumerate(stage.data):
        field_name = f"{where}.data[{j}].path"
        if Path(src.path).is_dir() and not is_sharded(src.path):
            raise ConfigError(f"{field_name}: folder {src.path} holds no shards (see `nativevlm data shard`)")
        if not Path(src.path).is_dir() and Path(src.path).suffix not in DATA_SUFFIXES:
            raise ConfigError(f"{field_name}: {src.path!r} must end in one of {', '.join(DATA_SUFFIXES)}, "
                              "or be a shard folder")
        if not Path(src.path).exists():
            raise ConfigError(f"{field_name}: data file {src.path} does not exist")
        if src.shuffle_buffer < 1:
            raise ConfigError(f"{where}.data[{j}].shuffle_buffer: must be at least 1, got {src.shuffle_buffer}")
        if src.weight <= 0:
            raise ConfigError(f"{where}.data[{j}].weight: must be positive, got {src.weight}")
        if not 0 <= src.thinking <= 1:
            raise ConfigError(f"{where}.data[{j}].thinking: the share of samples with a rationale that think, in "
                              f"[0, 1]; got {src.thinking}")
    if stage.val_data and not Path(stage.val_data).exists():
        raise ConfigError(f"{where}.val_data: data file {stage.val_data} does not exist")
    if stage.schedule not in SCHEDULES:
        raise ConfigError(f"{where}.schedule: {stage.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if stage.steps <= 0 and stage.samples <= 0:
        raise ConfigError(f"{where}.steps: set steps or samples to a positive number")
    if stage.grad_accum <= 0 or stage.batch_size <= 0 or stage.batch_size % stage.grad_accum:
        raise ConfigError(f"{where}.batch_size: {stage.batch_size} must be a positive multiple of "
                          f"grad_accum ({stage.grad_accum})")
    if len(stage.betas) != 2:
        raise ConfigError(f"{where}.betas: expected two numbers, got {stage.betas}")
    if stage.lora.rank < 0 or (stage.lora.rank > 0 and not stage.lora.modules):
        raise ConfigError(f"{where}.lora.modules: LoRA with rank {stage.lora.rank} needs module patterns")
    objectives.build(stage.objectives, f"{where}.objectives")


def _refuse_cell_loss_keys(data: dict) -> None:
    """Recipes written before the cell loss became an objective: say what to write instead."""
    model = data.get("model")
    connector = model.get("connector") if isinstance(model, dict) else None
    if isinstance(connector, dict) and "cell_classes" in connector:
        raise ConfigError("model.connector.cell_classes: the cell head now belongs to the cells objective; remove "
                          "this key and give the stages `objectives: [{name: sft}, {name: cells, target: head}]`")
    for i, stage in enumerate(data.get("stages") or []):
        if isinstance(stage, dict) and ("cell_loss" in stage or "cell_target" in stage):
            key = "cell_loss" if "cell_loss" in stage else "cell_target"
            weight, target = stage.get("cell_loss", 1.0), stage.get("cell_target", "head")
            instead = (f"objectives: [{{name: sft}}, {{name: cells, weight: {weight}, target: {target}}}]"
                       if weight else "nothing (the default objectives: [{name: sft}])")
            raise ConfigError(f"stages[{i}].{key}: the cell loss is now an objective; write {instead} instead of "
                              "cell_loss and cell_target")


def stage_steps(stage) -> int:
    """Optimizer steps of a stage: `steps`, or enough global batches to cover `samples`."""
    if stage.samples > 0:
        return -(-stage.samples // stage.batch_size)
    return stage.steps
