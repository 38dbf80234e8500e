"""Curation core: records as read from LLaVA JSON or OpenAI-messages JSONL, the stage contract, and the
pipeline that runs stages.

Each record is parsed by the dataset reader's own `formats.parse_record` (so curation accepts exactly the
records training reads), and the raw record is kept beside the parsed fields: kept records are written back
byte-for-byte equivalent, so whatever reads the input reads the output. Markers are counted as written (the
text stage flags an image record without its `<image>` marker). A record that cannot be understood is
dropped at load time with reason `load/malformed`, never silently skipped, and `--strict` turns it into an
error.

From shards (`data.shards`) an entry's images are `StoredImage`s: the bytes the shard holds under the
reference the record makes, which stages open with `open_image` exactly as they open a file.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from PIL import Image

from tqdm import tqdm

from ...errors import CurationError
from ..formats import RecordError
from ..formats import parse_record as parse_messages
from ..shards import Item, is_sharded, iter_items


@dataclass(frozen=True, order=True)
class StoredImage:
    """An image a shard stores: `path` is its reference (what identifies and orders it, as a file's path
    does), `data` its bytes, None when the file was missing when the shard was written."""

    path: Path
    data: Optional[bytes] = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stem(self) -> str:
        return self.path.stem

    def is_file(self) -> bool:
        return self.data is not None

    def __str__(self) -> str:
        return str(self.path)


ImageRef = Union[Path, StoredImage]


def open_image(ref: ImageRef) -> Image.Image:
    """`Image.open` of a file or of a shard's stored bytes (OSError when missing, as for a file)."""
    if isinstance(ref, StoredImage):
        if ref.data is None:
            raise FileNotFoundError(f"{ref.path} was missing when its shard was written")
        return Image.open(io.BytesIO(ref.data))
    return Image.open(ref)


def image_bytes(ref: ImageRef) -> bytes:
    if isinstance(ref, StoredImage):
        if ref.data is None:
            raise FileNotFoundError(f"{ref.path} was missing when its shard was written")
        return ref.data
    return Path(ref).read_bytes()


@dataclass
class Entry:
    """One readable record plus the fields every stage needs, resolved once at load time."""

    index: int  # position in the input list, the stable handle used in reports
    id: str
    record: dict  # the raw record, written back unchanged if kept
    images: list[ImageRef]  # absolute paths (or a shard's stored images), in record order
    prompts: list[str]  # user turns
    answers: list[str]  # assistant turns
    messages: list[dict] = field(default_factory=list)  # every turn, as `formats.parse_record` reads it
    key: str = ""  # the shard key it was read under (kept shards keep it)

    @property
    def text(self) -> str:
        """The whole conversation, turns in order as written."""
        return "\n".join(m["content"] for m in self.messages)


@dataclass
class Verdict:
    """A stage's decision on one entry: scores to record, and a drop reason (None keeps it)."""

    scores: dict[str, float] = field(default_factory=dict)
    reason: Optional[str] = None
    detail: str = ""


class Stage:
    """A curation stage. `prepare` sees every entry still alive before any `check` (corpus-level stages
    such as dedup, the judge and balancing fit their state there); `check` is then called once per entry in
    input order. Stateless per-record stages only implement `check`."""

    name: str = "stage"
    # Drop reasons that mean "the input is broken" rather than "the sample is poor": --strict fails on them.
    strict_reasons: tuple[str, ...] = ()

    def prepare(self, entries: list[Entry]) -> None:
        """Fit corpus-level state on the entries that survived earlier stages."""

    def check(self, entry: Entry) -> Verdict:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """Stage-level facts for the report (thresholds used, model quality, abstentions)."""
        return {}


@dataclass
class Outcome:
    """Per-record result of a pipeline run."""

    index: int
    id: str
    scores: dict[str, float] = field(default_factory=dict)
    reason: Optional[str] = None  # first drop reason, `stage/why`
    detail: str = ""


@dataclass
class CurationResult:
    source: Path
    n_in: int
    kept: list[Entry]
    outcomes: list[Outcome]  # one per input record, in input order
    stage_seconds: dict[str, float]
    stage_summaries: dict[str, dict[str, Any]]
    strict_reasons: set[str]

    @property
    def drops(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            if o.reason:
                counts[o.reason] = counts.get(o.reason, 0) + 1
        return dict(sorted(counts.items()))

    def input_errors(self) -> list[Outcome]:
        """Drops caused by broken input (malformed records, missing/corrupt images, marker mismatch)."""
        return [o for o in self.outcomes if o.reason in self.strict_reasons]

    def describe_errors(self, limit: int = 20) -> list[str]:
        errs = self.input_errors()
        lines = [f"{self.source}: record #{o.index} ({o.id}): {o.reason}: {o.detail}" for o in errs[:limit]]
        if len(errs) > limit:
            lines.append(f"... and {len(errs) - limit} more (see the report)")
        return lines


def _malformed(index: int, rid: str, why: str) -> Outcome:
    return Outcome(index=index, id=rid, reason="load/malformed", detail=why)


def parse_record(index: int, rec: Any, image_root: Path,
                 stored: Optional[list[Optional[bytes]]] = None) -> tuple[Optional[Entry], Optional[Outcome]]:
    """One LLaVA or OpenAI-messages record (single or multi-image); returns (entry, None) or (None,
    malformed outcome). `stored`: the images' bytes from a shard, in reference order."""
    rid = str(rec.get("id", f"#{index}")) if isinstance(rec, dict) else f"#{index}"
    if not isinstance(rec, dict):
        return None, _malformed(index, rid, f"record is a {type(rec).__name__}, not an object")
    try:
        messages, refs = parse_messages(rec, implicit_markers=False)
    except RecordError as e:
        return None, _malformed(index, rid, e.message)
    prompts = [m["content"] for m in messages if m["role"] == "user"]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    images: list = ([(image_root / p).resolve() for p in refs] if stored is None
                    else [StoredImage(image_root / p, data)
                          for p, data in zip(refs, stored + [None] * (len(refs) - len(stored)))])
    return Entry(index, rid, rec, images, prompts, answers, messages), None


def item_entry(index: int, item: Item) -> tuple[Optional[Entry], Optional[Outcome]]:
    """A shard item as an entry (or a malformed outcome); `index` is its position among the shards'
    records, which is its position in the source (the index of a JSON list, the record of a JSONL file)."""
    rec = item.record
    if isinstance(rec, str):  # a JSONL line that was not JSON when sharded
        try:
            rec = json.loads(rec)
        except json.JSONDecodeError as e:
            return None, _malformed(index, f"line {item.where}", f"invalid JSON: {e.msg}")
    entry, outcome = parse_record(index, rec, Path(), item.images)
    if entry is not None:
        entry.key = item.key
    return entry, outcome


def load_records(path: Path, image_root: Optional[Path] = None) -> tuple[list[Entry], list[Outcome]]:
    """Read a JSON list of records (or JSONL, one record a line; or a shard folder / Parquet file), each
    LLaVA or OpenAI messages. Unparseable lines and malformed records become `load/malformed` outcomes; an
    unreadable file or a top level that is not a list is a CurationError."""
    path = Path(path)
    if is_sharded(path):
        entries, bad = [], []
        for entry, outcome in (item_entry(i, item) for i, item in enumerate(iter_items(path))):
            (entries.append(entry) if entry is not None else bad.append(outcome))
        return entries, bad
    root = Path(image_root) if image_root else path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CurationError(f"cannot read {path}: {e}") from None
    raw: list[Any]
    bad: list[Outcome] = []
    if path.suffix == ".jsonl":
        raw = []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as e:
                raw.append(None)
                bad.append(_malformed(len(raw) - 1, f"line {i + 1}", f"invalid JSON: {e.msg}"))
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise CurationError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                                "use .jsonl to let single bad lines be skipped") from None
        if not isinstance(raw, list):
            raise CurationError(f"{path}: expected a JSON list of LLaVA records, got {type(raw).__name__}")
    bad_idx = {o.index for o in bad}
    entries = []
    for i, rec in enumerate(raw):
        if i in bad_idx:
            continue
        entry, outcome = parse_record(i, rec, root)
        if entry is not None:
            entries.append(entry)
        else:
            bad.append(outcome)
    return entries, bad


def run_pipeline(stages: Iterable[Stage], entries: list[Entry], load_drops: list[Outcome], source: Path,
                 progress: bool = False, strict: bool = False) -> CurationResult:
    """Run stages in order over the surviving entries; every input record ends with exactly one outcome.
    Under `strict`, broken input raises a CurationError naming file and records as soon as a stage finds it,
    so a bad file fails before the expensive stages run."""
    stages = list(stages)
    outcomes = {e.index: Outcome(e.index, e.id) for e in entries}
    outcomes.update({o.index: o for o in load_drops})
    strict_reasons = {"load/malformed"} | {f"{s.name}/{r}" for s in stages for r in s.strict_reasons}
    alive = list(entries)
    seconds: dict[str, float] = {}

    def result() -> CurationResult:
        return CurationResult(Path(source), len(outcomes), alive, [outcomes[i] for i in sorted(outcomes)], seconds,
                              {s.name: s.summary() for s in stages if s.name in seconds}, strict_reasons)

    def fail_if_broken() -> None:
        if strict and (errors := result().describe_errors()):
            raise CurationError("--strict: the input has broken records:\n  " + "\n  ".join(errors))

    fail_if_broken()
    for stage in stages:
        t0 = time.perf_counter()
        stage.prepare(alive)
        survivors = []
        for e in tqdm(alive, desc=f"curate:{stage.name}", disable=not progress or len(alive) < 500,
                      leave=False):
            v = stage.check(e)
            o = outcomes[e.index]
            o.scores.update({f"{stage.name}.{k}": float(x) for k, x in v.scores.items()})
            if v.reason is None:
                survivors.append(e)
            else:
                o.reason, o.detail = f"{stage.name}/{v.reason}", v.detail
        alive = survivors
        seconds[stage.name] = time.perf_counter() - t0
        fail_if_broken()
    return result()
