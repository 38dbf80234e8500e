"""The full training step (forward, backward, gradient clipping, AdamW step) of our native VLM against
transformers' `LlavaForConditionalGeneration` built from a config, in one run, at identical dimensions:
vision 6x256 over 256 patches (256 px, 16-px patches), a 2x2 pixel-shuffle MLP connector, LM 8x384,
64 image + 128 text tokens, vocabulary 8192, batch 16, fp32 on CPU.

    python bench/train_step.py [--rounds 3] [--steps 1] [--out bench/results/train_step]

The peer is the conventional way to write this model: Llava with a SigLIP tower (no pooling head) and a
Llama decoder, its projector swapped for the same pixel-shuffle MLP ours has (Llava's own projector would
give 256 image tokens), labels on the text tokens, `torch.optim.AdamW` with its defaults. Ours is
`NativeVLM` trained by our own `train.step.train_step` with `train.optim.build_optimizer` (the step the
trainer runs). After one warm-up step each, contenders are measured in interleaved rounds, each round
taking the median CPU time of `--steps` steps, and the result is the median over rounds, so machine noise
hits all alike. Utilisation (MFU) is each model's forward+backward FLOPs (matmuls and attention, LM head on the
loss positions only) per second over the fp32 2048^2 GEMM rate measured in the same run.

Writes train_step.json, train_step.png and profile.txt (torch.profiler's top ops of our step).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from nativevlm import LanguageConfig, ModelConfig, MoEConfig, NativeVLM, VisionConfig
from nativevlm.model.batch import Batch
from nativevlm.model.connector import pixel_shuffle
from nativevlm.train.config import StageConfig
from nativevlm.train.objectives import build
from nativevlm.train.optim import build_optimizer
from nativevlm.train.step import train_step

B, IMG_TOKENS, TEXT_TOKENS, VOCAB = 16, 64, 128, 8192
VIS = dict(hidden_size=256, num_layers=6, num_heads=4, intermediate_size=768)
LM = dict(vocab_size=VOCAB, hidden_size=384, num_layers=8, num_heads=6, num_kv_heads=6, intermediate_size=1024)
PATCH, SHUFFLE = 16, 2
IMAGE_SIDE = PATCH * SHUFFLE * int(IMG_TOKENS ** 0.5)  # 256 px -> 256 patches -> 64 tokens after the shuffle
IMAGE_ID = VOCAB - 1
STAGE = StageConfig(lr=1e-4, weight_decay=0.05, betas=[0.9, 0.95], grad_clip=1.0)


def step_flops(model: nn.Module, vision_ffn_mats: int) -> float:
    """Forward+backward FLOPs of one batch: 6 x (weights x tokens) for every matmul, plus attention
    scores and values; the LM head counts on the text (loss) positions only, for both models."""
    n_patches = (IMAGE_SIDE // PATCH) ** 2
    seq = IMG_TOKENS + TEXT_TOKENS
    d, dl = VIS["hidden_size"], LM["hidden_size"]
    vision = VIS["num_layers"] * (4 * d * d + vision_ffn_mats * d * VIS["intermediate_size"]) + 3 * PATCH ** 2 * d
    connector = 4 * d * dl + dl * dl
    lm = LM["num_layers"] * (4 * dl * dl + 3 * dl * LM["intermediate_size"])
    flops = 6 * B * (vision * n_patches + connector * IMG_TOKENS + lm * seq + VOCAB * dl * TEXT_TOKENS)
    flops += 3 * B * 4 * VIS["num_layers"] * n_patches ** 2 * d
    flops += 3 * B * 4 * LM["num_layers"] * seq ** 2 * dl / 2  # causal: half the scores
    return flops


def token_layout() -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [B, 1 + 64 + 127]: a first text token, the image block, then text; the labels (HF style,
    unshifted) cover the text after the image."""
    ids = torch.randint(0, VOCAB - 2, (B, IMG_TOKENS + TEXT_TOKENS))
    ids[:, 1:1 + IMG_TOKENS] = IMAGE_ID
    labels = ids.clone()
    labels[:, :1 + IMG_TOKENS] = -100
    return ids, labels


def make_ours(arch: str, experts: bool, ids, labels, pixels):
    """NativeVLM at the peer's dimensions; `arch="vit"` is the compositional model (SigLIP-style tower, no
    modality experts), the peer's exact computation; `"native"` is NaViL's encoder (SwiGLU, 2D RoPE)."""
    vis = VisionConfig(**VIS, arch=arch, patch_size=PATCH, image_size=IMAGE_SIDE, bias=arch == "vit",
                       post_norm=arch == "vit")
    cfg = ModelConfig(vision=vis, language=LanguageConfig(**LM, tie_word_embeddings=True),
                      moe=MoEConfig(modality_experts=experts), image_token_id=IMAGE_ID)
    model = NativeVLM(cfg)
    targets = torch.cat([labels[:, 1:], torch.full((B, 1), -100)], dim=1)  # ours are pre-shifted
    batch = Batch(input_ids=ids, targets=targets, loss_weights=(targets != -100).float(),
                  attention_mask=torch.ones_like(ids, dtype=torch.bool), pixel_values=list(pixels))
    optimizer = build_optimizer(model, STAGE)
    params = [p for p in model.parameters() if p.requires_grad]
    objectives = build([{"name": "sft"}], "bench")
    cpu = torch.device("cpu")

    def step():
        train_step(model, [batch], optimizer, params, STAGE.grad_clip, 1, cpu, False, objectives)
    return model, step


class ShuffleProjector(nn.Module):
    """Llava's projector slot filled with the pixel-shuffle MLP ours has: [B, 256, D] -> [B, 64, llm]."""

    def __init__(self):
        super().__init__()
        d = VIS["hidden_size"] * SHUFFLE ** 2
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, LM["hidden_size"]), nn.GELU(),
                                 nn.Linear(LM["hidden_size"], LM["hidden_size"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = IMAGE_SIDE // PATCH
        return self.mlp(pixel_shuffle(x.view(x.shape[0], g, g, -1), SHUFFLE).flatten(1, 2))


def make_peer(ids, labels, pixels, fused: bool = False):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    cfg = LlavaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=VIS["hidden_size"], num_hidden_layers=VIS["num_layers"], num_attention_heads=VIS["num_heads"],
            intermediate_size=VIS["intermediate_size"], image_size=IMAGE_SIDE, patch_size=PATCH, vision_use_head=False),
        text_config=LlamaConfig(
            vocab_size=VOCAB, hidden_size=LM["hidden_size"], num_hidden_layers=LM["num_layers"],
            num_attention_heads=LM["num_heads"], num_key_value_heads=LM["num_kv_heads"],
            intermediate_size=LM["intermediate_size"], tie_word_embeddings=True),
        image_token_index=IMAGE_ID, vision_feature_select_strategy="full", vision_feature_layer=-1,
        tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlavaForConditionalGeneration(cfg)
    model.model.multi_modal_projector = ShuffleProjector()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": STAGE.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=STAGE.lr, betas=tuple(STAGE.betas), eps=STAGE.eps, fused=fused or None)
    params = list(model.parameters())
    stacked = torch.stack(list(pixels))

    def step():
        model(input_ids=ids, pixel_values=stacked, labels=labels).loss.backward()
        nn.utils.clip_grad_norm_(params, STAGE.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, step


def timed(fn, steps: int, warm_up: bool = True) -> float:
    """Median CPU seconds of `steps` calls (after one warm-up call). CPU time, not wall time: on a shared
    machine a single-threaded process's wall time mostly measures its neighbours (a step's wall time
    varied 5x between rounds here, its CPU time by a few percent)."""
    if warm_up:
        fn()
    times = []
    for _ in range(steps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def gemm_rate(n: int = 2048, reps: int = 10) -> float:
    """This machine's fp32 GEMM rate (GFLOP/s) now, the yardstick for utilisation."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / timed(lambda: a @ b, reps) / 1e9


def profile(step, path: Path, rows: int = 25) -> None:
    """torch.profiler's top ops (by self CPU time) over two steps, after a warm-up step."""
    from torch.profiler import ProfilerActivity, profile as prof

    step()
    with prof(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(2):
            step()
    path.write_text(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows) + "\n")


def compile_payback(ids, labels, pixels, steps: int, out: Path) -> None:
    """torch.compile on every vision and decoder layer of the native model: the first (compiling) step's
    CPU seconds against the steady step's saving gives the steps a run needs before compiling pays.
    Inductor compiles in this process (one compile thread), so its work counts in the CPU time."""
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    times = {}
    for compiled in (False, True):
        model, step = make_ours("native", True, ids, labels, pixels)
        if compiled:
            for layer in [*model.vision.layers, *model.language.layers]:
                layer.compile()
        t0 = time.process_time()
        step()
        first = time.process_time() - t0
        times["compiled" if compiled else "eager"] = {"first_step": first, "step": timed(step, steps)}
    saving = times["eager"]["step"] - times["compiled"]["step"]
    extra = times["compiled"]["first_step"] - times["eager"]["first_step"]
    times["steps_to_pay_back"] = extra / saving if saving > 0 else None
    (out / "compile.json").write_text(json.dumps(times, indent=2) + "\n")
    print(json.dumps(times, indent=2))


def plot(rows: dict, peak: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.6))
    ax.barh(names, [rows[n]["samples_per_s"] for n in names],
            color=["#999" if n.startswith("peer") else "#2a7" for n in names])
    for i, n in enumerate(names):
        r = rows[n]
        ax.text(r["samples_per_s"], i, f" x{r['speed_vs_peer']:.2f}, MFU {r['mfu']:.0%}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("samples/s (fp32 train step incl. AdamW, batch 16)")
    ax.set_title(f"Train step vs transformers Llava at identical dimensions\n"
                 f"CPU, {torch.get_num_threads()} thread(s), 2048² fp32 GEMM {peak:.0f} GFLOP/s", fontsize=10)
    ax.set_xlim(0, max(r["samples_per_s"] for r in rows.values()) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per contender per round")
    ap.add_argument("--out", default="bench/results/train_step")
    ap.add_argument("--compile", action="store_true", help="only measure torch.compile's cost and gain")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ids, labels = token_layout()
    pixels = torch.randn(B, 3, IMAGE_SIDE, IMAGE_SIDE).unbind(0)
    if args.compile:
        return compile_payback(ids, labels, pixels, args.steps, out)

    peer_name = "peer: transformers Llava (SigLIP + Llama), torch AdamW"
    contenders = {
        peer_name: (make_peer(ids, labels, pixels), 2),
        "peer with fused AdamW": (make_peer(ids, labels, pixels, fused=True), 2),
        "nativevlm compositional (SigLIP-style ViT)": (make_ours("vit", False, ids, labels, pixels), 2),
        "nativevlm native (NaViL encoder, modality experts)": (make_ours("native", True, ids, labels, pixels), 3),
    }
    for (_, step), _ in contenders.values():
        step()  # warm-up: first-call allocations, the optimizer's state
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    peaks = []
    for _ in range(args.rounds):
        peaks.append(gemm_rate())
        for name, ((_, step), _) in contenders.items():
            samples[name].append(timed(step, args.steps, warm_up=False))
    peak = statistics.median(peaks)

    rows = {}
    for name, ((model, _), ffn_mats) in contenders.items():
        t = statistics.median(samples[name])
        flops = step_flops(model, ffn_mats)
        rows[name] = {"seconds_per_step": t, "samples_per_s": B / t, "flops_per_step": flops,
                      "gflops": flops / t / 1e9, "mfu": flops / t / 1e9 / peak, "round_seconds": samples[name]}
    for r in rows.values():
        r["speed_vs_peer"] = rows[peer_name]["seconds_per_step"] / r["seconds_per_step"]
    result = {
        "what": "fp32 train step (forward, backward, grad clip 1.0, AdamW) at batch 16, 64 image + 128 text tokens, "
                "vision 6x256 on 256 patches, 2x2 pixel-shuffle MLP, LM 8x384, vocab 8192",
        "command": "nice -n 10 python bench/train_step.py",
        "rounds": args.rounds, "steps_per_round": args.steps, "gemm_gflops": peak, "gemm_gflops_rounds": peaks,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "results": rows,
    }
    (out / "train_step.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name:52s} {r['samples_per_s']:6.2f} samples/s  MFU {r['mfu']:.0%}  x{r['speed_vs_peer']:.2f} vs peer")
    plot(rows, peak, out / "train_step.png")
    profile(contenders["nativevlm native (NaViL encoder, modality experts)"][0][1], out / "profile.txt")


if __name__ == "__main__":
    main()
