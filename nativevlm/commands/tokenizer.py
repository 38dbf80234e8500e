"""`nativevlm tokenizer train CORPUS... --vocab-size N --out DIR`: train the byte-level BPE tokenizer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..data.formats import RecordError, parse_record
from ..data.sample import IMAGE_MARKER
from ..data.tokenizer import Tokenizer
from ..errors import ConfigError, DataError, UserError


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a BPE tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="TOKENIZER_COMMAND")
    t = tsub.add_parser(
        "train",
        help="train on text files (one document per line), LLaVA .json or chat .jsonl conversation files",
    )
    t.add_argument("corpus", nargs="+", help="text, LLaVA JSON (.json) or chat-messages JSONL (.jsonl) files")
    t.add_argument("--vocab-size", type=int, required=True,
                   help="vocabulary size, reserved tokens included (chat, padding, image, <think> and </think>)")
    t.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    t.add_argument("--out", required=True, help="output folder (tokenizer.json, tokenizer_config.json)")
    t.set_defaults(func=train)


def _parse(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"corpus {where} is not valid JSON: {e}") from None


def corpus_texts(path: Path) -> Iterator[str]:
    """Documents of one corpus file: lines of a text file, or the message texts of a LLaVA .json or chat
    .jsonl file (read by `formats.parse_record`; records it can't read are skipped) with `<image>` markers
    removed (markers become image tokens, never text). Images are not opened."""
    try:
        if path.suffix not in (".json", ".jsonl"):
            with path.open(encoding="utf-8") as f:  # streamed: text corpora can be large
                yield from (line.rstrip("\n") for line in f if line.strip())
            return
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix == ".json":
        records = _parse(text, str(path))
    else:
        lines = text.splitlines()
        records = [_parse(line, f"{path} line {i}") for i, line in enumerate(lines, 1) if line.strip()]
    for record in records if isinstance(records, list) else []:
        try:
            messages, _ = parse_record(record, implicit_markers=False)
        except RecordError:
            continue
        yield from (m["content"].replace(IMAGE_MARKER, "") for m in messages if m["content"])


def train(args) -> int:
    paths = [Path(p) for p in args.corpus]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
    texts = (text for p in paths for text in corpus_texts(p))
    try:
        tok = Tokenizer.train(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    except UserError:  # a corpus file's own error, already naming it
        raise
    except ValueError as e:
        raise ConfigError(f"--vocab-size: {e}") from None
    tok.save(args.out)
    print(f"trained a {tok.vocab_size}-token BPE on {len(paths)} file(s); wrote {args.out}/tokenizer.json")
    return 0
