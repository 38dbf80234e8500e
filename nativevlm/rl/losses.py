"""The post-training losses as pure functions on tensors: sequence log-probabilities, MPO (DPO sigmoid +
BCO-pair + SFT on the chosen answer) and GSPO. No model, optimizer or data here; an objective computes the
log-probabilities with the model and calls these.

Conventions. Targets are pre-shifted as everywhere in this repository (`targets[t]` is the token predicted
at position t, -100 where nothing is predicted), so a sequence's answer tokens are exactly its positions
with a target. Per-sequence quantities are tensors of shape [B]; per-token ones [B, T] with a bool mask.

MPO (InternVL3.5 runs it as TRL's DPOTrainer with `loss_type=["sigmoid", "bco_pair", "sft"]`, weights
`[0.8, 0.2, 1.0]`, beta 0.1), with lr = log pi(y|x) - log pi_ref(y|x) summed over the answer's tokens:

    DPO      = -log sig(beta (lr_c - lr_r))
    BCO-pair = -log sig(beta lr_c - delta) - log sig(-(beta lr_r - delta))
    SFT      = token-mean NLL of the chosen answers over the batch
    MPO      = 0.8 mean(DPO) + 0.2 mean(BCO-pair) + 1.0 SFT

delta is the mean over all steps so far, the current one included, of each step's batch-mean implicit
reward mean(beta lr_c, beta lr_r): a cumulative mean, not an EMA (`RunningRewardMean`).

GSPO (arXiv 2507.18071), per prompt G sampled responses y_i with rewards r_i:

    A_i   = (r_i - mean_j r_j) / (std_j r_j + 1e-4)            (std with Bessel's correction, as TRL)
    s_i   = exp(mean over y_i's tokens t of [log pi(y_i,t) - log pi_old(y_i,t)])
    loss  = -mean_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i),   eps_low 3e-4, eps_high 4e-4

a mean over sequences, so a sequence weighs the same whatever its length (TRL's `loss_type="grpo"`; its
token-summed types weigh sequences by length), and no KL term. A group whose rewards are all equal has std
0 and every advantage exactly 0 (the 1e-4 keeps the division finite): it carries no signal, which is why
prompts are kept only when their rollout accuracy lies in [0.2, 0.8] (`accuracy_filter`). The clip acts
only off-policy: with one optimizer step per batch of rollouts pi_old is pi, every s_i is 1 and nothing is
clipped, so GSPO takes several optimizer steps on each batch of rollouts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

IGNORE = -100  # the collator's "no target" (data.collate.IGNORE; not imported so this module stays pure)
ADVANTAGE_EPS = 1e-4  # TRL's: a zero-std group divides 0 by 1e-4, not by 0


# ---------------------------------------------------------------------------------------------------
# Log-probabilities


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(target_t) at each position of `logits` [B, T, V] for pre-shifted `targets` [B, T]; returns
    (log-probs [B, T], float32, 0 where there is no target; mask [B, T], True where there is one).
    Computed as a cross-entropy per position, so no [B, T, V] log-softmax is kept."""
    mask = targets != IGNORE
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return -nll.view(targets.shape), mask


@dataclass
class SequenceLogProbs:
    """A sequence's answer log-likelihood: `sum` over its answer tokens [B] and how many there are [B]."""

    sum: torch.Tensor
    count: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp(min=1)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> SequenceLogProbs:
    """sum_t log pi(y_t) over each row's answer tokens (the positions with a target)."""
    logps, mask = token_logprobs(logits, targets)
    return SequenceLogProbs(logps.sum(-1), mask.sum(-1))


# ---------------------------------------------------------------------------------------------------
# MPO


def dpo_sigmoid_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                     ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """-log sig(beta ((log pi_c - log pi_ref_c) - (log pi_r - log pi_ref_r))) per pair [B]; inputs are summed
    answer log-probs [B]."""
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


def implicit_rewards(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                     ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards beta (log pi - log pi_ref) of the chosen and the rejected answers [B]."""
    return beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)


def bco_pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor, delta: float, beta: float = 0.1) -> torch.Tensor:
    """-log sig(beta lr_c - delta) - log sig(-(beta lr_r - delta)) per pair [B]: each answer is classified on
    its own (chosen above the reward baseline delta, rejected below), not only against its partner."""
    reward_c, reward_r = implicit_rewards(chosen, rejected, ref_chosen, ref_rejected, beta)
    return -F.logsigmoid(reward_c - delta) - F.logsigmoid(-(reward_r - delta))


class RunningRewardMean:
    """BCO's delta: the mean over all steps so far of each step's batch-mean reward (each step, and each
    rank within it, weighs the same; TRL's `RunningMoments` with one value per step). An EMA would forget
    the early, large rewards more slowly on short runs than on long ones; the cumulative mean is what
    InternVL's MPO uses. The state is two float64 numbers, saved exactly for resume."""

    def __init__(self) -> None:
        self.total = 0.0  # sum of the batch means seen (over steps and ranks)
        self.count = 0.0  # how many batch means that is

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def update(self, batch_mean: torch.Tensor,
               all_reduce: Optional[Callable[[torch.Tensor], object]] = None) -> float:
        """Add this step's batch-mean reward (a scalar tensor, this rank's); returns the new mean. With
        `all_reduce` (an in-place sum across ranks such as `torch.distributed.all_reduce`) every rank adds
        every rank's batch mean, so all ranks hold the same delta."""
        stats = torch.stack([batch_mean.detach().to(torch.float64).reshape(()),
                             torch.ones((), dtype=torch.float64, device=batch_mean.device)])
        if all_reduce is not None:
            all_reduce(stats)
        total, count = stats.tolist()
        self.total += total
        self.count += count
        return self.mean

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = float(state["total"]), float(state["count"])


@dataclass(frozen=True)
class MPOWeights:
    """InternVL3.5's weights and beta (TRL's default beta, which it keeps)."""

    dpo: float = 0.8
    bco_pair: float = 0.2
    sft: float = 1.0
    beta: float = 0.1


def mpo_loss(chosen: SequenceLogProbs, rejected: SequenceLogProbs, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, running: RunningRewardMean, weights: MPOWeights = MPOWeights(),
             all_reduce: Optional[Callable[[torch.Tensor], object]] = None) -> tuple[torch.Tensor, dict]:
    """The MPO loss of a batch of pairs and its metrics. `chosen` / `rejected` are the policy's answer
    log-probs (with gradients), `ref_*` the frozen reference's summed answer log-probs [B]. `running` is
    updated with this batch before delta is read (TRL's order), so call this once per optimizer step's
    batch: a gradient-accumulation micro-batch counts as a step of its own, as it does in TRL."""
    beta = weights.beta
    c, r = chosen.sum, rejected.sum
    reward_c, reward_r = implicit_rewards(c, r, ref_chosen, ref_rejected, beta)
    delta = running.update(torch.cat([reward_c, reward_r]).mean(), all_reduce)
    dpo = dpo_sigmoid_loss(c, r, ref_chosen, ref_rejected, beta).mean()
    bco = bco_pair_loss(c, r, ref_chosen, ref_rejected, delta, beta).mean()
    sft = -c.sum() / chosen.count.sum().clamp(min=1)
    loss = weights.dpo * dpo + weights.bco_pair * bco + weights.sft * sft
    metrics = {"dpo": dpo.item(), "bco_pair": bco.item(), "sft": sft.item(), "delta": delta,
               "reward_chosen": reward_c.mean().item(), "reward_rejected": reward_r.mean().item(),
               "reward_accuracy": (reward_c > reward_r).float().mean().item(),
               "reward_margin": (reward_c - reward_r).mean().item()}
    return loss, metrics


# ---------------------------------------------------------------------------------------------------
# GSPO


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = (r_i - mean r) / (std r + 1e-4) within each group: `rewards` [n_prompts, G] -> [n_prompts, G].
    std is Bessel-corrected (TRL's); a group of equal rewards gets all-zero advantages."""
    assert rewards.dim() == 2 and rewards.shape[1] > 1, "rewards are [n_prompts, G] with G >= 2"
    rewards = rewards.float()
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + ADVANTAGE_EPS)


def sequence_log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = mean over the sequence's valid tokens of (log pi - log pi_old) [B]. Values at masked
    positions are never read (padding may hold anything); a row with no valid token has log s_i = 0."""
    diff = torch.where(mask, logps - old_logps, torch.zeros((), dtype=logps.dtype, device=logps.device))
    return diff.sum(-1) / mask.sum(-1).clamp(min=1)


def gspo_loss(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
              eps_low: float = 3e-4, eps_high: float = 4e-4) -> tuple[torch.Tensor, dict]:
    """GSPO's clipped sequence-level objective (module docstring) for B sequences: `logps` [B, T] under the
    current policy (with gradients), `old_logps` [B, T] under the policy that sampled them, `mask` [B, T],
    `advantages` [B]. Metrics: `clip_fraction`, the share of sequences whose gradient the clip removes
    (ratio below 1 - eps_low with A < 0, or above 1 + eps_high with A > 0: TRL's `clip_ratio/region_mean`),
    and the ratio's mean, min and max."""
    ratio = sequence_log_ratio(logps, old_logps.detach(), mask).exp()
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * advantages, clipped * advantages).mean()
    r = ratio.detach()
    cut = ((r < 1 - eps_low) & (advantages < 0)) | ((r > 1 + eps_high) & (advantages > 0))
    metrics = {"clip_fraction": cut.float().mean().item(), "ratio_mean": r.mean().item(),
               "ratio_min": r.min().item(), "ratio_max": r.max().item()}
    return loss, metrics


def expected_gspo_weight(p: float, group_size: int, low: float = 0.2, high: float = 0.8) -> float:
    """c(p): on a question whose one right reply y* the policy samples with probability p (every reply of one
    length L), the expected gradient of GSPO's on-policy loss over a group of `group_size` replies, with the
    accuracy filter [low, high], is -c(p) / L * grad log pi(y*): the SFT gradient on the right answer, scaled.

    Given k right replies of G, the wrong ones are drawn from pi restricted to wrong replies, whose mean score
    is -p / (1 - p) grad log pi(y*) (the scores' mean under pi is 0), so the group's gradient has expectation
    (k (G - k) / G) / ((s_k + 1e-4) (1 - p)) / G times the right reply's, s_k the Bessel std of k ones and
    G - k zeros; c(p) sums that over k ~ Binomial(G, p) with k / G kept by the filter. With no filter and G
    large, c(p) -> sqrt(p / (1 - p)); with G = 8 and the filter [0.2, 0.8] it is under 0.2 below p = 0.15, about
    1.1 at p = 0.75 and 0.1 at p = 0.99. So on one-reply answers GSPO's expected step is SFT's with a
    per-question weight that favours questions the policy already answers right more often than not and
    leaves out those it seldom does (where SFT pulls hardest), estimated from G samples: it carries nothing
    about the answers that their labels do not (docs/posttraining.md). A constant term in the reward (the
    format term of replies that all meet it) leaves every advantage, and c, as they are."""
    G = group_size
    if not 0 <= p < 1 or G < 2:
        raise ValueError(f"expected_gspo_weight needs 0 <= p < 1 and group_size >= 2, got p={p}, G={G}")
    if p == 0:
        return 0.0  # no group holds a right reply: every advantage is 0
    total = 0.0
    for k in range(1, G):  # k = 0 or G: all rewards equal, advantages 0
        if not low - 1e-9 <= k / G <= high + 1e-9:
            continue
        std = math.sqrt(k * (G - k) / (G * (G - 1)))
        log_pmf = (math.lgamma(G + 1) - math.lgamma(k + 1) - math.lgamma(G - k + 1) + k * math.log(p)
                   + (G - k) * math.log1p(-p))
        total += math.exp(log_pmf) * (k * (G - k) / G) / ((std + ADVANTAGE_EPS) * (1 - p)) / G
    return total


def accuracy_filter(accuracy: torch.Tensor, low: float = 0.2, high: float = 0.8) -> torch.Tensor:
    """Which prompts to train on [n_prompts] bool: those whose rollout accuracy (the share of its G answers
    that are right) lies in [low, high]. All-right or all-wrong groups have zero advantages, and nearly so
    near the ends; dropping them keeps each batch full of prompts with signal. A hair of slack keeps
    k / G exactly at a bound (1/5 = 0.2) inside whatever rounding produced it."""
    return (accuracy >= low - 1e-9) & (accuracy <= high + 1e-9)
