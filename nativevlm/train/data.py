"""A stage's data: its files, a seeded weighted mixture sampler whose position is a few integers (so a
checkpoint resumes the exact sample order), and the split of each global batch into gradient-accumulation
micro-batches and data-parallel shards.

Text files (`.txt`, one document per line) become single assistant turns, so one collator (ChatML, loss
on assistant tokens) serves text and image-text data alike, and a mix of both batches together.

Sharded sources (a shard folder, a `.tar` or a `.parquet`: `data.shards`) are streamed, never loaded: each
rank reads its own shards through a `ShardStream`, pulling a sample only for the slots of the global batch
it trains on. The sampler still decides which source each slot draws from, identically on every rank; a
stream's position (records this rank consumed) is per rank, so it is checkpointed in the rank's own file.
"""
from __future__ import annotations

import random
from pathlib import Path

from ..config import ConfigError
from ..data.collate import Collator
from ..errors import DataError
from ..model.batch import Batch
from ..data.formats import item_reader, read_samples
from ..data.sample import Sample
from ..data.thinking import think_fusion
from ..data.shards import ShardStream, is_sharded, iter_items, list_shards


def load_source(path: str, log=print, limit: int | None = None) -> list[Sample]:
    """A file's samples (at most `limit`: a sharded source is read in stored order until it has them)."""
    path = Path(path)
    if is_sharded(path):
        read, report = item_reader(path)
        samples = []
        for item in iter_items(path):
            if limit is not None and len(samples) >= limit:
                break
            if (sample := read(item)) is not None:
                samples.append(sample)
        if report.n_skipped:
            log(report.summary())
        if not samples:
            raise DataError(f"data {path} holds no usable samples")
        return samples
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [Sample(id=f"{path}:{i}", messages=[{"role": "assistant", "content": line}])
                for i, line in enumerate(lines, 1) if line.strip()]
    samples, report = read_samples(path)
    if report.n_skipped:
        log(report.summary())
    if not samples:
        raise DataError(f"data file {path} holds no usable samples")
    return samples[:limit]


class MixtureSampler:
    """Draw k picks a source with probability proportional to its weight (an RNG seeded by (seed, k));
    each source is walked in a fresh seeded permutation per epoch. A source of size None is a stream that
    orders itself: its picks carry no index. The state is the draw count and each source's consumed count,
    so it is JSON and exact to resume."""

    def __init__(self, sizes: list[int | None], weights: list[float], seed: int | str):
        self.sizes, self.weights, self.seed = sizes, weights, seed
        self.draws = 0
        self.consumed = [0] * len(sizes)
        self._perms: dict[int, tuple[int, list[int]]] = {}  # source -> (epoch, its order)

    def _perm(self, source: int, epoch: int) -> list[int]:
        if self._perms.get(source, (None,))[0] != epoch:
            order = list(range(self.sizes[source]))
            random.Random(f"{self.seed}:{source}:{epoch}").shuffle(order)
            self._perms[source] = (epoch, order)
        return self._perms[source][1]

    def draw(self, n: int) -> list[tuple[int, int]]:
        picks = []
        for _ in range(n):
            rng = random.Random(f"{self.seed}:draw:{self.draws}")
            source = rng.choices(range(len(self.sizes)), weights=self.weights)[0]
            if self.sizes[source] is None:
                picks.append((source, None))
            else:
                epoch, pos = divmod(self.consumed[source], self.sizes[source])
                picks.append((source, self._perm(source, epoch)[pos]))
            self.consumed[source] += 1
            self.draws += 1
        return picks

    def state_dict(self) -> dict:
        return {"draws": self.draws, "consumed": list(self.consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.draws, self.consumed = state["draws"], list(state["consumed"])


class StageData:
    """Global batches for one stage, as this rank's list of micro-batches (see `Collator`)."""

    def __init__(self, stage, collator: Collator, seed: str, rank: int = 0, world: int = 1, log=print):
        self.stage, self.collator, self.rank, self.world, self.seed = stage, collator, rank, world, seed
        self.sources = [self._stream(src, f"{seed}:{j}", log) if is_sharded(src.path) else
                        [think_fusion(s, src.thinking, self.seed) for s in load_source(src.path, log)]
                        for j, src in enumerate(stage.data)]
        self.sampler = MixtureSampler([None if isinstance(s, ShardStream) else len(s) for s in self.sources],
                                      [src.weight for src in stage.data], seed)
        self.val = load_source(stage.val_data, log, stage.eval_samples) if stage.val_data else []

    def _stream(self, src, seed: str, log) -> ShardStream:
        read, report = item_reader(src.path)

        def sample(item):
            """The reader's sample; its first few skips are logged (all are counted in `report`)."""
            got = read(item)
            if got is None and report.n_skipped <= report.max_examples:
                log(f"skipped: {report.examples[-1]}")
            return got if got is None else think_fusion(got, src.thinking, self.seed)

        return ShardStream(list_shards(src.path), sample, seed, self.rank, self.world, src.shuffle_buffer,
                           name=src.path)

    def stream_state(self) -> list[int | None]:
        """This rank's position in each streamed source (None for a source held in memory)."""
        return [s.position if isinstance(s, ShardStream) else None for s in self.sources]

    def load_stream_state(self, positions: list[int | None]) -> None:
        for source, position in zip(self.sources, positions):
            if isinstance(source, ShardStream):
                source.position = position

    @property
    def micro_size(self) -> int:
        """Samples per micro-batch per rank."""
        return self.stage.batch_size // (self.stage.grad_accum * self.world)

    def next_batches(self) -> list[Batch]:
        """This rank's micro-batches of the next global batch; a stream is read only for this rank's slots."""
        picks = self.sampler.draw(self.stage.batch_size)
        m = self.micro_size
        samples = [(self.sources[s].next() if i is None else self.sources[s][i])
                   if (j % (m * self.world)) // m == self.rank else None for j, (s, i) in enumerate(picks)]
        return self._shard(samples)

    def val_batches(self) -> list[Batch]:
        """The first `eval_samples` val samples, cut to whole chunks so every rank runs the same number of
        forwards (FSDP gathers weights collectively)."""
        chunk = self.micro_size * self.world
        if self.val and len(self.val) < chunk:
            raise ConfigError(f"stage {self.stage.name}: eval_samples keeps {len(self.val)} val samples, fewer than "
                              f"one micro-batch on every rank ({chunk})")
        return self._shard(self.val[: len(self.val) // chunk * chunk])

    def _shard(self, samples: list[Sample]) -> list[Batch]:
        """Consecutive chunks of micro * world samples; this rank takes its contiguous slice of each."""
        m = self.micro_size
        return [self.collator(samples[start + self.rank * m: start + (self.rank + 1) * m])
                for start in range(0, len(samples), m * self.world)]
