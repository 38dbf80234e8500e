"""Evaluate a model on question/answer samples with canonical short answers (the built-in world, or any
LLaVA-format QA set): batched greedy generation, exact match after normalisation, accuracy per task family
and per kind (perception / reasoning)."""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..data.collate import encode_sample, prompt_batch
from ..data.sample import Sample
from ..infer.generate import generate


def normalize_answer(text: str) -> str:
    """Lower-case, drop a trailing period and 'Answer:' prefixes, collapse spaces."""
    text = text.strip().lower()
    text = re.sub(r"^(the answer is|answer:)\s*", "", text)
    text = text.rstrip(".").strip()
    return re.sub(r"\s+", " ", text)


def reference_answer(sample: Sample) -> str:
    return str(sample.meta.get("answer") or sample.messages[-1]["content"])


def prompt_of(sample: Sample) -> Sample:
    """The sample without its final assistant turn: what the model is asked."""
    msgs = sample.messages[:-1] if sample.messages[-1]["role"] == "assistant" else sample.messages
    return dataclasses.replace(sample, messages=msgs)


@dataclasses.dataclass
class EvalResult:
    records: list[dict]  # one per sample: id, family, kind, question, reference, prediction, correct

    @property
    def accuracy(self) -> float:
        return sum(r["correct"] for r in self.records) / max(1, len(self.records))

    def by(self, key: str) -> dict[str, tuple[float, int]]:
        groups = defaultdict(list)
        for r in self.records:
            groups[r[key]].append(r["correct"])
        return {k: (sum(v) / len(v), len(v)) for k, v in sorted(groups.items())}

    def table(self) -> str:
        """A plain-text table: accuracy per family, then per kind, then overall."""
        lines = [f"{'family':14s} {'kind':11s} {'n':>5s} {'accuracy':>9s}"]
        kinds = {r["family"]: r["kind"] for r in self.records}
        for fam, (acc, n) in self.by("family").items():
            lines.append(f"{fam:14s} {kinds[fam]:11s} {n:5d} {acc:9.1%}")
        lines.append("-" * 42)
        for kind, (acc, n) in self.by("kind").items():
            lines.append(f"{'all ' + kind:26s} {n:5d} {acc:9.1%}")
        lines.append(f"{'overall':26s} {len(self.records):5d} {self.accuracy:9.1%}")
        return "\n".join(lines)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "n": len(self.records),
                "by_kind": {k: v[0] for k, v in self.by("kind").items()},
                "by_family": {k: v[0] for k, v in self.by("family").items()}}


@torch.no_grad()
def evaluate_qa(model, tokenizer, image_processor, samples: Sequence[Sample], batch_size: int = 32,
                max_new_tokens: int = 8, progress: bool = True, device: Optional[torch.device] = None) -> EvalResult:
    """Greedy answers for each sample's question, scored by exact match against `meta.answer` (or the
    sample's last assistant turn)."""
    model.eval()
    device = device or next(model.parameters()).device
    records = []
    bar = tqdm(total=len(samples), desc="evaluate", unit="q", disable=not progress)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        encoded = [encode_sample(prompt_of(s), tokenizer, image_processor, add_generation_prompt=True) for s in chunk]
        batch = prompt_batch(encoded, tokenizer.pad_id).to(device)
        out = generate(model, batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id)
        for s, row in zip(chunk, out.tolist()):
            pred = tokenizer.decode([t for t in row if t != tokenizer.eos_id])
            ref = reference_answer(s)
            records.append({
                "id": s.id, "family": s.meta.get("family", "unknown"), "kind": s.meta.get("kind", "unknown"),
                "question": prompt_of(s).messages[-1]["content"].replace("<image>\n", ""),
                "reference": ref, "prediction": pred.strip(),
                "correct": normalize_answer(pred) == normalize_answer(ref),
            })
        bar.update(len(chunk))
    bar.close()
    return EvalResult(records)
