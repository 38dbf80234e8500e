"""Curation on Ray Data: the same stages as `run_pipeline`, with every per-record step a Ray Data map and
the kept records and report the same as the single-process run's on the same input.

Each shard is one read task; a record becomes a row (its index in the input, shard key, id and the pickled
`Entry` with its image bytes). Then, per stage:

- per-record work runs on the workers: every stage's `check` in `map_batches` over actors (each actor
  unpickles the prepared stage once, so the judge's fitted matcher and the embedder load once per worker);
- corpus-level state is fitted on the driver from what the workers extract, never from the images:
  the text stage's punctuation convention from text-only entries; the judge's matcher from image features
  computed in parallel; balance's buckets from embeddings computed by embedder actors;
- dedup needs a global view: `Dedup.keys` (hashes, fingerprints, MinHash signatures and their LSH band
  keys) runs as a map; rows are exploded by band key and grouped (`groupby(...).map_groups`) so only
  records sharing a band are compared, on the workers; the driver then runs `Dedup.resolve`, the
  single-process keep-first pass, over the compact keys and the matched pairs.

The driver holds one small outcome per record (the report lists every drop) and the compact keys, never the
images. `address` joins a running cluster (`ray start --head` on one machine, `ray start --address` on the
others); without it a local Ray with `workers` CPUs starts. A model judge (`--judge-model`) is not run
here: its negatives are other records' images, which a worker does not hold.
"""
from __future__ import annotations

import json
import pickle
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import CurationError
from ..shards import is_sharded, list_shards, read_shard
from .balance import Balance, balance_text
from .base import CurationResult, Entry, Outcome, Stage, StoredImage, item_entry
from .dedup import Dedup
from .judge import ImageTextJudge, image_features
from .output import source_name, write_kept


def start(address: Optional[str] = None, workers: int = 2) -> None:
    """Connect to the cluster at `address`, or start a local Ray with `workers` CPUs (once per process).
    Local workers run at normal priority: Ray nices them by default, which on a busy shared machine
    starves them behind every other process."""
    import logging

    import ray

    if not ray.is_initialized():
        kwargs = ({"address": address} if address else {"address": "local", "num_cpus": workers,
                                                         "include_dashboard": False,
                                                         "_system_config": {"worker_niceness": 0}})
        ray.init(log_to_driver=False, logging_level=logging.WARNING, **kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _light(entry: Entry) -> Entry:
    """The entry without image bytes (what the driver may hold): a stored image keeps its reference and
    whether it exists."""
    images = [StoredImage(p.path, b"" if p.is_file() else None) if isinstance(p, StoredImage) else p
              for p in entry.images]
    return replace(entry, images=images)


def _entry(row) -> Entry:
    return pickle.loads(row["entry"])


def _check(batch: dict, stage: Stage) -> dict:
    verdicts = [stage.check(pickle.loads(blob)) for blob in batch["entry"]]
    return {**batch, "reason": np.array([v.reason or "" for v in verdicts], dtype=object),
            "detail": np.array([v.detail for v in verdicts], dtype=object),
            "scores": np.array([json.dumps(v.scores) for v in verdicts], dtype=object)}


class _Check:
    """A prepared stage's `check` over batches of rows, the stage unpickled once per actor: for the judge,
    whose fitted matcher (or model) is worth building once per worker."""

    def __init__(self, stage: bytes):
        self.stage = pickle.loads(stage)

    def __call__(self, batch: dict) -> dict:
        return _check(batch, self.stage)


def _checked(stage: Stage, alive, workers: int):
    """`alive` with each row's verdict columns. Cheap checks run as plain tasks (Ray reuses their worker
    processes); the judge's run in an actor pool."""
    if isinstance(stage, ImageTextJudge):
        return alive.map_batches(_Check, fn_constructor_kwargs={"stage": pickle.dumps(stage)},
                                 compute=ray_actors(workers), batch_size=256)
    return alive.map_batches(_check, fn_kwargs={"stage": stage}, batch_size=256)


def _materialized(ds):
    """`ds` computed now: an actor pool holding every CPU could otherwise wait forever on an upstream
    task that needs one."""
    return ds.materialize()


def ray_actors(workers: int):
    import ray

    return ray.data.ActorPoolStrategy(size=workers)


class _Embed:
    """The balance stage's sentence embedder, loaded once per worker."""

    def __init__(self, embedder: bytes):
        from .embed import SentenceEmbedder

        self.embedder = pickle.loads(embedder) or SentenceEmbedder()

    def __call__(self, batch: dict) -> dict:
        x = self.embedder.encode([balance_text(pickle.loads(blob)) for blob in batch["entry"]])
        return {"index": batch["index"], "x": x.numpy()}


def _prepare(stage: Stage, alive, workers: int) -> None:
    """Fit `stage`'s corpus-level state from the alive rows: parallel extraction, driver-side fit."""
    if isinstance(stage, Dedup):
        keys = alive.map(lambda row: {"keys": pickle.dumps(stage.keys(_entry(row)))}).materialize()

        def bands(row):
            k = pickle.loads(row["keys"])
            return [{"band": f"{kind}|{b}", "keys": row["keys"]}
                    for kind, bs in (("image", k.image_bands), ("text", k.text_bands)) for b in bs]

        def match(group):
            members = [pickle.loads(blob) for blob in group["keys"]]
            kind = str(group["band"][0]).split("|")[0]
            pairs = stage.match_group(kind, members) if len(members) > 1 else []
            return {"pair": np.array([json.dumps(p) for p in pairs], dtype=object)}

        pairs = keys.flat_map(bands).groupby("band").map_groups(match, batch_format="numpy")
        matched = {tuple(json.loads(row["pair"])) for row in pairs.take_all()}
        stage.resolve([pickle.loads(row["keys"]).light() for row in keys.iter_rows()], matched)
    elif isinstance(stage, ImageTextJudge):
        if stage.logprob_fn is not None:
            raise CurationError("--engine ray runs the built-in judge; a --judge-model needs the single-process "
                                "engine (--engine local)")

        def features(row):
            e = _entry(row)
            refs = stage.judged_images([e])
            return [{"image": pickle.dumps(_light(e).images[0]), "x": image_features(refs[0])}] if refs else []

        table = {pickle.loads(row["image"]): row["x"] for row in alive.flat_map(features).take_all()}
        stage.prepare(_light_entries(alive), features=table)
    elif isinstance(stage, Balance):
        rows = alive.map_batches(_Embed, fn_constructor_kwargs={"embedder": pickle.dumps(stage.embedder)},
                                 compute=ray_actors(workers), batch_size=64).take_all()
        rows.sort(key=lambda r: r["index"])
        import torch

        stage.fit([int(r["index"]) for r in rows], torch.tensor(np.stack([r["x"] for r in rows])))
    elif type(stage).prepare is not Stage.prepare:
        stage.prepare(_light_entries(alive))


def _light_entries(alive) -> list[Entry]:
    rows = alive.map(lambda row: {"index": row["index"], "light": pickle.dumps(_light(_entry(row)))}).take_all()
    return [pickle.loads(r["light"]) for r in sorted(rows, key=lambda r: r["index"])]


def run_ray(stages: list[Stage], src: Path, out: Path, workers: int = 2, strict: bool = False) -> CurationResult:
    """`run_pipeline` on Ray Data over the shards of `src`, the kept records streamed to `out` in input
    order (`run.write_kept`); the result's `kept` are those entries without their image bytes."""
    import ray

    src = Path(src)
    if not is_sharded(src):
        raise CurationError(f"{src}: --engine ray reads shards; write them first with "
                            f"`nativevlm data shard {src} --out DIR` and curate DIR")
    shards = list_shards(src)
    offsets = np.cumsum([0] + [s.n for s in shards]).tolist()

    def load(row):
        out = []
        for i, item in enumerate(read_shard(shards[row["shard"]])):
            index = offsets[row["shard"]] + i
            entry, outcome = item_entry(index, item)
            out.append({"index": index, "entry": pickle.dumps(entry), "outcome": pickle.dumps(outcome)})
        return out

    rows = ray.data.from_items([{"shard": i} for i in range(len(shards))],
                               override_num_blocks=len(shards)).flat_map(load).materialize()
    outcomes: dict[int, Outcome] = {}
    for row in rows.select_columns(["index", "entry", "outcome"]).iter_rows():
        entry, outcome = pickle.loads(row["entry"]), pickle.loads(row["outcome"])
        outcomes[row["index"]] = outcome or Outcome(entry.index, entry.id)
    alive = _materialized(rows.filter(lambda row: pickle.loads(row["outcome"]) is None)
                          .select_columns(["index", "entry"]))
    strict_reasons = {"load/malformed"} | {f"{s.name}/{r}" for s in stages for r in s.strict_reasons}
    seconds: dict[str, float] = {}

    def result(kept: list[Entry]) -> CurationResult:
        return CurationResult(src, len(outcomes), kept, [outcomes[i] for i in sorted(outcomes)], seconds,
                              {s.name: s.summary() for s in stages if s.name in seconds}, strict_reasons)

    def fail_if_broken() -> None:
        if strict and (errors := result([]).describe_errors()):
            raise CurationError("--strict: the input has broken records:\n  " + "\n  ".join(errors))

    fail_if_broken()
    for stage in stages:
        t0 = time.perf_counter()
        _prepare(stage, alive, workers)
        checked = _checked(stage, alive, workers).materialize()
        for row in checked.select_columns(["index", "reason", "detail", "scores"]).take_all():
            o = outcomes[row["index"]]
            o.scores.update({f"{stage.name}.{k}": float(x) for k, x in json.loads(row["scores"]).items()})
            if row["reason"]:
                o.reason, o.detail = f"{stage.name}/{row['reason']}", row["detail"]
        alive = _materialized(checked.filter(lambda row: not row["reason"]).select_columns(["index", "entry"]))
        seconds[stage.name] = time.perf_counter() - t0
        fail_if_broken()
    kept: list[Entry] = []

    def stream():
        for row in alive.sort("index").iter_rows():
            entry = _entry(row)
            kept.append(_light(entry))
            yield entry

    write_kept(stream(), Path(out), source_name(src))
    return result(kept)
