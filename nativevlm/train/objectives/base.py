"""The objective interface and its registry (see the package docstring for how to write one)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
import torch.nn as nn

from ...config import ConfigError, from_dict
from ...model.batch import Batch
from ...model.language import ModelOutput


@dataclass
class NoOptions:
    """An objective without options of its own."""


@dataclass
class StepInfo:
    """What an objective knows of the step a micro-batch belongs to. `target_weight` is the loss weight of
    every target token of the step, summed over all micro-batches on all ranks (all-reduced before the
    first forward), for losses normalised over the global batch."""

    step: int  # optimizer steps done before this one, over the whole run
    stage_step: int  # the same within the stage
    micro_batches: int  # this rank's micro-batches in the step
    world: int  # data-parallel ranks
    rank: int
    target_weight: torch.Tensor


class MicroBatch:
    """One micro-batch as the objectives see it: the typed `batch` (on the step's device), its position
    `index` in this rank's step, and `forward()`, the model's forward over it, run once however many
    objectives read it (its output also holds the image tokens the forward spliced in)."""

    def __init__(self, model: nn.Module, batch: Batch, index: int):
        self.model, self.batch, self.index = model, batch, index
        self._out: Optional[ModelOutput] = None

    def forward(self) -> ModelOutput:
        if self._out is None:
            self._out = self.model(**self.batch.model_inputs())
        return self._out


@dataclass
class Output:
    """One objective on one micro-batch. `loss` is its share of the step's objective: the step
    backpropagates the weighted sum over objectives for each micro-batch, so the gradient is the sum of
    shares over micro-batches, averaged over ranks (as DDP and FSDP average gradients); None when this
    micro-batch holds nothing for it. `metrics` maps a name (one of the objective's `metrics`) to
    (total, count): the log shows total / count summed over the step's micro-batches on all ranks. Its
    `loss` is the objective's value as a plain mean (`sft`: the cross-entropy per target token), which the
    log's `loss` column sums over the stage's objectives with their weights."""

    loss: Optional[torch.Tensor]
    metrics: dict[str, tuple[Any, Any]] = field(default_factory=dict)


@dataclass
class StageContext:
    """What `Objective.setup` gets at the start of a stage. `model` is the bare model (not the
    data-parallel wrapper; call it only through `MicroBatch.forward` or the `model` passed to `loss`),
    `module` the objective's own parameters if it has any (see `Objective.module`), `data` the stage's
    `StageData` (its files and samples), `processor` the image processor training uses, `log` where a
    summary line goes (the training log; a no-op on all ranks but the first)."""

    model: nn.Module
    tokenizer: Any
    stage: Any
    data: Any
    processor: Any
    device: torch.device
    module: Optional[nn.Module] = None
    log: Callable[[str], None] = print


class Objective:
    """A training objective; see the package docstring. Subclasses set `name` (by `@register`), may set
    `Options` (a dataclass of their recipe options), `choices` (option -> its allowed values) and
    `metrics` (the names `loss` may report) and `panels` (what the run's `objectives.png` draws of them), and
    implement `loss`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    choices: ClassVar[dict[str, tuple]] = {}
    metrics: ClassVar[tuple[str, ...]] = ("loss",)
    # (panel title, metrics drawn in it) for the plot of a run's objectives against optimizer steps
    # (`train.plots.plot_objectives`, `<run>/objectives.png`); none: this objective is not drawn there
    panels: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = ()
    progress: ClassVar[tuple[str, ...]] = ()  # metrics shown beside the loss in the training progress bar

    def __init__(self, options=None):
        self.options = options if options is not None else self.Options()

    def module(self, model: nn.Module) -> Optional[nn.Module]:
        """Parameters this objective owns (a head over the model's outputs), or None. Asked once per run,
        before training starts, for every stage's objectives; the first module an objective name gets is
        registered on the model as `objectives.<name>` for the run, so it trains in each stage that runs
        the objective, is averaged over ranks and checkpointed with the model, and is left out of the
        exported model."""
        return None

    def setup(self, ctx: StageContext) -> None:
        """Once at the start of each stage that runs the objective (on resume, before `load_state_dict`)."""

    def loss(self, model: nn.Module, mb: MicroBatch, info: StepInfo) -> Output:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """State that must survive a checkpoint for an exact resume (tensors, numbers, strings, lists,
        dicts): a running mean, an RNG's state. Saved at every checkpoint of the stage."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


REGISTRY: dict[str, type[Objective]] = {}


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: make an objective available to recipes under `name`."""
    def add(cls: type[Objective]) -> type[Objective]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"objective {name!r} is already registered by {REGISTRY[name].__qualname__}")
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return add


@dataclass
class Weighted:
    """An objective of a stage and the weight its loss enters the stage's objective with."""

    objective: Objective
    weight: float


def build(specs: list[dict], where: str) -> list[Weighted]:
    """A stage's `objectives` entries -> objectives with their weights and typed options; ConfigError
    naming the entry for an unknown name, a bad weight, an unknown or mistyped option, or a repeat."""
    out, seen = [], set()
    if not specs:
        raise ConfigError(f"{where}: a stage needs at least one objective, e.g. [{{name: sft}}]")
    for j, spec in enumerate(specs):
        at = f"{where}[{j}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(f"{at}: expected a mapping with a name, e.g. {{name: sft}}, got {spec!r}")
        options = dict(spec)
        name, weight = options.pop("name"), options.pop("weight", 1.0)
        if name not in REGISTRY:
            raise ConfigError(f"{at}.name: unknown objective {name!r}; known: {', '.join(sorted(REGISTRY))}")
        if name in seen:
            raise ConfigError(f"{at}.name: objective {name!r} appears twice in this stage; give it one weight")
        seen.add(name)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise ConfigError(f"{at}.weight: expected a positive number, got {weight!r}")
        cls = REGISTRY[name]
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        if set(options) - fields:
            bad = sorted(set(options) - fields)[0]
            raise ConfigError(f"{at}.{bad}: objective {name} has no option {bad!r}; its options: "
                              f"{', '.join(['name', 'weight', *sorted(fields)])}")
        parsed = from_dict(cls.Options, options, at)
        for option, allowed in cls.choices.items():
            if getattr(parsed, option) not in allowed:
                raise ConfigError(f"{at}.{option}: {getattr(parsed, option)!r} is not one of {', '.join(allowed)}")
        try:  # an objective checks the values of its options together when it is made
            objective = cls(parsed)
        except ConfigError as e:
            raise ConfigError(f"{at}: {e}") from None
        out.append(Weighted(objective, float(weight)))
    return out
