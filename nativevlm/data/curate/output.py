"""Writing curation's output: kept records to JSON / JSONL, or kept records with their images to shards."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..shards import Item, Shard, is_sharded, list_shards, write_shards
from .base import Entry, image_bytes


def write_records(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n")


def write_kept(kept: Iterable[Entry], out: Path, source: str, shard_size: int = 1000) -> None:
    """Kept entries in input order: records as written to `.json` / `.jsonl`, else shards (their images'
    bytes beside them, under the keys they were read with)."""
    out = Path(out)
    if out.suffix in (".json", ".jsonl"):
        write_records([e.record for e in kept], out)
        return

    def item(e: Entry) -> Item:
        stored = []
        for ref in e.images:
            try:
                stored.append(image_bytes(ref))
            except OSError:
                stored.append(None)
        return Item(e.key or f"{e.index:09d}", e.record, stored, Shard("", 0), [str(p) for p in e.images])

    write_shards(map(item, kept), out, shard_size, source)


def source_name(src: Path) -> str:
    """The file the records came from, which shards carry on (for the ids of records without one)."""
    return (list_shards(src)[0].source or src.name) if is_sharded(src) else src.name
