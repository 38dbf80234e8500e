"""A stage's data: its files, a seeded weighted mixture sampler whose position is a few integers (so a
checkpoint resumes the exact sample order), and the split of each global batch into gradient-accumulation
micro-batches and data-parallel shards.

Text files (`.txt`, one document per line) become single assistant turns, so one collator (ChatML, loss
on assistant tokens) serves text and image-text data alike, and a mix of both batches together.
"""
from __future__ import annotations

import random
from pathlib import Path

from ..config import ConfigError
from ..data.collate import Collator
from ..errors import DataError
from ..model.batch import Batch
from ..data.formats import read_samples
from ..data.sample import Sample


def load_source(path: str, log=print) -> list[Sample]:
    path = Path(path)
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [Sample(id=f"{path}:{i}", messages=[{"role": "assistant", "content": line}])
                for i, line in enumerate(lines, 1) if line.strip()]
    samples, report = read_samples(path)
    if report.n_skipped:
        log(report.summary())
    if not samples:
        raise DataError(f"data file {path} holds no usable samples")
    return samples


class MixtureSampler:
    """Draw k picks a source with probability proportional to its weight (an RNG seeded by (seed, k));
    each source is walked in a fresh seeded permutation per epoch. The state is the draw count and each
    source's consumed count, so it is JSON and exact to resume."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int | str):
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
        self.stage, self.collator, self.rank, self.world = stage, collator, rank, world
        self.sources = [load_source(src.path, log) for src in stage.data]
        self.sampler = MixtureSampler([len(s) for s in self.sources], [src.weight for src in stage.data], seed)
        self.val = load_source(stage.val_data, log)[: stage.eval_samples] if stage.val_data else []

    @property
    def micro_size(self) -> int:
        """Samples per micro-batch per rank."""
        return self.stage.batch_size // (self.stage.grad_accum * self.world)

    def next_batches(self) -> list[Batch]:
        picks = self.sampler.draw(self.stage.batch_size)
        samples = [self.sources[s][i] for s, i in picks]
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
