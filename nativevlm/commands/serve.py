"""`nativevlm serve MODEL` (the OpenAI-compatible server) and `nativevlm serve-vision MODEL` (its vision half,
for decoupled serving with `serve --vision-url`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..model.loading import load_pretrained


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over the OpenAI chat API (FastAPI + uvicorn)")
    _common(p, port=8000)
    p.add_argument("--served-model-name", help="the name clients send as `model` (default: the folder name)")
    p.add_argument("--tokenizer", help="tokenizer path, if not stored in the model folder")
    p.add_argument("--max-batch-size", type=int, default=32, help="requests decoded together")
    p.add_argument("--max-model-len", type=int, help="context length (prompt + answer; default: the model's); the "
                   "KV cache holds max-batch-size x this many positions")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch; more get 429")
    p.add_argument("--max-tokens-cap", type=int, default=2048, help="the largest max_tokens a request may ask")
    p.add_argument("--default-max-tokens", type=int, default=256)
    p.add_argument("--limit-images-per-prompt", type=int, default=8)
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1/ routes")
    p.add_argument("--allow-remote-images", action="store_true", help="accept http(s) image URLs")
    p.add_argument("--allowed-media-domains", nargs="*", default=[], help="with remote images: the only hosts")
    p.add_argument("--fetch-timeout", type=float, default=5.0, help="seconds for one remote image")
    p.add_argument("--allowed-local-media-path", help="accept local image paths under this folder only")
    p.add_argument("--vision-url", help="a `nativevlm serve-vision` server: images are encoded there (DvD)")
    p.set_defaults(func=run_serve)

    v = sub.add_parser("serve-vision", help="serve a model's vision encoder + connector for `serve --vision-url`")
    _common(v, port=8001)
    v.add_argument("--max-batch-images", type=int, default=64, help="images encoded together at most")
    v.set_defaults(func=run_serve_vision)


def _common(p, port: int) -> None:
    p.add_argument("model", help="a model folder written by training (holds its tokenizer too)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--max-image-pixels", type=int, default=16_000_000, help="checked from the header, pre-decode")
    p.add_argument("--max-image-bytes", type=int, default=20 * 1024 * 1024)
    p.add_argument("--image-workers", type=int, default=4, help="threads decoding and resizing images")


def load_model(path: str, device: str):
    """The model on `device` in its serving dtype: bf16 on GPU, fp32 on CPU."""
    if not Path(path).exists():
        raise FileNotFoundError(f"model folder {path} does not exist")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return load_pretrained(path).to(device=device, dtype=dtype).eval()


def run_serve(args) -> int:
    # deferred: uvicorn, fastapi and httpx are the optional `serve` extra; the other commands run without them
    import uvicorn

    from ..serve.api import ChatServer, ServeConfig
    from ..serve.media import MediaPolicy
    from ..serve.vision_worker import VisionClient

    model = load_model(args.model, args.device)
    vision = None
    if args.vision_url:
        vision = VisionClient(args.vision_url)
        model.vision = model.connector = None  # the vision half runs on the vision server: free its memory
    media = MediaPolicy(max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels,
                        allow_remote=args.allow_remote_images, allowed_domains=args.allowed_media_domains,
                        fetch_timeout_s=args.fetch_timeout, local_media_path=args.allowed_local_media_path)
    config = ServeConfig(
        model_name=args.served_model_name or Path(args.model).resolve().name, max_batch_size=args.max_batch_size,
        max_len=args.max_model_len, max_queue=args.max_queue, max_tokens_cap=args.max_tokens_cap,
        default_max_tokens=args.default_max_tokens, max_images_per_prompt=args.limit_images_per_prompt,
        request_timeout_s=args.request_timeout, api_key=args.api_key, image_workers=args.image_workers,
        vision_url=args.vision_url, media=media)
    server = ChatServer(model, Tokenizer.load(args.tokenizer or args.model), config, vision=vision)
    print(f"serving {config.model_name!r} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(server.app(), host=args.host, port=args.port, log_level="warning")
    return 0


def run_serve_vision(args) -> int:
    import uvicorn  # deferred, as in run_serve

    from ..serve.media import MediaPolicy
    from ..serve.vision_worker import VisionServer

    model = load_model(args.model, args.device)
    model.language = None  # only the encoder and connector run here
    media = MediaPolicy(max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels)
    server = VisionServer(model, media, max_batch_images=args.max_batch_images, image_workers=args.image_workers)
    print(f"vision server on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(server.app(), host=args.host, port=args.port, log_level="warning")
    return 0
