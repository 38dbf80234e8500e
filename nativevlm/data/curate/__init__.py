"""SAIL-VL2-style curation of LLaVA conversation JSON (`nativevlm data curate`).

One small module per concern: `base` (records, the Stage contract, the pipeline), `integrity` (images
decode, sane size, not blank), `text` (markers, empty/truncated/repetitive answers), `dedup` (exact and
near-duplicate images and texts), `judge` (image-text alignment from any `logprob_fn`, with a model-free
proxy), `embed` + `balance` (MiniLM embeddings, k-means buckets, even sampling), `report`, `run` (one file
end to end) and `cli`. `synthetic` draws a small shapes corpus for tests.
"""
from .base import CurationError, CurationResult, Entry, Stage, Verdict, load_records, run_pipeline
from .run import DEFAULT_STAGES, STAGE_NAMES, build_stages, curate_file

__all__ = ["CurationError", "CurationResult", "DEFAULT_STAGES", "Entry", "STAGE_NAMES", "Stage", "Verdict",
           "build_stages", "curate_file", "load_records", "run_pipeline"]
