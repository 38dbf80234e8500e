"""Deduplication of images (exact by file hash, near by perceptual hash) and of long texts (exact after
normalisation, near by MinHash over word shingles). The first record of each group is kept.

Near-duplicate images are found in two steps: a 64-bit dHash with a banded index proposes candidates within
`image_hamming` bits (pigeonhole: `image_hamming + 1` bands, one must match exactly), then the same aspect
ratio and a Pearson correlation of mean-centred 32x32 RGB thumbnails confirm them. dHash alone is too coarse
for synthetic scenes of small shapes on a plain background, where different images share most gradient
bits; the correlation is insensitive to brightness shifts and re-encoding but drops when objects move or
change shape (at 16x16 a circle and a square in the same place still correlate at 0.99).

Images are deduplicated across *different files*: records that reference the same file are intentional
reuse (several questions about one image) and fall through to the text checks; a record repeating both the
images and the text of an earlier one is a `record_exact` duplicate at any text length. Answers alone are
only deduplicated when long (`text_min_words`): templated questions and short answers ("What colour is the
ball?" / "red") legitimately repeat across different images; a long caption repeated verbatim does not.

The work splits in three so that it parallelises without changing a single decision: `keys` computes one
record's hashes, fingerprints, shingles and LSH band keys on its own (any worker, any order);
`candidate_pairs` compares the records that share a band key (records are grouped by key, so only those
are ever compared) and keeps the pairs that match; `resolve` then walks the records in input order and
applies the keep-first rule: a record is a duplicate of the first *kept* earlier record it matches. The
single-process stage runs the three in a row; the Ray engine runs `keys` as a map, the grouping as a
Ray Data groupby over band keys and `resolve` on the driver over the compact keys and matched pairs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from ..sample import IMAGE_MARKER
from .base import Entry, ImageRef, Stage, Verdict, image_bytes, open_image
from .text import words

_PRIME = (1 << 31) - 1  # a, b, x < 2**31, so a*x + b fits in uint64 without overflow


def file_sha256(path: ImageRef) -> str:
    return hashlib.sha256(image_bytes(path)).hexdigest()


def dhash(img: Image.Image, size: int = 8) -> int:
    """Difference hash: sign of horizontal gradients of a (size+1) x size grayscale thumbnail."""
    g = np.asarray(img.convert("L").resize((size + 1, size), Image.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def thumbnail_vector(img: Image.Image, size: int = 32) -> np.ndarray:
    """Mean-centred, unit-norm RGB thumbnail (dot product of two is their Pearson correlation), with the log
    aspect ratio as a last element so that a 64x128 and a 128x64 image of one object are not matched."""
    x = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    x = (x - x.mean(axis=(0, 1))).flatten()
    n = np.linalg.norm(x)
    return np.append(x / n if n > 0 else x, np.log(img.width / img.height))


class MinHasher:
    """MinHash signatures of word-shingle sets with a banded LSH index (bands x rows = num_perm)."""

    def __init__(self, num_perm: int = 64, bands: int = 16, shingle: int = 5, seed: int = 0):
        assert num_perm % bands == 0
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)
        self.bands, self.rows, self.shingle = bands, num_perm // bands, shingle

    def shingles(self, tokens: list[str]) -> set[int]:
        k = min(self.shingle, len(tokens))
        return {int.from_bytes(hashlib.blake2b(" ".join(tokens[i:i + k]).encode(), digest_size=4).digest(),
                               "little") % _PRIME for i in range(len(tokens) - k + 1)}

    def signature(self, shingles: set[int]) -> np.ndarray:
        x = np.fromiter(shingles, dtype=np.uint64)
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _PRIME).min(axis=1)

    def band_keys(self, sig: np.ndarray) -> list[tuple]:
        return [(b, sig[b * self.rows:(b + 1) * self.rows].tobytes()) for b in range(self.bands)]


@dataclass
class DedupKeys:
    """What dedup needs of one record, computed from that record alone. `fps` (per image: dHash and the
    thumbnail vector) and `shingles` are only needed to compare candidate pairs; `light` drops them."""

    index: int
    record_key: tuple  # (images, normalised text): the record_exact key
    sha: Optional[tuple] = None  # image file hashes; None: no images, or unreadable (text checks only)
    paths: tuple = ()
    fps: Optional[list] = None  # None: the bytes hash but do not decode (no near-image check)
    image_bands: list = field(default_factory=list)
    norm: Optional[str] = None  # the answers' normalised text, when long enough for text dedup
    shingles: Optional[set] = None
    text_bands: list = field(default_factory=list)

    def light(self) -> "DedupKeys":
        return replace(self, fps=None if self.fps is None else [], shingles=None)


class Dedup(Stage):
    name = "dedup"

    def __init__(self, image_hamming: int = 10, image_min_corr: float = 0.97, text_min_words: int = 20,
                 text_min_jaccard: float = 0.9):
        self.image_hamming, self.image_min_corr = image_hamming, image_min_corr
        self.text_min_words, self.text_min_jaccard = text_min_words, text_min_jaccard
        self.minhash = MinHasher()

    def keys(self, entry: Entry) -> DedupKeys:
        """Everything about one record the keep-first pass needs (the expensive, parallel part)."""
        k = DedupKeys(entry.index, (tuple(str(p) for p in entry.images),
                                    " ".join(words(entry.text.replace(IMAGE_MARKER, " ")))))
        if entry.images:
            try:  # unreadable images are the integrity stage's call; without it, dedup by text only
                k.sha, k.paths = tuple(file_sha256(p) for p in entry.images), tuple(str(p) for p in entry.images)
                fps = []
                for p in entry.images:
                    with open_image(p) as img:
                        fps.append((dhash(img), thumbnail_vector(img)))
                k.fps, k.image_bands = fps, self._image_bands(fps[0][0])
            except OSError:
                pass
        toks = words(" ".join(entry.answers))
        if len(toks) >= self.text_min_words:
            k.norm = " ".join(toks)
            k.shingles = self.minhash.shingles(toks)
            k.text_bands = [f"{b}:{key.hex()}" for b, key in self.minhash.band_keys(self.minhash.signature(k.shingles))]
        return k

    def _image_bands(self, h: int) -> list[str]:
        """`image_hamming + 1` bands of the dHash: within that Hamming distance one band matches exactly."""
        nb = self.image_hamming + 1
        return [f"{b}:{(h >> (64 * b // nb)) & ((1 << (64 * (b + 1) // nb - 64 * b // nb)) - 1)}" for b in range(nb)]

    def near_image(self, a: list, b: list) -> Optional[float]:
        """Thumbnail correlation when every image of `b` matches `a`'s (dHash close, same aspect), else None."""
        if len(a) != len(b):
            return None
        corr = min(float(x[1][:-1] @ y[1][:-1]) for x, y in zip(a, b))
        if all(bin(x[0] ^ y[0]).count("1") <= self.image_hamming and abs(x[1][-1] - y[1][-1]) < 0.05
               for x, y in zip(a, b)) and corr >= self.image_min_corr:
            return corr
        return None

    def near_text(self, a: set, b: set) -> Optional[float]:
        jac = len(a & b) / len(a | b)
        return jac if jac >= self.text_min_jaccard else None

    def match_group(self, kind: str, members: list[DedupKeys]) -> list[tuple[str, int, int, float]]:
        """(kind, later index, earlier index, score) for the pairs of one band group that match."""
        out = []
        for a, b in combinations(sorted(members, key=lambda k: k.index), 2):
            score = (self.near_image(b.fps, a.fps) if kind == "image" else self.near_text(b.shingles, a.shingles))
            if score is not None:
                out.append((kind, b.index, a.index, score))
        return out

    def candidate_pairs(self, keys: Iterable[DedupKeys]) -> list[tuple[str, int, int, float]]:
        """Matching pairs among records sharing a band key (in memory; the Ray engine groups by key instead)."""
        groups: dict[tuple[str, str], dict[int, DedupKeys]] = {}
        for k in keys:
            for kind, bands in (("image", k.image_bands), ("text", k.text_bands)):
                for band in bands:
                    groups.setdefault((kind, band), {})[k.index] = k
        return list({p for (kind, _), members in groups.items() if len(members) > 1
                     for p in self.match_group(kind, list(members.values()))})

    def resolve(self, keys: list[DedupKeys], pairs: Iterable[tuple[str, int, int, float]]) -> None:
        """The keep-first pass in input order: a record duplicates the first kept earlier record it
        matches. Sets the verdicts `check` returns."""
        matches: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for kind, later, earlier, score in pairs:
            matches.setdefault((kind, later), []).append((earlier, score))
        seen_files: dict[tuple, tuple[int, tuple]] = {}
        seen_records: dict[tuple, int] = {}
        seen_texts: dict[str, int] = {}
        kept = {"image": set(), "text": set()}
        self.verdicts: dict[int, Verdict] = {}

        def first_kept(kind: str, index: int) -> Optional[tuple[int, float]]:
            return min((m for m in matches.get((kind, index), []) if m[0] in kept[kind]), default=None)

        for k in sorted(keys, key=lambda k: k.index):
            verdict = None
            if k.sha is not None:
                if k.sha in seen_files:
                    first, first_paths = seen_files[k.sha]
                    if first_paths != k.paths:  # the same files again: several questions about one image
                        verdict = Verdict(reason="image_exact", detail=f"same image bytes as record #{first}")
                else:
                    seen_files[k.sha] = (k.index, k.paths)
                    if k.fps is not None:
                        near = first_kept("image", k.index)
                        if near is None:
                            kept["image"].add(k.index)
                        else:
                            verdict = Verdict({"image_corr": near[1]}, "image_near", f"near-duplicate image of "
                                              f"record #{near[0]} (thumbnail corr {near[1]:.3f})")
            self.verdicts[k.index] = verdict or self._text_verdict(k, seen_records, seen_texts, kept, first_kept)

    def _text_verdict(self, k: DedupKeys, seen_records: dict, seen_texts: dict, kept: dict, first_kept) -> Verdict:
        if k.record_key in seen_records:
            return Verdict(reason="record_exact",
                           detail=f"same images and text as record #{seen_records[k.record_key]}")
        seen_records[k.record_key] = k.index
        if k.norm is None:
            return Verdict()
        if k.norm in seen_texts:
            return Verdict(reason="text_exact", detail=f"same text as record #{seen_texts[k.norm]}")
        seen_texts[k.norm] = k.index
        near = first_kept("text", k.index)
        if near is not None:
            return Verdict({"text_jaccard": near[1]}, "text_near",
                           f"near-duplicate text of record #{near[0]} (shingle Jaccard {near[1]:.2f})")
        kept["text"].add(k.index)
        return Verdict()

    def prepare(self, entries: list[Entry]) -> None:
        keys = [self.keys(e) for e in entries]
        self.resolve(keys, self.candidate_pairs(keys))

    def check(self, entry: Entry) -> Verdict:
        return self.verdicts[entry.index]
