import json

import pytest

from mirg_lib.formats import (
    ANSWER_TOLERANCE,
    IN_DOMAIN,
    KNOWN_TASKS,
    MIG_TASKS,
    OUT_OF_DOMAIN,
    SINGLE_TASKS,
    MissingImageError,
    RecordError,
    group_target_image,
    load_mgrounding,
    load_mig_bench,
    write_mig_bench,
)

GOOD = {"task": "diff", "images": ["a.png", "b.png"], "question": "Q", "answer": [0.1, 0.2, 0.3, 0.4], "additional_info": "", "need_format": True}


def test_real_mig_bench_loads_completely(real_mig):
    assert len(real_mig) == 4295
    counts = {t: sum(r.task == t for r in real_mig) for t in MIG_TASKS}
    assert counts == {
        "region": 1203, "common_object": 816, "object_tracking": 550, "diff": 528, "group_grounding": 499,
        "multi_view": 288, "correspondence": 117, "reasoning": 101, "refer_grounding": 99, "view_diff": 94,
    }
    assert all(2 <= len(r.images) <= 6 for r in real_mig)
    # five answers in the real file have swapped corners: ordered, and flagged
    assert sum(r.reordered for r in real_mig) == 5
    assert all(r.answer[0] < r.answer[2] and r.answer[1] < r.answer[3] for r in real_mig)
    assert set(IN_DOMAIN) | set(OUT_OF_DOMAIN) == set(MIG_TASKS) and len(IN_DOMAIN) == 4


def test_group_grounding_target_image_from_additional_info(real_mig):
    gg = [r for r in real_mig if r.task == "group_grounding"]
    assert all(group_target_image(r) in range(1, 7) for r in gg)
    assert all(group_target_image(r) <= len(r.images) for r in gg)


def test_round_trip(tmp_path):
    recs = load_mig_bench(_write(tmp_path / "b.json", [GOOD, dict(GOOD, extra_field=7)]))
    write_mig_bench(recs, tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == [GOOD, dict(GOOD, extra_field=7)]


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"task": 3}, "task"),
        ({"images": []}, "images"),
        ({"images": ["a.png", 4]}, "images[1]"),
        ({"question": None}, "question"),
        ({"answer": [0.1, 0.2, 0.3]}, "answer"),
        ({"answer": [0.1, 0.2, "x", 0.4]}, "answer"),
        ({"answer": [0.1, 0.2, float("nan"), 0.4]}, "answer"),
        ({"answer": [10, 20, 300, 400]}, "answer"),
        ({"answer": [0.1, 0.1, 1.4, 1.4]}, "answer"),
        ({"task": "difff"}, "task"),
        ({"answer": [0.1, 0.2, 0.1, 0.4]}, "answer"),
        ({"need_format": "yes"}, "need_format"),
        ({"additional_info": 5}, "additional_info"),
    ],
)
def test_bad_mig_record_names_file_index_and_field(tmp_path, patch, field):
    path = _write(tmp_path / "bench.json", [GOOD, dict(GOOD, **patch)])
    with pytest.raises(RecordError) as e:
        load_mig_bench(path)
    assert e.value.index == 1 and e.value.field == field
    assert "bench.json" in str(e.value) and "index 1" in str(e.value) and f"'{field}'" in str(e.value)


def test_missing_field_and_not_a_list(tmp_path):
    bad = dict(GOOD)
    del bad["question"]
    with pytest.raises(RecordError, match="index 0, field 'question': missing"):
        load_mig_bench(_write(tmp_path / "x.json", [bad]))
    with pytest.raises(RecordError, match="expected a JSON list"):
        load_mig_bench(_write(tmp_path / "y.json", {"a": 1}))
    (tmp_path / "z.json").write_text("[{")
    with pytest.raises(RecordError, match=r"z\.json, index 0, line 1: not valid JSON"):
        load_mig_bench(tmp_path / "z.json")


def test_missing_image_names_its_path(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    path = _write(tmp_path / "bench.json", [GOOD])
    with pytest.raises(MissingImageError, match=r"b\.png"):
        load_mig_bench(path, check=True)


MG = {
    "id": "x1",
    "images": ["a.png", "b.png"],
    "conversations": [
        {"from": "human", "value": "<image>\n<image>\nWhere is the cup?"},
        {"from": "gpt", "value": "It's in the second image. <|box_start|>(316,58),(764,999)<|box_end|>"},
    ],
    "type": "group_grounding",
}


def test_mgrounding_reads_and_validates(tmp_path):
    (rec,) = load_mgrounding(_write(tmp_path / "mg.json", [MG]))
    assert rec.question == "Where is the cup?" and rec.answer.startswith("It's in the second image.")
    wrong_count = json.loads(json.dumps(MG))
    wrong_count["conversations"][0]["value"] = "<image>\nWhere?"
    with pytest.raises(RecordError, match="index 1, field 'conversations': 1 '<image>' placeholders for 2 images"):
        load_mgrounding(_write(tmp_path / "mg2.json", [MG, wrong_count]))
    wrong_role = json.loads(json.dumps(MG))
    wrong_role["conversations"][1]["from"] = "human"
    with pytest.raises(RecordError, match=r"field 'conversations\[1\]\.from'"):
        load_mgrounding(_write(tmp_path / "mg3.json", [wrong_role]))


def test_task_names_are_stripped_and_must_be_known(tmp_path):
    recs = load_mig_bench(_write(tmp_path / "t.json", [dict(GOOD, task="diff "), dict(GOOD, task="\tRegion"), dict(GOOD, task="single_refer")]))
    assert [r.task for r in recs] == ["diff", "region", "single_refer"]
    for bad in ("difff", "single_locate", "diff region"):
        with pytest.raises(RecordError) as e:
            load_mig_bench(_write(tmp_path / "u.json", [GOOD, dict(GOOD, task=bad)]))
        assert (e.value.index, e.value.field) == (1, "task") and "unknown task" in str(e.value) and "u.json, index 1" in str(e.value)
    with pytest.raises(RecordError, match="index 0, field 'task': empty task name"):
        load_mig_bench(_write(tmp_path / "v.json", [dict(GOOD, task="  ")]))


def test_the_worlds_single_image_and_curriculum_tasks_are_known(tmp_path):
    from mirg_lib.world import DataConfig
    from mirg_lib.world.build import heldout_bench
    from mirg_lib.world.tasks import CURRICULUM_TASKS as WORLD_CURRICULUM
    from mirg_lib.world.tasks import SINGLE_TASK

    assert SINGLE_TASK in SINGLE_TASKS and set(KNOWN_TASKS) == {*MIG_TASKS, *SINGLE_TASKS, *WORLD_CURRICULUM}
    # a held-out bench of a one-image curriculum task reads back (tools/score_base_checkpoints.py scores them)
    bench, _ = heldout_bench(DataConfig(image_size=112), "single_describe", tmp_path, 2)
    assert [r.task for r in load_mig_bench(bench)] == ["single_describe"] * 2
    # reused for the same world, drawn again for another (the stamp, not the item count, decides)
    first, mtime = bench.read_text(), bench.stat().st_mtime_ns
    assert heldout_bench(DataConfig(image_size=112), "single_describe", tmp_path, 2)[0].stat().st_mtime_ns == mtime
    assert heldout_bench(DataConfig(image_size=112, seed=1), "single_describe", tmp_path, 2)[0].read_text() != first


def test_answers_a_little_past_the_image_are_clipped_and_counted(tmp_path, real_mig, real_mig_file):
    raw = json.loads(real_mig_file.read_text())
    overshoot = max(max(max(r["answer"]) - 1, -min(r["answer"])) for r in raw)
    assert 0 < overshoot <= ANSWER_TOLERANCE  # the tolerance covers every box of the real file
    assert [r.index for r in real_mig if r.clipped] == [i for i, r in enumerate(raw) if max(r["answer"]) > 1 or min(r["answer"]) < 0] == [34, 703]
    assert all(0 <= v <= 1 for r in real_mig for v in r.answer)
    assert real_mig[34].answer == [0.319, 0.186, 1.0, 0.535]
    recs = load_mig_bench(_write(tmp_path / "c.json", [dict(GOOD, answer=[-0.02, 0.1, 1.04, 0.9]), GOOD]))
    assert recs[0].answer == [0.0, 0.1, 1.0, 0.9] and recs[0].clipped and not recs[1].clipped
    for bad in ([0.1, 0.1, 1.4, 1.4], [-0.2, 0.1, 0.5, 0.5], [1.01, 0.1, 1.04, 0.5]):
        with pytest.raises(RecordError) as e:
            load_mig_bench(_write(tmp_path / "d.json", [GOOD, dict(GOOD, answer=bad)]))
        assert (e.value.index, e.value.field) == (1, "answer") and "d.json, index 1, field 'answer'" in str(e.value)


def test_duplicate_keys_and_huge_numbers_in_a_record(tmp_path):
    good = json.dumps(GOOD)
    path = tmp_path / "dup.json"
    path.write_text("[\n" + good + ",\n" + good[:-1] + ', "answer": [0.5, 0.5, 0.6, 0.6]}\n]')
    with pytest.raises(RecordError, match=r"dup\.json, index 1, field 'answer': duplicate key \(in the value starting at line 3\)"):
        load_mig_bench(path)
    path.write_text(json.dumps([dict(GOOD, answer=[0.1, 0.2, 10**400, 0.4])]))
    with pytest.raises(RecordError, match="index 0, field 'answer': expected finite numbers"):
        load_mig_bench(path)
