"""The scripted teacher: right when told to be, wrong at its error rate, in every recipe format."""

import json

import pytest

from mirg_lib.formats import MIG_TASKS
from mirg_lib.parsing import parse_response
from mirg_lib.rewards import RECIPE_REWARDS, total_reward, zhang_accuracy
from mirg_lib.teacher import ScriptedTeacher, TeacherItem


def _items(world, split="train"):
    rows = [json.loads(line) for line in (world.root / split / "scenes.jsonl").read_text().splitlines()]
    return [TeacherItem(r["id"], r["task"], [], r["question"], r) for r in rows], rows


@pytest.mark.parametrize("style", ["zhang", "mirg_text", "mirg_bbox", "answer"])
def test_a_perfect_teacher_is_always_right(smoke_world, style):
    items, rows = _items(smoke_world)
    replies = ScriptedTeacher(error_rate=0.0, box_jitter=0.0).answer(items, 2, style)
    flat = [r for rs in replies for r in rs]
    kw = {"answer": [row["answer"] for row in rows for _ in range(2)], "target_image": [row["target_image"] for row in rows for _ in range(2)]}
    ious = zhang_accuracy(flat, **kw)
    assert min(ious) > 0.97, [(f, i) for f, i in zip(flat, ious, strict=True) if i < 0.97][:3]
    if style == "zhang":
        assert total_reward(RECIPE_REWARDS["zhang"], flat, **kw) == pytest.approx([1.5] * len(flat), abs=0.03)
    if style in ("mirg_text", "mirg_bbox"):
        assert min(total_reward(RECIPE_REWARDS["mirg"], flat, **kw)) > 2.97
    if style == "mirg_bbox":
        for r in flat:
            p = parse_response(r)
            assert p.trajectory and all(t.image >= 1 and t.index >= 1 for t in p.trajectory)
            first = {}
            for t in p.trajectory[:-1]:  # the answer's own bbox_id is a later mention
                key = (t.image, t.index)
                assert (key in first) == (t.box is None), r  # first mention carries the box, later ones do not
                first.setdefault(key, t)


def test_error_rate_is_honoured_and_deterministic(smoke_world):
    items, rows = _items(smoke_world)
    teacher = ScriptedTeacher(error_rate=0.5, seed=3)
    replies = teacher.answer(items, 8, "zhang")
    assert replies == ScriptedTeacher(error_rate=0.5, seed=3).answer(items, 8, "zhang")
    flat = [r for rs in replies for r in rs]
    kw = {"answer": [row["answer"] for row in rows for _ in range(8)]}
    wrong = sum(v < 0.5 for v in zhang_accuracy(flat, **kw)) / len(flat)
    assert 0.35 < wrong < 0.65
    per_task = ScriptedTeacher(error_rate=0.0, error_rates={"diff": 1.0}).answer(items, 2, "zhang")
    for item, rs, row in zip(items, per_task, rows, strict=True):
        ious = zhang_accuracy(rs, answer=[row["answer"]] * 2)
        assert (max(ious) < 0.5) == (item.task == "diff"), (item.task, rs)
    assert {i.task for i in items} >= set(MIG_TASKS)


def test_cot_in_the_abs_frame_keeps_what_a_perfect_teacher_writes(smoke_world, tmp_path):
    """Qwen2.5-VL's frame: the teacher writes pixel boxes at the resized size, the 4-of-4 filter reads
    them so (a perfect teacher loses nothing) and the answer-only baseline is rewritten in pixels."""
    from mirg_lib.cot import CotConfig, abs_size, run_cot
    from mirg_lib.items import load_pool_items

    cfg = CotConfig(tasks=["single_refer", "diff"], max_items_per_task=6, styles=["zhang"], frame="abs", error_rate=0.0)
    res = run_cot(cfg, smoke_world.root, tmp_path / "cot", ScriptedTeacher(error_rate=0.0, box_jitter=0.0, frame="abs"))
    assert all(r["zhang kept"] == r["candidates"] >= 4 for r in res.table)
    by_id = {it.id: it for it in load_pool_items(smoke_world.train_file)}
    answers = [json.loads(line) for line in (tmp_path / "cot" / "sft_answer.jsonl").read_text().splitlines()]
    assert len(answers) == sum(r["candidates"] for r in res.table)
    for a in answers:
        it = by_id[a["id"]]
        ious = zhang_accuracy([a["completion"]], answer=[it.answer], box_frame=["abs"], image_size=[abs_size(it)])
        assert ious[0] > 0.9, a
    # read by the 0-1000 rule the same replies are wrong: the frame is really in use
    replies = [json.loads(line)["samples"][0] for line in (tmp_path / "cot" / "samples_zhang.jsonl").read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in (tmp_path / "cot" / "samples_zhang.jsonl").read_text().splitlines()]
    assert sum(v >= 0.5 for v in zhang_accuracy(replies, answer=[by_id[i].answer for i in ids])) < len(ids) / 2


def test_local_vlm_teacher_samples_a_checkpoint(nano_checkpoint, smoke_world, tmp_path):
    """The local-VLM teacher through transformers: n samples per item, in order, batched across items;
    the same seed gives the same samples; run_cot uses it from params."""
    from mirg_lib.cot import CotConfig, run_cot
    from mirg_lib.items import load_pool_items
    from mirg_lib.teacher import LocalVLMTeacher

    pool = load_pool_items(smoke_world.train_file)[:3]
    items = [TeacherItem(i.id, i.task, i.images, i.question, None) for i in pool]
    teacher = LocalVLMTeacher(str(nano_checkpoint), temperature=1.0, max_new_tokens=6, batch_size=4, seed=1)
    out = teacher.answer(items, 3, "zhang")
    assert [len(rs) for rs in out] == [3, 3, 3] and all(isinstance(r, str) for rs in out for r in rs)
    assert len({r for rs in out for r in rs}) > 1  # sampled, not one reply copied
    assert LocalVLMTeacher(str(nano_checkpoint), temperature=1.0, max_new_tokens=6, batch_size=4, seed=1).answer(items, 3, "zhang") == out
    cfg = CotConfig(teacher="local", teacher_model=str(nano_checkpoint), tasks=["single_refer"], max_items_per_task=2, n_samples=2, styles=["zhang"], max_new_tokens=6)
    res = run_cot(cfg, smoke_world.root, tmp_path / "cot")
    assert res.table[0]["candidates"] == 2
    samples = [json.loads(line) for line in (tmp_path / "cot" / "samples_zhang.jsonl").read_text().splitlines()]
    assert [len(s["samples"]) for s in samples] == [2, 2]
