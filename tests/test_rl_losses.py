"""The post-training losses: each against a hand-computed value on fixed tensors, GSPO's invariances (padding,
unequal lengths, a mean over sequences), the clip acting only off-policy, and parity with TRL 0.28.0 (the last
release with BCO-pair's delta and `rpo_alpha`; InternVL pins 0.21.0, which cannot import beside transformers
5) on the same log-probabilities."""
import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from nativevlm.rl.losses import (IGNORE, MPOWeights, RunningRewardMean, SequenceLogProbs, accuracy_filter,
                                 bco_pair_loss, dpo_sigmoid_loss, expected_gspo_weight, group_advantages,
                                 gspo_loss, mpo_loss, sequence_log_ratio, sequence_logprobs, token_logprobs)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # -log sig(-x)


def test_sequence_logprobs_by_hand():
    # position 0: uniform over 2 tokens -> log 1/2; position 1: no target; position 2: p(1) = 1/(3+1)
    logits = torch.tensor([[[0.0, 0.0], [5.0, -5.0], [math.log(3.0), 0.0]]])
    targets = torch.tensor([[0, IGNORE, 1]])
    logps, mask = token_logprobs(logits, targets)
    assert mask.tolist() == [[True, False, True]]
    assert logps[0, 1] == 0
    seq = sequence_logprobs(logits, targets)
    assert seq.count.tolist() == [2]
    assert seq.sum.item() == pytest.approx(math.log(1 / 8), abs=1e-6)
    assert seq.mean.item() == pytest.approx(math.log(1 / 8) / 2, abs=1e-6)


def test_dpo_sigmoid_by_hand():
    # lr_c = -1 - -2 = 1, lr_r = -3 - -2 = -1: loss = -log sig(0.1 * 2)
    loss = dpo_sigmoid_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    assert loss.item() == pytest.approx(softplus(-0.2), abs=1e-7)
    loss = dpo_sigmoid_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
                            beta=0.5)
    assert loss.item() == pytest.approx(softplus(-1.0), abs=1e-7)


def test_bco_pair_running_delta_over_steps():
    """delta after step k = mean of the k batch-mean rewards so far (not an EMA); the loss uses it."""
    steps = [  # (chosen, rejected, ref_chosen, ref_rejected) per step, two pairs each
        ([-1.0, -2.0], [-3.0, -2.0], [-2.0, -2.0], [-2.0, -1.0]),
        ([0.0, -1.0], [-4.0, -1.0], [-1.0, -2.0], [-2.0, -2.0]),
        ([-5.0, -2.0], [-1.0, -3.0], [-2.0, -2.0], [-2.0, -2.0]),
    ]
    running, means = RunningRewardMean(), []
    for c, r, rc, rr in steps:
        rewards_c = [0.1 * (a - b) for a, b in zip(c, rc)]
        rewards_r = [0.1 * (a - b) for a, b in zip(r, rr)]
        means.append(sum(rewards_c + rewards_r) / 4)
        delta = running.update(torch.tensor(means[-1]))
        assert delta == pytest.approx(sum(means) / len(means), abs=1e-7)
        expected = [softplus(-(rc_ - delta)) + softplus(rr_ - delta) for rc_, rr_ in zip(rewards_c, rewards_r)]
        got = bco_pair_loss(*map(torch.tensor, (c, r, rc, rr)), delta=delta)
        assert got.tolist() == pytest.approx(expected, abs=1e-6)
    # an EMA would differ from the cumulative mean here
    assert running.mean != pytest.approx(0.9 * (0.9 * means[0] + 0.1 * means[1]) + 0.1 * means[2], abs=1e-6)


def test_running_mean_resumes_exactly_and_merges_ranks():
    a = RunningRewardMean()
    for x in (0.3, -0.1, 0.7):
        a.update(torch.tensor(x))
    b = RunningRewardMean()
    b.load_state_dict(a.state_dict())
    for x in (0.25, 0.5):
        assert a.update(torch.tensor(x)) == b.update(torch.tensor(x))
    # two ranks with batch means 0.2 and 0.6: an all-reduce sums (value, count) -> both hold the mean 0.4
    other_rank = torch.tensor([0.6, 1.0], dtype=torch.float64)
    merged = RunningRewardMean()
    assert merged.update(torch.tensor(0.2), all_reduce=lambda t: t.add_(other_rank)) == pytest.approx(0.4)
    assert merged.count == 2


def pairs(seed: int = 0, n: int = 3, t: int = 5, v: int = 7):
    """Policy logits and targets of n chosen and n rejected answers, and reference log-probs."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * n, t, v, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (2 * n, t), generator=g)
    targets[:, :2] = IGNORE  # the prompt
    targets[1, 4] = IGNORE  # an answer one token shorter
    seq = sequence_logprobs(logits, targets)
    chosen = SequenceLogProbs(seq.sum[:n], seq.count[:n])
    rejected = SequenceLogProbs(seq.sum[n:], seq.count[n:])
    ref = seq.sum.detach() + torch.randn(2 * n, generator=g)
    return logits, targets, chosen, rejected, ref[:n], ref[n:]


def test_mpo_weights_and_sft_term():
    logits, targets, chosen, rejected, ref_c, ref_r = pairs()
    # SFT = token-mean NLL of the chosen answers over the batch (not a mean of per-answer means)
    nll = -token_logprobs(logits[:3], targets[:3])[0].sum() / (targets[:3] != IGNORE).sum()
    sft_only, m = mpo_loss(chosen, rejected, ref_c, ref_r, RunningRewardMean(), MPOWeights(dpo=0, bco_pair=0))
    assert sft_only.item() == pytest.approx(nll.item(), abs=1e-6) and m["sft"] == pytest.approx(nll.item(), abs=1e-6)
    assert (targets[:3] != IGNORE).sum() == 8  # 3 + 2 + 3 tokens: unequal lengths do weigh by length here
    loss, m = mpo_loss(chosen, rejected, ref_c, ref_r, RunningRewardMean())
    dpo = dpo_sigmoid_loss(chosen.sum, rejected.sum, ref_c, ref_r).mean()
    delta = torch.cat([0.1 * (chosen.sum - ref_c), 0.1 * (rejected.sum - ref_r)]).mean().item()
    bco = bco_pair_loss(chosen.sum, rejected.sum, ref_c, ref_r, delta).mean()
    assert loss.item() == pytest.approx(0.8 * dpo.item() + 0.2 * bco.item() + 1.0 * nll.item(), abs=1e-6)
    assert m["delta"] == pytest.approx(delta, abs=1e-7)
    loss.backward()
    assert logits.grad[:, :2].abs().sum() == 0 and logits.grad[:, 2:].abs().sum() > 0  # answers only


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [2.0, 0.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    std = math.sqrt(1 / 3)  # Bessel: sum of squares 1.0 over 3
    assert adv[0].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1 + [-0.5 / (std + 1e-4),
                                            0.5 / (std + 1e-4)], abs=1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # zero std: zero advantage, no NaN
    std = math.sqrt(2 / 3)
    assert adv[2].tolist() == pytest.approx([1 / (std + 1e-4), -1 / (std + 1e-4), 0.0, 0.0], abs=1e-6)


def test_sequence_ratio_by_hand():
    logps = torch.tensor([[-1.0, -2.0, 9.0], [-0.5, 7.0, 7.0]])
    old = torch.tensor([[-1.2, -2.4, -3.0], [-0.1, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    ratio = sequence_log_ratio(logps, old, mask).exp()
    assert ratio.tolist() == pytest.approx([math.exp(0.3), math.exp(-0.4)], abs=1e-6)


def test_gspo_clipping_by_hand():
    """s = e^0.3 with A > 0 is clipped at 1 + 4e-4 (no gradient); s = e^-0.3 with A < 0 at 1 - 3e-4; s = e^0.3
    with A < 0 and s = e^-0.3 with A > 0 keep the unclipped term (the min is pessimistic)."""
    base = torch.tensor([0.3, 0.3, -0.3, -0.3])
    logps = base[:, None].repeat(1, 2).requires_grad_(True)
    old, mask = torch.zeros(4, 2), torch.ones(4, 2, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, m = gspo_loss(logps, old, mask, adv)
    s_hi, s_lo = math.exp(0.3), math.exp(-0.3)
    expected = -(1.0004 * 1 + s_hi * -1 + 0.9997 * -1 + s_lo * 1) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["clip_fraction"] == 0.5
    loss.backward()
    assert logps.grad[0].abs().sum() == 0 and logps.grad[2].abs().sum() == 0  # the clipped ones
    assert logps.grad[1].abs().sum() > 0 and logps.grad[3].abs().sum() > 0


def test_gspo_loss_is_a_mean_over_sequences_unchanged_by_padding_and_lengths():
    g = torch.Generator().manual_seed(0)
    lengths = [1, 9, 4]
    logps = torch.randn(3, 9, generator=g) * 1e-3 - 2
    old = logps + torch.randn(3, 9, generator=g) * 1e-3
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    adv = torch.tensor([1.0, -0.5, 0.7])
    loss, m = gspo_loss(logps.clone().requires_grad_(True), old, mask, adv)
    # wider padding holding garbage (even inf) changes nothing
    pad = lambda x, fill: torch.cat([x, torch.full((3, 6), fill)], 1)  # noqa: E731
    lp = pad(torch.where(mask, logps, torch.tensor(float("inf"))), 123.0).requires_grad_(True)
    padded, m2 = gspo_loss(lp, pad(old, -7.0), pad(mask, False), adv)
    assert padded.item() == loss.item() and m2 == m
    padded.backward()
    assert torch.isfinite(lp.grad).all() and lp.grad[~pad(mask, False)].abs().sum() == 0
    # each sequence weighs 1/B whatever its length: equal per-token log-ratios give the length-1 value
    same = torch.full((3, 9), 2e-4)
    loss_long, _ = gspo_loss(same, torch.zeros(3, 9), mask, adv)
    loss_short, _ = gspo_loss(same[:, :1], torch.zeros(3, 1), mask[:, :1], adv)
    assert loss_long.item() == pytest.approx(loss_short.item(), abs=1e-7)
    assert loss_long.item() == pytest.approx(-math.exp(2e-4) * adv.mean().item(), abs=1e-7)


def test_clip_fraction_zero_on_policy_positive_after_several_steps():
    """A toy policy (a logits table) takes 4 optimizer steps on one rollout batch: on the first the old
    log-probs are the current ones (every ratio 1, clip fraction exactly 0); afterwards the policy has moved
    and the clip acts."""
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(6, 5, 11))
    targets = torch.randint(0, 11, (6, 5))
    targets[3:, 3:] = IGNORE
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])).flatten()
    with torch.no_grad():
        old, mask = token_logprobs(table, targets)
    opt = torch.optim.SGD([table], lr=1.0)
    fractions = []
    for _ in range(4):
        logps, _ = token_logprobs(table, targets)
        loss, m = gspo_loss(logps, old, mask, adv)
        fractions.append(m["clip_fraction"])
        if not fractions[1:]:
            assert m["ratio_min"] == m["ratio_max"] == 1.0
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fractions[0] == 0.0 and all(f > 0 for f in fractions[1:])


def test_accuracy_filter():
    acc = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.8, 0.9, 1.0, 1 / 5, 4 / 5, 2 / 8, 7 / 8])
    assert accuracy_filter(acc).tolist() == [False, False, True, True, True, False, False, True, True, True, False]
    assert accuracy_filter(acc, low=0.0, high=0.5).tolist()[:4] == [True, True, True, True]


@pytest.mark.parametrize("p_right,G", [(0.15, 6), (0.4, 8), (0.7, 8), (0.5, 5)])
def test_gspo_expected_step_is_the_sft_step_scaled(p_right, G):
    """A one-token policy over three replies (one right, two wrong): every group of G replies enumerated with its
    probability, scored, normalised and filtered as the objective does, the on-policy GSPO loss averaged over
    them has the gradient -c(p) grad log pi(right), c = `expected_gspo_weight`; a constant format term changes
    nothing."""
    rest = (1 - p_right) / 3
    logits = torch.tensor([p_right, rest, 2 * rest], dtype=torch.float64).log().requires_grad_(True)
    groups = torch.tensor(list(itertools.product(range(3), repeat=G)))  # [3^G, G]
    for format_term in (0.0, 0.5):
        logp = torch.log_softmax(logits, 0)
        prob = logp.detach()[groups].sum(1).exp()  # each group's probability
        correct = (groups == 0).float()
        keep = accuracy_filter(correct.mean(1))
        adv = group_advantages(correct + format_term) * keep[:, None] * prob[:, None] * len(groups)
        rows = logp[groups].reshape(-1, 1)
        loss, m = gspo_loss(rows, rows.detach(), torch.ones_like(rows, dtype=torch.bool), adv.flatten())
        assert m["clip_fraction"] == 0
        (grad,) = torch.autograd.grad(loss, logits)
        pi = logp.detach().exp()
        score = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) - pi  # grad log pi(right) wrt the logits
        c = expected_gspo_weight(p_right, G)
        assert c > 0
        assert grad.tolist() == pytest.approx((-c * score).tolist(), abs=1e-6)


def test_expected_gspo_weight_grows_with_p_and_has_its_limit():
    """c grows with p through the filter's range and tends to sqrt(p / (1 - p)) for large groups without it."""
    weights = [expected_gspo_weight(q, 8) for q in (0.25, 0.4, 0.55, 0.7)]
    assert weights == sorted(weights)
    assert expected_gspo_weight(0.3, 4096, 0, 1) == pytest.approx(math.sqrt(0.3 / 0.7), rel=2e-3)
    assert expected_gspo_weight(0.0, 8) == 0
    # at p 0.01 nearly every group has one right reply of 8 (1/8 < 0.2): the filter drops most of the weight
    assert expected_gspo_weight(0.01, 8) < 0.1 * expected_gspo_weight(0.01, 8, 0, 1)
    with pytest.raises(ValueError, match="0 <= p < 1"):
        expected_gspo_weight(1.0, 8)


# ---------------------------------------------------------------------------------------------------
# Parity with TRL


def trl_trainers():
    """TRL's DPOTrainer, GRPOTrainer and RunningMoments, or a skip saying why. TRL <= 0.28 reads
    transformers' `_is_package_available` as a bool; transformers 5 returns (available, version), a tuple that
    is always true, so TRL imports optional packages that are absent. A bool view of it, for TRL's module
    only, lets it import."""
    try:
        import trl
        import trl.import_utils as iu
    except ImportError:
        pytest.skip("TRL is not installed (pip install '.[rl]')")
    if trl.__version__ != "0.28.0":
        pytest.skip(f"TRL {trl.__version__} installed; the parity tests are written against 0.28.0")
    check = iu._is_package_available
    if isinstance(check("torch"), tuple):
        def as_bool(name, return_version=False):
            found, version = check(name, return_version=True)
            return (found, version) if return_version else found
        iu._is_package_available = as_bool
    from trl.trainer.dpo_trainer import DPOTrainer, FDivergenceType
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import RunningMoments
    return DPOTrainer, FDivergenceType, GRPOTrainer, RunningMoments


def trl_dpo(beta: float = 0.1):
    """An object with what `DPOTrainer.dpo_loss` reads from self (single process, CPU)."""
    DPOTrainer, FDivergenceType, _, RunningMoments = trl_trainers()
    acc = SimpleNamespace(device=torch.device("cpu"), use_distributed=False)
    state = SimpleNamespace(accelerator=acc, reference_free=False, f_divergence_type=FDivergenceType.REVERSE_KL,
                            beta=beta, label_smoothing=0.0, running=RunningMoments(accelerator=acc))
    return lambda *a: DPOTrainer.dpo_loss(state, *a)


def test_dpo_and_bco_pair_equal_trl():
    dpo_loss = trl_dpo()
    running = RunningRewardMean()
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        c, r, rc, rr = (torch.randn(5, generator=g) * 3 - 10 for _ in range(4))
        ours = dpo_sigmoid_loss(c, r, rc, rr)
        theirs, _, _ = dpo_loss(c, r, rc, rr, "sigmoid", None)
        assert torch.allclose(ours, theirs, atol=1e-6)
        delta = running.update(torch.cat([0.1 * (c - rc), 0.1 * (r - rr)]).mean())
        ours = bco_pair_loss(c, r, rc, rr, delta)
        theirs, _, _ = dpo_loss(c, r, rc, rr, "bco_pair", None)  # updates TRL's running mean the same way
        assert torch.allclose(ours, theirs, atol=1e-6), step


def test_mpo_equals_trl_weighted_loss_types():
    """InternVL's MPO in TRL: loss_type ["sigmoid", "bco_pair", "sft"], loss_weights [0.8, 0.2, 1.0]; the sft
    term is TRL's nll_loss, a cross-entropy over the chosen answers' tokens."""
    dpo_loss = trl_dpo()
    running = RunningRewardMean()
    for seed in range(3):
        logits, targets, chosen, rejected, ref_c, ref_r = pairs(seed)
        ours, _ = mpo_loss(chosen, rejected, ref_c, ref_r, running)
        nll = torch.nn.functional.cross_entropy(logits[:3].flatten(0, 1), targets[:3].flatten(), ignore_index=IGNORE)
        theirs = 0
        for kind, w in zip(["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]):
            losses, _, _ = dpo_loss(chosen.sum, rejected.sum, ref_c, ref_r, kind, {"nll_loss": nll})
            theirs = theirs + w * losses
        assert ours.item() == pytest.approx(theirs.mean().item(), abs=1e-6)


def test_gspo_equals_trl_grpo_sequence_level():
    """TRL's GRPO loss with importance_sampling_level="sequence", loss_type="grpo", beta 0, eps 3e-4 / 4e-4,
    given our per-token log-probs; its clip_ratio/region_mean is our clip fraction."""
    _, _, GRPOTrainer, _ = trl_trainers()
    g = torch.Generator().manual_seed(0)
    B, T = 8, 6
    lengths = torch.tensor([6, 1, 3, 6, 2, 5, 4, 6])
    mask = torch.arange(T)[None] < lengths[:, None]
    old = torch.randn(B, T, generator=g) - 3
    logps = old + torch.randn(B, T, generator=g) * 1e-3
    adv = group_advantages(torch.randint(0, 2, (2, 4), generator=g).float()).flatten()
    state = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros(B, T)), top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level="sequence", beta=0.0, loss_type="grpo",
        epsilon_low=3e-4, epsilon_high=4e-4, args=SimpleNamespace(delta=None), use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        accelerator=SimpleNamespace(gather=lambda x: x), _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": adv, "old_per_token_logps": old}
    theirs = GRPOTrainer._compute_loss(state, None, inputs)
    ours, m = gspo_loss(logps, old, mask, adv)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-7)
    assert m["clip_fraction"] == pytest.approx(state._metrics["train"]["clip_ratio/region_mean"][0])
    assert 0 < m["clip_fraction"] < 1


def test_token_logprobs_equal_trl():
    """TRL's per-token log-probs (`selective_log_softmax`, what its DPO and GRPO sum or average)."""
    trl_trainers()
    from trl.trainer.utils import selective_log_softmax

    logits, targets, *_ = pairs()
    ours, mask = token_logprobs(logits, targets)
    theirs = selective_log_softmax(logits, targets.clamp(min=0))
    assert torch.allclose(ours[mask], theirs[mask], atol=1e-6) and (ours[~mask] == 0).all()
