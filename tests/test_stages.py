"""Stage behaviour: an interrupted run resumes instead of starting over; the same params give the
same numbers on the CPU; a changed config reruns; a half-finished stage leaves nothing behind."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from mirg_lib import base_model as bm
from mirg_lib import grounding as gr
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused(smoke_world, tmp_path):
    from mirg_lib.models import create_small_model
    from mirg_lib.trainers import load_full_checkpoint

    built = run_base_model(CFG, smoke_world.root, tmp_path / "base", progress=False)
    other, _ = create_small_model(ModelPreset(512, 64, 128, 2, 2, 1, 32, 2, 2), ["a b c"] * 50)  # one more vision layer
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not match"):
        load_full_checkpoint(load_model(built.path), tmp_path / "other")


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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

    cfg = DataConfig(n_test_per_task=1, n_train_per_task=1, n_single_test=2, n_single_train=4, n_single_describe_train=16, n_multi_refer_train=6, n_multi_describe_train=6, image_size=112, object_grid=14, contact_sheet=False)
    return run_data_synthesis(cfg, tmp_path_factory.mktemp("describe") / "data", progress=False)


def test_warmup_labels_name_each_tokens_object_its_box_and_place():
    from mirg_lib.base_model import ATTRIBUTES, AttributeHeads

    class Tower(torch.nn.Module):
        spatial_merge_size = 2

    heads = AttributeHeads(Tower(), 8, side=8)

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


@pytest.mark.slow
def test_vision_warmup_trains_the_tower_alone_on_every_token(describe_world, tmp_path):
    from mirg_lib.base_model import AttributeHeads, tokenizer_corpus, warm_up_vision
    from mirg_lib.items import load_pool_items
    from mirg_lib.models import create_small_model

    pool = load_pool_items(describe_world.train_file)
    model, processor = create_small_model("nano", tokenizer_corpus(pool))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = BaseModelConfig(preset="nano", vision_warmup_steps=60, vision_warmup_lr=3e-3, vision_warmup_batch_size=8, logging_steps=10)
    acc = warm_up_vision(cfg, model, processor, pool, tmp_path / "warm", progress=False)
    assert set(acc) == set(AttributeHeads.targets)
    # 60 steps on 20 images: the objects' tokens place their box corners well above the commonest corner's rate
    heads = AttributeHeads(model.model.visual, 8, side=8)
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


@pytest.mark.slow
def test_stage_with_vision_warmup_records_it_and_a_resumed_run_does_not_repeat_it(describe_world, tmp_path, monkeypatch, crash_before_step):
    from transformers import Trainer

    cfg = BaseModelConfig(preset="nano", max_steps=4, batch_size=4, save_steps=2, logging_steps=1, train_tasks=["single_describe", "single_refer"], vision_warmup_steps=4, vision_warmup_batch_size=4)
    out = tmp_path / "base"
    crash_before_step(Trainer, 2)  # the main run's step 3, not the warm-up's
    with pytest.raises(KeyboardInterrupt):
        run_base_model(cfg, describe_world.root, out, progress=False)
    monkeypatch.undo()
    first = json.loads((out / "vision_warmup.json").read_text())
    assert first["steps"] == 4 and set(first["train_accuracy"]) == set(bm.AttributeHeads.targets)

    def no_second_warmup(*a, **k):
        raise AssertionError("the warm-up ran again on resuming")

    monkeypatch.setattr(bm, "warm_up_vision", no_second_warmup)
    result = run_base_model(cfg, describe_world.root, out, progress=False)
    meta = json.loads((result.path / "mirg.json").read_text())
    assert meta["vision_warmup"] == first
    with pytest.raises(ValueError, match="vision_warmup"):
        BaseModelConfig(vision_warmup_steps=-1)


def test_grounding_attention_loss_is_the_attention_mass_missing_the_target():
    from mirg_lib.grounding import grounding_attention_loss

    # one item of 6 positions: 0-3 prompt (image tokens 1, 2), 4-5 answer; positions 3 and 4 predict answer tokens
    query = torch.tensor([[-1, -1, -1, 2, 2, -1]])
    w = torch.zeros(1, 2, 6, 6)
    w[0, 0, :, 2] = 1.0  # head 0 on the target from everywhere
    w[0, 1, :, 0] = 1.0  # head 1 is not supervised
    assert grounding_attention_loss([w], query).item() == pytest.approx(0.0, abs=1e-5)
    w[0, 0, 3] = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0, 0.0])
    w[0, 0, 4] = torch.tensor([0.5, 0.0, 0.5, 0.0, 0.0, 0.0])
    w[0, 0, 5] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # position 5 is no query
    assert grounding_attention_loss([w], query).item() == pytest.approx((math.log(4) + math.log(2)) / 2, rel=1e-5)
    # each query has its own target: position 4 asked to look at token 0, where it does
    assert grounding_attention_loss([w], torch.tensor([[-1, -1, -1, 2, 0, -1]])).item() == pytest.approx((math.log(4) + math.log(2)) / 2, rel=1e-5)
    # a second layer averages in; a row without queries counts for nothing
    ones = torch.zeros(1, 2, 6, 6)
    ones[0, 0, :, 2] = 1.0
    assert grounding_attention_loss([w, ones], query).item() == pytest.approx((math.log(4) + math.log(2)) / 4, rel=1e-5)
    both = grounding_attention_loss([torch.cat([w, torch.full((1, 2, 6, 6), 1 / 6)])], torch.cat([query, torch.full_like(query, -1)]))
    assert both.item() == pytest.approx((math.log(4) + math.log(2)) / 2, rel=1e-5)
    assert grounding_attention_loss([w], torch.full_like(query, -1)) is None
    # a key mask (the expression's words) instead of one key: the mass on all of them, rows with none skipped
    words = torch.tensor([[True, False, True, False, False, False]])
    assert grounding_attention_loss([w], query, words).item() == pytest.approx(math.log(2) / 2, rel=1e-5)
    assert grounding_attention_loss([w], query, torch.zeros_like(words)) is None
    with pytest.raises(RuntimeError, match="eager"):
        grounding_attention_loss([None], query)


def test_the_collator_turns_grounding_points_into_query_targets():
    from mirg_lib.grounding import CompletionCollator

    # prompt of 5 tokens (image tokens 9 at positions 1 and 3), answer of 4; points: (first, end or -1, image token)
    ex = {"prompt_ids": torch.tensor([1, 9, 2, 9, 3]), "answer_ids": torch.tensor([4, 5, 6, 7]), "grounding_points": torch.tensor([[0, -1, 1], [2, 4, 0]]), "expression_tokens": torch.tensor([2])}
    batch = CompletionCollator(0, 9, span=1)([ex])
    # answer token t is predicted at position 4 + t: the first point's span of 1 -> position 4 looks at image token 1 (position 3)
    assert batch["query_target"].tolist() == [[-1, -1, -1, -1, 3, -1, 1, 1, -1]]
    assert batch["expression_mask"][0].nonzero()[:, 0].tolist() == [2]
    assert CompletionCollator(0, 9, span=0)([ex])["query_target"].tolist() == [[-1, -1, -1, -1, 3, 3, 1, 1, -1]]  # span 0: to the answer's end, the later point wins


def test_target_tokens_point_at_the_token_holding_the_target(describe_world):
    from mirg_lib.grounding import CompletionCollator, PrecomputedVL, object_cells, target_tokens
    from mirg_lib.items import Item, load_pool_items
    from mirg_lib.models import create_small_model

    pool = [it for it in load_pool_items(describe_world.train_file) if it.task in ("single_refer", "single_describe")]
    _, processor = create_small_model("nano", [it.question for it in pool] + [it.reference or "" for it in pool])
    data = PrecomputedVL(pool, processor, [it.reference or "" for it in pool], grounding=True)
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    batch = CompletionCollator(processor.tokenizer.pad_token_id, image_token, span=3)([data[i] for i in range(len(pool))])
    for i, it in enumerate(pool):
        image = it.scene["images"][0]
        # the scene's 112 px image: 8 x 8 patches, 4 x 4 merged tokens; the target's centre cell
        x1, y1, x2, y2 = it.scene["target"]["box"]
        cell = int((y1 + y2) / 2 / image["size"][1] * 4) * 4 + int((x1 + x2) / 2 / image["size"][0] * 4)
        owner = object_cells(image, 4, 4)
        row = batch["query_target"][i]
        marked = sorted(set(row[row >= 0].tolist()))
        place = [o["oid"] for o in image["objects"]].index(it.scene["target"]["oid"])
        if owner.get(place) is None:
            assert marked == [] and cell in owner.values()  # a larger object's centre holds the cell
            continue
        positions = (batch["input_ids"][i] == image_token).nonzero()[:, 0].tolist()
        assert marked == [positions[cell]]
        # from the positions predicting the answer's first 3 tokens
        first = int((batch["labels"][i] != -100).nonzero()[0, 0]) - 1
        assert (row >= 0).nonzero()[:, 0].tolist() == [first, first + 1, first + 2]
    assert int((batch["query_target"] >= 0).any(-1).sum()) >= len(pool) - 2
    # the expression's words: the referring question's tokens between its object_ref markers, nothing else
    for i, it in enumerate(pool):
        words = processor.tokenizer.decode(batch["input_ids"][i][batch["expression_mask"][i]])
        if "<|object_ref_start|>" in it.question:
            assert words.strip() == it.question.split("<|object_ref_start|>")[1].split("<|object_ref_end|>")[0].strip()
        else:
            assert words == ""
    assert any("<|object_ref_start|>" in it.question for it in pool)
    # a second image's target: its token comes after the first image's 16
    it = next(i for i in pool if i.task == "single_refer")
    two = Item("two", "diff", [it.images[0], it.images[0]], it.question, it.answer, 2, scene={**it.scene, "target_image": 2, "images": [it.scene["images"][0]] * 2})
    grid = torch.tensor([[1, 8, 8], [1, 8, 8]])
    assert target_tokens(two, grid, 2) == [16 + t for t in target_tokens(it, grid[:1], 2)]
    assert target_tokens(Item("x", "diff", [it.images[0]], "q", it.answer, 1), grid[:1], 2) == []  # no scene


def test_a_description_of_an_image_looks_at_each_object_it_names(describe_world):
    """multi_describe answers: one grounding point per object named, boxed (a grounded caption) or in words (a
    listing), at the name's first token, on the token of that object in the named image (after the earlier
    images' tokens)."""
    from mirg_lib.grounding import caption_points, grounding_points, object_cells
    from mirg_lib.items import load_pool_items
    from mirg_lib.models import create_small_model

    pool = [it for it in load_pool_items(describe_world.train_file) if it.task == "multi_describe"]
    assert pool
    _, processor = create_small_model("nano", [it.question for it in pool] + [it.reference or "" for it in pool])
    tok = processor.tokenizer
    checked = 0
    for it in pool:
        n = len(it.images)
        grid = torch.tensor([[1, 8, 8]] * n)
        points = grounding_points(it, it.reference, tok, grid, 2)
        image = it.scene["images"][it.target_image - 1]
        owner = object_cells(image, 4, 4)
        by_oid = {o["oid"]: j for j, o in enumerate(image["objects"])}
        described = it.scene["meta"]["described"]
        expected = [16 * (it.target_image - 1) + owner[by_oid[oid]] for oid in described if by_oid[oid] in owner]
        assert [t for _, _, t in points] == expected
        ids = tok(it.reference, add_special_tokens=False)["input_ids"]
        first = "<|object_ref_start|>" if it.scene["meta"]["form"] == "boxed" else "the"
        for start, end, _ in points:
            assert end == -1 and tok.decode(ids[start]).strip() == first
        checked += len(points)
    assert checked >= len(pool) * 2
    # a bbox_id names the image; otherwise the image last named before the caption
    it = next(i for i in pool if i.scene["meta"]["form"] == "boxed")
    caption = it.reference.split(", ")[0]
    other = 1 if it.target_image != 1 else 2
    box = caption[caption.index("<|box_start|>") :]
    assert caption_points(it, f"Image {other}: " + caption, tok, torch.tensor([[1, 8, 8]] * len(it.images)), 2) in ([], caption_points(it, f"<bbox_id>[{other}-1]</bbox_id>" + caption, tok, torch.tensor([[1, 8, 8]] * len(it.images)), 2))
    assert caption_points(it, "no captions " + box, tok, torch.tensor([[1, 8, 8]] * len(it.images)), 2) == []


def test_the_teachers_read_outs_look_at_each_object_they_name(describe_world):
    """A reasoning reply of the scripted teacher: a grounding point for every object of every image it reads
    out that holds a token of its own, and one for its grounded caption of the answer."""
    from mirg_lib.grounding import grounding_points, object_cells
    from mirg_lib.items import load_pool_items
    from mirg_lib.models import create_small_model
    from mirg_lib.teacher import ScriptedTeacher, TeacherItem

    pool = [it for it in load_pool_items(describe_world.train_file) if it.task in ("diff", "common_object", "refer_grounding", "single_refer")]
    _, processor = create_small_model("nano", [it.question for it in pool])
    replies = ScriptedTeacher(error_rate=0.0, box_jitter=0.0).answer([TeacherItem(i.id, i.task, i.images, i.question, i.scene) for i in pool], 1, "zhang")
    for it, (reply,) in zip(pool, replies, strict=True):
        points = grounding_points(it, reply, processor.tokenizer, torch.tensor([[1, 8, 8]] * len(it.images)), 2)
        read = [n for n in range(1, len(it.images) + 1) if f"Image {n}: " in reply]
        held = sum(len(object_cells(it.scene["images"][n - 1], 4, 4)) for n in read)
        assert len(points) == held + 1, (reply, points)
        assert points == sorted(points) and all(end == -1 for _, end, _ in points)


def test_a_listing_names_same_described_objects_in_turn():
    """Two objects of one image described alike: the listing's first mention is the first in reading order
    (here it shares its cell with a larger object, so it has no point), the second mention the next one,
    which gets its point."""
    from mirg_lib.grounding import listing_points
    from mirg_lib.items import Item
    from mirg_lib.models import create_small_model

    circle = {"size": "small", "colour": "red", "pattern": "solid", "shape": "circle"}
    objects = [dict(circle, box=[0, 0, 14, 14]), {"size": "large", "colour": "blue", "pattern": "dotted", "shape": "star", "box": [0, 0, 42, 42]}, dict(circle, box=[56, 56, 70, 70])]
    scene = {"images": [{"size": [112, 112], "objects": objects}], "target_image": 1}
    item = Item("x", "multi_describe", [], "q", [0, 0, 1, 1], 1, scene)
    answer = "Image 1: the small red solid circle, the large blue dotted star, the small red solid circle."
    _, processor = create_small_model("nano", [answer] * 5)
    points = listing_points(item, answer, processor.tokenizer, torch.tensor([[1, 8, 8]]), 2)
    assert [token for _, _, token in points] == [0, 10]  # the star (cell 0, over the first circle), the second circle (cell 10)


@pytest.mark.slow
def test_grounding_attention_loss_trains(describe_world, tmp_path):
    from mirg_lib.config import config_hash

    assert config_hash(BaseModelConfig(preset="nano")) != config_hash(BaseModelConfig(preset="nano", grounding_attention_weight=1.0))
    cfg = BaseModelConfig(preset="nano", max_steps=40, batch_size=8, save_steps=100, logging_steps=10, learning_rate=3e-3, train_tasks=["single_describe", "single_refer"], grounding_attention_weight=1.0, expression_attention_layers=[0])
    result = run_base_model(cfg, describe_world.root, tmp_path / "base", progress=False)
    rows = _losses(tmp_path / "base" / "train_log.jsonl")
    for name in ("grounding_attention_loss", "expression_attention_loss"):
        aux = [r[name] for r in rows if name in r]
        assert len(aux) == 4 and aux[-1] < 0.5 * aux[0], name
    # an ordinary checkpoint: loads with the default attention and generates
    model = load_model(result.path)
    assert model.config.text_config._attn_implementation != "eager"
    with pytest.raises(ValueError, match="grounding_attention_layers"):
        BaseModelConfig(preset="nano", grounding_attention_layers=[5])
    with pytest.raises(ValueError, match="expression_attention_layers"):
        BaseModelConfig(preset="nano", expression_attention_layers=[-3])
    with pytest.raises(ValueError, match="grounding_attention"):
        BaseModelConfig(grounding_attention_weight=-1.0)
    with pytest.raises(ValueError, match="grounding_attention_span"):
        BaseModelConfig(grounding_attention_span=-1)


@pytest.mark.slow
def test_word_aligned_warmup_classifies_with_the_language_models_word_embeddings(describe_world, tmp_path):
    from mirg_lib import base_model as bmod
    from mirg_lib.base_model import AttributeHeads, WordAlignedLogits, attribute_word_ids
    from mirg_lib.items import load_pool_items
    from mirg_lib.models import create_small_model

    pool = load_pool_items(describe_world.train_file)
    with pytest.raises(ValueError, match="tokens of this tokenizer"):  # a tokenizer that never saw the words splits them
        attribute_word_ids(create_small_model("nano", ["a cat sat on the mat"] * 20)[1].tokenizer, bmod._attribute_classes())
    words = ["the " + " ".join(v for vals in bmod._attribute_classes().values() for v in vals) + " medium-sized"] * 50  # the full world says them all often
    model, processor = create_small_model(ModelPreset(1024, 64, 128, 2, 2, 1, 32, 1, 2), bmod.tokenizer_corpus(pool) + words)  # nano, whole words
    tok, embed = processor.tokenizer, model.get_input_embeddings()
    heads = AttributeHeads(model.model.visual, 64, side=8, words=(embed, tok))
    ids = attribute_word_ids(tok, heads.classes)
    assert tok.convert_ids_to_tokens(ids["size"]) == ["Ġsmall", "Ġmedium", "Ġlarge"]  # "medium-sized" begins with " medium"
    assert isinstance(heads.heads["colour"], WordAlignedLogits) and heads.heads["colour"].extra.shape[0] == 1  # none
    # the colour head's scores are the tokens' cosines with the colour words' embeddings (none last)
    x = torch.randn(5, 64)
    red = tok(" red", add_special_tokens=False)["input_ids"][0]
    want = torch.nn.functional.cosine_similarity(x, embed.weight[red][None], dim=-1) * heads.heads["colour"].log_scale.exp()
    assert torch.allclose(heads.heads["colour"](x)[:, heads.classes["colour"].index("red")], want, atol=1e-5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = BaseModelConfig(vision_warmup_steps=30, vision_warmup_lr=3e-3, vision_warmup_batch_size=8, logging_steps=10, vision_warmup_word_aligned=True)
    bmod.warm_up_vision(cfg, model, processor, pool, tmp_path / "warm", progress=False)
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert any(k.startswith("model.visual.") for k in changed)
    embeds = {k for k in changed if not k.startswith("model.visual.")}
    tied = model.lm_head.weight is embed.weight  # the small models tie the output layer to the input embeddings
    assert embeds == {"model.language_model.embed_tokens.weight"} | ({"lm_head.weight"} if tied else set())
    old, new = before["model.language_model.embed_tokens.weight"], model.state_dict()["model.language_model.embed_tokens.weight"]
    moved = ((new - old).norm(dim=-1) / old.norm(dim=-1).clamp_min(1e-8)).tolist()  # a zero row (padding) stays zero
    words = {i for v in ids.values() for i in v}
    # the attribute words' rows learn; the others only shrink by the weight decay (AdamW decays every row)
    assert min(moved[i] for i in words) > 0.05 and max(m for i, m in enumerate(moved) if i not in words) < 0.005


@pytest.mark.slow
def test_a_changed_language_model_recipe_reuses_the_warmed_tower(describe_world, tmp_path, monkeypatch):
    import dataclasses

    from safetensors.torch import load_file

    cfg = BaseModelConfig(preset="nano", max_steps=2, batch_size=4, save_steps=10, logging_steps=1, train_tasks=["single_describe", "single_refer"], vision_warmup_steps=4, vision_warmup_batch_size=4)
    out = tmp_path / "base"
    first = run_base_model(cfg, describe_world.root, out, progress=False)
    record = json.loads((out / "vision_warmup.json").read_text())
    warmed = load_file(out / "vision_warmup_weights" / "model.safetensors")
    real = bm.warm_up_vision

    def no_warmup(*a, **k):
        raise AssertionError("the warm-up ran again")

    monkeypatch.setattr(bm, "warm_up_vision", no_warmup)
    second = run_base_model(dataclasses.replace(cfg, max_steps=3, grounding_attention_weight=1.0), describe_world.root, out, progress=False)
    again = json.loads((out / "vision_warmup.json").read_text())
    assert again["reused"] and again["train_accuracy"] == record["train_accuracy"] and again["config_hash"] != record["config_hash"]
    assert json.loads((second.path / "mirg.json").read_text())["vision_warmup"]["reused"] and first.path == second.path
    # what a reusing run starts from: the warmed weights, every one
    from mirg_lib.items import load_pool_items
    from mirg_lib.models import create_small_model

    pool = load_pool_items(describe_world.train_file)
    model, processor = create_small_model("nano", bm.tokenizer_corpus(pool))
    assert bm.warm_up_cached(cfg, model, processor, pool, describe_world.root, out, progress=False)["reused"]
    state = model.state_dict()
    assert any(k.startswith("model.visual.") for k in warmed) and all(torch.equal(state[k], v) for k, v in warmed.items())
    monkeypatch.setattr(bm, "warm_up_vision", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # a changed warm-up warms up again
        run_base_model(dataclasses.replace(cfg, vision_warmup_steps=5), describe_world.root, out, progress=False)
    monkeypatch.setattr(bm, "warm_up_vision", real)


def test_language_texts_cover_every_task_and_style_from_unused_scenes(smoke_world):
    from mirg_lib.formats import MIG_TASKS, load_mgrounding
    from mirg_lib.prompts import with_suffix

    texts = bm.language_texts(smoke_world.root, 44)
    assert texts == bm.language_texts(smoke_world.root, 44) and bm.language_texts(smoke_world.root, 0) == []
    n_tasks = len(MIG_TASKS) + 1
    styles = list(bm.LANGUAGE_STYLES)
    for i, (prompt, reply) in enumerate(texts):
        style = styles[(i // n_tasks) % len(styles)]
        question = prompt.removesuffix(with_suffix("", bm.LANGUAGE_STYLES[style]))
        assert prompt == with_suffix(question, bm.LANGUAGE_STYLES[style]) and question, (i, prompt)
        if style == "zhang":
            assert reply.startswith("<think>") and '"bbox_2d"' in reply
        elif style == "mirg_bbox":
            assert "<bbox_id>[" in reply and reply.endswith("</answer>")
        elif style == "answer":
            assert "<think>" not in reply and "<|box_start|>" in reply
    # every task in each of the four styles, from scenes of their own: no reply is a training answer
    assert len({(p, r) for p, r in texts}) == 44
    answers = {r.answer for r in load_mgrounding(smoke_world.train_file, check=True)}
    plain = [r for i, (_, r) in enumerate(texts) if styles[(i // n_tasks) % len(styles)] == "answer"]
    assert len(plain) == n_tasks and not set(plain) & answers


@pytest.mark.slow
def test_language_texts_are_text_only_rows_beside_the_images(describe_world, tmp_path):
    from mirg_lib.models import load_processor

    base = run_base_model(BaseModelConfig(preset="nano", max_steps=2, batch_size=4, save_steps=100, logging_steps=1), describe_world.root, tmp_path / "plain", progress=False)
    processor = load_processor(base.path)
    items = bm.load_pool_items(describe_world.root / "train" / "mgrounding.json")[:2]
    texts = bm.language_texts(describe_world.root, 3)
    data = gr.PrecomputedVL(items, processor, [it.reference or "" for it in items], grounding=True, texts=texts)
    assert len(data) == 5 and all("pixel_values" not in e for e in data.examples[2:])
    collate = gr.CompletionCollator(processor.tokenizer.pad_token_id, load_model(base.path).config.image_token_id)
    mixed, text_only = collate([data[0], data[2], data[1]]), collate([data[3], data[4]])
    assert mixed["image_grid_thw"].shape[0] == len(items[0].images) + len(items[1].images) and mixed["mm_token_type_ids"][1].sum() == 0
    assert mixed["pixel_values"].shape[0] == int(mixed["image_grid_thw"].prod(-1).sum())
    assert "pixel_values" not in text_only and not (text_only["query_target"] >= 0).any()
    # the text rows' loss is on their replies
    reply = processor.tokenizer.decode(mixed["labels"][1][mixed["labels"][1] != -100])
    assert reply == texts[0][1] + "<|im_end|>"
    model = load_model(base.path)
    for batch in (mixed, text_only):
        batch = {k: v for k, v in batch.items() if k not in gr.GROUNDING_KEYS}
        assert torch.isfinite(model(**batch).loss)
    # batches of similar lengths: the sampler sorts each mega-batch of examples by length
    from types import SimpleNamespace

    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer = bm.length_grouped(SimpleNamespace(args=SimpleNamespace(train_batch_size=2, gradient_accumulation_steps=1)), data)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sorted(sampler) == list(range(len(data)))
    assert data.lengths() == [len(e["prompt_ids"]) + len(e["answer_ids"]) for e in data.examples]


@pytest.mark.slow
def test_language_phase_starts_from_the_grounded_checkpoint(describe_world, tmp_path):
    """The language phase: a second training from the grounding phase's checkpoint (kept in ``grounded``),
    its own log, both phases recorded; a change to the language phase alone does not retrain the first."""
    from mirg_lib.config import config_hash
    from mirg_lib.models import load_model

    plain = BaseModelConfig(preset="nano", max_steps=3, batch_size=8, save_steps=100, logging_steps=1, train_tasks=["single_describe", "single_refer"], grounding_attention_weight=1.0)
    cfg = dataclasses.replace(plain, language_phase_steps=3, language_phase_texts=6, language_phase_lr=1e-3)
    assert bm.grounding_digest(cfg) == bm.grounding_digest(plain) != config_hash(cfg)
    assert bm.grounding_digest(dataclasses.replace(cfg, max_steps=4)) != bm.grounding_digest(cfg)
    with pytest.raises(ValueError, match="language_phase_lr"):
        BaseModelConfig(language_phase_lr=0)
    out = tmp_path / "base"
    result = run_base_model(cfg, describe_world.root, out, progress=False)
    grounded, final = out / "grounded", result.path
    assert final == out / "checkpoint" and result.seconds > 0
    first, meta = json.loads((grounded / "mirg.json").read_text()), json.loads((final / "mirg.json").read_text())
    world = bm.world_digest(describe_world.root)
    assert first["config_hash"] == bm.grounding_digest(cfg, world) and meta["config_hash"] == bm.base_digest(cfg, world)
    assert bm.base_digest(cfg, world) != bm.base_digest(cfg, "another world") and bm.grounding_digest(cfg, world) != bm.grounding_digest(cfg, "another world")
    assert first["config"] == bm.grounding_config(cfg) and "language_phase_steps" not in first["config"]
    assert meta["grounding_phase"]["sha256"] == first["sha256"] and meta["language_phase"]["steps"] == 3 and meta["language_phase"]["texts"] == 6
    assert [r["step"] for r in _losses(out / "language_log.jsonl")] == [1, 2, 3] and len(_losses(out / "train_log.jsonl")) == 3
    assert not (out / "language_trainer").exists() and not (out / "trainer").exists() and meta["language_phase"]["reasoning_items"] == 0
    a, b = load_model(grounded).state_dict(), load_model(final).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the phase trained
    # the same config again: skipped; another language phase: the grounded checkpoint is reused as it is
    assert run_base_model(cfg, describe_world.root, out, progress=False).skipped
    again = run_base_model(dataclasses.replace(cfg, language_phase_steps=2), describe_world.root, out, progress=False)
    assert not again.skipped and json.loads((grounded / "mirg.json").read_text())["sha256"] == first["sha256"]
    assert [r["step"] for r in _losses(out / "language_log.jsonl")] == [1, 2] and len(_losses(out / "train_log.jsonl")) == 3
    # words before the box, with the phase's own grounding span and expression hop: still the same grounded start
    words = dataclasses.replace(cfg, language_phase_steps=2, language_phase_words_before_box=6, language_phase_grounding_span=20, language_phase_expression_layers=[0], language_phase_json_boxes=0.5)
    assert bm.grounding_digest(words) == bm.grounding_digest(plain)
    run_base_model(words, describe_world.root, out, progress=False)
    meta = json.loads((final / "mirg.json").read_text())
    assert meta["language_phase"]["words_before_box"] > 0 and meta["language_phase"]["json_boxes"] > 0 and json.loads((grounded / "mirg.json").read_text())["sha256"] == first["sha256"]
    assert any("expression_attention_loss" in r for r in _losses(out / "language_log.jsonl"))  # the phase's own hop was trained


def test_words_before_box_prefix_three_in_four_referring_answers():
    """words_before_box: 1..N words of the texts' language before 3 in 4 single-image referring boxes;
    every referring item is grounded from its box; other tasks' answers are left as they are. Seeded."""
    from mirg_lib.items import Item

    items = [Item(f"i{k}", "single_refer" if k % 2 else "single_describe", [], "q", [0, 0, 1, 1], 1) for k in range(400)]
    answers = [f"<|box_start|>({k},0),(9,9)<|box_end|>" for k in range(400)]
    texts = [("q", "The red circle is at the top of image 2."), ("q", "A Blue star.")]
    out, at_box = bm.words_before_box(items, answers, 5, texts, seed=3)
    vocabulary = {"he", "red", "circle", "is", "at", "the", "top", "of", "image", "lue", "star"}  # runs of lowercase letters
    prefixed = 0
    for it, a, o, g in zip(items, answers, out, at_box, strict=True):
        assert o.endswith(a) and g == (it.task == "single_refer")
        if o != a:
            words = o[: -len(a)].split()
            assert it.task == "single_refer" and 1 <= len(words) <= 5 and set(words) <= vocabulary, o
            prefixed += 1
    assert 0.65 < prefixed / 200 < 0.85
    assert bm.words_before_box(items, answers, 5, texts, seed=3) == (out, at_box)
    assert bm.words_before_box(items, answers, 0, texts) == (answers, at_box)
    with pytest.raises(ValueError, match="no words"):
        bm.words_before_box(items, answers, 5, [("q", "1 2 3")])
    with pytest.raises(ValueError, match="words_before_box"):
        BaseModelConfig(language_phase_words_before_box=-1)
    with pytest.raises(ValueError, match="language_phase_expression_layers"):
        BaseModelConfig(preset="tiny", language_phase_expression_layers=[7])


def test_json_boxes_rewrite_the_share_of_referring_boxes_in_zhangs_notation():
    """json_boxes: about ``share`` of the single-image referring boxes become ```json {"bbox_2d": [...],
    "label": ...}``` with the same numbers, after any words before them; the scorer reads the same box from
    either notation; other tasks and answers without a box are untouched; seeded; bad shares are refused."""
    from mirg_lib.items import Item
    from mirg_lib.scoring import Prediction, predicted_box

    items = [Item(f"i{k}", "single_refer" if k % 3 else "single_describe", [], f"Find <|object_ref_start|>the red {k}<|object_ref_end|>.", [0, 0, 1, 1], 1) for k in range(600)]
    answers = [("few words " if k % 2 else "") + f"<|box_start|>({k},{k + 1}),({k + 2},{k + 3})<|box_end|>" for k in range(600)]
    out = bm.json_boxes(items, answers, 0.5, seed=1)
    rewritten = 0
    for k, (it, a, o) in enumerate(zip(items, answers, out, strict=True)):
        if o == a:
            continue
        rewritten += 1
        assert it.task == "single_refer" and "<|box_start|>" not in o
        assert o == ("few words " if k % 2 else "") + f'```json\n{{"bbox_2d": [{k}, {k + 1}, {k + 2}, {k + 3}], "label": "red {k}"}}\n```'
        assert predicted_box(Prediction(0, o)) == predicted_box(Prediction(0, a)) is not None
    assert 0.4 < rewritten / 400 < 0.6
    assert bm.json_boxes(items, answers, 0.5, seed=1) == out != bm.json_boxes(items, answers, 0.5, seed=2)
    assert bm.json_boxes(items, answers, 0.0) == answers and bm.json_boxes(items, ["no box"] * 600, 1.0) == ["no box"] * 600
    assert all("bbox_2d" in o for it, o in zip(items, bm.json_boxes(items, answers, 1.0), strict=True) if it.task == "single_refer")
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="language_phase_json_boxes"):
            BaseModelConfig(language_phase_json_boxes=bad)


def test_a_new_model_at_the_same_path_reruns_the_stages_after_it(tmp_path):
    """Later stages' digests hold what they start from, not only its path: a base retrained in place (new
    mirg.json checksum), or a real checkpoint whose weights were replaced, is another start."""
    import os

    from mirg_lib.trainers import model_identity

    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "mirg.json").write_text(json.dumps({"sha256": "a" * 64}))
    first = model_identity(ours)
    (ours / "mirg.json").write_text(json.dumps({"sha256": "b" * 64}))
    assert model_identity(ours) != first == "a" * 16
    merged = tmp_path / "merged"  # an SFT / GRPO output: its digest holds its own start's identity
    merged.mkdir()
    (merged / "mirg.json").write_text(json.dumps({"stage": "sft", "config_hash": "c1:d2:" + first}))
    linked = model_identity(merged)
    (merged / "mirg.json").write_text(json.dumps({"stage": "sft", "config_hash": "c1:d2:" + model_identity(ours)}))
    assert model_identity(merged) != linked  # the same SFT config on the other base
    real = tmp_path / "real"  # no mirg.json: a downloaded checkpoint
    real.mkdir()
    (real / "config.json").write_text("{}")
    (real / "model.safetensors").write_bytes(b"x" * 10)
    before = model_identity(real)
    assert model_identity(real) == before
    (real / "model.safetensors").write_bytes(b"y" * 11)
    os.utime(real / "model.safetensors", ns=(1, 1))
    assert model_identity(real) != before


@pytest.mark.slow
def test_reasoning_items_box_after_the_recipes_reasoning(describe_world, tmp_path):
    """The language phase's reasoning items: single-image referring items with a recipe's prompt, answered
    right (the item's own box) in each reasoning style, and trained with their images."""
    from mirg_lib.boxes import iou_xyxy
    from mirg_lib.parsing import parse_response
    from mirg_lib.prompts import with_suffix
    from mirg_lib.rewards import zhang_format

    pool = bm.load_pool_items(describe_world.root / "train" / "mgrounding.json")
    items, prompts, replies = bm.reasoning_items(pool, 3)
    assert len(items) == 3 and all(it.task == "single_refer" for it in items)
    assert prompts[0] == with_suffix(items[0].question, "zhang") and prompts[1] == with_suffix(items[1].question, "mirg")
    assert zhang_format([replies[0]]) == [1.0] and "<think>" in replies[1] and "<bbox_id>" in replies[2]
    for it, reply in zip(items, replies, strict=True):
        box = parse_response(reply).box
        assert box is not None and iou_xyxy(box.values, [1000 * v for v in it.answer]) > 0.9, (reply, it.answer)
    assert bm.reasoning_items(pool, 3) == (items, prompts, replies)  # the teacher is error-free and seeded
    # the grounding-attention loss looks from where the reply's box starts
    from mirg_lib.models import load_processor

    tok = load_processor(run_base_model(BaseModelConfig(preset="nano", max_steps=1, batch_size=4, save_steps=100), describe_world.root, tmp_path / "tok", progress=False).path).tokenizer
    for reply, mark in zip(replies, ('{"', "<|box_start|>", "<bbox_id>"), strict=True):
        k = gr.box_start_token(reply, tok)
        ids = tok(reply, add_special_tokens=False)["input_ids"]
        assert k > 5 and tok.decode(ids[k:]).lstrip().startswith(mark if mark != "<bbox_id>" else "<|box_start|>"), (reply, tok.decode(ids[k:]))
    assert gr.box_start_token("<|box_start|>(1,2),(3,4)<|box_end|>", tok) == 0 and gr.box_start_token("no box", tok) == 0
    # a reply with a box after words: one point from the box on, the span's tokens long
    ex = {"prompt_ids": torch.tensor([1, 9]), "answer_ids": torch.tensor([5, 6, 7, 8, 9, 10]), "grounding_points": torch.tensor([[2, -1, 0]]), "expression_tokens": torch.zeros(0, dtype=torch.long)}
    assert gr.CompletionCollator(0, 9, span=2)([ex])["query_target"].tolist() == [[-1, -1, -1, 1, 1, -1, -1, -1]]
    cfg = BaseModelConfig(preset="nano", max_steps=2, batch_size=8, save_steps=100, logging_steps=1, train_tasks=["single_describe", "single_refer"], grounding_attention_weight=1.0, language_phase_steps=2, language_phase_texts=4, language_phase_reasoning=3)
    meta = json.loads((run_base_model(cfg, describe_world.root, tmp_path / "base", progress=False).path / "mirg.json").read_text())
    assert meta["language_phase"]["reasoning_items"] == 3 and meta["train_items"] == len([it for it in pool if it.task in cfg.train_tasks])
    with pytest.raises(ValueError, match="language_phase_reasoning"):
        BaseModelConfig(language_phase_reasoning=-1)


@pytest.mark.slow
def test_the_multi_image_phase_comes_last_and_alone_restarts_from_the_language_phase(describe_world, smoke_world, tmp_path):
    """multi_phase_steps: after the grounding and language phases, every multi-image curriculum item and as many
    single-image items, from the language phase's checkpoint; a change to it alone retrains it alone; the
    grounding phase's tokenizer never reads its tasks; a world without them is an error that names them."""
    from mirg_lib.items import load_pool_items

    cfg = BaseModelConfig(preset="nano", max_steps=2, batch_size=8, save_steps=100, logging_steps=1, train_tasks=["single_describe", "single_refer"], grounding_attention_weight=1.0, language_phase_steps=2, language_phase_texts=4, multi_phase_steps=2)
    out = tmp_path / "base"
    meta = json.loads((run_base_model(cfg, describe_world.root, out, progress=False).path / "mirg.json").read_text())
    assert meta["multi_phase"]["tasks"] == {"multi_refer": 6, "multi_describe": 6} and meta["multi_phase"]["single_items"] == 12
    world = bm.world_digest(describe_world.root)
    assert meta["config_hash"] == bm.base_digest(cfg, world) and meta["language_phase"]["steps"] == 2
    assert json.loads((out / "languaged" / "mirg.json").read_text())["config_hash"] == bm.language_digest(cfg, world)
    rows = [json.loads(line) for line in (out / "multi_log.jsonl").read_text().splitlines()]
    assert any("grounding_attention_loss" in r for r in rows)
    languaged = (out / "languaged" / "model.safetensors").stat().st_mtime_ns
    assert meta["multi_phase"]["start"]["config_hash"] == bm.language_digest(cfg, world)
    more = dataclasses.replace(cfg, multi_phase_steps=3)
    assert bm.grounding_digest(more) == bm.grounding_digest(cfg) and bm.language_digest(more) == bm.language_digest(cfg)
    shutil.rmtree(out / "grounded")  # the last kept phase that matches is enough to start from
    assert json.loads((run_base_model(more, describe_world.root, out, progress=False).path / "mirg.json").read_text())["multi_phase"]["steps"] == 3
    assert (out / "languaged" / "model.safetensors").stat().st_mtime_ns == languaged  # the language phase was not run again
    assert not (out / "grounded").exists()  # nor the grounding phase
    pool = load_pool_items(describe_world.train_file)
    assert bm.tokenizer_pool(pool, cfg.train_tasks) == [it for it in pool if it.task not in ("multi_refer", "multi_describe")]
    with pytest.raises(ValueError, match=r"multi_phase_tasks \['multi_describe', 'multi_refer'\].*n_multi_describe_train"):
        run_base_model(cfg, smoke_world.root, tmp_path / "base2", progress=False)
    with pytest.raises(ValueError, match="multi_phase"):
        BaseModelConfig(multi_phase_steps=3, multi_phase_tasks=[])
    for wrong in (["diff"], ["single_refer"]):  # a MIG-Bench task; a task the grounding phase trains already
        with pytest.raises(ValueError, match=r"multi_phase_tasks \['\w+'\]: must be curriculum tasks"):
            BaseModelConfig(train_tasks=["single_describe", "single_refer"], multi_phase_tasks=wrong)


def test_rejection_sampling_batches_items_and_counts_each_items_own_hits(smoke_world, tmp_path, monkeypatch):
    """The k samples of several items share a generation batch (batch_size // k items a call); each item's
    hits are its own samples' (a fake policy answers item i right i % (k + 1) times), so all-right and
    all-wrong items are dropped and the rest kept with their counts."""
    from mirg_lib import rejection
    from mirg_lib.items import first_per_task, load_pool_items
    from mirg_lib.prompts import with_suffix

    pool = load_pool_items(smoke_world.train_file)
    cfg = rejection.RejectionConfig(k=4, batch_size=12, tasks=["diff", "common_object", "single_refer"], max_items_per_task=3)
    items = first_per_task(pool, cfg.tasks, cfg.max_items_per_task)
    calls = []

    def fake_generate(model, processor, messages, images, batch_size, **kw):
        assert len(messages) == len(images) and len(messages) <= batch_size
        replies = []
        for m, imgs in zip(messages, images, strict=True):
            i, j = divmod(sum(calls) + len(replies), cfg.k)  # prompts come item by item, k samples each
            text = next(c["text"] for c in m[0]["content"] if c["type"] == "text")
            assert text == with_suffix(items[i].question, cfg.recipe) and len(imgs) == len(items[i].images)
            replies.append(items[i].reference if j < i % (cfg.k + 1) else "no box here")
        calls.append(len(messages))
        return replies

    monkeypatch.setattr("mirg_lib.generation.generate_batch", fake_generate)
    monkeypatch.setattr("mirg_lib.models.load_model", lambda *a, **k: None)
    monkeypatch.setattr("mirg_lib.models.load_processor", lambda *a, **k: None)
    monkeypatch.setattr(rejection, "model_identity", lambda path: "fake")
    result = rejection.run_rejection_sampling(cfg, tmp_path / "model", smoke_world.root, tmp_path / "rejection")
    assert calls == [12, 12, 12] and len(items) == 9  # 3 items (12 prompts) a call
    want = {it.id: i % (cfg.k + 1) for i, it in enumerate(items) if 0 < i % (cfg.k + 1) < cfg.k}
    kept = [json.loads(line) for line in (tmp_path / "rejection" / "rl_items.jsonl").read_text().splitlines()]
    assert {k["id"]: k["hits"] for k in kept} == want and result.kept_ids == list(want)


@pytest.mark.parametrize("notation", ["json", "tokens"])
def test_sft_rejection_and_evaluation_ask_in_the_configured_box_notation(smoke_world, tmp_path, monkeypatch, notation):
    """Each stage that builds Zhang et al.'s prompt passes its ``box_notation`` on: the SFT's rows, rejection
    sampling's and the evaluation's prompts end with the sentence of that notation (GRPO's rows: test_grpo)."""
    from mirg_lib import evaluation, rejection, sft
    from mirg_lib.items import load_pool_items
    from mirg_lib.prompts import ZHANG_SUFFIX, ZHANG_TOKENS_SUFFIX

    suffix = {"json": ZHANG_SUFFIX, "tokens": ZHANG_TOKENS_SUFFIX}[notation]
    seen: list[str] = []

    def fake_generate(model, processor, messages, images, **kw):
        seen.extend(next(c["text"] for c in m[0]["content"] if c["type"] == "text") for m in messages)
        return ["no box"] * len(messages)

    class Stop(Exception):
        pass

    def fake_trainer(cfg, base_path, rows, *a, **k):
        seen.extend(r["prompt"][0]["content"][-1]["text"] for r in rows)
        raise Stop

    pool = load_pool_items(smoke_world.train_file)[:3]
    sft_file = tmp_path / "sft.jsonl"
    sft_file.write_text("".join(json.dumps({"id": it.id, "task": it.task, "completion": "x"}) + "\n" for it in pool))
    monkeypatch.setattr(sft, "make_trainer", fake_trainer)
    monkeypatch.setattr(sft, "model_identity", lambda path: "fake")
    with pytest.raises(Stop):
        sft.run_sft(sft.SFTStageConfig(box_notation=notation), tmp_path / "base", sft_file, smoke_world.root, tmp_path / "sft")
    monkeypatch.setattr("mirg_lib.generation.generate_batch", fake_generate)
    for name in ("load_model", "load_processor"):
        monkeypatch.setattr(f"mirg_lib.models.{name}", lambda *a, **k: None)
    monkeypatch.setattr(rejection, "model_identity", lambda path: "fake")
    rejection.run_rejection_sampling(rejection.RejectionConfig(k=2, tasks=["diff"], max_items_per_task=2, box_notation=notation), tmp_path / "m", smoke_world.root, tmp_path / "rej")
    evaluation.evaluate_checkpoint(tmp_path / "m", smoke_world.root / "test" / "mig_bench.json", evaluation.EvalConfig(max_items_per_task=1, box_notation=notation), tmp_path / "ev")
    assert len(seen) == 3 + 4 + 10 and all(t.endswith(suffix) for t in seen), [t[-60:] for t in seen if not t.endswith(suffix)][:2]


def test_a_larger_pool_leaves_the_base_as_it_is(smoke_world):
    """The base reads at most ``BASE_POOL_ITEMS`` pool items of each MIG-Bench task (its tokenizer's corpus), so a
    world whose pool is larger for the later stages builds the same tokenizer and carries the same base stamps;
    a smaller pool, or any other change to the world, does not."""
    import re

    from mirg_lib.config import config_hash
    from mirg_lib.formats import MIG_TASKS
    from mirg_lib.items import load_pool_items
    from mirg_lib.world import DataConfig

    pool = load_pool_items(smoke_world.train_file)
    index = {it.id: int(re.search(r"(\d+)$", it.id).group(1)) for it in pool}
    kept = bm.tokenizer_pool(pool, ["single_refer"], per_task=2)
    # the items a world of two per MIG-Bench task would hold (every item's draw depends on its own seed alone)
    assert kept == [it for it in pool if it.task not in MIG_TASKS or index[it.id] < 2]
    assert {it.task for it in kept} >= set(MIG_TASKS) & {it.task for it in pool}
    assert sum(it.task in MIG_TASKS for it in kept) < sum(it.task in MIG_TASKS for it in pool)

    cap = bm.BASE_POOL_ITEMS
    world = dataclasses.asdict(DataConfig(n_train_per_task=cap))
    assert bm.base_world(world) == config_hash(DataConfig(n_train_per_task=cap))  # the world's own digest up to the cap
    assert bm.base_world({**world, "n_train_per_task": 3 * cap}) == bm.base_world(world)
    assert bm.base_world({**world, "n_train_per_task": cap - 1}) != bm.base_world(world)
    assert bm.base_world({**world, "n_train_per_task": 3 * cap, "noise": 7.0}) != bm.base_world(world)
    assert bm.world_digest(smoke_world.root) == bm.base_world(json.loads((smoke_world.root / "manifest.json").read_text())["config"])
