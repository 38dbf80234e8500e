"""What GSPO's step is on one-word answers: the SFT step on the right answers, re-weighted and estimated
from samples. One command:

    python bench/gspo_gradient.py --model runs/quickstart/runs/native/final \
        --world runs/quickstart/data/world --out docs/studies/posttraining/gradient

On a question whose one right reply y* (L tokens, like every reply) the policy samples with probability p, the
expected gradient of GSPO's on-policy loss over a group of G replies, with the accuracy filter, is
-c(p) / L * grad log pi(y*) (`nativevlm.rl.losses.expected_gspo_weight`, tested on a toy policy by
enumerating every group). This measures how far that holds for a trained model, whose replies are free text
read by the evaluation's rules (several replies can be right, replies differ in length):

- p_q, the model's probability of each question's answer as a reply (its tokens + end of sequence, teacher
  forced), beside the question's rollout accuracy over every sampled reply;
- `--rollouts` rollouts of the `gspo` objective itself on `--questions` training questions (from `--offset`; G
  replies each at temperature 1, reward, advantages, filter, as a training step draws them; each rollout its
  own replies), and the gradient of each rollout's on-policy loss, summed over questions (its expectation is
  the prediction's scale);
- the predicted gradient, -sum_q c(p_q) mean-token grad log pi(y*_q), and the SFT gradient on the same
  answers, -sum_q mean-token grad log pi(y*_q);
- cosines: of each single rollout's gradient and of the running mean over rollouts with the prediction and
  with SFT's, the prediction's with SFT's, and two halves of the rollouts with each other.

Writes gradient.json and gradient.png (c(p) beside the questions' p; cosines against rollouts averaged).
Reads the model and its world only; trains nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nativevlm.data.collate import Collator  # noqa: E402
from nativevlm.data.formats import read_samples  # noqa: E402
from nativevlm.data.image import ImageProcessor  # noqa: E402
from nativevlm.eval.benchmarks.llava_qa import item_of  # noqa: E402
from nativevlm.infer.chat import load_model_and_tokenizer  # noqa: E402
from nativevlm.rl.losses import expected_gspo_weight, gspo_loss  # noqa: E402
from nativevlm.rl.policy import answer_logprobs  # noqa: E402
from nativevlm.train.objectives import StageContext, StepInfo  # noqa: E402
from nativevlm.train.objectives.gspo import GSPO, GSPOOptions  # noqa: E402


def flat_grad(model: torch.nn.Module, loss: torch.Tensor, retain: bool = False) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def setup(args) -> tuple[GSPO, list, torch.nn.Module]:
    model, tok = load_model_and_tokenizer(args.model, args.tokenizer)
    samples, _ = read_samples(args.world / "train.json")
    samples = samples[args.offset:args.offset + args.questions]
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    collator = Collator(tok, processor, max_length=args.max_length)
    objective = GSPO(GSPOOptions(group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                                 format_weight=args.format_weight))
    stage = type("Stage", (), {"name": "gspo", "data": [type("Source", (), {"path": args.world / "train.json"})()]})()
    data = type("Data", (), {"sources": [samples], "collator": collator,
                             "sampler": type("Sampler", (), {"seed": args.seed})()})()
    objective.setup(StageContext(model=model, tokenizer=tok, stage=stage, data=data, processor=processor,
                                 device=torch.device("cpu"), log=lambda *a: None))
    model.train()  # as a training step runs it
    return objective, samples, model


def rollout_gradient(objective: GSPO, model: torch.nn.Module, rollout, G: int, chunk: int) -> torch.Tensor:
    """The gradient of the rollout's on-policy GSPO loss summed over questions (sum over replies of -A_i s_i / G,
    the prediction's scale), in chunks of replies to bound memory. On-policy the old log-probs are the current
    ones (every ratio 1), so each chunk scores against its own detached log-probs."""
    total = None
    for lo in range(0, len(rollout.ids), chunk):
        rows = slice(lo, lo + chunk)
        batch = objective.sequences(rollout.ids[rows], rollout.replies[rows],
                                    None if rollout.thinks is None else rollout.thinks[rows])
        logps, mask = answer_logprobs(model, batch)
        loss, m = gspo_loss(logps, logps.detach(), mask, rollout.advantages[rows])
        assert m["clip_fraction"] == 0
        g = flat_grad(model, loss * len(rollout.ids[rows]) / G)
        total = g if total is None else total + g
    return total


def answer_replies(objective: GSPO, samples: list) -> list[list[int]]:
    """Each question's answer as the engine would reply it: its tokens, then end of sequence."""
    tok = objective.tokenizer
    return [tok.encode(item_of(s, s.id).answer) + [tok.eos_id] for s in samples]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a trained NativeVLM folder (the SFT model)")
    ap.add_argument("--world", type=Path, help="a world folder (its train.json is asked)")
    ap.add_argument("--tokenizer", type=Path, default=None, help="default: the model folder's own")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--offset", type=int, default=0, help="ask train.json's questions from this index on")
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format-weight", type=float, default=GSPOOptions.format_weight,
                    help="the reward's format term (the objective's default; 0: correctness alone)")
    ap.add_argument("--chunk", type=int, default=256, help="replies per backward pass (memory)")
    ap.add_argument("--replot", action="store_true", help="only redraw gradient.png from --out's gradient.json")
    args = ap.parse_args(argv)
    if not args.replot and (args.model is None or args.world is None):
        ap.error("--model and --world are needed (only --replot works without them)")
    if args.replot:
        plot(json.loads((args.out / "gradient.json").read_text()), args.out / "gradient.png")
        return
    torch.manual_seed(args.seed)
    start = time.time()
    objective, samples, model = setup(args)
    ids = [s.id for s in samples]
    G = args.group_size

    # the prediction and SFT's gradient, from the answers' own log-probs
    answers = answer_replies(objective, samples)
    answer_of = dict(zip(ids, answers))
    batch = objective.sequences(ids, answers)
    logps, mask = answer_logprobs(model, batch)
    lengths = mask.sum(1)
    token_mean = (logps * mask).sum(1) / lengths
    p = (logps * mask).sum(1).exp().detach()
    c = torch.tensor([expected_gspo_weight(min(float(q), 1 - 1e-9), G) for q in p])
    g_pred = flat_grad(model, -(c * token_mean).sum(), retain=True)
    g_sft = flat_grad(model, -token_mean.sum())

    # rollouts of the objective itself, each its own replies (the replies' seeds follow the step)
    grads, records = [], []
    # right replies that are the answer's own tokens, right replies; "right" read as a positive advantage, which
    # is exact with --format-weight 0 (with the format term a wrong reply may rarely score above its group's mean)
    canonical = [0, 0]
    for r in tqdm(range(args.rollouts), desc="rollouts", unit="rollout"):
        info = StepInfo(step=r * 4, stage_step=0, micro_batches=1, world=1, rank=0, target_weight=torch.tensor(1.0))
        rollout, metrics = objective.rollout(ids, info, torch.device("cpu"))
        kept = 0 if rollout is None else len(set(rollout.ids))
        records.append({"rollout": r, "accuracy": float(metrics["accuracy"][0]) / metrics["accuracy"][1],
                        "kept": kept, "replies_kept": 0 if rollout is None else len(rollout.ids),
                        "reply_length": metrics["response_length"][0] / metrics["response_length"][1]})
        if rollout is None:
            grads.append(torch.zeros_like(g_pred))
            continue
        grads.append(rollout_gradient(objective, model, rollout, G, args.chunk))
        for i, reply, a in zip(rollout.ids, rollout.replies, rollout.advantages.tolist()):
            if a > 0:
                canonical[0] += reply == answer_of[i]
                canonical[1] += 1

    stack = torch.stack(grads)
    running = stack.cumsum(0) / torch.arange(1, len(grads) + 1)[:, None]
    half = len(grads) // 2
    result = {
        "model": str(args.model), "world": str(args.world), "questions": len(ids), "offset": args.offset,
        "group_size": G, "rollouts": args.rollouts, "seed": args.seed, "format_weight": args.format_weight,
        "seconds": round(time.time() - start, 1),
        "p": [round(float(q), 4) for q in p], "c": [round(float(x), 4) for x in c],
        "answer_length": lengths.tolist(),
        "right_replies_that_are_the_answer": canonical[0] / max(canonical[1], 1),
        "rollout_records": records,
        "cos_pred_sft": cos(g_pred, g_sft),
        "cos_single_pred": [cos(g, g_pred) for g in grads],
        "cos_single_sft": [cos(g, g_sft) for g in grads],
        "cos_running_pred": [cos(g, g_pred) for g in running],
        "cos_running_sft": [cos(g, g_sft) for g in running],
        "cos_halves": cos(stack[:half].mean(0), stack[half:].mean(0)) if half else None,
        "norm_mean_to_pred": float(running[-1].norm() / g_pred.norm()),
        "norm_pred_to_sft": float(g_pred.norm() / g_sft.norm()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradient.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "gradient.png")
    print(f"{len(ids)} questions, {args.rollouts} rollouts of {G} replies, {result['seconds']:.0f} s")
    print(f"mean p {p.mean():.3f}; right replies that are the answer's own tokens "
          f"{100 * result['right_replies_that_are_the_answer']:.1f}%")
    print(f"cos(prediction, SFT) {result['cos_pred_sft']:.3f}; mean of {args.rollouts} rollouts vs prediction "
          f"{result['cos_running_pred'][-1]:.3f}, vs SFT {result['cos_running_sft'][-1]:.3f}; one rollout vs "
          f"prediction {sum(result['cos_single_pred']) / len(grads):.3f} on average; halves {result['cos_halves']:.3f}")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    G = result["group_size"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    grid = [i / 200 for i in range(1, 200)]
    a.plot(grid, [expected_gspo_weight(q, G) for q in grid], label=f"c(p), G = {G}, filter [0.2, 0.8]")
    a.plot(grid, [expected_gspo_weight(q, G, 0, 1) for q in grid], "--", label=f"c(p), G = {G}, no filter")
    a.plot(grid[:180], [math.sqrt(q / (1 - q)) for q in grid[:180]], ":", label="sqrt(p / (1 - p)), G large")
    a.set_xlabel("p: the policy's probability of the right reply")
    a.set_ylabel("weight of the SFT gradient in GSPO's expected step")
    a.axhline(1.0, color="black", lw=0.8, ls="--", label="SFT: every question weight 1")
    twin = a.twinx()
    twin.hist(result["p"], bins=20, range=(0, 1), alpha=0.25, color="grey")
    twin.set_ylabel(f"questions at that p (grey; {result['questions']} asked)")
    a.set_zorder(twin.get_zorder() + 1)  # the curves over the histogram
    a.patch.set_visible(False)
    a.legend(loc="upper left", fontsize=8)
    a.set_title("GSPO's expected step on a one-reply answer: SFT's, weighted by c(p)")
    n = list(range(1, len(result["cos_running_pred"]) + 1))
    b.plot(n, result["cos_running_pred"], "o-", label="mean of rollouts vs prediction c(p)")
    b.plot(n, result["cos_running_sft"], "s-", label="mean of rollouts vs SFT (weight 1)")
    b.plot(n, result["cos_single_pred"], ".", color="grey", label="one rollout vs prediction")
    b.axhline(result["cos_pred_sft"], color="black", lw=0.8, ls="--", label="prediction vs SFT")
    b.set_xlabel("rollouts averaged")
    b.set_ylabel("cosine of gradients")
    b.set_ylim(min(0, min(result["cos_single_pred"])) - 0.05, 1.02)
    b.legend(fontsize=8)
    first = result.get("offset", 0)
    b.set_title(f"train.json questions {first}-{first + result['questions'] - 1}, {G} replies each per rollout"
                + (f"\nreward's format weight {result['format_weight']}" if result.get("format_weight", 0.5) != 0.5
                   else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
