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
