import dataclasses
import re

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
    assert emb.image_size == 112 and emb.position_cue == 150 and emb.noise == 6.0  # embedded over base


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


def test_every_profile_loads_into_every_stage_config(monkeypatch):
    """Each params file in params/ (the gpu and paper profiles too, which no test runs end to end) reads into
    every stage's typed config: a typo or a wrong type in one is caught here, not an hour into a run."""
    from pathlib import Path

    from mirg_lib.base_model import BaseModelConfig
    from mirg_lib.grpo import GRPOStageConfig
    from mirg_lib.launch import LaunchConfig
    from mirg_lib.sections import SECTIONS, check_params
    from mirg_lib.sft import SFTStageConfig

    for var in ("MIRG_QWEN25VL_7B", "MIRG_QWEN2VL_7B", "MIRG_DATA", "MIRG_TEACHER_URL"):  # the paper profiles' local paths
        monkeypatch.setenv(var, f"/{var.lower()}")
    profiles = sorted(p.stem for p in (Path(__file__).parents[1] / "params").glob("*.yaml"))
    assert {"base", "embedded", "smoke", "gpu", "zhang2025_qwen25vl7b", "mirgrl_qwen2vl7b"} <= set(profiles)
    for name in profiles:
        params = load_params(name)
        assert set(params.data) <= set(SECTIONS), (name, set(params.data) - set(SECTIONS))
        check_params(params)
    gpu = load_params("gpu")
    assert gpu.data["base_model"]["preset"] == "small" and gpu.data["base_model"]["shipped"] == ""
    assert all(gpu.data[s]["bf16"] for s in ("base_model", "sft", "grpo", "eval"))
    # the papers' settings, as the stages read them
    zhang, mirg = load_params("zhang2025_qwen25vl7b"), load_params("mirgrl_qwen2vl7b")
    sft = stage_config(SFTStageConfig, zhang, "sft")
    assert (sft.learning_rate, sft.lr_scheduler_type, sft.per_device_train_batch_size * sft.gradient_accumulation_steps, sft.max_length) == (1e-4, "cosine", 32, 1024)
    answer = sft.for_variant("answer")
    assert (answer.learning_rate, answer.per_device_train_batch_size * answer.gradient_accumulation_steps) == (2e-6, 64)
    g = stage_config(GRPOStageConfig, zhang, "grpo")
    assert (g.learning_rate, g.num_generations, g.prompts_per_step, g.gradient_accumulation_steps, g.beta, g.temperature, g.max_completion_length, g.rewards) == \
        (5e-5, 8, 2, 4, 0.001, 0.7, 1024, {"zhang_accuracy": 1.0, "zhang_format": 0.5})
    assert stage_config(DataConfig, zhang, "data").mig_bench == "/mirg_data/MIG-Bench/MIG_data.json"
    assert stage_config(BaseModelConfig, zhang, "base_model").model_name_or_path == "/mirg_qwen25vl_7b"
    msft, mlaunch = stage_config(SFTStageConfig, mirg, "sft"), stage_config(LaunchConfig, mirg, "launch")
    assert msft.learning_rate == 2e-5 and msft.per_device_train_batch_size * msft.gradient_accumulation_steps * mlaunch.num_processes == 128
    mg = stage_config(GRPOStageConfig, mirg, "grpo")
    assert mg.learning_rate == 5e-6 and mg.prompts_per_step * mg.num_generations == 128


def test_per_variant_and_per_recipe_settings():
    """The papers train their baselines and recipes with other settings (Zhang et al.'s answer-only SFT lr 2e-6,
    batch 64; MIRG-RL's RL lr 5e-6): ``sft.variants`` and ``grpo.recipes`` set them for that variant or recipe
    alone, checked like the section's own keys; unset, they leave the section's digest alone."""
    from mirg_lib.grpo import GRPOStageConfig
    from mirg_lib.sft import SFTStageConfig

    sft = from_dict(SFTStageConfig, {"learning_rate": 1e-4, "variants": {"answer": {"learning_rate": 2e-6, "gradient_accumulation_steps": 8}}}, "sft")
    assert sft.for_variant("answer").learning_rate == 2e-6 and sft.for_variant("answer").gradient_accumulation_steps == 8
    assert sft.for_variant("zhang").learning_rate == 1e-4 and sft.for_variant("zhang").variants == {}
    assert config_hash(sft.for_variant("zhang")) == config_hash(SFTStageConfig(learning_rate=1e-4))
    with pytest.raises(ConfigError, match=r"sft.variants.answer: unknown key 'learning_rat'"):
        from_dict(SFTStageConfig, {"variants": {"answer": {"learning_rat": 1.0}}}, "sft").for_variant("answer")
    grpo = from_dict(GRPOStageConfig, {"recipes": {"mirg": {"learning_rate": 5e-6}}}, "grpo")
    assert grpo.for_recipe().learning_rate == 5e-5 and config_hash(grpo.for_recipe()) == config_hash(GRPOStageConfig())
    mirg = from_dict(GRPOStageConfig, {"recipe": "mirg", "recipes": {"mirg": {"learning_rate": 5e-6}}}, "grpo").for_recipe()
    assert mirg.learning_rate == 5e-6 and mirg.rewards == GRPOStageConfig(recipe="mirg").rewards
    with pytest.raises(ConfigError, match="cannot set the recipe itself"):
        from_dict(GRPOStageConfig, {"recipes": {"zhang": {"recipe": "mirg"}}}, "grpo").for_recipe()


def test_an_unknown_section_is_an_error_naming_it(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("extends: smoke\ngrop:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"unknown section 'grop' \(did you mean 'grpo'\?\)") as e:
        load_params(f)
    assert str(f) in str(e.value)
    with pytest.raises(ConfigError, match="unknown section 'evl'"):
        load_params("smoke", {"evl.batch_size": 2})


def test_base_yaml_is_generated_from_the_dataclasses_with_one_line_helps():
    """The defaults live in one place: params/base.yaml is the dataclasses' defaults (``python -m mirg_lib
    defaults`` rewrites it), every field of every section is in it, each help is one short line."""
    import dataclasses

    from mirg_lib.sections import DEFAULTS_FILE, SECTIONS, defaults_yaml, section_class

    assert DEFAULTS_FILE.read_text() == defaults_yaml(), "params/base.yaml is stale: run `python -m mirg_lib defaults`"
    base = load_params("base")
    for name in SECTIONS:
        cls = section_class(name)
        fields = dataclasses.fields(cls)
        assert set(base.section(name)) == {f.name for f in fields}, name
        assert dataclasses.asdict(stage_config(cls, base, name)) == dataclasses.asdict(cls()), name
        for f in fields:
            text = f.metadata.get("help", "")
            assert text, f"{cls.__name__}.{f.name} has no help"
            assert "\n" not in text and len(text) <= 130, f"{cls.__name__}.{f.name}: {text!r}"
            assert not re.search(r"README|docs/|session|issue|earlier|until", text), f"{cls.__name__}.{f.name}: {text!r}"


def test_reproduce_checks_every_section_before_the_first_notebook(tmp_path, monkeypatch):
    from mirg_lib import notebooks

    ran = []
    monkeypatch.setattr(notebooks, "execute", lambda nb, *a, **k: ran.append(nb))
    f = tmp_path / "late_typo.yaml"
    f.write_text("extends: smoke\ngrpo:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"\[grpo\]: unknown key 'max_stepz' \(did you mean 'max_steps'\?\)"):
        notebooks.reproduce(str(f))
    with pytest.raises(ConfigError, match=r"\[eval\].batch_size: expected an integer"):
        notebooks.reproduce("smoke", overrides={"eval.batch_size": "many"})
    assert ran == []


def test_the_stages_box_notations_must_agree():
    """The teacher's replies, the prompts of SFT, rejection sampling, GRPO and evaluation and the format reward
    use one box notation: a profile that mixes them is refused, naming the settings."""
    from mirg_lib.config import NOTATION_SECTIONS

    params = load_params("embedded")
    assert {s: params.data[s]["box_notation"] for s in NOTATION_SECTIONS} == dict.fromkeys(NOTATION_SECTIONS, "tokens")
    assert all(stage_config(cls, params, s).box_notation == "tokens" for cls, s in _notation_configs())
    with pytest.raises(ConfigError, match=r"box notation differs.*sft.box_notation': 'json'"):
        load_params("embedded", {"sft.box_notation": "json"})
    assert load_params("smoke", {f"{s}.box_notation": "tokens" for s in NOTATION_SECTIONS}).data["eval"]["box_notation"] == "tokens"
    with pytest.raises(ConfigError, match="box notation differs"):
        load_params("smoke", {"eval.box_notation": "tokens"})
    for table in ("sft.variants.zhang", "grpo.recipes.zhang"):  # a per-variant notation would slip past the check
        with pytest.raises(ConfigError, match=rf"{table}.box_notation: the box notation is one for every stage"):
            load_params("embedded", {f"{table}.box_notation": "json"})
    assert load_params("mirgrl_qwen2vl7b").data["grpo"]["box_notation"] == "tokens"  # a Qwen2-VL policy
    with pytest.raises(ConfigError, match="eval"):  # a malformed section is still its stage's clear error
        stage_config(_notation_configs()[-1][0], load_params("smoke", {"eval": "tokens"}), "eval")


def _notation_configs():
    from mirg_lib.cot import CotConfig
    from mirg_lib.evaluation import EvalConfig
    from mirg_lib.grpo import GRPOStageConfig
    from mirg_lib.rejection import RejectionConfig
    from mirg_lib.sft import SFTStageConfig

    return [(CotConfig, "cot"), (SFTStageConfig, "sft"), (RejectionConfig, "rejection"), (GRPOStageConfig, "grpo"), (EvalConfig, "eval")]
