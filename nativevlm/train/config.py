"""The training recipe as typed dataclasses: a model (built fresh or initialised from a checkpoint / pretrained
LM) and a list of stages, each declaring its data mix, what trains, and how.

These round-trip through `nativevlm.config.from_dict` / `to_dict`, so a recipe YAML with an unknown key or a
wrong type fails naming the field, and the resolved recipe saved in a run directory loads back unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import ModelConfig


@dataclass
class DataSource:
    """One file of a stage's data mix: LLaVA `.json`, chat `.jsonl`, `.txt` (one text document per line),
    or a sharded source streamed rank by rank (a folder of tar shards from `nativevlm data shard`, a `.tar`,
    a `.parquet` file or folder). `weight` is the relative probability of drawing the next sample from this
    file; `shuffle_buffer` is how many records a sharded source shuffles within (its memory bound).
    `thinking` is think-fusion SFT's ratio: the share of the file's samples with a rationale that train as
    thinking samples (`<think>` steps, then the answer; `data.thinking.think_fusion`), 0 = all direct."""

    path: str = ""
    weight: float = 1.0
    shuffle_buffer: int = 1024
    thinking: float = 0.0


@dataclass
class LoraConfig:
    """Low-rank adapters on the `nn.Linear` modules whose names match `modules`; rank 0 = no LoRA. The
    adapted base weights stay frozen and the adapters are merged into them when the stage ends."""

    rank: int = 0
    alpha: float = 16.0
    modules: list[str] = field(default_factory=list)


@dataclass
class StageConfig:
    """One training stage. `trainable` are fnmatch patterns over parameter names (`vision.*`,
    `language.layers.*.visual_*`); every other parameter is frozen. The stage runs `steps` optimizer
    steps, or, when `samples` > 0, as many steps as it takes to see that many samples."""

    name: str = "stage"
    data: list[DataSource] = field(default_factory=list)
    val_data: str = ""
    trainable: list[str] = field(default_factory=lambda: ["*"])
    steps: int = 100
    samples: int = 0
    batch_size: int = 8  # global: summed over gradient-accumulation micro-batches and ranks
    grad_accum: int = 1
    lr: float = 1e-3
    schedule: str = "constant"  # constant | cosine (both after a linear warm-up)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # fnmatch pattern -> LR factor
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 0  # steps; 0 = only at the end of the stage (when val_data is set)
    eval_samples: int = 64
    # What the stage optimises: objectives by name, each with a weight and its own options
    # (nativevlm.train.objectives), e.g. [{name: sft}, {name: cells, weight: 1.0, target: words}].
    objectives: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "sft"}])
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class InitConfig:
    """Where the weights start. `path` empty: random init from `model`. A folder written by a previous run's
    export (`run/final`) continues that model; a Hugging Face folder or `.gguf` file loads a pretrained LM
    (`package:NAME/FILE` resolves a file shipped inside an installed Python package). With `vision: true`
    a language model is grown into a NativeVLM (the encoder and connector from `model`), with
    `modality_experts` starting as copies of the text weights."""

    path: str = ""
    vision: bool = False
    modality_experts: bool = True
    per_modality_norms: bool = False


@dataclass
class CurvesConfig:
    """Learning curves: greedy generation accuracy per task family (and per kind) on a fixed held-out subset
    of a QA file whose records carry `meta.family` / `meta.kind` / `meta.answer` (the world's `<split>.json`,
    or any LLaVA QA set, scored per `meta.family` when present). Evaluated before the first step, every
    `every` optimizer steps (counted over the whole run) and at the end of each stage; written to
    metrics.jsonl / TensorBoard (`acc/<family>`, `acc/<kind>`, `samples`), per-question records to
    `curves/`, and `curves.png` (accuracy against samples seen, each family's answer prior as a line).
    Evaluating needs inference, which training does not import: `nativevlm train`, the quickstart and the
    study runner attach the hook that does it (`nativevlm.eval.curves.LearningCurves`)."""

    data: str = ""
    every: int = 0  # optimizer steps; 0 = only before training and at each stage end (when data is set)
    samples: int = 240  # the subset: this many questions, taken round-robin over families
    max_new_tokens: int = 8
    batch_size: int = 64


@dataclass
class DiagnosticsConfig:
    """Switchable measurements for studying what a model learns (they cost time, so off by default).
    `grad_norms`: gradient norm per module group (vision, connector, text LM, visual experts, embeddings)
    on every logged step. `attention` (with `curves`): attention from the answer position over the image
    tokens (entropy, mass on the asked-about object's token). `sensitivity` (with `curves`, world data):
    how far an image token moves when its object is recoloured, reshaped or removed."""

    grad_norms: bool = False
    attention: bool = False
    sensitivity: bool = False


@dataclass
class TrainConfig:
    """A whole recipe. `kind: lm` trains a LanguageModel on text (exported in the same folder format with
    `model_type: language`); `kind: vlm` trains a NativeVLM."""

    kind: str = "vlm"
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    tokenizer: str = ""
    max_length: int = 512
    pack: bool = False
    square_average: bool = False  # each sample's tokens weigh 1/sqrt(its answer tokens) (data.collate)
    # next-token loss on the user's words after an image (the question), per token, where an answer token
    # weighs 1; 0 = answers only (data.collate)
    question_loss: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    distributed: str = "ddp"  # ddp | fsdp; used when launched with torchrun
    checkpoint_every: int = 100  # optimizer steps; checkpoints are also written at each stage end
    keep_checkpoints: int = 2
    log_every: int = 1
    peak_tflops: float = 0.0  # the device's peak, for the MFU estimate; 0 = report achieved TFLOP/s only
    progress: bool = True
    curves: CurvesConfig = field(default_factory=CurvesConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    stages: list[StageConfig] = field(default_factory=list)
