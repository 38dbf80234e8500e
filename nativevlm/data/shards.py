"""Sharded datasets, read as streams: WebDataset tar shards (written by `nativevlm data shard`) and Parquet
files in the Hugging Face image-dataset layout.

A *shard* is the unit one reader takes whole: a tar file, or one row group of a Parquet file. A tar shard
holds, per record, `KEY.json` (the record exactly as the source file had it, image references as written)
and `KEY.I.EXT`, the bytes of its I-th image reference (absent when the file was missing at shard time, so
readers drop that record as they would have dropped it from the source). `shards.json` beside the tars
lists each shard's record count, so a reader can place a stream position without opening any tar, and the
source file's name, so records without an `id` get the ids the source file would have given them. KEY is
the record's position in the source (index of a JSON list, line of a JSONL file).

A Parquet file is read row group by row group: an `image` column (binary, or a struct with `bytes` and
`path`, as `datasets` stores `Image()` features) or an `images` column (a list of those) beside a
`conversations` (LLaVA) or `messages` (chat) column. Every other column is kept in the record.

`ShardStream` is one rank's endless pass over a sharded source: per epoch the shards are shuffled (seeded)
and dealt round-robin to the ranks, so ranks read disjoint shards that together cover the dataset; the rank
then reads its shards in windows of at least `buffer` records, shuffling records within each window. A
window is all the stream holds in memory, and the whole position is one integer (records consumed), from
which the window and the offset in it follow by arithmetic over the index: that is what makes resuming
exact without re-reading the stream from its start.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from ..errors import DataError

INDEX = "shards.json"
SHARD_SUFFIXES = (".tar", ".parquet")


@dataclass(frozen=True)
class Shard:
    path: str
    n: int  # records in it
    row_group: Optional[int] = None  # Parquet only
    source: str = ""  # the file the records came from (names records without an id)


@dataclass
class Item:
    """One record as a shard stores it: `images[i]` is the bytes of its i-th image reference (None: missing)."""

    key: str
    record: Any
    images: list[Optional[bytes]]
    shard: Shard
    refs: list[str] = field(default_factory=list)  # the image references as written, when known (file exts)

    @property
    def where(self) -> str:
        """The record's position in its source file, as the file readers name it."""
        return self.key.lstrip("0") or "0"


def is_sharded(path: Union[str, Path]) -> bool:
    """A shard folder, a single tar shard or a Parquet file (or a folder of Parquet files)."""
    path = Path(path)
    if path.is_dir():
        return (path / INDEX).is_file() or any(path.glob("*.tar")) or any(path.glob("*.parquet"))
    return path.suffix in SHARD_SUFFIXES


def list_shards(path: Union[str, Path]) -> list[Shard]:
    """The shards of a shard folder (from its index; tars without one are counted once, by reading them),
    a tar, or a Parquet file / folder of Parquet files (one shard per row group)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_dir() and (path / INDEX).is_file():
        index = json.loads((path / INDEX).read_text())
        return [Shard(str(path / s["file"]), s["n"], source=index.get("source", "")) for s in index["shards"]]
    files = sorted(path.glob("*.tar")) or sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .tar shards or .parquet files in this folder")
    shards = []
    for f in files:
        if f.suffix == ".parquet":
            meta = pq.ParquetFile(f).metadata
            shards += [Shard(str(f), meta.row_group(g).num_rows, g) for g in range(meta.num_row_groups)
                       if meta.row_group(g).num_rows]
        else:
            shards.append(Shard(str(f), sum(1 for _ in _tar_samples(str(f)))))
    return shards


def _tar_samples(url: str) -> Iterator[dict]:
    import webdataset as wds

    # No node or worker splitting here: `ShardStream` decides which rank reads which shard.
    return iter(wds.WebDataset(url, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False))


def read_shard(shard: Shard) -> Iterator[Item]:
    """The records of one shard, in stored order."""
    if shard.row_group is None:
        for s in _tar_samples(shard.path):
            record = json.loads(s["json"])
            stored = {int(k.split(".")[0]): v for k, v in s.items() if k[:1].isdigit()}
            # a trailing missing image leaves no member: readers pad to the record's reference count
            images = [stored.get(i) for i in range(max(stored, default=-1) + 1)]
            yield Item(s["__key__"], record, images, shard)
        return
    import pyarrow.parquet as pq

    table = pq.ParquetFile(shard.path).read_row_group(shard.row_group)
    offset = sum(pq.ParquetFile(shard.path).metadata.row_group(g).num_rows for g in range(shard.row_group))
    for i, row in enumerate(table.to_pylist()):
        yield _parquet_item(row, f"{offset + i:09d}", shard)


def _image_value(value: Any, name: str) -> tuple[str, Optional[bytes]]:
    if isinstance(value, dict):
        return value.get("path") or name, value.get("bytes")
    return name, value


def _parquet_item(row: dict, key: str, shard: Shard) -> Item:
    """A Parquet row as a record: its image column(s) become references (the stored path, or KEY.I) with
    the bytes beside them, every other column stays."""
    images: list[Optional[bytes]] = []
    names: list[str] = []
    record = dict(row)
    for column in ("image", "images"):
        value = record.pop(column, None)
        if value is None:
            continue
        values = value if column == "images" else [value]
        refs = []
        for i, v in enumerate(values):
            ref, data = _image_value(v, f"{key}.{len(images)}")
            refs.append(ref)
            images.append(data)
        record[column] = refs if column == "images" else refs[0]
        names += refs
    return Item(key, record, images, shard, names)


def iter_items(path: Union[str, Path]) -> Iterator[Item]:
    """Every record of a sharded source, shard by shard, in stored order."""
    for shard in list_shards(path):
        yield from read_shard(shard)


def write_shards(items: Iterable[Item], out: Union[str, Path], shard_size: int, source: str = "") -> list[Shard]:
    """Write items as tar shards of `shard_size` records into `out` with their index; returns the shards.
    Each image keeps its reference's file extension, so a tool that decodes by extension still can."""
    import webdataset as wds

    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.tar")):
        raise DataError(f"--out {out} already holds shards; pick an empty folder")
    shards: list[Shard] = []
    writer, count = None, 0

    def close() -> None:
        if writer is not None:
            writer.close()
            shards.append(Shard(str(out / f"shard-{len(shards):06d}.tar"), count, source=source))

    for item in items:
        if writer is None or count == shard_size:
            close()
            writer, count = wds.TarWriter(str(out / f"shard-{len(shards):06d}.tar")), 0
        sample = {"__key__": item.key, "json": json.dumps(item.record, ensure_ascii=False).encode()}
        for i, data in enumerate(item.images):
            if data is not None:
                ext = Path(item.refs[i]).suffix.lstrip(".").lower() if i < len(item.refs) else ""
                sample[f"{i}.{ext or 'img'}"] = data
        writer.write(sample)
        count += 1
    close()
    if not shards:
        raise DataError(f"{source or out}: no records to shard")
    index = {"source": source, "shards": [{"file": Path(s.path).name, "n": s.n} for s in shards]}
    (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return shards


class ShardStream:
    """One rank's endless, seeded pass over a sharded source (see the module docstring). `to_sample` turns
    an item into a sample, or None for a record its reader skips; skipped records still count as consumed,
    so the position stays a pure function of the index."""

    def __init__(self, shards: list[Shard], to_sample: Callable[[Item], Any], seed: str, rank: int = 0,
                 world: int = 1, buffer: int = 1024, name: str = ""):
        if len(shards) < world:
            raise DataError(f"{name}: {len(shards)} shard(s) for {world} ranks; each rank reads its own shards, "
                            "so reshard with a smaller --shard-size")
        self.shards, self.to_sample, self.seed = shards, to_sample, seed
        self.rank, self.world, self.buffer, self.name = rank, world, max(1, buffer), name
        self.position = 0
        self._cursor = (0, 0, 0)  # (epoch, window, position at its start): where the last record was found
        self._plans: dict[int, list[list[Shard]]] = {}
        self._window: Optional[tuple[int, int, list[Item], list[int]]] = None  # (epoch, window, items, order)

    def shards_of(self, epoch: int) -> list[Shard]:
        """This rank's shards in `epoch`, in reading order."""
        order = list(range(len(self.shards)))
        random.Random(f"{self.seed}:shards:{epoch}").shuffle(order)
        return [self.shards[i] for i in order[self.rank::self.world]]

    def _plan(self, epoch: int) -> list[list[Shard]]:
        """This rank's shards in `epoch`, grouped into windows of at least `buffer` records."""
        if epoch not in self._plans:
            windows, current = [], []
            for shard in self.shards_of(epoch):
                current.append(shard)
                if sum(s.n for s in current) >= self.buffer:
                    windows.append(current)
                    current = []
            self._plans = {epoch: windows + ([current] if current else [])}
        return self._plans[epoch]

    def _locate(self, position: int) -> tuple[int, int, int]:
        """(epoch, window, offset in it) of the `position`-th record this rank reads: walked forward from
        the last window found (from the start after a jump back, as on resume)."""
        epoch, w, start = self._cursor if position >= self._cursor[2] else (0, 0, 0)
        while True:
            plan = self._plan(epoch)
            if w == len(plan):
                epoch, w = epoch + 1, 0
                continue
            size = sum(s.n for s in plan[w])
            if position < start + size:
                self._cursor = (epoch, w, start)
                return epoch, w, position - start
            start, w = start + size, w + 1

    def _load(self, epoch: int, w: int) -> tuple[int, int, list[Item], list[int]]:
        items = []
        for shard in self._plan(epoch)[w]:
            got = list(read_shard(shard))
            if len(got) != shard.n:
                raise DataError(f"{shard.path}: holds {len(got)} records but its index says {shard.n}; "
                                "rewrite the shards (nativevlm data shard)")
            items += got
        order = list(range(len(items)))
        random.Random(f"{self.seed}:window:{epoch}:{w}:{self.rank}").shuffle(order)
        return epoch, w, items, order

    def next(self):
        """The next sample of this rank's stream."""
        misses = 0
        while True:
            epoch, w, offset = self._locate(self.position)
            if self._window is None or self._window[:2] != (epoch, w):
                self._window = self._load(epoch, w)
            self.position += 1
            sample = self.to_sample(self._window[2][self._window[3][offset]])
            if sample is not None:
                return sample
            misses += 1
            if misses > sum(s.n for s in self.shards):
                raise DataError(f"{self.name}: no usable record in a whole pass over its shards")
