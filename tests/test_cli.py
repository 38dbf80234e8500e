import subprocess
import sys

import pytest
import torch

from nativevlm import LanguageConfig, LanguageModel, ModelConfig, MoEConfig, NativeVLM, VisionConfig
from nativevlm.cli import main
from nativevlm.train.export import save_model


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "nativevlm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("info", "data", "tokenizer", "train"):
        assert cmd in out.stdout


def test_info_prints_config_and_counts(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig(vision=VisionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                      language=LanguageConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                                              num_kv_heads=1, intermediate_size=64),
                      image_token_id=63)
    cfg.moe.modality_experts = True
    model = NativeVLM(cfg)
    model.save_pretrained(tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    counts = model.parameter_counts()
    for part in ("vision", "connector", "language", "visual_experts"):
        assert f"{counts[part]:,d}" in out
    assert "hidden_size=32" in out


def test_info_on_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "config.json not found" in capsys.readouterr().err


@pytest.mark.parametrize("modality_experts", [False, True])
def test_info_reads_language_model_folders(tmp_path, capsys, modality_experts):
    """A `kind: lm` run's final/: a Hugging Face Llama folder, or nativevlm's layout when it has experts."""
    lm = LanguageModel(LanguageConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                      intermediate_size=64), MoEConfig(modality_experts=modality_experts))
    save_model(lm, lm.state_dict(), tmp_path / "lm")
    assert main(["info", str(tmp_path / "lm")]) == 0
    out = capsys.readouterr().out
    experts = sum(p.numel() for n, p in lm.named_parameters() if ".visual_" in n)
    assert (experts > 0) == modality_experts
    assert f"{sum(p.numel() for p in lm.parameters()):,d}" in out and f"{experts:,d}" in out
    assert "hidden_size=32" in out
