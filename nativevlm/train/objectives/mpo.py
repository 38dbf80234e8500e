"""MPO (InternVL3.5's offline preference stage): L = w_dpo DPO(sigmoid) + w_bco BCO-pair + w_sft SFT(chosen)
against a frozen reference policy (`rl.losses` holds the formulas and the defaults 0.8 / 0.2 / 1.0, beta 0.1).

The stage's data are preference files from `nativevlm data preferences` (one record per question: the prompt,
a right reply `chosen` and a wrong one `rejected`). The trainer draws and batches the prompts as for any stage
(so the sample order, the sampler and resume are the trainer's); this objective finds each micro-batch's
pairs by `Batch.sample_ids` and runs the policy once over [chosen; rejected] and the reference once, without
gradients. The stage lists only `mpo`: the SFT term on the chosen answer is part of it (`sft` would find no
target in a prompt-only batch).

The reference is a copy of the model as the stage starts, never trained; BCO-pair's delta is the running mean
of the implicit reward over every micro-batch so far, merged across ranks. Both are the objective's state, so
a stage resumed mid-way scores against the same reference and the same delta.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import ConfigError
from ...data.collate import Collator
from ...model.batch import Batch
from ...rl.losses import MPOWeights, RunningRewardMean, SequenceLogProbs, mpo_loss
from ...rl.policy import answer_logprobs, frozen_copy, samples_by_id
from ...rl.preferences import read_pairs
from ..distributed import all_reduce_sum
from .base import MicroBatch, Objective, Output, StageContext, StepInfo, register


@dataclass
class MPOOptions:
    beta: float = 0.1
    dpo: float = 0.8  # weight of DPO (sigmoid)
    bco_pair: float = 0.2  # weight of BCO-pair
    sft: float = 1.0  # weight of the cross-entropy on the chosen answer


def is_pair_file(path: str) -> bool:
    """Whether `path` is a preference file: JSONL whose first record has `chosen` and `rejected`."""
    p = Path(path)
    if p.suffix != ".jsonl" or not p.is_file():
        return False
    with p.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "chosen" in record and "rejected" in record


def all_reduce_in_place(t: torch.Tensor) -> None:
    t.copy_(all_reduce_sum(t))


@register("mpo")
class MPO(Objective):
    Options = MPOOptions
    metrics = ("loss", "dpo", "bco_pair", "sft", "delta", "reward_chosen", "reward_rejected", "reward_accuracy",
               "reward_margin")
    panels = (("MPO: the loss's terms", ("dpo", "bco_pair", "sft")),
              ("MPO: implicit reward beta * log(pi / pi_ref)", ("reward_accuracy", "reward_margin", "delta")))
    progress = ("reward_accuracy",)

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        if o.beta <= 0 or min(o.dpo, o.bco_pair, o.sft) < 0:
            raise ConfigError(f"objective mpo: beta must be > 0 and the weights >= 0, got {o}")
        self.weights = MPOWeights(dpo=o.dpo, bco_pair=o.bco_pair, sft=o.sft, beta=o.beta)

    def setup(self, ctx: StageContext) -> None:
        name = ctx.stage.name
        for src in ctx.stage.data:
            if not is_pair_file(src.path):
                raise ConfigError(f"stage {name}: data {src.path} is not a preference file; the mpo objective trains "
                                  "on pairs made by `nativevlm data preferences QA_FILE --model MODEL --out PAIRS.jsonl`")
        pairs = [read_pairs(src.path) for src in ctx.stage.data]
        self.chosen = samples_by_id([[c for c, _ in file] for file in pairs], name, "mpo")
        self.rejected = {r.id: r for file in pairs for _, r in file}
        trainer = ctx.data.collator
        self.collator = Collator(trainer.tokenizer, trainer.image_processor, trainer.max_length)
        self.reference = frozen_copy(ctx.model)
        self.running = RunningRewardMean()

    def pair_batch(self, ids: list[str]) -> tuple[Batch, int]:
        """[chosen rows; rejected rows] of the pairs of `ids` (a pair either of whose sides does not fit
        max_length is left out, and counted in the collator's `dropped`)."""
        chosen, rejected = [], []
        for i in ids:
            encoded = self.collator.encode([self.chosen[i], self.rejected[i]])
            if len(encoded) == 2:
                chosen.append(encoded[0])
                rejected.append(encoded[1])
        return self.collator.batch(chosen + rejected), len(chosen)

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        batch, n = self.pair_batch(mb.batch.sample_ids)
        if n == 0:
            return Output(None)
        batch = batch.to(mb.batch.input_ids.device)
        logps, mask = answer_logprobs(model, batch)
        with torch.no_grad():
            ref_logps, _ = answer_logprobs(self.reference, batch)
        sums, counts = logps.sum(-1), mask.sum(-1)
        ref = ref_logps.sum(-1)
        loss, metrics = mpo_loss(SequenceLogProbs(sums[:n], counts[:n]), SequenceLogProbs(sums[n:], counts[n:]),
                                 ref[:n], ref[n:], self.running, self.weights,
                                 all_reduce_in_place if info.world > 1 else None)
        metrics["loss"] = loss.item()
        return Output(loss / info.micro_batches, {k: (v, 1) for k, v in metrics.items()})

    def state_dict(self) -> dict:
        return {"running": self.running.state_dict(), "reference": self.reference.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.running.load_state_dict(state["running"])
        self.reference.load_state_dict(state["reference"])
