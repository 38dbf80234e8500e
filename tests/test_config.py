import pytest

from nativevlm.config import ConfigError, ModelConfig, apply_overrides, from_dict, load_config, save_config, to_dict


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip(tmp_path, suffix):
    cfg = apply_overrides(ModelConfig(), ["vision.hidden_size=128", "moe.modality_experts=true",
                                          "language.rope_theta=1e6", "language.eos_token_id=7"])
    save_config(cfg, tmp_path / f"c{suffix}")
    again = load_config(ModelConfig, tmp_path / f"c{suffix}")
    assert again == cfg
    assert again.vision.hidden_size == 128 and again.moe.modality_experts and again.language.rope_theta == 1e6


def test_unknown_key_names_the_field():
    with pytest.raises(ConfigError, match=r"vision\.hiden_size"):
        from_dict(ModelConfig, {"vision": {"hiden_size": 3}})


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"language\.num_layers: expected an integer"):
        from_dict(ModelConfig, {"language": {"num_layers": "eight"}})
    with pytest.raises(ConfigError, match=r"moe\.modality_experts: expected true or false"):
        apply_overrides(ModelConfig(), ["moe.modality_experts=3"])


def test_override_of_unknown_key():
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(ModelConfig(), ["vision.nope=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(ModelConfig(), ["vision.hidden_size"])


def test_dict_is_plain_data():
    d = to_dict(ModelConfig())
    assert d["special_tokens"]["image"] == "<img>" and isinstance(d["vision"], dict)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ModelConfig, tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("vision: [unclosed")
    with pytest.raises(ConfigError, match="does not parse"):
        load_config(ModelConfig, tmp_path / "bad.yaml")


def test_empty_override_is_the_empty_string():
    cfg = apply_overrides(ModelConfig(), ["special_tokens.image_eol="])
    assert cfg.special_tokens.image_eol == ""
