"""Training objectives as plug-ins: what a stage optimises, by name.

A stage lists its objectives with a weight each and their own options (default `[{name: sft}]`):

    stages:
      - name: s1-vision
        objectives: [{name: sft}, {name: cells, weight: 1.0, target: words}]

The step (`train.step.train_step`) knows no objective: for each micro-batch it asks every objective of
the stage for an `Output`, backpropagates the sum of `weight * output.loss`, and logs each objective's
metrics as `<objective>/<metric>` (e.g. `sft/loss`, `cells/loss`) and the weighted sum of their `loss`
metrics as `loss`.
Built in: `sft` (next-token cross-entropy, normalised over the global batch), `answer_words` (each image's
tokens toward the LM's embeddings of the words its conversation answers: labels from any QA data),
`answer_classes` (the image encoder alone, a classifier over the data's short answers on its mean output: a
first stage that teaches the encoder to see before the language model reads it), `cells`
(the built-in world's per-image-token cell loss, refusing any other images), ViCO's two stages for the
visual resolution router, `vico_consistency` and `vico_router` (`objectives.vico`), and the post-training
objectives `mpo` (preference pairs against a frozen reference) and `gspo` (online RL on sampled, verified
replies); see docs/posttraining.md.

An objective is a class registered by name (`@register("name")`: the built-in ones are imported here; a
new one registers when its module is imported, before the recipe is loaded) with:

- `Options`: a dataclass of its recipe options (besides `name` and `weight`), type-checked like the rest
  of the recipe, and `choices` for options with a fixed set of values;
- `loss(model, mb, info) -> Output`: its share of the step's objective on one micro-batch and its metrics.
  `mb.forward()` is the model's forward over `mb.batch`, shared by all objectives of the step (its output
  also holds the image tokens). An objective may run forwards of its own through `model` (the policy on
  chosen and rejected answers, say), and `info` (`StepInfo`) gives the step counters, the ranks and the
  global target weight for normalising over the whole batch. Shares are summed over micro-batches and
  averaged over ranks, exactly as the gradients are;
- `metrics`: the names its `Output.metrics` may carry; `panels` (title, metrics) draws some of them into the
  run's `objectives.png` against optimizer steps and `progress` shows some in the progress bar;
- `setup(ctx)`: once at the start of each stage that runs it (`StageContext`: the bare model, tokenizer,
  stage, its data and the image processor), e.g. to check the data or freeze a reference copy;
- `module(model)`: parameters it owns (a head), registered on the model for the run as
  `objectives.<name>`: trained where the objective runs, averaged over ranks, checkpointed, not exported;
- `state_dict()` / `load_state_dict()`: state saved with every checkpoint (per rank) and restored on
  resume (a running mean, an RNG's state; a frozen reference copy made in `setup` too, since a run resumed
  mid-stage no longer has the weights the stage began with), so a resumed run continues exactly.

A new objective, e.g. a regulariser that keeps image tokens near a chosen RMS:

    from dataclasses import dataclass
    import torch
    from nativevlm.train.objectives import MicroBatch, Objective, Output, StepInfo, register

    @dataclass
    class TokenNormOptions:
        target: float = 1.0

    @register("token_norm")
    class TokenNorm(Objective):
        Options = TokenNormOptions
        metrics = ("loss", "rms")

        def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
            feats = mb.forward().image_features
            if not feats:  # a text-only micro-batch: nothing to regularise
                return Output(None)
            rms = torch.cat(list(feats)).float().pow(2).mean(-1).sqrt()
            penalty = (rms - self.options.target).pow(2).mean()
            return Output(penalty / info.micro_batches,
                          {"loss": (penalty.detach(), 1), "rms": (rms.detach().sum(), len(rms))})

after which a recipe may say `objectives: [{name: sft}, {name: token_norm, weight: 0.1, target: 2.0}]`
(`token_norm/rms` is then the mean over every image token of the step, on all ranks).
"""
from .base import (REGISTRY, MicroBatch, NoOptions, Objective, Output, StageContext, StepInfo, Weighted, build,
                   register)
# built-in objectives register themselves
from . import answer_classes, answer_words, cells, gspo, mpo, sft, vico  # noqa: F401

__all__ = ["REGISTRY", "MicroBatch", "NoOptions", "Objective", "Output", "StageContext", "StepInfo", "Weighted",
           "build", "register"]
