"""Forward+backward speed of a ~20M-parameter native VLM on CPU (fp32), against a peer measured in the
same run: transformers' SigLIP vision tower + Llama decoder with the same shapes (same layers, widths,
heads and token counts), i.e. the same model written the conventional way.

    python bench/model_speed.py [--steps 6] [--out bench/results]

Writes bench/results/model_speed.json and model_speed.png. Achieved GFLOP/s counts the matmul and
attention FLOPs of forward + backward (3x forward) analytically.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from nativevlm import LanguageConfig, ModelConfig, MoEConfig, NativeVLM, VisionConfig

B, IMG_TOKENS, TEXT_TOKENS, VOCAB = 16, 64, 128, 8192
VIS = dict(hidden_size=256, num_layers=6, num_heads=4, intermediate_size=768)
LM = dict(vocab_size=VOCAB, hidden_size=384, num_layers=8, num_heads=6, num_kv_heads=6, intermediate_size=1024)
IMAGE_SIDE = 16 * 2 * int(IMG_TOKENS ** 0.5)  # 256 px -> 256 patches -> 64 tokens after the 2x2 shuffle


def model_flops(vlm: NativeVLM) -> float:
    """Forward+backward FLOPs of one batch: 6 * (matmul weights x tokens) + attention scores/values."""
    n_patches = (IMAGE_SIDE // 16) ** 2
    seq = IMG_TOKENS + TEXT_TOKENS
    vis_w = sum(p.numel() for n, p in vlm.vision.named_parameters() if p.dim() == 2)
    con_w = sum(p.numel() for p in vlm.connector.parameters() if p.dim() == 2)
    lm_w = sum(p.numel() for n, p in vlm.language.named_parameters()
               if p.dim() == 2 and "embed" not in n and ".visual_" not in n)
    head = VOCAB * LM["hidden_size"]
    flops = 6 * B * (vis_w * n_patches + con_w * IMG_TOKENS + (lm_w + head) * seq)
    flops += 3 * B * 4 * VIS["num_layers"] * n_patches ** 2 * VIS["hidden_size"]
    flops += 3 * B * 4 * LM["num_layers"] * seq ** 2 * LM["hidden_size"] / 2  # causal: half the scores
    return flops


def make_ours(experts: bool) -> tuple[NativeVLM, dict]:
    cfg = ModelConfig(vision=VisionConfig(**VIS), language=LanguageConfig(**LM, tie_word_embeddings=True),
                      moe=MoEConfig(modality_experts=experts), image_token_id=VOCAB - 1)
    model = NativeVLM(cfg)
    ids = torch.randint(0, VOCAB - 2, (B, IMG_TOKENS + TEXT_TOKENS))
    ids[:, 1:1 + IMG_TOKENS] = VOCAB - 1
    targets = torch.randint(0, VOCAB - 2, ids.shape)
    targets[:, :1 + IMG_TOKENS] = -100
    pixels = [torch.randn(3, IMAGE_SIDE, IMAGE_SIDE) for _ in range(B)]
    return model, dict(input_ids=ids, pixel_values=pixels, targets=targets)


def step_ours(model, batch):
    model(**batch).loss.backward()


def make_peer():
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    vis = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=VIS["hidden_size"], num_hidden_layers=VIS["num_layers"], num_attention_heads=VIS["num_heads"],
        intermediate_size=VIS["intermediate_size"], image_size=IMAGE_SIDE, patch_size=16))
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=LM["hidden_size"], num_hidden_layers=LM["num_layers"],
        num_attention_heads=LM["num_heads"], num_key_value_heads=LM["num_kv_heads"],
        intermediate_size=LM["intermediate_size"], tie_word_embeddings=True))
    proj = torch.nn.Sequential(torch.nn.LayerNorm(4 * VIS["hidden_size"]), torch.nn.Linear(4 * VIS["hidden_size"], LM["hidden_size"]),
                               torch.nn.GELU(), torch.nn.Linear(LM["hidden_size"], LM["hidden_size"]))
    for m in (vis, lm):
        m.config._attn_implementation = "sdpa"
    pixels = torch.randn(B, 3, IMAGE_SIDE, IMAGE_SIDE)
    ids = torch.randint(0, VOCAB, (B, TEXT_TOKENS))
    return (vis, proj, lm), dict(pixels=pixels, ids=ids)


def step_peer(models, batch):
    """The same computation the conventional way: SigLIP tower, pixel-shuffle MLP, concatenated embeddings,
    Llama with HF's shifted labels (all positions projected to the vocabulary, as HF does)."""
    vis, proj, lm = models
    feats = vis(pixel_values=batch["pixels"]).last_hidden_state  # [B, 256, D]
    g = IMAGE_SIDE // 16
    f = feats.view(B, g // 2, 2, g // 2, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, IMG_TOKENS, -1)
    emb = torch.cat([proj(f), lm.get_input_embeddings()(batch["ids"])], dim=1)
    labels = torch.cat([torch.full((B, IMG_TOKENS), -100), batch["ids"]], dim=1)
    lm(inputs_embeds=emb, labels=labels).loss.backward()


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """This machine's fp32 GEMM rate (GFLOP/s), measured now, as the yardstick for utilisation."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / timeit(lambda: a @ b, reps) / 1e9


def timeit(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = {}
    dense, batch = make_ours(experts=False)
    flops = model_flops(dense)
    params = sum(p.numel() for p in dense.parameters())
    peer, peer_batch = make_peer()
    runs = {
        "peer: transformers SigLIP + Llama": lambda: step_peer(peer, peer_batch),
        "nativevlm dense": lambda: step_ours(dense, batch),
    }
    experts, ebatch = make_ours(experts=True)
    runs["nativevlm modality experts"] = lambda: step_ours(experts, ebatch)
    # Interleave measurements so that machine noise hits all contenders alike.
    samples = {k: [] for k in runs}
    for _ in range(2):
        for name, fn in runs.items():
            samples[name].append(timeit(fn, args.steps // 2 or 1))
    peak = matmul_peak()
    for name, ts in samples.items():
        t = min(ts)
        rows[name] = {"seconds_per_step": t, "gflops": flops / t / 1e9, "fraction_of_matmul_peak": flops / t / 1e9 / peak}
    peer_t = rows["peer: transformers SigLIP + Llama"]["seconds_per_step"]
    for r in rows.values():
        r["speed_vs_peer"] = peer_t / r["seconds_per_step"]
    result = {
        "what": "fp32 forward+backward, batch 16, 64 image + 128 text tokens, vision 6x256, LM 8x384, vocab 8192",
        "params_dense": params, "flops_per_step": flops, "matmul_peak_gflops": peak, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "results": rows,
    }
    (out / "model_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name:36s} {r['seconds_per_step']*1e3:8.0f} ms/step  {r['gflops']:6.1f} GFLOP/s "
              f"({r['fraction_of_matmul_peak']:.0%} of the {peak:.0f} GFLOP/s GEMM peak)  x{r['speed_vs_peer']:.2f} vs peer")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(rows)
    ax.barh(names, [rows[n]["gflops"] for n in names], color=["#999", "#2a7", "#27a"])
    ax.axvline(peak, color="k", ls="--", lw=1)
    ax.text(peak, 2.4, " 2048² GEMM peak", va="center", fontsize=8)
    ax.set_xlabel("achieved GFLOP/s (fp32, fwd+bwd)")
    ax.set_title(f"~{params/1e6:.0f}M-param VLM train step on CPU ({torch.get_num_threads()} threads)")
    fig.tight_layout()
    fig.savefig(out / "model_speed.png", dpi=120)


if __name__ == "__main__":
    main()
