"""Image-text alignment and richness judge (SAIL-VL2's caption judges, in likelihood form).

Alignment asks whether a record's own image explains its answer better than other images do. Given any
`logprob_fn(image_path, prompt, answer) -> float` (the summed log-likelihood of the answer given the image; a
trained nativevlm model provides it), the judge scores the own image and `negatives` images of other
records, and reports

    alignment = logprob(own image) - mean logprob(other images)
    rank      = share of other images that score at least as high as the own image.

A record is dropped when `rank > max_rank` (its own image is beaten by more than a few random corpus images:
the answer is not about this image), or, if `threshold` is given, when `alignment <= threshold`. The rank
needs no calibration of the score's scale, so a model log-likelihood and the proxy below plug in the same
way: only scores of different images for the same text are ever compared. Each negative costs one
`logprob_fn` call; with a real model use a handful of negatives (`negatives=4`: any negative scoring at
least as high as the own image drops the record) or a `threshold` on alignment. Richness is the number of distinct
content words in the answers (reported; a drop only when `min_richness` is set).

Until a model exists, `ProxyMatcher.score` stands in for `logprob_fn`: ridge regression from the caption's
words and word pairs to coarse image features (share of 64 quantised colours in each cell of a 3x3 grid, the
colour histogram, the image size), fit in closed form on the corpus itself and cross-fitted over `folds`
splits so no record is scored by a model that saw it; the score is the cosine between the features the text
predicts and the image's. It only sees which colours sit where and how big the image is: it works on
corpora whose captions talk about colours, positions, counts and sizes (the built-in world) and is blind to
everything else (shapes at small sizes, text in images, identities, actions). It measures itself on held-out
records (AUC of own vs shuffled image; the estimated share of matched records whose own image would miss
`max_rank`) and the judge abstains (keeps everything, says so in the report) when the AUC is below `min_auc`
or that loss above `max_clean_loss`, so it cannot silently drop a corpus it does not understand.
"""
from __future__ import annotations

import random
import zlib
from typing import Callable, Iterable, Optional

import numpy as np
from PIL import Image

from .base import Entry, ImageRef, Stage, Verdict, open_image
from .text import words

LogprobFn = Callable[[ImageRef, str, str], float]

STOPWORDS = frozenset(
    "a an the and or of in on at to is are was were be been it its this that these there their with for by as "
    "from into over under image picture photo shows show showing what which who how many much does do can "
    "you your please describe one".split())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 2 and not w.isdigit()}


def match_terms(text: str) -> set[str]:
    """The matcher's text features: non-stopword words (numbers included: counts and sizes are visible)
    and adjacent pairs of them, which keep some binding ("green circle", "top left")."""
    toks = [w for w in words(text) if w not in STOPWORDS]
    return set(toks) | {f"{a} {b}" for a, b in zip(toks, toks[1:])}


def image_features(path: ImageRef, grid: int = 3, bins: int = 4) -> np.ndarray:
    """Where each colour is: the share of each of `bins`**3 quantised colours in each cell of a grid x grid
    layout (sqrt, to damp the background), the global colour histogram, and the side lengths (captions may state
    sizes). Colour-by-region is what a caption of objects, colours and positions can be checked
    against; a plain thumbnail loses the colour identity in the standardisation."""
    cell = 6
    with open_image(path) as img:
        rgb = img.convert("RGB")
        # one-hot width and height on a log2 scale in quarter octaves (16 px to 2048 px): a linear model
        # can then tie "96x96" to one size, which it cannot do with the log side itself
        sides = np.zeros((2, 29), dtype=np.float32)
        for i, side in enumerate(rgb.size):
            sides[i, int(np.clip(np.round((np.log2(side) - 4) * 4), 0, 28))] = 1.0
        q = np.asarray(rgb.resize((grid * cell, grid * cell), Image.BILINEAR)) // (256 // bins)
    onehot = np.eye(bins ** 3, dtype=np.float32)[(q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]]
    regions = onehot.reshape(grid, cell, grid, cell, -1).mean((1, 3)).reshape(-1)
    return np.concatenate([np.sqrt(regions), np.sqrt(onehot.mean((0, 1))), sides.reshape(-1)])


def _fold(prompt: str, answer: str, folds: int) -> int:
    return zlib.crc32((prompt + "\x00" + answer).encode()) % folds


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


class ProxyMatcher:
    """A model-free stand-in for a VLM's answer likelihood: how well an image's features match the features
    its text predicts (ridge regression, cross-fitted)."""

    def __init__(self, folds: int = 4, ridge: float = 1.0, vocab: int = 2000, min_df: int = 3, seed: int = 0):
        self.folds, self.ridge, self.vocab_size, self.min_df, self.seed = folds, ridge, vocab, min_df, seed
        self.held_out_auc = float("nan")
        self.held_out_ranks = np.zeros(0)  # per held-out record: share of other held-out images scoring higher
        self.raw: dict = {}  # image -> image_features, filled as needed or given up front (the Ray engine)
        self._img_cache: dict = {}
        self._pred_cache: dict[str, np.ndarray] = {}

    def _raw(self, path: ImageRef) -> np.ndarray:
        if path not in self.raw:
            self.raw[path] = image_features(path)
        return self.raw[path]

    def _img(self, path: ImageRef) -> np.ndarray:
        """Standardised, unit-norm image features."""
        if path not in self._img_cache:
            x = (self._raw(path) - self.mu) / self.sd
            self._img_cache[path] = (x / max(np.linalg.norm(x), 1e-6)).astype(np.float32)
        return self._img_cache[path]

    def _txt(self, text: str) -> np.ndarray:
        v = np.zeros(len(self.vocab) + 1, dtype=np.float32)
        v[-1] = 1.0  # intercept
        for w in match_terms(text):
            if w in self.vocab:
                v[self.vocab[w]] = 1.0
        return v

    def fit(self, pairs: list[tuple[ImageRef, str, str]]) -> "ProxyMatcher":
        """Fit on (image, prompt, answer) triples assumed mostly matched; sets `held_out_auc`."""
        df: dict[str, int] = {}
        for _, p, a in pairs:
            for w in match_terms(p + " " + a):
                df[w] = df.get(w, 0) + 1
        common = sorted((w for w, c in df.items() if c >= self.min_df), key=lambda w: (-df[w], w))
        self.vocab = {w: i for i, w in enumerate(common[:self.vocab_size])}
        raw = np.stack([self._raw(path) for path, _, _ in pairs])
        self.mu, self.sd = raw.mean(0), raw.std(0) + 1e-3
        x = np.stack([self._img(path) for path, _, _ in pairs])
        t = np.stack([self._txt(p + " " + a) for _, p, a in pairs])
        folds = np.array([_fold(p, a, self.folds) for _, p, a in pairs])
        self.weights, aucs, ranks = [], [], []
        rng = np.random.default_rng(self.seed)
        for k in range(self.folds):
            train, test = folds != k, np.where(folds == k)[0]
            w = np.linalg.solve(t[train].T @ t[train] + self.ridge * np.eye(t.shape[1]), t[train].T @ x[train])
            self.weights.append(w.astype(np.float32))
            if len(test) > 1:
                pred = t[test] @ w
                pred /= np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-6)
                shuffled = rng.permutation(test)
                aucs.append(_auc((pred * x[test]).sum(1), (pred * x[shuffled]).sum(1)))
                sim = pred @ x[test].T
                ranks.append((sim > np.diag(sim)[:, None]).mean(1))
        self.held_out_auc = float(np.mean(aucs)) if aucs else float("nan")
        self.held_out_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
        return self

    def score(self, image_path: ImageRef, prompt: str, answer: str) -> float:
        """Cosine between the image's features and those the text predicts (model of the fold that did not
        see this text). Higher means the image explains the text better; use as the judge's `logprob_fn`."""
        text = prompt + " " + answer
        if text not in self._pred_cache:
            pred = self._txt(text) @ self.weights[_fold(prompt, answer, self.folds)]
            self._pred_cache[text] = pred / max(np.linalg.norm(pred), 1e-6)
        return float(self._img(image_path) @ self._pred_cache[text])


class ImageTextJudge(Stage):
    """Drops records whose own image does not explain their answer better than random corpus images do."""

    name = "judge"

    def __init__(self, logprob_fn: Optional[LogprobFn] = None, max_rank: float = 0.03,
                 threshold: Optional[float] = None, negatives: int = 128, min_words: int = 6,
                 min_richness: int = 0, min_auc: float = 0.9, max_clean_loss: float = 0.05,
                 min_records: int = 64, seed: int = 0):
        self.logprob_fn, self.max_rank, self.threshold = logprob_fn, max_rank, threshold
        self.max_clean_loss = max_clean_loss
        self.negatives, self.min_words, self.min_richness = negatives, min_words, min_richness
        self.min_auc, self.min_records, self.seed = min_auc, min_records, seed
        self.abstain_reason = ""
        self.held_out_auc: Optional[float] = None

    def _judged(self, e: Entry) -> bool:
        return bool(e.images) and e.images[0].is_file() and len(words(" ".join(e.answers))) >= self.min_words

    def judged_images(self, entries: Iterable[Entry]) -> list[ImageRef]:
        """The images `prepare` fits the proxy on (and the pool negatives come from)."""
        return [e.images[0] for e in entries if self._judged(e)]

    def prepare(self, entries: list[Entry], features: Optional[dict] = None) -> None:
        """`features`: image -> `image_features`, computed elsewhere (in parallel); the rest are computed here.
        Only text and image references are read from `entries` then."""
        judged = [e for e in entries if self._judged(e)]
        self.pool = sorted({e.images[0] for e in judged})
        self.abstain_reason = ""
        self.fn = self.logprob_fn
        if len(judged) < self.min_records or len(self.pool) < 2:
            self.abstain_reason = f"only {len(judged)} records with images and answers of >= {self.min_words} words"
        elif self.fn is None:
            proxy = ProxyMatcher(seed=self.seed)
            proxy.raw.update(features or {})
            proxy.fit([(e.images[0], " ".join(e.prompts), " ".join(e.answers)) for e in judged])
            self.held_out_auc = proxy.held_out_auc
            self.clean_loss = self._estimated_clean_loss(proxy.held_out_ranks)
            if not proxy.held_out_auc >= self.min_auc:
                self.abstain_reason = (f"proxy matcher held-out AUC {proxy.held_out_auc:.3f} < {self.min_auc}: "
                                       "it does not understand this corpus")
            elif self.clean_loss > self.max_clean_loss:
                self.abstain_reason = (f"proxy matcher would drop an estimated {100 * self.clean_loss:.1f}% of "
                                       f"matched records (> {100 * self.max_clean_loss:g}%): too weak for this corpus")
            self.fn = proxy.score

    def _estimated_clean_loss(self, ranks: np.ndarray) -> float:
        """Share of matched records the rank rule would drop, from held-out ranks. The corpus's real
        mismatches have ranks uniform on [0, 1] and matched ones sit near 0, so twice the share above 0.5
        estimates the mismatched share, whose ranks above `max_rank` are subtracted from the drop share."""
        if not len(ranks):
            return 1.0
        mismatched = min(1.0, 2 * float((ranks > 0.5).mean()))
        drop = float((ranks > self.max_rank).mean())
        return max(0.0, drop - mismatched * (1 - self.max_rank)) / max(1e-9, 1 - mismatched)

    def check(self, entry: Entry) -> Verdict:
        prompt, answer = " ".join(entry.prompts), " ".join(entry.answers)
        scores: dict[str, float] = {"richness": len(content_words(answer))}
        if self.min_richness and scores["richness"] < self.min_richness:
            return Verdict(scores, "poor", f"{int(scores['richness'])} content words < {self.min_richness}")
        if self.abstain_reason or not self._judged(entry):
            return Verdict(scores)
        own_path = entry.images[0]
        rng = random.Random(f"{self.seed}:{entry.index}")  # per record: a verdict is independent of the order
        others = [p for p in rng.sample(self.pool, min(len(self.pool), self.negatives + 1)) if p != own_path]
        neg = np.array([self.fn(p, prompt, answer) for p in others[:self.negatives]])
        own = self.fn(own_path, prompt, answer)
        scores["alignment"] = own - float(neg.mean())
        scores["rank"] = float((neg >= own).mean())
        if scores["rank"] > self.max_rank:
            return Verdict(scores, "misaligned", f"{100 * scores['rank']:.1f}% of {len(neg)} other images explain "
                                                 f"the answer at least as well as its own (> {100 * self.max_rank:g}%)")
        if self.threshold is not None and scores["alignment"] <= self.threshold:
            return Verdict(scores, "misaligned", f"alignment {scores['alignment']:.3f} <= {self.threshold}")
        return Verdict(scores)

    def summary(self) -> dict:
        out = {"scorer": "logprob_fn" if self.logprob_fn else "proxy matcher",
               "abstained": self.abstain_reason or None, "max_rank": self.max_rank, "negatives": self.negatives}
        if self.held_out_auc is not None:
            out["proxy_held_out_auc"] = round(self.held_out_auc, 4)
            out["proxy_estimated_clean_loss"] = round(self.clean_loss, 4)
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out
