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
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..sample import IMAGE_MARKER
from .base import Entry, Stage, Verdict
from .text import words

_PRIME = (1 << 31) - 1  # a, b, x < 2**31, so a*x + b fits in uint64 without overflow


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


class Dedup(Stage):
    name = "dedup"

    def __init__(self, image_hamming: int = 10, image_min_corr: float = 0.97, text_min_words: int = 20,
                 text_min_jaccard: float = 0.9):
        self.image_hamming, self.image_min_corr = image_hamming, image_min_corr
        self.text_min_words, self.text_min_jaccard = text_min_words, text_min_jaccard
        self.minhash = MinHasher()

    def prepare(self, entries: list[Entry]) -> None:
        self.seen_files: dict[tuple, tuple[int, tuple]] = {}
        self.seen_records: dict[tuple, int] = {}
        self.seen_texts: dict[str, int] = {}
        self.image_bands: dict[tuple, list[int]] = {}
        self.image_fp: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.text_bands: dict[tuple, list[int]] = {}
        self.text_shingles: dict[int, set[int]] = {}

    def _image_fingerprints(self, entry: Entry) -> list[tuple[int, np.ndarray]]:
        fps = []
        for p in entry.images:
            with Image.open(p) as img:
                fps.append((dhash(img), thumbnail_vector(img)))
        return fps

    def _near_image(self, entry: Entry, fps: list[tuple[int, np.ndarray]]) -> tuple[int, float] | None:
        """First kept record whose images all match this one's (same count, dHash close, thumbnails correlated)."""
        nb = self.image_hamming + 1
        keys = [(b, (fps[0][0] >> (64 * b // nb)) & ((1 << (64 * (b + 1) // nb - 64 * b // nb)) - 1))
                for b in range(nb)]
        candidates = sorted({i for k in keys for i in self.image_bands.get(k, [])})
        for i in candidates:
            other = self.image_fp[i]
            if len(other) != len(fps):
                continue
            corr = min(float(a[1][:-1] @ b[1][:-1]) for a, b in zip(fps, other))
            if all(bin(a[0] ^ b[0]).count("1") <= self.image_hamming and abs(a[1][-1] - b[1][-1]) < 0.05
                   for a, b in zip(fps, other)) and corr >= self.image_min_corr:
                return i, corr
        for k in keys:
            self.image_bands.setdefault(k, []).append(entry.index)
        self.image_fp[entry.index] = fps
        return None

    def check(self, entry: Entry) -> Verdict:
        try:
            verdict = self._check_images(entry) if entry.images else None
        except OSError:  # unreadable images are the integrity stage's call; without it, dedup by text only
            verdict = None
        return verdict or self._check_text(entry)

    def _check_images(self, entry: Entry) -> Verdict | None:
        key = tuple(file_sha256(p) for p in entry.images)
        paths = tuple(entry.images)
        if key in self.seen_files:
            first, first_paths = self.seen_files[key]
            if first_paths == paths:  # the same files again: several questions about one image, not a copy
                return None
            return Verdict(reason="image_exact", detail=f"same image bytes as record #{first}")
        self.seen_files[key] = (entry.index, paths)
        near = self._near_image(entry, self._image_fingerprints(entry))
        if near is None:
            return None
        return Verdict({"image_corr": near[1]}, "image_near",
                       f"near-duplicate image of record #{near[0]} (thumbnail corr {near[1]:.3f})")

    def _check_text(self, entry: Entry) -> Verdict:
        record_key = (tuple(entry.images), " ".join(words(entry.text.replace(IMAGE_MARKER, " "))))
        if record_key in self.seen_records:
            return Verdict(reason="record_exact",
                           detail=f"same images and text as record #{self.seen_records[record_key]}")
        self.seen_records[record_key] = entry.index
        toks = words(" ".join(entry.answers))
        norm = " ".join(toks)
        if len(toks) < self.text_min_words:
            return Verdict()
        if norm in self.seen_texts:
            return Verdict(reason="text_exact", detail=f"same text as record #{self.seen_texts[norm]}")
        self.seen_texts[norm] = entry.index
        sh = self.minhash.shingles(toks)
        keys = self.minhash.band_keys(self.minhash.signature(sh))
        for i in sorted({i for k in keys for i in self.text_bands.get(k, [])}):
            other = self.text_shingles[i]
            jac = len(sh & other) / len(sh | other)
            if jac >= self.text_min_jaccard:
                return Verdict({"text_jaccard": jac}, "text_near",
                               f"near-duplicate text of record #{i} (shingle Jaccard {jac:.2f})")
        for k in keys:
            self.text_bands.setdefault(k, []).append(entry.index)
        self.text_shingles[entry.index] = sh
        return Verdict()
