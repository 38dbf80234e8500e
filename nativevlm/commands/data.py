"""`nativevlm data ...`: the built-in visual world, curation, and data made from data (text corpora,
Extract+Think records, preference pairs)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import ConfigError
from ..data.curate.base import load_records
from ..data.curate.cli import register as register_curate
from ..data.extract_think import GUIDED_PROMPT, descriptions_by_image, extraction_records, reasoner_records
from ..data.formats import DataError, read_samples
from ..data.sample import IMAGE_MARKER, strip_image_markers
from ..data.world.cli import register as register_world
from ..infer.chat import model_logprob_fn


def register(sub) -> None:
    p = sub.add_parser("data", help="generate the built-in visual world; curate datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    register_world(dsub)
    register_curate(dsub, model_judge=_model_judge)
    s = dsub.add_parser("shard", help="write any dataset we read as WebDataset tar shards (image bytes + one JSON "
                                      "per record) that training, evaluation and curation stream")
    s.add_argument("data", help="LLaVA .json, chat .jsonl, a .parquet file or a shard folder (to reshard)")
    s.add_argument("--out", required=True, help="output folder (shard-NNNNNN.tar and their index, shards.json)")
    s.add_argument("--shard-size", type=int, default=1000, help="records per shard (default: %(default)s)")
    s.add_argument("--image-root", help="folder image paths are relative to (default: the data file's)")
    s.set_defaults(func=write_shards)
    t = dsub.add_parser("text", help="the text of the conversations of a LLaVA .json / chat .jsonl file, images "
                                     "dropped: what a small text LM pretrains on")
    t.add_argument("data", nargs="+", help="LLaVA .json or chat-messages .jsonl files (images are not opened)")
    t.add_argument("--out", required=True,
                   help="output file: .jsonl writes text-only chat conversations (the turns the VLM will be trained "
                        "on, in its chat template, minus the images: what a text LM should learn before it is grown "
                        "into a VLM); .txt writes one plain `Question: ... Answer: ...` document per line")
    t.set_defaults(func=write_text_corpus)
    e = dsub.add_parser("extract-think", help="Extract+Think (Prism) training data from a QA file and a descriptions "
                                              "file: reason.json (text-only: description + question -> answer, for "
                                              "the reasoner) and extract.json (image + question -> description)")
    e.add_argument("qa", help="LLaVA JSON (or JSONL) QA file: one question and one answer per record, "
                                "with `image`")
    e.add_argument("--descriptions", required=True,
                   help="LLaVA JSON (or JSONL) captions of the same images (matched by `image` path; the last turn is the text)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--guided-prompt", default=None,
                   help="extract.json's instruction, with {question} (default: data.extract_think.GUIDED_PROMPT)")
    e.set_defaults(func=write_extract_think)
    v = dsub.add_parser("vet", help="visual extraction tuning data: each sample's QA pairs as statements, in a "
                                     "fine-grained description the perceiver learns to write from the "
                                     "question-guided prompt (recipes/vet-perceiver.yaml trains on it)")
    v.add_argument("qa", help="LLaVA JSON (or JSONL) with images and QA turns (e.g. the world's train.json)")
    v.add_argument("--out", required=True, help="output LLaVA JSON file")
    v.add_argument("--descriptions", help="LLaVA captions of the same images, the base of each description (matched by "
                                          "`image`; the world's <split>_captions.json: its scene ground truth in "
                                          "words); without it a description is the statements alone")
    v.set_defaults(func=write_vet)
    p = dsub.add_parser("preferences", help="MPO preference pairs: sample a model N times on each question of a QA "
                                            "file, keep a right and a wrong reply per question (cached)")
    p.add_argument("qa", help="LLaVA JSON (or JSONL) QA file with answers (e.g. the world's train.json)")
    p.add_argument("--model", required=True, help="model folder (with its tokenizer)")
    p.add_argument("--out", required=True, help="pair file (.jsonl); a rerun samples only questions not yet done")
    p.add_argument("--n", type=int, default=8, help="replies sampled per question (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="(default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="(default: 32)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--think", action="store_true",
                   help="thinking-mode replies (a think-fusion model): each opens <think>, the answer is read after "
                        "</think>, and the pair keeps the whole turn, so MPO trains the thinking too")
    p.add_argument("--thinking-budget", type=int, default=None, metavar="N",
                   help="with --think: force </think> after N tokens of thinking (N < --max-new-tokens)")
    p.add_argument("--direct-share", type=float, default=0.0, metavar="P",
                   help="with --think: ask this share of the questions directly instead (a hash of seed and id "
                        "decides each), so one pair file trains both modes (default: 0)")
    p.add_argument("--strict", action="store_true",
                   help="a right answer counts only alone (a hedge such as 'yes or no' is a rejected reply)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    p.set_defaults(func=write_preferences)


def conversation_text(sample) -> str:
    """One document: each user turn as `Question: ...`, each assistant turn as `Answer: ...`, image markers
    dropped, on one line (the shape of the world's own text corpus)."""
    parts = []
    for m in sample.messages:
        text = " ".join(m["content"].replace(IMAGE_MARKER, " ").split())
        if text:
            parts.append(f"{'Answer' if m['role'] == 'assistant' else 'Question'}: {text}")
    return " ".join(parts)


def text_only_messages(sample) -> list[dict]:
    """The sample's turns with image markers dropped (turns left empty dropped too): what the model would be
    asked and answer without the images, in the same chat template."""
    turns = [{"role": m["role"], "content": strip_image_markers(m["content"])} for m in sample.messages]
    turns = [m for m in turns if m["content"]]
    return turns if any(m["role"] == "assistant" for m in turns) else []


def write_text_corpus(args) -> int:
    chat = Path(args.out).suffix == ".jsonl"
    if not chat and Path(args.out).suffix != ".txt":
        raise ConfigError(f"--out {args.out}: write a .jsonl (text-only chat conversations) or a .txt file")
    lines = []
    for path in args.data:
        samples, report = read_samples(path, check_images=False)
        if report.n_skipped:
            print(report.summary())
        if chat:
            lines += [json.dumps({"messages": m}, ensure_ascii=False) for m in map(text_only_messages, samples) if m]
        else:
            lines += [t for t in (conversation_text(s) for s in samples) if t]
    if not lines:
        raise ConfigError(f"{', '.join(args.data)}: no conversation text to write")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} documents -> {args.out}")
    return 0


def write_shards(args) -> int:
    from ..data.formats import shard_file

    shards = shard_file(args.data, args.out, args.shard_size, args.image_root)
    print(f"{sum(s.n for s in shards)} records -> {len(shards)} shards in {args.out}")
    return 0


def write_extract_think(args) -> int:
    entries, malformed = load_records(Path(args.qa))  # the curator's reader: JSON list or JSONL, raw records kept
    qa = [e.record for e in entries]
    descriptions = descriptions_by_image([e.record for e in load_records(Path(args.descriptions))[0]])
    if not descriptions:
        raise DataError(f"--descriptions {args.descriptions}: no record has an `image` and a conversation")
    reason, skipped = reasoner_records(qa, descriptions)
    if malformed:
        skipped = {"malformed record": len(malformed), **skipped}
    extract, _ = extraction_records(qa, descriptions, args.guided_prompt or GUIDED_PROMPT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("reason.json", reason), ("extract.json", extract)):
        (out / name).write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    print(f"{len(reason)} questions -> {out / 'reason.json'} and {out / 'extract.json'}"
          + (f"; skipped {sum(skipped.values())} of {len(qa) + len(malformed)}: {skipped}" if skipped else ""))
    return 0


def write_vet(args) -> int:
    from ..data.vet import vet_records

    entries, malformed = load_records(Path(args.qa))
    descriptions = None
    if args.descriptions:
        descriptions = descriptions_by_image([e.record for e in load_records(Path(args.descriptions))[0]])
        if not descriptions:
            raise DataError(f"--descriptions {args.descriptions}: no record has an `image` and a conversation")
    records, skipped = vet_records([e.record for e in entries], descriptions)
    based = sum(r["image"] in (descriptions or {}) for r in records)
    src, dst = Path(args.qa).resolve().parent, Path(args.out).resolve().parent
    for r in records:  # image paths stay right wherever OUT is written
        r["image"] = os.path.relpath(src / r["image"], dst)
    if malformed:
        skipped = {"malformed record": len(malformed), **skipped}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    print(f"{len(records)} VET records ({based} on a base description) -> {args.out}"
          + (f"; skipped {sum(skipped.values())}: {skipped}" if skipped else ""))
    return 0


def write_preferences(args) -> int:
    from pathlib import Path

    import torch

    from ..config import ConfigError
    from ..data.formats import read_samples
    from ..data.image import ImageProcessor
    from ..errors import DataError
    from ..infer.chat import load_model_and_tokenizer
    from ..rl.preferences import SamplingSettings, make_preferences, sample_replies

    if args.n < 2 or args.temperature <= 0 or args.max_new_tokens < 1 or (args.limit or 1) < 1:
        raise ConfigError(f"--n {args.n}, --temperature {args.temperature}, --max-new-tokens {args.max_new_tokens}, "
                          f"--limit {args.limit}: a pair needs n >= 2 different samples (temperature > 0) of at "
                          "least one token, of at least one question")
    # settings checked before anything is read or loaded
    if (args.thinking_budget is not None or args.direct_share) and not args.think:
        raise ConfigError("--thinking-budget and --direct-share are settings of thinking-mode replies; add --think")
    settings = SamplingSettings(args.n, args.seed, args.temperature, args.max_new_tokens, args.think,
                                args.thinking_budget, args.strict, args.direct_share)
    samples, report = read_samples(args.qa)
    if report.n_skipped:
        print(report.summary())
    samples = samples[:args.limit] if args.limit is not None else samples
    if not samples:
        raise DataError(f"{args.qa}: no question could be read (see the skips above)")
    model, tokenizer = load_model_and_tokenizer(args.model)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model.to(device)
    vision = getattr(model.config, "vision", None)
    if vision is None and any(s.images for s in samples):
        raise ConfigError(f"{args.model} is a language model and {args.qa} has images; use a vision-language model")
    processor = ImageProcessor.from_config(vision, model.config.connector) if vision is not None else None
    source = {"model": str(Path(args.model).resolve()), "data": str(Path(args.qa).resolve())}
    summary = make_preferences(samples, Path(args.out), settings,
                               lambda chunk: sample_replies(model, tokenizer, processor, chunk, settings), source)
    print(f"{summary.line()} -> {args.out}")
    return 0


def _model_judge(model_dir: str):
    """The curation judge's scorer backed by a trained model (built here: data does not import inference)."""
    return model_logprob_fn(model_dir)
