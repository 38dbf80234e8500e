"""Atomic folder writes (utils.atomic): a process killed at any step of replacing a saved model leaves the
old or the new one loadable, never neither; temporaries a kill leaves behind are cleared by the next write."""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

import faultkit
from nativevlm import LanguageConfig, LanguageModel, ModelConfig, MoEConfig, NativeVLM, VisionConfig
from nativevlm.model.loading import load_pretrained
from nativevlm.train.export import save_model
from nativevlm.utils import atomic

LM = dict(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)

# Builds the model of the given layout from a seed and exports it, in a process the fault may kill.
EXPORT = """
from pathlib import Path
import torch
from nativevlm import LanguageConfig, LanguageModel, ModelConfig, MoEConfig, NativeVLM, VisionConfig
from nativevlm.train.export import save_model
layout, seed, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
torch.manual_seed(seed)
lm = LanguageConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
if layout == "vlm":
    model = NativeVLM(ModelConfig(vision=VisionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                                  language=lm, image_token_id=63))
else:
    model = LanguageModel(lm, MoEConfig(modality_experts=layout == "lm-experts"))
save_model(model, model.state_dict(), out)
"""


def build(layout: str, seed: int):
    torch.manual_seed(seed)
    lm = LanguageConfig(**LM)
    if layout == "vlm":
        return NativeVLM(ModelConfig(vision=VisionConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                         intermediate_size=64), language=lm, image_token_id=63))
    return LanguageModel(lm, MoEConfig(modality_experts=layout == "lm-experts"))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("point,layout", [("written", "vlm"), ("swapped", "vlm"), ("written", "lm-experts"),
                                          ("swapped", "lm-dense")])
def test_export_killed_between_writing_and_renaming_leaves_a_loadable_model(tmp_path, layout, point):
    final = tmp_path / "run" / "final"
    old, new = build(layout, 0), build(layout, 1)
    save_model(old, old.state_dict(), final)
    proc = subprocess.run(faultkit.script(point, "final", "exit", EXPORT, layout, "1", str(final)),
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == faultkit.KILLED, proc.stderr
    # Killed after the new folder was complete but before the swap: the old model; after it: the new one.
    assert same_weights(load_pretrained(final), old if point == "written" else new)
    newest = build(layout, 2)
    save_model(newest, newest.state_dict(), final)
    assert same_weights(load_pretrained(final), newest)
    assert sorted(p.name for p in final.parent.iterdir()) == ["final"]  # the kill's leftovers are gone


def test_failed_write_keeps_the_old_folder(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(tmp_path / "f") as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("disk full")
    assert (tmp_path / "f" / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_replacement_without_an_atomic_exchange(tmp_path, monkeypatch):
    """Where renameat2 is missing, the old folder is renamed aside first; the result is the same."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    for text in ("old", "new"):
        with atomic.atomic_dir(tmp_path / "f") as tmp:
            (tmp / "a.txt").write_text(text)
    assert (tmp_path / "f" / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_exchange_swaps_two_folders(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "who").write_text(name)
    if not atomic._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this platform")
    assert (tmp_path / "a" / "who").read_text() == "b" and (tmp_path / "b" / "who").read_text() == "a"
