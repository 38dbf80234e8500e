"""Suite-wide settings and fixtures shared by several test modules."""
from __future__ import annotations

import os

import pytest
import torch

from trainkit import make_object_world, make_world

# One intra-op thread unless the caller chose: the tensors here are tiny, so more threads barely help, and on
# a busy 2-core machine a second spinning thread slowed some tests 15x (SmolLM2 greedy: 7.5 s vs 0.4 s).
# The subprocess and multi-process tests already run with OMP_NUM_THREADS=1.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def train_world(tmp_path_factory) -> dict:
    """The tiny training world of `trainkit.make_world`, written once; tests only read it."""
    return make_world(tmp_path_factory.mktemp("train_world"))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict:
    """A tiny built-in world (object scenes) with its tokenizer (`trainkit.make_object_world`)."""
    return make_object_world(tmp_path_factory.mktemp("curve_world"))
