"""Stage behaviour: an interrupted run resumes instead of starting over; the same params give the
same numbers on the CPU; a changed config reruns; a half-finished stage leaves nothing behind."""

import json

import pytest
import torch

from mirg_lib import base_model as bm
from mirg_lib.base_model import BaseModelConfig, run_base_model
from mirg_lib.models import ModelPreset, load_model

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


def test_resumed_training_continues_from_the_checkpoints_weights(smoke_world, tmp_path, monkeypatch, crash_before_step):
    """Crash after checkpoint-2, resume: steps 3-4 and the final weights are those of an unbroken run.

    The Trainer's own resume loaded Qwen2-VL's legacy key names non-strictly and left the language
    model at its initialisation (loss 3.9 instead of 0.7 on the embedded base); this catches that."""
    from transformers import Trainer

    whole = run_base_model(CFG, smoke_world.root, tmp_path / "whole", progress=False)
    out = tmp_path / "resumed"
    crash_before_step(Trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        run_base_model(CFG, smoke_world.root, out, progress=False)
    monkeypatch.undo()
    assert (out / "trainer" / "checkpoint-2").is_dir() and not (out / "trainer" / "checkpoint-4").exists()
    resumed = run_base_model(CFG, smoke_world.root, out, progress=False)
    want = {r["step"]: r["loss"] for r in _losses(tmp_path / "whole" / "train_log.jsonl")}
    got = {r["step"]: r["loss"] for r in _losses(out / "train_log.jsonl")}
    assert sorted(got) == [1, 2, 3, 4]
    assert [got[s] for s in (3, 4)] == pytest.approx([want[s] for s in (3, 4)], rel=1e-4)
    sw, sr = load_model(whole.path).state_dict(), load_model(resumed.path).state_dict()
    assert sw.keys() == sr.keys()
    assert all(torch.allclose(sw[k], sr[k], atol=1e-5) for k in sw)


def test_a_checkpoint_of_another_model_is_refused(smoke_world, tmp_path):
    from mirg_lib.models import create_small_model
    from mirg_lib.trainers import load_full_checkpoint

    built = run_base_model(CFG, smoke_world.root, tmp_path / "base", progress=False)
    other, _ = create_small_model(ModelPreset(512, 64, 128, 2, 2, 1, 32, 2, 2), ["a b c"] * 50)  # one more vision layer
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not match"):
        load_full_checkpoint(load_model(built.path), tmp_path / "other")


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


@pytest.fixture(scope="module")
def describe_world(tmp_path_factory):
    from mirg_lib.world import DataConfig, run_data_synthesis

    cfg = DataConfig(n_test_per_task=1, n_train_per_task=1, n_single_test=2, n_single_train=4, n_single_describe_train=16, image_size=112, object_grid=14, contact_sheet=False)
    return run_data_synthesis(cfg, tmp_path_factory.mktemp("describe") / "data", progress=False)


def test_vision_warmup_trains_the_tower_alone_on_one_object_attributes(describe_world, tmp_path):
    from mirg_lib.base_model import ATTRIBUTES, lone_object_items, tokenizer_corpus, warm_up_vision
    from mirg_lib.items import load_pool_items
    from mirg_lib.models import create_small_model

    pool = load_pool_items(describe_world.train_file)
    one = lone_object_items(pool)
    assert len(one) == 16 and {it.task for it in one} == {"single_describe"}  # referring scenes hold 3+ objects
    model, processor = create_small_model("nano", tokenizer_corpus(pool))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = BaseModelConfig(preset="nano", vision_warmup_steps=40, vision_warmup_lr=3e-3, vision_warmup_batch_size=8, logging_steps=10)
    acc = warm_up_vision(cfg, model, processor, pool, tmp_path / "warm", progress=False)
    assert set(acc) == set(ATTRIBUTES)
    assert acc["colour"] >= 75.0  # 16 items memorised: the tower carries what it was taught (chance 12.5 %)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.visual.") for k in changed)
    assert not (tmp_path / "warm").exists() and (tmp_path / "vision_warmup_log.jsonl").is_file()
    with pytest.raises(ValueError, match="one-object items"):
        warm_up_vision(cfg, model, processor, [it for it in pool if it.task == "single_refer"], tmp_path / "warm", progress=False)


def test_dense_warmup_labels_name_each_tokens_object_its_box_and_place():
    from mirg_lib.base_model import ATTRIBUTES, DenseAttributeHeads

    class Tower(torch.nn.Module):
        spatial_merge_size = 2

    heads = DenseAttributeHeads(Tower(), 8, side=8)

    def obj(shape, colour, box, size="medium", pattern="solid"):
        return {"shape": shape, "colour": colour, "pattern": pattern, "size": size, "box": box}

    scene = {"images": [{"size": [112, 112], "objects": [
        obj("star", "red", [56.0, 0.0, 84.0, 28.0]),  # centre (70, 14): row 0, column 2
        obj("circle", "blue", [0.0, 70.0, 14.0, 84.0], size="small"),  # centre (7, 77): row 2, column 0
        obj("square", "green", [0.0, 56.0, 42.0, 98.0], size="large"),  # centre (21, 77): the same cell, larger: it wins
    ]}]}  # fmt: skip
    lab = heads.labels(scene, torch.tensor([[1, 8, 8]]))
    assert lab.shape == (16, 10)
    assert lab[2, :4].tolist() == [heads.classes[a].index(v) for a, v in zip(ATTRIBUTES, ("star", "red", "solid", "medium"), strict=True)]
    assert lab[2, 4:].tolist() == [4, 0, 6, 2, 0, 2]  # corners in patches, then the token's own row and column
    assert heads.classes["shape"][lab[8, 0]] == "square" and lab[8, 4:8].tolist() == [0, 4, 3, 7]
    assert lab[0, :4].tolist() == [len(heads.classes[a]) - 1 for a in ATTRIBUTES]  # none
    assert lab[0, 4:8].tolist() == [-100] * 4 and lab[15, 8:].tolist() == [3, 3]
    assert heads.scored(lab, 0).sum() == 2 and heads.scored(lab, 9).sum() == 16
    with pytest.raises(ValueError, match="larger"):
        heads.labels(scene, torch.tensor([[1, 10, 10]]))


def test_dense_vision_warmup_trains_the_tower_alone_on_every_token(describe_world, tmp_path):
    from mirg_lib.base_model import DenseAttributeHeads, tokenizer_corpus, warm_up_vision
    from mirg_lib.items import load_pool_items
    from mirg_lib.models import create_small_model

    pool = load_pool_items(describe_world.train_file)
    model, processor = create_small_model("nano", tokenizer_corpus(pool))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = BaseModelConfig(preset="nano", vision_warmup_steps=60, vision_warmup_lr=3e-3, vision_warmup_batch_size=8, logging_steps=10, vision_warmup_targets="dense")
    acc = warm_up_vision(cfg, model, processor, pool, tmp_path / "warm", progress=False)
    assert set(acc) == set(DenseAttributeHeads.targets)
    # 60 steps on 20 images: the objects' tokens place their box corners well above the commonest corner's rate
    heads = DenseAttributeHeads(model.model.visual, 8, side=8)
    lab = torch.cat([heads.labels(it.scene, torch.tensor([[1, 8, 8]])) for it in pool if len(it.images) == 1])
    for j, corner in enumerate(("x1", "y1", "x2", "y2"), start=4):
        held = lab[lab[:, 4] >= 0, j]
        assert acc[corner] >= 100.0 * torch.bincount(held).max().item() / len(held) + 10.0, corner
    losses = [r["loss"] for r in _losses(tmp_path / "vision_warmup_log.jsonl")]
    assert losses[-1] < 0.85 * losses[0]
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed and all(k.startswith("model.visual.") for k in changed)
    with pytest.raises(ValueError, match="single-image items"):
        warm_up_vision(cfg, model, processor, [it for it in pool if len(it.images) > 1], tmp_path / "warm", progress=False)
    with pytest.raises(ValueError, match="lone or dense"):
        BaseModelConfig(vision_warmup_targets="pooled")


def test_stage_with_vision_warmup_records_it_and_a_resumed_run_does_not_repeat_it(describe_world, tmp_path, monkeypatch, crash_before_step):
    from transformers import Trainer

    cfg = BaseModelConfig(preset="nano", max_steps=4, batch_size=4, save_steps=2, logging_steps=1, train_tasks=["single_describe", "single_refer"], vision_warmup_steps=4, vision_warmup_batch_size=4)
    out = tmp_path / "base"
    crash_before_step(Trainer, 2)  # the main run's step 3, not the warm-up's
    with pytest.raises(KeyboardInterrupt):
        run_base_model(cfg, describe_world.root, out, progress=False)
    monkeypatch.undo()
    first = json.loads((out / "vision_warmup.json").read_text())
    assert first["steps"] == 4 and set(first["train_accuracy"]) == {"shape", "colour", "pattern", "size"}

    def no_second_warmup(*a, **k):
        raise AssertionError("the warm-up ran again on resuming")

    monkeypatch.setattr(bm, "warm_up_vision", no_second_warmup)
    result = run_base_model(cfg, describe_world.root, out, progress=False)
    meta = json.loads((result.path / "mirg.json").read_text())
    assert meta["vision_warmup"] == first
    with pytest.raises(ValueError, match="vision_warmup"):
        BaseModelConfig(vision_warmup_steps=-1)
