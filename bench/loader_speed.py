"""Is data loading the bottleneck? Samples/s of the loader (read, PNG decode, resize, tokenise, collate)
against samples/s of the training step (forward + backward + AdamW) of the quickstart's native VLM, on the
same batches, in the same process.

    python bench/loader_speed.py [--batches 20] [--out bench/results]

Writes bench/results/loader_speed.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    from nativevlm import LanguageConfig, LanguageModel, NativeVLM, VisionConfig
    from nativevlm.data.collate import Collator
    from nativevlm.data.formats import read_samples
    from nativevlm.data.image import ImageProcessor
    from nativevlm.data.tokenizer import Tokenizer
    from nativevlm.data.world import generate_world

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        generate_world(tmp, 400, split="train", preset="basic", progress=False)
        samples, _ = read_samples(Path(tmp) / "train_chat.json")
        tok = Tokenizer.train((Path(tmp) / "train_text.txt").read_text().splitlines(), vocab_size=1024)
        # The quickstart's sizes (nativevlm/quickstart.py SCALE).
        lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=192, num_layers=4, num_heads=3,
                                          num_kv_heads=1, intermediate_size=512, qk_norm=True))
        vlm = NativeVLM.from_language_model(lm, vision=VisionConfig(hidden_size=128, num_layers=2, num_heads=4,
                                                                    intermediate_size=352, max_patches=64),
                                            image_token_ids=tok.image_token_ids())
        collate = Collator(tok, ImageProcessor.from_config(vlm.config.vision, vlm.config.connector), max_length=320)
        chunks = [samples[i * args.batch_size:(i + 1) * args.batch_size] for i in range(args.batches)]

        t0 = time.perf_counter()
        batches = [collate(c) for c in chunks]
        load_s = time.perf_counter() - t0

        opt = torch.optim.AdamW(vlm.parameters(), lr=1e-3)
        vlm(batches[0]).loss.backward()  # warm-up
        opt.zero_grad()
        t0 = time.perf_counter()
        for b in batches:
            vlm(b).loss.backward()
            opt.step()
            opt.zero_grad()
        step_s = time.perf_counter() - t0

    n = args.batches * args.batch_size
    result = {
        "what": "world chat samples (one scene's questions each), batch 16, quickstart model sizes, fp32",
        "loader_samples_per_s": n / load_s, "train_samples_per_s": n / step_s,
        "loader_share_of_step_time": load_s / (load_s + step_s),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loader_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"loader {result['loader_samples_per_s']:.0f} samples/s, training step {result['train_samples_per_s']:.0f} "
          f"samples/s: loading in the same process would take {result['loader_share_of_step_time']:.0%} of the time")


if __name__ == "__main__":
    main()
