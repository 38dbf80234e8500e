"""Readers and writers for conversation datasets: LLaVA conversation JSON and OpenAI chat-messages JSONL.

`parse_record` is the one reader of a record (either form) into messages and image references; the dataset
reader, curation and the tokenizer command all use it.

Real datasets always hold some bad records. A reader that stops at the first one makes a million-record
file unusable, and one that silently drops them hides data loss, so by default bad records are skipped and
counted in a `ReadReport` (how many for each reason, and the first few with file and line); `strict=True`
raises at the first problem instead.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from ..errors import DataError, ImageError
from .image import verify_image
from .sample import IMAGE_MARKER, Sample, user_turn
from .shards import Item, Shard, is_sharded, iter_items, list_shards, write_shards

LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
CHAT_ROLES = ("system", "user", "assistant")

# Skip reasons, as counted in ReadReport.skipped.
MALFORMED_JSON = "malformed json"
BAD_RECORD = "bad record"
EMPTY_CONVERSATION = "empty conversation"
MARKER_MISMATCH = "image marker count mismatch"
MISSING_IMAGE = "missing image"
CORRUPT_IMAGE = "corrupt image"


class RecordError(Exception):
    """A record that can't be read, for `reason` (one of the skip reasons above); `message` says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class ReadReport:
    """What `read_samples` did with one file: records seen, samples kept, skips per reason, and the first
    `max_examples` skips as "file line N: problem" strings."""

    path: str
    n_records: int = 0
    n_samples: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(message)

    def summary(self) -> str:
        head = f"{self.path}: {self.n_records} records, {self.n_samples} samples read, {self.n_skipped} skipped"
        if not self.n_skipped:
            return head
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        lines = [f"{head} ({reasons})"] + [f"  {e}" for e in self.examples]
        if self.n_skipped > len(self.examples):
            lines.append(f"  ... and {self.n_skipped - len(self.examples)} more")
        return "\n".join(lines)


def parse_record(raw, implicit_markers: bool = True) -> tuple[list[dict], list[str]]:
    """(messages, image references as written) of one record: LLaVA (`conversations`, `image` and/or
    `images`) or OpenAI chat messages (`messages`, content a string or text / image parts). Markers are
    not counted here. With `implicit_markers`, a LLaVA record with images but no `<image>` marker gets one
    per image before its first question (the LLaVA convention). Raises RecordError."""
    if not isinstance(raw, dict):
        raise RecordError(BAD_RECORD, f"expected a JSON object, got {type(raw).__name__}")
    if "conversations" in raw:
        return _llava_record(raw, implicit_markers)
    if "messages" in raw:
        return _chat_record(raw)
    raise RecordError(BAD_RECORD, "record has neither 'conversations' (LLaVA) nor 'messages' (chat)")


def read_samples(
    path: Union[str, Path],
    image_root: Union[str, Path, None] = None,
    strict: bool = False,
    check_images: bool = True,
) -> tuple[list[Sample], ReadReport]:
    """Read a LLaVA JSON file (a list of records) or a JSONL file (one record per line); each record may
    be in either LLaVA (`conversations`) or chat-messages (`messages`) form. Relative image paths resolve
    against `image_root` (default: the data file's folder). `check_images` opens each image and verifies
    its file structure (a missing, truncated or non-image file is skipped here, not met mid-training)
    without decoding its pixels: the collator decodes each image once, and counts a sample whose pixels
    still fail to decode as dropped. A shard folder or Parquet file (`data.shards`) is read whole, shard by
    shard, its samples holding their images' bytes: for evaluation sets; training streams it instead."""
    path = Path(path)
    if is_sharded(path):
        read, report = item_reader(path, strict, check_images)
        return [s for s in map(read, iter_items(path)) if s is not None], report
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    root = Path(image_root) if image_root is not None else path.parent
    report = ReadReport(str(path))
    reader = _Reader(path, root, report, strict, check_images)
    text = path.read_text(encoding="utf-8")
    samples = []
    if path.suffix != ".jsonl" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e}); expected a list of records") from None
        for index, record in enumerate(records):
            samples.append(reader.record(record, f"record {index}", f"{path}:{index}"))
    elif path.suffix == ".json":
        raise DataError(f"{path}: expected a JSON list of records (or use .jsonl for one record per line)")
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                samples.append(reader.record(line, f"line {lineno}", f"{path}:{lineno}"))
    return [s for s in samples if s is not None], report


def item_reader(path: Union[str, Path], strict: bool = False,
                check_images: bool = True) -> tuple[Callable[[Item], Optional[Sample]], ReadReport]:
    """(item -> Sample or None when skipped, the report counting the skips) for the shards of `path`: the
    same policy as `read_samples`, with each image reference's stored bytes in place of its file."""
    report = ReadReport(str(path))
    return _Reader(Path(path), Path(path), report, strict, check_images).item, report


class _Reader:
    """Turns records into Samples for one file, applying the skip-or-raise policy."""

    def __init__(self, path: Path, root: Path, report: ReadReport, strict: bool, check_images: bool):
        self.path, self.root, self.report = path, root, report
        self.strict, self.check_images = strict, check_images
        self.image_ok: dict[str, Optional[RecordError]] = {}  # records often share images: check each once

    def item(self, item: Item) -> Optional[Sample]:
        """A shard's record, its images the bytes stored beside it; ids as the source file would give them."""
        stem = Path(item.shard.source or item.shard.path).stem
        return self.record(item.record, f"record {item.where}", f"{item.shard.path}:{item.key}", item.images,
                           label=item.shard.path, stem=stem)

    def record(self, raw: Union[str, dict], where: str, source: str, images: Optional[list] = None,
               label: str = "", stem: str = "") -> Optional[Sample]:
        """The sample of one record, or None when it is skipped. `images`: the bytes of each image
        reference (None where missing) instead of files under the root."""
        self.report.n_records += 1
        try:
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise RecordError(MALFORMED_JSON, f"malformed JSON: {e}") from None
            messages, refs = parse_record(raw)
            sample = Sample(id=str(raw.get("id", f"{stem or self.path.stem}-{where.split()[-1]}")), messages=messages)
            if not any(m["content"].strip() for m in messages):
                raise RecordError(EMPTY_CONVERSATION, "conversation is empty")
            if sample.n_markers() != len(refs):
                raise RecordError(MARKER_MISMATCH,
                                  f"{sample.n_markers()} {IMAGE_MARKER} markers but {len(refs)} images")
            sample.images = ([self.image(p) for p in refs] if images is None
                             else [self.stored_image(ref, data)
                                   for ref, data in zip(refs, images + [None] * (len(refs) - len(images)))])
        except RecordError as skip:
            message = f"{label or self.path} {where}: {skip.message}"
            if self.strict:
                raise DataError(message) from None
            self.report.add_skip(skip.reason, message)
            return None
        sample.meta = dict(raw["meta"]) if isinstance(raw.get("meta"), dict) else {}
        sample.meta["source"] = source
        self.report.n_samples += 1
        return sample

    def stored_image(self, ref: str, data: Optional[bytes]) -> bytes:
        if data is None:
            raise RecordError(MISSING_IMAGE, f"image {ref} was missing when the shard was written")
        if self.check_images:
            try:
                verify_image(data)
            except ImageError as e:
                raise RecordError(CORRUPT_IMAGE, f"{ref}: {e}") from None
        return data

    def image(self, ref: str) -> str:
        path = os.path.abspath(ref if os.path.isabs(ref) else self.root / ref)
        if path not in self.image_ok:
            self.image_ok[path] = self._check(path)
        problem = self.image_ok[path]
        if problem is not None:
            raise RecordError(problem.reason, problem.message)
        return path

    def _check(self, path: str) -> Optional[RecordError]:
        if not os.path.isfile(path):
            return RecordError(MISSING_IMAGE, f"image file {path} does not exist")
        if self.check_images:
            try:
                verify_image(path)
            except ImageError as e:
                return RecordError(CORRUPT_IMAGE, str(e))
        return None


def _image_list(value, key: str) -> list[str]:
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise RecordError(BAD_RECORD, f"'{key}' must be a path or a list of paths, got {value!r}")
    return refs


def _llava_record(raw: dict, implicit_markers: bool) -> tuple[list[dict], list[str]]:
    """LLaVA: `{id, image | images, conversations: [{from: human|gpt|system, value}]}`."""
    turns = raw["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RecordError(EMPTY_CONVERSATION, "'conversations' is empty")
    images: list[str] = []
    for key in ("image", "images"):
        if raw.get(key) is not None:
            images += _image_list(raw[key], key)
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError(BAD_RECORD, f"turn {i} must be an object with a string 'value'")
        role = LLAVA_ROLES.get(turn.get("from"))
        if role is None:
            raise RecordError(BAD_RECORD, f"turn {i} has unknown 'from' {turn.get('from')!r} (human, gpt or system)")
        messages.append({"role": role, "content": turn["value"], **_thinking(turn, role, f"turn {i}")})
    # LLaVA convention: an image record without markers means the images precede the first question.
    if implicit_markers and images and not any(IMAGE_MARKER in m["content"] for m in messages):
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is not None:
            first_user["content"] = user_turn(first_user["content"], len(images))
    return messages, images


def _thinking(turn: dict, role: str, where: str) -> dict:
    """An assistant turn's optional `thinking` (its reasoning, rendered as `<think>...</think>` before the
    answer by the collator), as the message's own key."""
    if turn.get("thinking") is None:
        return {}
    if role != "assistant" or not isinstance(turn["thinking"], str):
        raise RecordError(BAD_RECORD, f"{where}: 'thinking' must be a string, on an assistant turn")
    return {"thinking": turn["thinking"]}


def _part_image(part: dict) -> str:
    """The path in an `image_url` / `image` content part; only local files (optionally file://) are
    supported, since training data must be reproducible offline."""
    value = part.get(part["type"], part.get("path"))
    if isinstance(value, dict):
        value = value.get("url", value.get("path"))
    if not isinstance(value, str) or not value:
        raise RecordError(BAD_RECORD, f"{part['type']} part has no path: {part!r}")
    if value.startswith("file://"):
        value = value[len("file://"):]
    elif "://" in value or value.startswith("data:"):
        raise RecordError(BAD_RECORD, f"only local image files are supported, got {value[:60]!r}")
    return value


def _chat_record(raw: dict) -> tuple[list[dict], list[str]]:
    """OpenAI chat messages: content is a string (with `<image>` markers matching the record's `images`)
    or a list of text / image parts; each image part becomes a marker where it stands, parts joined by
    newlines."""
    turns = raw["messages"]
    if not isinstance(turns, list) or not turns:
        raise RecordError(EMPTY_CONVERSATION, "'messages' is empty")
    inline: list[str] = []
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in CHAT_ROLES:
            raise RecordError(BAD_RECORD, f"message {i} needs a role of {', '.join(CHAT_ROLES)}")
        content = turn.get("content")
        if isinstance(content, list):
            pieces = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                elif kind in ("image_url", "image"):
                    inline.append(_part_image(part))
                    pieces.append(IMAGE_MARKER)
                else:
                    raise RecordError(BAD_RECORD, f"message {i} has an unsupported content part {part!r}")
            content = "\n".join(pieces)
        if not isinstance(content, str):
            raise RecordError(BAD_RECORD, f"message {i} content must be a string or a list of parts")
        messages.append({"role": turn["role"], "content": content, **_thinking(turn, turn["role"], f"message {i}")})
    images = _image_list(raw["images"], "images") if raw.get("images") is not None else []
    if inline and images:
        raise RecordError(BAD_RECORD, "images given both as content parts and in 'images'")
    return messages, inline or images


def write_llava(samples: list[Sample], path: Union[str, Path]) -> None:
    """Write samples as LLaVA conversation JSON. Image paths under the output folder are written relative
    to it, so a dataset folder can be moved as a whole; others stay absolute. `meta` is kept, less the
    `source` that reading adds back."""
    path = Path(path)
    folder = path.parent.resolve()
    role_to_from = {"user": "human", "assistant": "gpt", "system": "system"}
    records = []
    for s in samples:
        record: dict = {"id": s.id}
        refs = []
        for image in s.images:
            image_path = Path(image).resolve()
            refs.append(str(image_path.relative_to(folder)) if image_path.is_relative_to(folder) else image)
        if len(refs) == 1:
            record["image"] = refs[0]
        elif refs:
            record["images"] = refs
        record["conversations"] = [{"from": role_to_from[m["role"]], "value": m["content"],
                                    **({"thinking": m["thinking"]} if m.get("thinking") else {})} for m in s.messages]
        meta = {k: v for k, v in s.meta.items() if k != "source"}
        if meta:
            record["meta"] = meta
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def source_items(path: Union[str, Path], image_root: Union[str, Path, None] = None) -> Iterator[Item]:
    """Records of any file we read, as shard items: a sharded source as stored; a LLaVA JSON list or JSONL
    file with each image reference's bytes read from disk (relative to `image_root`, default the file's
    folder). A JSONL line that is not JSON is kept as its text, so a reader reports it as the source would."""
    path = Path(path)
    if is_sharded(path):
        yield from iter_items(path)
        return
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    root = Path(image_root) if image_root is not None else path.parent
    origin = Shard(str(path), 0, source=path.name)
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl" and text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e}); expected a list of records") from None
    elif path.suffix == ".jsonl":
        records = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    else:
        raise DataError(f"{path}: expected a JSON list of records, a .jsonl file, a shard folder or .parquet")
    for n, raw in records:
        record = raw
        if isinstance(raw, str):
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                yield Item(f"{n:09d}", raw, [], origin)
                continue
        images, refs = [], _refs(record)
        for ref in refs:
            file = Path(ref) if Path(ref).is_absolute() else root / ref
            images.append(file.read_bytes() if file.is_file() else None)
        yield Item(f"{n:09d}", record, images, origin, refs)


def shard_file(src: Union[str, Path], out: Union[str, Path], shard_size: int,
               image_root: Union[str, Path, None] = None) -> list[Shard]:
    """`nativevlm data shard`: any file we read (or a sharded source, to reshard) as tar shards in `out`."""
    src = Path(src)
    source = (list_shards(src)[0].source or src.name) if is_sharded(src) else src.name
    return write_shards(source_items(src, image_root), out, shard_size, source)


def _refs(record: Any) -> list[str]:
    """The record's image references as written, none for a record the readers cannot parse."""
    try:
        return parse_record(record, implicit_markers=False)[1]
    except RecordError:
        return []
