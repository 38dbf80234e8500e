"""Generation speed of our engine against transformers' `generate` on the same weights: decoder LMs exported
to a Hugging Face Llama folder with `hub.save_language_model` and loaded by `LlamaForCausalLM`. Greedy,
fixed-length answers (no early end), prompts of equal length so neither side pads. Two sizes, because they
are bound by different things on a CPU: the ~17M model's 69 MB of fp32 weights do not fit in cache, so each
decode step streams them from memory (both sides pay that); the ~1M model fits, so per-step overhead
(Python, small kernels) is what is measured.

    python bench/generation_speed.py [--new-tokens 128] [--prompt 64] [--threads 1] [--out bench/results]

Per implementation and batch size (1 and 8): time to first token (a 1-token generation: prefill + one
sample), total time for `--new-tokens`, and decode tokens/s = batch * (new - 1) / (total - first).
First checks that both produce the same tokens. Writes bench/results/generation_speed.json and .png.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nativevlm import LanguageConfig, LanguageModel
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.infer.engine import Engine, Request, SamplingParams
from nativevlm.model.hub import save_language_model

MODELS = {
    "17M": dict(hidden_size=384, num_layers=10, num_heads=6, num_kv_heads=2, intermediate_size=1024),
    "1M": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256),
}


def tokenizer(vocab: int) -> Tokenizer:
    """A BPE tokenizer of `vocab` tokens (the engine detokenises as it goes, as a server does)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(6000)]
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(4000)]
    return Tokenizer.train(lines, vocab_size=vocab, min_frequency=1)


def interleaved_times(fns: dict, repeats: int) -> dict:
    """Median seconds per function, the functions run in turn in each round: on a shared machine the load
    then falls on all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(tok, shape: dict, args) -> tuple[dict, int]:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, max_position_embeddings=1024, **shape)).eval()
    with tempfile.TemporaryDirectory() as d:
        save_language_model(lm, d)
        hf = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    n, p = args.new_tokens, args.prompt
    results = {}
    for b in (1, 8):
        prompts = torch.randint(0, tok.vocab_size, (b, p))
        engine = Engine(lm, tok, max_batch_size=b, max_len=p + n)

        def ours(k, engine=engine, prompts=prompts, b=b):
            out = engine.generate([Request(prompts[i].tolist(), SamplingParams(max_new_tokens=k, ignore_eos=True))
                                   for i in range(b)])
            return [c.token_ids for c in out]

        @torch.inference_mode()
        def theirs(k, prompts=prompts):
            out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=k, min_new_tokens=k,
                              do_sample=False, pad_token_id=0)
            return out[:, p:].tolist()

        row = {"same_greedy_tokens": ours(16) == theirs(16)}
        t = interleaved_times({"nativevlm_first": lambda: ours(1), "transformers_first": lambda: theirs(1),
                               "nativevlm_total": lambda: ours(n), "transformers_total": lambda: theirs(n)},
                              args.repeats)
        for name in ("nativevlm", "transformers"):
            first, total = t[f"{name}_first"], t[f"{name}_total"]
            row[name] = {"ttft_ms": 1000 * first, "total_s": total, "decode_tokens_per_s": b * (n - 1) / (total - first)}
            print(f"{sum(x.numel() for x in lm.parameters()) / 1e6:.1f}M batch {b} {name:12s} ttft {1000 * first:7.1f} ms"
                  f"  decode {row[name]['decode_tokens_per_s']:8.1f} tok/s", flush=True)
        row["decode_speedup"] = row["nativevlm"]["decode_tokens_per_s"] / row["transformers"]["decode_tokens_per_s"]
        row["ttft_speedup"] = row["transformers"]["ttft_ms"] / row["nativevlm"]["ttft_ms"]
        results[f"batch_{b}"] = row
    return results, sum(x.numel() for x in lm.parameters())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = tokenizer(4096)
    results, sizes = {}, {}
    for size, shape in MODELS.items():
        results[size], sizes[size] = measure(tok, shape, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    record = {
        "command": f"python bench/generation_speed.py --new-tokens {args.new_tokens} --prompt {args.prompt} "
                   f"--repeats {args.repeats} --threads {args.threads}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, fp32, CPU",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "models": {size: {**MODELS[size], "vocab_size": tok.vocab_size, "parameters": sizes[size]} for size in MODELS},
        "prompt_tokens": args.prompt, "new_tokens": args.new_tokens, "targets": {"batch_1": 3.0, "batch_8": 2.0}, "results": results,
    }
    (out / "generation_speed.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, out / "generation_speed.png")


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(record["results"])
    fig, axes = plt.subplots(len(sizes), 2, figsize=(10, 3.6 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        res = record["results"][size]
        batches = list(res)
        for ax, key, label in ((axes[row][0], "decode_tokens_per_s", "decode tokens/s (higher is better)"),
                               (axes[row][1], "ttft_ms", "time to first token, ms (lower is better)")):
            for k, name in enumerate(("transformers", "nativevlm")):
                bars = ax.bar([i + 0.4 * k for i in range(len(batches))], [res[b][name][key] for b in batches], 0.4,
                              label=name)
                ax.bar_label(bars, fmt="%.0f" if key == "decode_tokens_per_s" else "%.1f", fontsize=8)
            ax.set_xticks([i + 0.2 for i in range(len(batches))], [b.replace("_", " ") for b in batches])
            speed = ", ".join(f"{b.replace('_', ' ')} {res[b]['decode_speedup' if 'tokens' in key else 'ttft_speedup']:.1f}x"
                              for b in batches)
            ax.set_title(f"{size} model: {label}\nnativevlm / transformers: {speed}", fontsize=9)
            ax.legend(fontsize=8)
    fig.suptitle(f"greedy generation, {record['prompt_tokens']}-token prompts, {record['new_tokens']} new tokens; "
                 f"{record['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
