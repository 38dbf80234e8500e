"""VLMEvalKit's benchmark TSV (MMBench, SEED-Bench, AI2D, ... as its `LMUData/*.tsv`): columns `index`,
`question`, `answer`, the image as `image` (base64) or `image_path` (relative to the file), optional `hint`,
options `A`, `B`, ... (a row's empty cells are options it doesn't have), optional `category`,
`l2-category` (our `kind`) and `split`.

The prompt is VLMEvalKit's MMBench one: "Hint: ...", "Question: ...", "Options:", the options, "Please
select the correct answer from the options above." VLMEvalKit stores an image once per question group: an
`image` cell of at most 64 characters is the `index` of the row holding it (MMBench's circular copies)."""
from __future__ import annotations

import ast
import base64
import binascii
import csv
import string
import sys
from pathlib import Path

from ...data.formats import DataError
from .base import Benchmark, Item

SUFFIX = "Please select the correct answer from the options above."
REFERENCE_MAX_CHARS = 64


def read(path: Path) -> Benchmark:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    csv.field_size_limit(sys.maxsize)  # base64 images are far larger than csv's 128 KiB default
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    columns = set(rows[0]) if rows else set()
    missing = [c for c in ("index", "question", "answer") if c not in columns]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} column (a VLMEvalKit TSV has index, question, answer "
                        "and image or image_path)")
    if not {"image", "image_path"} & columns:
        raise DataError(f"{path}: no image or image_path column")
    letters = [c for c in string.ascii_uppercase if c in columns]
    by_index = {row["index"]: row for row in rows}
    items = [item_of(row, i + 2, letters, by_index, path) for i, row in enumerate(rows)]
    return Benchmark(path.stem, str(path), items)


def item_of(row: dict, line: int, letters: list[str], by_index: dict, path: Path) -> Item:
    where = f"{path} line {line} (index {row['index']})"
    options = {k: row[k].strip() for k in letters if (row.get(k) or "").strip()}
    answer = (row["answer"] or "").strip()
    if not answer:
        raise DataError(f"{where}: empty answer")
    if options and answer not in options:
        raise DataError(f"{where}: answer {answer!r} is not one of its options {', '.join(options)}")
    hint = (row.get("hint") or "").strip()
    question = (f"Hint: {hint}\n" if hint and hint.lower() != "nan" else "") + f"Question: {row['question'].strip()}"
    if options:
        question += "\nOptions:"
    meta = {k: row[k] for k in ("index", "split") if row.get(k)}
    return Item(str(row["index"]), question, answer, images_of(row, by_index, where, path.parent), options,
                SUFFIX if options else "", (row.get("category") or "all").strip(),
                (row.get("l2-category") or "").strip(), meta)


def images_of(row: dict, by_index: dict, where: str, root: Path) -> list:
    if (row.get("image") or "").strip():
        cell = row["image"].strip()
        if len(cell) <= REFERENCE_MAX_CHARS:
            target = by_index.get(cell)
            if target is None or len((target.get("image") or "").strip()) <= REFERENCE_MAX_CHARS:
                raise DataError(f"{where}: image {cell!r} is neither base64 nor the index of a row holding one")
            cell = target["image"].strip()
        try:
            return [base64.b64decode(cell, validate=True)]
        except (binascii.Error, ValueError):
            raise DataError(f"{where}: the image column is not valid base64") from None
    cell = (row.get("image_path") or "").strip()
    if not cell:
        raise DataError(f"{where}: neither image nor image_path is set")
    try:
        paths = ast.literal_eval(cell) if cell.startswith("[") else [cell]
    except (ValueError, SyntaxError):
        raise DataError(f"{where}: image_path {cell[:80]!r} is neither a path nor a list of paths") from None
    out = []
    for p in paths:
        full = Path(p) if Path(p).is_absolute() else root / p
        if not full.is_file():
            raise DataError(f"{where}: image_path {p} does not exist (relative paths are read from {root})")
        out.append(str(full.resolve()))
    return out
