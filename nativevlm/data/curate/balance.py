"""Instruction-data balancing (SAIL-VL2): embed each sample's text, cluster into buckets, sample evenly.

Over-represented kinds of sample (one template repeated thousands of times) fill a few buckets; sampling
the same number from each bucket flattens the mix. This subsamples clean data, so it is opt-in.
"""
from __future__ import annotations

import torch

from ..sample import IMAGE_MARKER
from .base import Entry, Stage, Verdict
from .embed import SentenceEmbedder


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Cosine k-means (rows of x are unit vectors) with k-means++ seeding; returns a bucket id per row."""
    g = torch.Generator().manual_seed(seed)
    k = min(k, len(x))
    centres = x[torch.randint(len(x), (1,), generator=g)]
    for _ in range(k - 1):
        d = (1 - x @ centres.T).min(dim=1).values.clamp(min=0)
        p = d / d.sum() if d.sum() > 0 else torch.full_like(d, 1 / len(d))
        centres = torch.cat([centres, x[torch.multinomial(p, 1, generator=g)]])
    for _ in range(iters):
        assign = (x @ centres.T).argmax(dim=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = torch.nn.functional.normalize(members.mean(0), dim=0)
    return (x @ centres.T).argmax(dim=1)


def even_quota(sizes: list[int], total: int) -> list[int]:
    """Largest per-bucket cap q with sum(min(size, q)) <= total, then the remainder one each to the buckets
    that still have samples: as even as the bucket sizes allow."""
    lo, hi = 0, max(sizes, default=0)
    while lo < hi:
        q = (lo + hi + 1) // 2
        lo, hi = (q, hi) if sum(min(s, q) for s in sizes) <= total else (lo, q - 1)
    quota = [min(s, lo) for s in sizes]
    spare = total - sum(quota)
    for j, s in enumerate(sizes):
        if spare > 0 and s > quota[j]:
            quota[j] += 1
            spare -= 1
    return quota


def balance_text(entry: Entry) -> str:
    """What a record is embedded by: its conversation without image markers."""
    return entry.text.replace(IMAGE_MARKER, "").strip()


class Balance(Stage):
    name = "balance"

    def __init__(self, buckets: int = 32, per_bucket: int | None = None, total: int | None = None,
                 seed: int = 0, embedder=None):
        assert (per_bucket is None) != (total is None), "give exactly one of per_bucket / total"
        self.buckets, self.per_bucket, self.total, self.seed = buckets, per_bucket, total, seed
        self.embedder = embedder

    def prepare(self, entries: list[Entry]) -> None:
        if not entries:
            self.fit([], torch.zeros(0, 1))
            return
        embedder = self.embedder or SentenceEmbedder()
        self.fit([e.index for e in entries], embedder.encode([balance_text(e) for e in entries]))

    def fit(self, indices: list[int], x: torch.Tensor) -> None:
        """Bucket and subsample from the embeddings `x` of the records `indices` (in input order), computed
        here by `prepare` or elsewhere (the Ray engine embeds in parallel)."""
        self.keep: set[int] = set()
        self.bucket: dict[int, int] = {}
        self.sizes: list[int] = []
        if not indices:
            return
        assign = kmeans(x, self.buckets, seed=self.seed).tolist()
        members: dict[int, list[int]] = {}
        for index, b in zip(indices, assign):
            members.setdefault(b, []).append(index)
            self.bucket[index] = b
        groups = list(members.values())
        self.sizes = [len(m) for m in groups]
        quota = ([min(s, self.per_bucket) for s in self.sizes] if self.per_bucket is not None
                 else even_quota(self.sizes, self.total))
        g = torch.Generator().manual_seed(self.seed)
        for m, q in zip(groups, quota):
            self.keep.update(m[i] for i in torch.randperm(len(m), generator=g)[:q].tolist())

    def check(self, entry: Entry) -> Verdict:
        scores = {"bucket": self.bucket[entry.index]}
        if entry.index in self.keep:
            return Verdict(scores)
        return Verdict(scores, "subsampled", f"bucket {self.bucket[entry.index]} is over its quota")

    def summary(self) -> dict:
        return {"buckets": len(self.sizes), "bucket_sizes": sorted(self.sizes, reverse=True),
                "kept": len(self.keep)}
