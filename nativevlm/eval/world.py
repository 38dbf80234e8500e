"""Evaluate a model on question/answer samples with canonical short answers (the built-in world, or any
LLaVA-format QA set): batched greedy generation, answers read by `matching` (multiple choice when the
record's meta lists `choices`), accuracy and parse failures per task family and per kind (perception /
reasoning). The benchmark harness (`harness.py`) is the general form; this is the quick in-process one the
quickstart uses."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..data.sample import Sample
from .local import generate_answers
from .matching import PARSE_FAILURE, match_choice, match_open, normalize_answer, option_letters

__all__ = ["EvalResult", "evaluate_qa", "normalize_answer", "prompt_of", "reference_answer"]


def reference_answer(sample: Sample) -> str:
    return str(sample.meta.get("answer") or sample.messages[-1]["content"])


def prompt_of(sample: Sample) -> Sample:
    """The sample without its final assistant turn: what the model is asked."""
    msgs = sample.messages[:-1] if sample.messages[-1]["role"] == "assistant" else sample.messages
    return dataclasses.replace(sample, messages=msgs)


@dataclasses.dataclass
class EvalResult:
    records: list[dict]  # one per sample: id, family, kind, question, reference, prediction, status, correct

    @property
    def accuracy(self) -> float:
        return sum(r["correct"] for r in self.records) / max(1, len(self.records))

    @property
    def parse_failure_rate(self) -> float:
        return sum(r["status"] == PARSE_FAILURE for r in self.records) / max(1, len(self.records))

    def by(self, key: str) -> dict[str, tuple[float, int]]:
        groups = defaultdict(list)
        for r in self.records:
            groups[r[key]].append(r["correct"])
        return {k: (sum(v) / len(v), len(v)) for k, v in sorted(groups.items())}

    def _failures(self, key: str) -> dict[str, float]:
        groups = defaultdict(list)
        for r in self.records:
            groups[r[key]].append(r["status"] == PARSE_FAILURE)
        return {k: sum(v) / len(v) for k, v in groups.items()}

    def table(self) -> str:
        """A plain-text table: accuracy and parse failures per family, then per kind, then overall."""
        lines = [f"{'family':14s} {'kind':11s} {'n':>5s} {'accuracy':>9s} {'unparsed':>9s}"]
        kinds = {r["family"]: r["kind"] for r in self.records}
        fail = self._failures("family")
        for fam, (acc, n) in self.by("family").items():
            lines.append(f"{fam:14s} {kinds[fam]:11s} {n:5d} {acc:9.1%} {fail[fam]:9.1%}")
        lines.append("-" * 52)
        fail = self._failures("kind")
        for kind, (acc, n) in self.by("kind").items():
            lines.append(f"{'all ' + kind:26s} {n:5d} {acc:9.1%} {fail[kind]:9.1%}")
        lines.append(f"{'overall':26s} {len(self.records):5d} {self.accuracy:9.1%} {self.parse_failure_rate:9.1%}")
        return "\n".join(lines)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "n": len(self.records), "parse_failure_rate": self.parse_failure_rate,
                "by_kind": {k: v[0] for k, v in self.by("kind").items()},
                "by_family": {k: v[0] for k, v in self.by("family").items()}}


def score(sample: Sample, prediction: str):
    """The matching rule for one world / LLaVA QA sample: multiple choice when its meta lists choices."""
    choices = sample.meta.get("choices")
    if choices:
        return match_choice(prediction, dict(zip(option_letters(len(choices)), map(str, choices))),
                            reference_answer(sample))
    return match_open(prediction, reference_answer(sample))


@torch.no_grad()
def evaluate_qa(model, tokenizer, image_processor, samples: Sequence[Sample], batch_size: int = 32,
                max_new_tokens: int = 8, progress: bool = True, device: Optional[torch.device] = None) -> EvalResult:
    """Greedy answers for each sample's question, scored against `meta.answer` (or the sample's last
    assistant turn)."""
    records = []
    bar = tqdm(total=len(samples), desc="evaluate", unit="q", disable=not progress)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        preds = generate_answers(model, tokenizer, image_processor, [prompt_of(s) for s in chunk], max_new_tokens,
                                 device)
        for s, pred in zip(chunk, preds):
            match = score(s, pred)
            records.append({
                "id": s.id, "family": s.meta.get("family", "unknown"), "kind": s.meta.get("kind", "unknown"),
                "question": prompt_of(s).messages[-1]["content"].replace("<image>\n", ""),
                "reference": reference_answer(s), "prediction": pred, "status": match.status,
                "correct": match.correct,
            })
        bar.update(len(chunk))
    bar.close()
    return EvalResult(records)
