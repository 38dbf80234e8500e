"""The study file: what to prepare, which cells to train (each a recipe plus `--set` overrides, listed or as
a grid of axes), what to evaluate at the end of each cell, and what to fit.

```yaml
name: modality-experts
world: {preset: basic, train: 2000, val: 200, test: 300}    # generated into OUT/data/world
tokenizer: {vocab_size: 1024}                               # trained into OUT/data/tokenizer
set: [model.vision.num_layers=2]                            # every cell (not `prepare`), before its own
prepare:                                                    # trained first, in order; not rows of the CSV
  - {name: text-lm, recipe: recipes/text-lm.yaml, set: [stages.0.steps=200]}
cells:
  - {name: dense, recipe: recipes/native.yaml, set: [init.modality_experts=false]}
grid:                                                       # and/or: every combination of the axes' levels
  recipe: recipes/native.yaml
  axes: {encoder: {d2: [model.vision.num_layers=2], d4: [model.vision.num_layers=4]}}
eval: {bench: ["world:data/world"], visual_reliance: true}
extract_think: {pairs: [[d2, reasoner]], prompt: "Describe the image."}  # Prism: describe, then answer from text
fit: {compare: [[experts, dense]], encoder_lambda: 0.01}
slurm: {slurm_partition: gpu, gpus_per_node: 1, timeout_min: 240}  # submitit's parameters, --launcher submitit
```
Paths inside recipes and overrides that start with `data/` or `runs/` point into the study's output folder
(as the quickstart does), so `runs/text-lm/final` is the `text-lm` cell prepared above. Recipe paths are
relative to the working directory, like every other command's.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..config import ConfigError, from_dict, read_yaml
from ..data.world.captions import CAPTION_PROMPT


@dataclass
class WorldSpec:
    preset: str = "basic"
    train: int = 2000
    val: int = 200
    test: int = 300
    seed: int = 0


@dataclass
class TokenizerSpec:
    vocab_size: int = 1024


@dataclass
class CellSpec:
    name: str = ""
    recipe: str = ""
    set: list[str] = field(default_factory=list)
    levels: dict[str, str] = field(default_factory=dict)  # grid cells: axis -> level (CSV columns)


@dataclass
class GridSpec:
    recipe: str = ""
    set: list[str] = field(default_factory=list)
    axes: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # axis -> level -> overrides


@dataclass
class EvalSpec:
    bench: list[str] = field(default_factory=list)  # `nativevlm eval` SPECs, run on each cell's final model
    visual_reliance: bool = False
    max_new_tokens: int = 16
    batch_size: int = 32
    limit: int = 0  # questions per benchmark; 0 = all


@dataclass
class ExtractThinkSpec:
    """Prism's decoupled evaluation: each pair [perceiver, reasoner] of cell names (a vision-language cell
    and a language-model cell, usually a `prepare` one) answers the study's benchmarks in two stages
    (`infer.pipelines.ExtractThink`); one CSV row per pair, named `PERCEIVER+REASONER`."""

    pairs: list[list[str]] = field(default_factory=list)
    prompt: str = CAPTION_PROMPT  # what the perceiver is asked; {question} makes it question-guided
    max_new_tokens: int = 128  # of a description
    # a captions file (LLaVA, e.g. data/world/test_captions.json): the perceiver named `truth` looks each image's
    # description up there -- perfect perception, the reference that splits a pair's errors between its sides
    descriptions: str = ""


TRUTH = "truth"


@dataclass
class FitSpec:
    compare: list[list[str]] = field(default_factory=list)  # [arm, baseline] pairs for the sample ratio
    encoder_lambda: float = 0.01


@dataclass
class StudySpec:
    name: str = ""
    description: str = ""
    world: Optional[WorldSpec] = None
    tokenizer: Optional[TokenizerSpec] = None
    set: list[str] = field(default_factory=list)
    prepare: list[CellSpec] = field(default_factory=list)
    cells: list[CellSpec] = field(default_factory=list)
    grid: Optional[GridSpec] = None
    eval: EvalSpec = field(default_factory=EvalSpec)
    fit: FitSpec = field(default_factory=FitSpec)
    extract_think: ExtractThinkSpec = field(default_factory=ExtractThinkSpec)
    slurm: dict[str, object] = field(default_factory=dict)  # submitit executor parameters (partition, gpus, ...)

    def all_cells(self) -> list[CellSpec]:
        """The listed cells, then the grid's, in a fixed order."""
        cells = list(self.cells)
        if self.grid is not None:
            axes = list(self.grid.axes.items())
            for combo in itertools.product(*[list(levels.items()) for _, levels in axes]):
                name = "_".join(level for level, _ in combo)
                overrides = list(self.grid.set) + [o for _, sets in combo for o in sets]
                levels = {axis: level for (axis, _), (level, _) in zip(axes, combo)}
                cells.append(CellSpec(name, self.grid.recipe, overrides, levels))
        return cells


def load_study(path) -> StudySpec:
    data = read_yaml(path, "study file")
    try:
        spec = from_dict(StudySpec, data)
        validate(spec)
    except ConfigError as e:
        raise ConfigError(f"study file {path}: {e}") from None
    return spec


def load_fit_spec(path) -> FitSpec:
    """Only the `fit:` section of a study file (what `study fit` needs, wherever it is run from)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return from_dict(FitSpec, data.get("fit") or {}, "fit")
    except (yaml.YAMLError, ConfigError) as e:
        raise ConfigError(f"study file {path}: {e}") from None


def validate(spec: StudySpec) -> None:
    cells = spec.all_cells()
    if not cells:
        raise ConfigError("a study needs cells (a `cells` list or a `grid`)")
    names = [c.name for c in spec.prepare + cells]
    for i, cell in enumerate(spec.prepare + cells):
        if not cell.name or any(ch in cell.name for ch in "/ ,"):
            raise ConfigError(f"cell {i}: name {cell.name!r} must be non-empty, without '/', ',' or spaces")
        if names.count(cell.name) > 1:
            raise ConfigError(f"cell name {cell.name!r} is used twice")
        if not cell.recipe:
            raise ConfigError(f"cell {cell.name}: no recipe")
        if not Path(cell.recipe).is_file():
            raise ConfigError(f"cell {cell.name}: recipe {cell.recipe} does not exist (paths are relative to the "
                              "working directory)")
    for pair in spec.extract_think.pairs:
        if pair and pair[0] == TRUTH and not spec.extract_think.descriptions:
            raise ConfigError(f"extract_think.pairs: {pair}: the perceiver `{TRUTH}` reads "
                              "extract_think.descriptions (a captions file); set it")
        if len(pair) != 2 or any(p not in names + [TRUTH] for p in pair):
            raise ConfigError(f"extract_think.pairs: {pair} must be two cell names of this study "
                              "(a perceiver, a reasoner)")
    if spec.extract_think.pairs and not spec.eval.bench:
        raise ConfigError("extract_think: the pairs are scored on eval.bench; name at least one benchmark")
    for pair in spec.fit.compare:
        if len(pair) != 2 or any(p not in names for p in pair):
            raise ConfigError(f"fit.compare: {pair} must be two cell names of this study")
