import dataclasses

import pytest

from mirg_lib.config import ConfigError, config_hash, from_dict, load_params, stage_config
from mirg_lib.world import DataConfig


def test_profiles_layer_over_base():
    p = load_params("smoke")
    assert [f.name for f in p.files] == ["base.yaml", "smoke.yaml"]
    cfg = stage_config(DataConfig, p, "data")
    assert cfg.image_size == 112 and cfg.n_test_per_task == 4  # from smoke
    assert cfg.noise == 6.0  # from base
    emb = stage_config(DataConfig, load_params("embedded"), "data")
    assert emb.image_size == 112 and emb.position_cue_kind == "coord" and emb.noise == 6.0  # embedded over base


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'n_tset_per_task' \(did you mean 'n_test_per_task'\?\)") as e:
        stage_config(DataConfig, load_params("smoke", {"data.n_tset_per_task": 3}), "data")
    assert "smoke.yaml" in str(e.value)


def test_mistyped_values_are_named():
    with pytest.raises(ConfigError, match=r"\.seed: expected an integer"):
        from_dict(DataConfig, {"seed": "zero"}, "data")
    with pytest.raises(ConfigError, match=r"\.contact_sheet: expected true or false"):
        from_dict(DataConfig, {"contact_sheet": 1}, "data")
    with pytest.raises(ConfigError, match=r"objects_per_image\[1\]: expected an integer"):
        from_dict(DataConfig, {"objects_per_image": [3, "many"]}, "data")
    with pytest.raises(ConfigError, match="multiple of 28"):
        from_dict(DataConfig, {"image_size": 100}, "data")
    with pytest.raises(ConfigError, match="unknown tasks"):
        from_dict(DataConfig, {"test_tasks": ["diff", "dif"]}, "data")


def test_unknown_profile_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="no params profile 'nope'"):
        load_params("nope")
    f = tmp_path / "mine.yaml"
    f.write_text("extends: smoke\ndata:\n  seed: 7\n")
    p = load_params(f, {"data.noise": 0.0})
    cfg = stage_config(DataConfig, p, "data")
    assert cfg.seed == 7 and cfg.noise == 0.0 and cfg.image_size == 112


def test_config_hash_tracks_changes():
    a = DataConfig()
    assert config_hash(a) == config_hash(DataConfig())
    assert config_hash(a) != config_hash(dataclasses.replace(a, seed=1))
