"""Stage behaviour: an interrupted run resumes instead of starting over; the same params give the
same numbers on the CPU; a changed config reruns; a half-finished stage leaves nothing behind."""

import json

import pytest
import torch

from mirg_lib import base_model as bm
from mirg_lib.base_model import BaseModelConfig, run_base_model
from mirg_lib.models import load_model

CFG = BaseModelConfig(preset="nano", max_steps=4, batch_size=4, save_steps=2, logging_steps=1)


def _losses(path):
    return [json.loads(line) for line in path.read_text().splitlines() if "loss" in json.loads(line)]


def _interrupt_before_saving(world, out, monkeypatch):
    """Train CFG to its end, then crash while saving the final checkpoint (the trainer's stay)."""

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("mirg_lib.models.save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        run_base_model(CFG, world.root, out, progress=False)
    monkeypatch.undo()


def test_interrupted_base_training_resumes(smoke_world, tmp_path, monkeypatch):
    out = tmp_path / "base"
    _interrupt_before_saving(smoke_world, out, monkeypatch)
    assert not (out / "checkpoint").exists()  # nothing half-written for the next stage
    assert (out / "trainer" / "checkpoint-4").is_dir()
    assert (out / "trainer" / "checkpoint-4" / "processor_config.json").is_file()  # loadable on its own
    logged = len(_losses(out / "train_log.jsonl"))
    result = run_base_model(CFG, smoke_world.root, out, progress=False)
    assert result.source == "trained" and (result.path / "model.safetensors").is_file()
    assert len(_losses(out / "train_log.jsonl")) == logged  # resumed at step 4: no step trained twice
    assert run_base_model(CFG, smoke_world.root, out, progress=False).skipped


def test_same_params_same_numbers_on_cpu(smoke_world, tmp_path):
    a = run_base_model(CFG, smoke_world.root, tmp_path / "a", progress=False)
    b = run_base_model(CFG, smoke_world.root, tmp_path / "b", progress=False)
    sa, sb = load_model(a.path).state_dict(), load_model(b.path).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    la, lb = _losses(tmp_path / "a" / "train_log.jsonl"), _losses(tmp_path / "b" / "train_log.jsonl")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    c = run_base_model(BaseModelConfig(preset="nano", max_steps=4, batch_size=4, save_steps=2, logging_steps=1, seed=1), smoke_world.root, tmp_path / "a", progress=False)
    assert not c.skipped  # a changed config reruns
    assert any(not torch.equal(sa[k], v) for k, v in load_model(c.path).state_dict().items())


def test_shipped_checkpoint_is_checked(smoke_world, tmp_path, monkeypatch):
    built = run_base_model(CFG, smoke_world.root, tmp_path / "base", progress=False)
    monkeypatch.setattr(bm, "ROOT", tmp_path)
    ok = run_base_model(BaseModelConfig(shipped="base/checkpoint"), smoke_world.root, tmp_path / "x")
    assert ok.source == "shipped" and ok.path == built.path
    with open(built.path / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match="checksum"):
        run_base_model(BaseModelConfig(shipped="base/checkpoint"), smoke_world.root, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_base_model(BaseModelConfig(model_name_or_path=str(tmp_path / "nope")), smoke_world.root, tmp_path / "x")


def test_ship_checkpoint_records_metrics_world_and_checksum(smoke_world, tmp_path, monkeypatch):
    built = run_base_model(CFG, smoke_world.root, tmp_path / "base", progress=False)
    meta = bm.ship_checkpoint(built.path, tmp_path / "ship" / "tiny-base", {"single_image_acc@0.5": 12.5}, smoke_world.root)
    assert meta["metrics"] == {"single_image_acc@0.5": 12.5}
    assert meta["data"]["config_hash"] == smoke_world.config_hash
    monkeypatch.setattr(bm, "ROOT", tmp_path)
    ok = run_base_model(BaseModelConfig(shipped="ship/tiny-base"), smoke_world.root, tmp_path / "x")
    assert ok.source == "shipped" and load_model(ok.path) is not None
    # a world other than the one it was trained on: the stage says so, and still starts from it
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"config_hash": "another-world"}))
    with pytest.warns(UserWarning, match="another-world"):
        run_base_model(BaseModelConfig(shipped="ship/tiny-base"), other, tmp_path / "x")
    # shipping what is not a finished base is refused
    with pytest.raises(FileNotFoundError, match="mirg.json"):
        bm.ship_checkpoint(tmp_path / "base", tmp_path / "ship2", {}, smoke_world.root)


def test_changed_config_does_not_resume_another_configs_checkpoint(smoke_world, tmp_path, monkeypatch):
    out = tmp_path / "base"
    _interrupt_before_saving(smoke_world, out, monkeypatch)
    assert (out / "trainer" / "checkpoint-4").is_dir()
    other = BaseModelConfig(preset="nano", max_steps=3, batch_size=4, save_steps=2, logging_steps=1, learning_rate=5e-4)
    run_base_model(other, smoke_world.root, out, progress=False)
    rows = _losses(out / "train_log.jsonl")
    # trained from step 0 under the new config (3 logged steps), not resumed past its own max_steps
    assert [r["step"] for r in rows] == [1, 2, 3]
