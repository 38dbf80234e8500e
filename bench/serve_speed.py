"""Serving throughput and latency: monolithic (`nativevlm serve`) against decoupled vision/language (DvD:
`nativevlm serve-vision` + `nativevlm serve --vision-url`), at fixed offered loads (Poisson arrivals), with
small and large images.

    python bench/serve_speed.py [--requests 16] [--out bench/results] [--router]

Each request is one image (a distinct random image, so DvD's feature cache never hits) and a question, with a
fixed-length streamed answer; latency is measured to the end of the stream, time to first token to the first
content chunk. The servers run as separate processes with one intra-op thread each, like separate devices
would, but on one machine here: on a 2-core CPU the vision and language processes share the cores, which
caps what the split can gain. Writes bench/results/serve_speed.json and .png.

`--router`: the large images only, each mode with and without a visual resolution router (the same model
with the coarse path, 8x8-patch regions and a router with random weights in request mode, relative
threshold 0.5: about half of each image's regions at 1/16; what it costs and saves does not depend on how
well it was trained). Each point also records the mean image tokens the server reports in `usage`.
Writes serve_speed_router.json and .png instead.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from nativevlm import LanguageConfig, LanguageModel, NativeVLM, VisionConfig
from nativevlm.config import ConnectorConfig, RouterConfig
from nativevlm.data.tokenizer import Tokenizer

IMAGES = {"small (128 px, 16 tokens)": 128, "large (448 px, 196 tokens)": 448}
LOADS = (2.0, 8.0, 32.0)  # offered requests/s: light, busy, saturating
NEW_TOKENS = 32


def make_model_dir(root: Path, router: bool = False) -> Path:
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6))) for _ in range(800)]
    tok = Tokenizer.train([" ".join(rng.choice(words) for _ in range(10)) for _ in range(1500)], vocab_size=1024,
                          min_frequency=1)
    torch.manual_seed(0)
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=256, num_layers=4, num_heads=4,
                                      num_kv_heads=2, intermediate_size=768, max_position_embeddings=2048))
    vision = VisionConfig(hidden_size=256, num_layers=6, num_heads=4, intermediate_size=768)
    vlm = NativeVLM.from_language_model(lm, vision=vision, image_token_ids=tok.image_token_ids())
    if router:
        vlm.add_router(ConnectorConfig(extra_downsample=4, region_size=8),
                       RouterConfig(enabled=True, relative_threshold=0.5, absolute_threshold=0.0, mode="request"))
    vlm.save_pretrained(root)
    tok.save(root)
    return root


def image_uri(side: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def start(args: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nativevlm", *args, "--port", str(port), "--device", "cpu"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server {args} exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"server {args} did not start")


async def one(http: httpx.AsyncClient, url: str, uri: str) -> tuple[float, float, int]:
    """(latency, time to first token, image tokens the server reports it consumed)"""
    body = {"model": "bench", "stream": True, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                      {"type": "text", "text": "describe the image"}]}]}
    t0 = time.perf_counter()
    first, image_tokens = None, 0
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if first is None and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - t0
            if '"usage"' in line and line.startswith("data: "):
                usage = json.loads(line[6:]).get("usage") or {}
                image_tokens = usage.get("prompt_tokens_details", {}).get("image_tokens", 0)
    return time.perf_counter() - t0, first if first is not None else time.perf_counter() - t0, image_tokens


async def offered_load(url: str, uris: list[str], rate: float) -> dict:
    """Poisson arrivals at `rate` requests/s (open loop: arrivals don't wait for answers)."""
    rng = random.Random(1)
    async with httpx.AsyncClient(timeout=600) as http:
        tasks, t0 = [], time.perf_counter()
        for uri in uris:
            tasks.append(asyncio.create_task(one(http, url, uri)))
            await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    lat = [r[0] for r in results]
    ttft = [r[1] for r in results]
    pct = lambda xs, q: float(np.percentile(xs, q))
    return {"offered_rps": rate, "achieved_rps": len(uris) / elapsed, "latency_p50_s": pct(lat, 50),
            "latency_p90_s": pct(lat, 90), "latency_p99_s": pct(lat, 99), "ttft_p50_s": pct(ttft, 50),
            "ttft_p90_s": pct(ttft, 90), "mean_latency_s": statistics.mean(lat),
            "mean_image_tokens": statistics.mean(r[2] for r in results)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16, help="requests per load point")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--router", action="store_true", help="large images, each mode with and without a router")
    args = ap.parse_args()
    results = {}
    images = {k: v for k, v in IMAGES.items() if v == 448} if args.router else IMAGES
    modes = ("monolithic", "monolithic+router", "dvd", "dvd+router") if args.router else ("monolithic", "dvd")
    with tempfile.TemporaryDirectory() as d:
        models = {False: make_model_dir(Path(d) / "bench")}
        if args.router:
            models[True] = make_model_dir(Path(d) / "bench-router", router=True)
        for label, side in images.items():
            uris = [image_uri(side, seed) for seed in range(args.requests * len(LOADS) * 2)]
            results[label] = {}
            for mode in modes:
                model = models[mode.endswith("+router")]
                common = [str(model), "--served-model-name", "bench", "--max-model-len", "1024", "--max-queue", "256"]
                procs = []
                try:
                    if mode.startswith("dvd"):
                        procs.append(start(["serve-vision", str(model)], 8301))
                        procs.append(start(["serve", *common, "--vision-url", "http://127.0.0.1:8301"], 8300))
                    else:
                        procs.append(start(["serve", *common], 8300))
                    asyncio.run(offered_load("http://127.0.0.1:8300", uris[:2], 10.0))  # warm-up
                    points = []
                    for k, rate in enumerate(LOADS):  # fresh images per point (and per mode: same set for both)
                        batch = uris[k * args.requests:(k + 1) * args.requests]
                        points.append(asyncio.run(offered_load("http://127.0.0.1:8300", batch, rate)))
                        print(f"{label:28s} {mode:10s} {rate:4.1f} rps offered -> {points[-1]['achieved_rps']:.2f} rps, "
                              f"p50 {points[-1]['latency_p50_s']:.2f} s, p90 {points[-1]['latency_p90_s']:.2f} s, "
                              f"{points[-1]['mean_image_tokens']:.0f} image tokens",
                              flush=True)
                    results[label][mode] = points
                finally:
                    for p in procs:
                        p.terminate()
                        p.wait()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": f"python bench/serve_speed.py --requests {args.requests}" + (" --router" if args.router else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by both servers, "
                   "1 intra-op thread per server process, fp32, CPU",
        "model": "native VLM: vision 6x256 (patch 16), LM 4x256, random weights", "new_tokens": NEW_TOKENS,
        "requests_per_point": args.requests, "results": results,
    }
    name = "serve_speed_router" if args.router else "serve_speed"
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, out / f"{name}.png")


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(record["results"])
    fig, axes = plt.subplots(1, len(labels) * 2, figsize=(5 * len(labels) * 2 / 1.6, 3.8))
    for i, label in enumerate(labels):
        for mode, pts in record["results"][label].items():
            style = ("o-" if mode.startswith("monolithic") else "s--") + ("" if "router" not in mode else "")
            if "router" in mode:
                style = style.replace("o", "^").replace("s", "v")
            x = [p["offered_rps"] for p in pts]
            axes[2 * i].plot(x, [p["achieved_rps"] for p in pts], style, label=mode)
            axes[2 * i + 1].plot(x, [p["latency_p50_s"] for p in pts], style, label=f"{mode} p50")
            axes[2 * i + 1].plot(x, [p["latency_p90_s"] for p in pts], style, alpha=0.5, label=f"{mode} p90")
        axes[2 * i].set_ylim(bottom=0)
        axes[2 * i + 1].set_ylim(bottom=0)
        axes[2 * i].set_title(f"{label}\nachieved requests/s", fontsize=9)
        axes[2 * i + 1].set_title(f"{label}\nlatency, s", fontsize=9)
        for ax in axes[2 * i: 2 * i + 2]:
            ax.set_xlabel("offered requests/s", fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle(f"monolithic vs decoupled vision (DvD){' with and without the router' if len(record['results'][labels[0]]) > 2 else ''}\n"
                 f"{record['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
