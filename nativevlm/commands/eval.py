"""`nativevlm eval MODEL --bench SPEC [--bench SPEC ...] --out DIR`: generation-based evaluation of a model
folder, or with `--endpoint URL` of the model MODEL served by any OpenAI-compatible server."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError
from ..data.tokenizer import Tokenizer
from ..data.vet import VET_PROMPT
from ..eval.benchmarks import load_benchmark
from ..eval.harness import check_run, run_benchmark, write_results
from ..eval.local import LocalAnswerer
from ..eval.loss import validation_loss
from ..infer.pipelines import EXTRACT_PROMPT, ExtractThink
from ..model.loading import load_pretrained
from ..model.vlm import NativeVLM
from .ask import add_thinking_arguments, check_thinking


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model (or an OpenAI-compatible endpoint) on benchmark files",
                       description="SPEC: world:DIR (the built-in world's test split), llava:FILE (LLaVA JSON / "
                                   "chat JSONL QA pairs), tsv:FILE (a VLMEvalKit TSV), or a bare path whose form "
                                   "says which; NAME=SPEC names it in the results.")
    p.add_argument("model", help="a model folder written by training, or with --endpoint the served model's name")
    p.add_argument("--bench", action="append", default=[], metavar="SPEC", help="a benchmark (repeatable)")
    p.add_argument("--out", required=True, help="results folder: results.json, report.md, one folder per "
                                                "benchmark (answers, scored records); rerun to resume")
    p.add_argument("--circular", action="store_true",
                   help="multiple choice: ask every rotation of the options; right only if all are")
    p.add_argument("--visual-reliance", action="store_true",
                   help="also ask with a blank image of the same size: accuracy drop per category and kind")
    p.add_argument("--val-data", help="also report the teacher-forced loss on this LLaVA JSON / chat JSONL file")
    p.add_argument("--limit", type=int, help="only the first N questions of each benchmark (a quick look)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reasoner", metavar="LM",
                   help="Extract+Think (Prism): MODEL describes each image, this text-only model folder answers "
                        "from the description; the descriptions are in each answer's trace")
    p.add_argument("--extract-prompt", default=None,
                   help="what MODEL is asked with --reasoner; {question} makes it question-guided; `vet` is "
                        "visual extraction tuning's prompt, for a perceiver trained by recipes/vet-perceiver.yaml "
                        "(default: 'Describe the image.', the built-in world's caption prompt)")
    p.add_argument("--extract-max-new-tokens", type=int, default=128, help="length cap of a description")
    add_thinking_arguments(p)  # with --reasoner, the reasoner thinks; only the answer is ever scored
    p.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="bearer token for --endpoint (default: $OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight to --endpoint")
    p.add_argument("--retries", type=int, default=4, help="retries per failed request to --endpoint")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request to --endpoint")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.bench:
        raise ConfigError("give at least one --bench SPEC (world:DIR, llava:FILE, tsv:FILE)")
    for name, value in (("--limit", args.limit), ("--concurrency", args.concurrency),
                        ("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                        ("--extract-max-new-tokens", args.extract_max_new_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    check_thinking(args)
    if args.extract_prompt is not None and not args.reasoner:
        raise ConfigError("--extract-prompt is the first stage of Extract+Think; give the answering model with "
                          "--reasoner LM")
    if args.endpoint and args.think is not None:
        raise ConfigError("--think / --no-think run in this process's engine; for --endpoint send the server's own "
                          "thinking fields (ours: think, thinking_budget)")
    if args.endpoint and args.val_data:
        raise ConfigError("--val-data needs the model's weights; it can't be measured through --endpoint")
    benches = [load_benchmark(spec) for spec in args.bench]
    for bench in benches:
        bench.items = bench.items[:args.limit] if args.limit else bench.items
    out = Path(args.out)
    # what the answers depend on: a results folder never mixes two of these
    run_info = {"model": args.model, "endpoint": args.endpoint, "max_new_tokens": args.max_new_tokens}
    if args.think is not None:
        run_info.update(think=args.think, thinking_budget=args.thinking_budget)
    if args.reasoner:
        extract_prompt = {None: EXTRACT_PROMPT, "vet": VET_PROMPT}.get(args.extract_prompt, args.extract_prompt)
        run_info.update(reasoner=args.reasoner, extract_prompt=extract_prompt,
                        extract_max_new_tokens=args.extract_max_new_tokens)
    first_tokens = args.extract_max_new_tokens if args.reasoner else args.max_new_tokens  # MODEL's reply
    check_run(out, run_info)
    extra = {}
    if args.endpoint:
        from ..eval.endpoint import EndpointAnswerer  # deferred: needs httpx, an optional extra

        answerer = EndpointAnswerer(args.endpoint, args.model, args.api_key, args.concurrency, first_tokens,
                                    args.retries, args.timeout)
    else:
        model = load_pretrained(args.model)
        with_images = [b.name for b in benches if any(item.images for item in b.items)]
        if not isinstance(model, NativeVLM) and with_images:  # a text-only benchmark is fine for an LM
            raise ConfigError(f"{args.model} is a language model and {', '.join(with_images)} has images: evaluate "
                              "a vision-language model, or give this one as --reasoner of Extract+Think")
        tokenizer = Tokenizer.load(args.model)
        thinks = {} if args.reasoner else {"think": args.think, "thinking_budget": args.thinking_budget}
        answerer = LocalAnswerer(model, tokenizer, args.batch_size, first_tokens, **thinks)
        if args.val_data:
            extra["val_loss"] = validation_loss(model, tokenizer, args.val_data, args.batch_size)
    if args.reasoner:
        reasoner = local_reasoner(args.reasoner, args.batch_size, args.max_new_tokens, args.think,
                                  args.thinking_budget)
        answerer = ExtractThink(answerer, reasoner, extract_prompt)
    results = [run_benchmark(b, answerer, out, args.circular, args.visual_reliance) for b in benches]
    write_results(out, run_info, results, extra)
    print((out / "report.md").read_text())
    print(f"results: {out / 'results.json'}  report: {out / 'report.md'}")
    failed = [r.name for r in results if r.summary()["request_failure_rate"] > 0]
    if failed:  # the scores are incomplete: say so in the exit status too, for scripts
        print(f"requests failed in {', '.join(failed)}: run the same command again to ask them again")
        return 1
    return 0


def local_reasoner(path: str, batch_size: int, max_new_tokens: int, think=None, thinking_budget=None):
    """The text-only second stage of Extract+Think, loaded from a model folder, thinking as asked."""
    model = load_pretrained(path)
    if isinstance(model, NativeVLM):
        raise ConfigError(f"--reasoner {path} is a vision-language model; Extract+Think answers with a text-only "
                          "model (a language model folder, e.g. one fine-tuned by recipes/reasoner.yaml)")
    return LocalAnswerer(model, Tokenizer.load(path), batch_size, max_new_tokens, think, thinking_budget)
