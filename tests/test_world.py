"""The embedded world: deterministic, well-posed, in the real formats and phrasings.

Uniqueness is re-checked here from the written scenes, independently of the generators' own checks.
"""

import dataclasses
import filecmp
import json
import re
from collections import Counter

import pytest

from mirg_lib.formats import MIG_TASKS, ORDINAL_WORDS, load_mgrounding, load_mig_bench
from mirg_lib.parsing import parse_response
from mirg_lib.scoring import Prediction, ground_truth_predictions, score
from mirg_lib.world import GENERATORS, SINGLE_TASK, DataConfig, WorldKnobs, generate, run_data_synthesis
from mirg_lib.world.objects import COLOURS, PATTERNS, SHAPES, SIZE_WORDS, grid_side, render
from mirg_lib.world.tasks import DESCRIBE_TASK, MULTI_DESCRIBE_TASK, MULTI_TASK, REASONING_RULES

TINY = DataConfig(n_test_per_task=2, n_train_per_task=1, n_single_test=2, n_single_train=1, image_size=84, contact_sheet=False)


def _normalise(q):
    q = re.sub(r"<\|object_ref_start\|>.*?<\|object_ref_end\|>", "<REF>", q)
    return re.sub(r"\d+", "N", q)


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = run_data_synthesis(TINY, tmp_path / "a", progress=False)
    b = run_data_synthesis(TINY, tmp_path / "b", progress=False)
    files_a = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file() and p.name != "timing.json")
    files_b = sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file() and p.name != "timing.json")
    assert files_a == files_b and len(files_a) > 50
    _, mismatch, errors = filecmp.cmpfiles(a.root, b.root, [str(f) for f in files_a], shallow=False)
    assert mismatch == [] and errors == []
    c = run_data_synthesis(dataclasses.replace(TINY, seed=1), tmp_path / "c", progress=False)
    assert (a.root / "test/mig_bench.json").read_bytes() != (c.root / "test/mig_bench.json").read_bytes()


def test_workers_draw_the_same_files(tmp_path, monkeypatch):
    """The world drawn over two forked processes is byte for byte the one drawn in this process."""
    from mirg_lib.world import build

    monkeypatch.setattr(build, "PARALLEL_MIN_ITEMS", 0)
    cfg = dataclasses.replace(TINY, n_single_describe_train=8, n_multi_refer_train=8)
    for name, workers in (("serial", 1), ("forked", 2)):
        (tmp_path / name).mkdir()
        assert build.write_world(cfg, tmp_path / name, progress=False, workers=workers)["train"]["multi_refer"] == 8
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "forked") for p in (tmp_path / "forked").rglob("*") if p.is_file()) and len(files) > 50
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "serial", tmp_path / "forked", [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    monkeypatch.setenv("MIRG_WORLD_WORKERS", "3")
    assert build.world_workers() == 3


def test_stage_skips_same_config_and_reruns_changed(tmp_path):
    out = tmp_path / "data"
    first = run_data_synthesis(TINY, out, progress=False)
    assert not first.skipped
    assert run_data_synthesis(TINY, out, progress=False).skipped
    changed = run_data_synthesis(dataclasses.replace(TINY, n_test_per_task=3), out, progress=False)
    assert not changed.skipped and changed.counts["test"]["diff"] == 3


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import mirg_lib.world.build as build

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "contact_sheet", boom)
    with pytest.raises(KeyboardInterrupt):
        run_data_synthesis(dataclasses.replace(TINY, contact_sheet=True), tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_ordinary_modes(tmp_path):
    """Written aside through tempfile (0600 files, 0700 folders), outputs still get the modes open/mkdir give."""
    import os

    from mirg_lib.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "folder") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_smoke_world_reads_back_as_real_data(smoke_world):
    bench = load_mig_bench(smoke_world.test_file, check=True)
    assert Counter(r.task for r in bench) == {t: 4 for t in MIG_TASKS}
    single = load_mig_bench(smoke_world.single_test_file, check=True)
    assert {r.task for r in single} == {SINGLE_TASK}
    pool = load_mgrounding(smoke_world.train_file, check=True)
    assert Counter(r.type for r in pool) == {**{t: 4 for t in MIG_TASKS}, SINGLE_TASK: 8}
    s = score(bench, {p["index"]: Prediction(p["index"], p["response"]) for p in ground_truth_predictions(bench)})
    assert s["avg"] == 100.0 and s["image_aware"]["group_grounding"]["acc"] == 100.0
    # the training answers are Qwen2-VL box tokens, and name the image for group grounding
    for r in pool:
        assert re.fullmatch(r"(It's in the \w+ image\. )?<\|box_start\|>\(\d+,\d+\),\(\d+,\d+\)<\|box_end\|>", r.answer), r.answer
        assert (r.type == "group_grounding") == r.answer.startswith("It's in the")
    assert smoke_world.contact_sheet.is_file()


def test_questions_follow_the_real_phrasings(real_mig, smoke_world):
    real = {}
    for r in real_mig:
        real.setdefault(r.task, set()).add(_normalise(r.question))
    for r in load_mig_bench(smoke_world.test_file):
        if r.task == "reasoning":  # attribute rules instead of commonsense; the real closing phrase
            assert r.question.endswith("Find it and locate it in the second image. ")
            continue
        assert _normalise(r.question) in real[r.task], (r.task, r.question)
    info_re = re.compile(r"It is in the (first|second|third|fourth|fifth|sixth) image\. <\|box_start\|>\(\d+,\d+\),\(\d+,\d+\)<\|box_end\|>\. ")
    for r in load_mig_bench(smoke_world.test_file):
        if r.task == "group_grounding":
            assert info_re.fullmatch(r.additional_info)
            real_info = next(x.additional_info for x in real_mig if x.task == "group_grounding")
            assert info_re.fullmatch(real_info)  # the same form as the real benchmark's


def _scenes(world, split="test"):
    return [json.loads(line) for line in (world.root / split / "scenes.jsonl").read_text().splitlines()]


def _ident(o):
    return (o["shape"], o["colour"], o["pattern"])


def _matches_expression(o, expr):
    words = expr.removeprefix("the ").replace("medium-sized", "medium").split()
    size_words = {v.replace("medium-sized", "medium"): k for k, v in SIZE_WORDS.items()}
    for w in words:
        if w in SHAPES and o["shape"] != w:
            return False
        if w in COLOURS and o["colour"] != w:
            return False
        if w in PATTERNS and o["pattern"] != w:
            return False
        if w in size_words and o["size"] != size_words[w]:
            return False
    return True


def check_unique(row):
    """Exactly one object satisfies the question, judged from the written scene."""
    task, imgs, t = row["task"], row["images"], row["target"]
    k = row["target_image"] - 1
    objs = [im["objects"] for im in imgs]
    if task == "common_object":
        common = set.intersection(*({_ident(o) for o in im} for im in objs))
        assert common == {_ident(t)}
        assert sum(_ident(o) == _ident(t) for o in objs[k]) == 1
    elif task in ("diff", "view_diff"):
        dx, dy = row["meta"].get("shift", [0, 0])
        a = {(_ident(o), *(round(v) for v in (o["box"][0] + dx, o["box"][1] + dy, o["box"][2] + dx, o["box"][3] + dy))) for o in objs[0]}
        b = {(_ident(o), *(round(v) for v in o["box"])) for o in objs[1]}
        assert max(len(a - b), len(b - a)) == 1
    elif task in ("refer_grounding",):
        assert sum(_ident(o) == _ident(objs[0][0]) for o in objs[1]) == 1
    elif task in ("object_tracking", "multi_view"):
        assert objs[0][0]["box"] == row["meta"]["marked"]["box"]
        assert sum(_ident(o) == _ident(t) for o in objs[k]) == 1
        assert sum(o["oid"] == t["oid"] for o in objs[k]) == 1
    elif task in ("group_grounding", SINGLE_TASK):
        expr = row["meta"]["expression"]
        assert sum(_matches_expression(o, expr) for im in objs for o in im) == 1
        assert _matches_expression(t, expr)
    elif task == "reasoning":
        _, rule = REASONING_RULES[row["meta"]["rule"]]
        key = objs[0][0]

        class Row:
            def __init__(self, d):
                self.__dict__.update(d)

        assert sum(rule(Row(key), Row(o)) for o in objs[1]) == 1
    elif task == "correspondence":
        assert sum(o["shape"] == row["meta"]["marked"]["shape"] for o in objs[1]) == 1
        assert _ident(t) != _ident(row["meta"]["marked"])
    elif task == "region":
        src = objs[0]
        reg = row["meta"]["regions"][row["meta"]["region_index"] - 1]
        assert reg["box"] == t["box"]
        assert sum(_ident(o) == _ident(t) for o in src) == 1
    elif task == DESCRIBE_TASK:
        assert len(imgs) == 1 and objs[0] == [t]
    elif task == MULTI_TASK:  # the image is named: the expression singles the target out in that image
        expr = row["meta"]["expression"]
        assert sum(_matches_expression(o, expr) for o in objs[k]) == 1
        assert _matches_expression(t, expr) and t in objs[k]
    elif task == MULTI_DESCRIBE_TASK:  # every object of the named image, each told apart, read top band to bottom, left to right
        objs_k = objs[k]
        described = row["meta"]["described"]
        assert sorted(described) == sorted(o["oid"] for o in objs_k) and t["oid"] == described[0]
        by_oid = {o["oid"]: o for o in objs_k}
        height = row["images"][k].get("size", [112, 112])[1]
        keys = [(int(4 * (by_oid[i]["box"][1] + by_oid[i]["box"][3]) / 2 / height), by_oid[i]["box"][0] + by_oid[i]["box"][2]) for i in described]
        assert keys == sorted(keys)
        assert len({(o["size"], *_ident(o)) for o in objs_k}) == len(objs_k)
    else:
        raise AssertionError(task)


def test_every_written_question_has_one_answer(smoke_world):
    rows = _scenes(smoke_world) + _scenes(smoke_world, "train")
    assert {r["task"] for r in rows} == set(MIG_TASKS) | {SINGLE_TASK}
    for row in rows:
        check_unique(row)


@pytest.mark.parametrize("grid", [0, 14])
@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_generators_many_seeds(task, grid):
    knobs = WorldKnobs(image_size=112, distractor_similarity=0.9, object_grid=grid)
    for seed in range(25):
        s = generate(task, seed, knobs)
        img = s.images[s.target_image - 1]
        x1, y1, x2, y2 = s.target.box
        assert 0 <= x1 < x2 <= img.width and 0 <= y1 < y2 <= img.height
        for im, sc in zip(s.images, s.scenes, strict=True):
            for o in sc:
                assert 0 <= o.box[0] < o.box[2] <= im.width and 0 <= o.box[1] < o.box[3] <= im.height
        rel = s.answer_rel()
        assert all(0.0 <= v <= 1.0 for v in rel)
        row = {
            "task": s.task, "target_image": s.target_image, "target": s.target.to_json(), "meta": s.meta,
            "images": [{"objects": [o.to_json() for o in sc]} for sc in s.scenes],
        }
        check_unique(row)


def test_the_uniqueness_check_catches_an_ambiguous_scene(smoke_world):
    rows = [r for r in _scenes(smoke_world) if r["task"] in ("group_grounding", "common_object", "refer_grounding")]
    assert rows
    for row in rows:
        bad = json.loads(json.dumps(row))
        k = bad["target_image"] - 1
        twin = dict(bad["target"], oid=999)
        bad["images"][k]["objects"].append(twin)  # a second object identical to the answer
        if row["task"] == "refer_grounding":
            bad["images"][1]["objects"].append(dict(bad["images"][0]["objects"][0], oid=998))
        with pytest.raises(AssertionError):
            check_unique(bad)


def test_position_cue_makes_the_background_the_coordinates():
    """``position_cue``: away from objects, red and blue read back x and y whatever the background drawn, up to
    the noise; without it the background is the drawn colour."""
    import numpy as np

    for bg in ((200, 200, 196), (180, 180, 184)):
        arr = np.asarray(render(112, 112, [], bg, 6.0, 3, cue=150), dtype=np.float64)
        xs = np.arange(112) / 111
        assert np.abs(arr[:, :, 0].mean(0) - (50 + 150 * xs)).max() < 3.5
        assert np.abs(arr[:, :, 2].mean(1) - (50 + 150 * xs)).max() < 3.5
        assert abs(arr[:, :, 1].mean() - bg[1]) < 1.0
    plain = np.asarray(render(112, 112, [], (200, 200, 196), 0.0, 3), dtype=np.float64)
    assert (plain == np.array([200, 200, 196])).all()
    with pytest.raises(ValueError, match="position_cue"):
        DataConfig(position_cue=250)
    assert DataConfig(position_cue=150).knobs().position_cue == 150


def test_describe_items_name_every_attribute_then_box_the_object(tmp_path):
    m = run_data_synthesis(dataclasses.replace(TINY, n_single_describe_train=4, position_cue=100), tmp_path / "w", progress=False)
    pool = [r for r in load_mgrounding(m.root / "train" / "mgrounding.json") if r.type == DESCRIBE_TASK]
    rows = [r for r in _scenes(m, "train") if r["task"] == DESCRIBE_TASK]
    assert len(pool) == len(rows) == 4 and m.counts["train"][DESCRIBE_TASK] == 4 and DESCRIBE_TASK not in m.counts["test"]
    for rec, row in zip(pool, rows, strict=True):
        check_unique(row)
        answer = rec.conversations[1]["value"]
        t = row["target"]
        assert answer.startswith(f"<|object_ref_start|>the {SIZE_WORDS[t['size']]} {t['colour']} {t['pattern']} {t['shape']}<|object_ref_end|><|box_start|>")
        parsed = parse_response(answer)
        assert parsed.box is not None and all(abs(v - 1000 * a) <= 1 for v, a in zip(parsed.box.values, row["answer"], strict=True))
    assert DESCRIBE_TASK not in run_data_synthesis(TINY, tmp_path / "plain", progress=False).counts["train"]


def test_multi_refer_items_name_their_image_and_box_the_object_in_it(tmp_path):
    m = run_data_synthesis(dataclasses.replace(TINY, n_multi_refer_train=12, position_cue=100), tmp_path / "w", progress=False)
    pool = [r for r in load_mgrounding(m.root / "train" / "mgrounding.json") if r.type == MULTI_TASK]
    rows = [r for r in _scenes(m, "train") if r["task"] == MULTI_TASK]
    assert len(pool) == len(rows) == 12 and m.counts["train"][MULTI_TASK] == 12 and MULTI_TASK not in m.counts["test"]
    assert any(r["target_image"] > 1 for r in rows) and all(len(r["images"]) >= 2 for r in rows)
    for rec, row in zip(pool, rows, strict=True):
        check_unique(row)
        k = row["target_image"]
        question = rec.conversations[0]["value"]
        assert question.count("<image>") == len(rec.images) == len(row["images"])
        named = re.findall(r"image-(\d)|Image-(\d)|the (\d)th image|the (\w+) image", question)
        assert len(named) == 1, question  # exactly one image is named, and it is the target's
        n = next(g for g in named[0] if g)
        assert n == str(k) or n == ORDINAL_WORDS[k - 1], (question, k)
        parsed = parse_response(rec.conversations[1]["value"])  # the box in the named image's 0-1000 frame
        assert parsed.box is not None and all(abs(v - 1000 * a) <= 1 for v, a in zip(parsed.box.values, row["answer"], strict=True))
    assert MULTI_TASK not in run_data_synthesis(TINY, tmp_path / "plain", progress=False).counts["train"]


def test_multi_describe_items_read_out_every_object_of_the_named_image(tmp_path):
    m = run_data_synthesis(dataclasses.replace(TINY, n_multi_describe_train=12, position_cue=100), tmp_path / "w", progress=False)
    pool = [r for r in load_mgrounding(m.root / "train" / "mgrounding.json") if r.type == MULTI_DESCRIBE_TASK]
    rows = [r for r in _scenes(m, "train") if r["task"] == MULTI_DESCRIBE_TASK]
    assert len(pool) == len(rows) == 12 and MULTI_DESCRIBE_TASK not in m.counts["test"]
    assert any(r["target_image"] > 1 for r in rows)
    for rec, row in zip(pool, rows, strict=True):
        check_unique(row)
        k = row["target_image"]
        objs = {o["oid"]: o for o in row["images"][k - 1]["objects"]}
        answer = rec.conversations[1]["value"]
        described = [objs[oid] for oid in row["meta"]["described"]]
        names = [f"{SIZE_WORDS[o['size']]} {o['colour']} {o['pattern']} {o['shape']}" for o in described]
        if row["meta"]["form"] == "list":  # in words: "Image k: the ..., the ...."
            assert answer == f"Image {k}: " + ", ".join(f"the {n}" for n in names) + "." and "<|box_start|>" not in answer
            continue
        captions = re.findall(r"<\|object_ref_start\|>the (.*?)<\|object_ref_end\|><\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>", answer)
        assert len(captions) == len(objs) and answer.count(", ") == len(objs) - 1
        for (words, *box), o, name in zip(captions, described, names, strict=True):
            assert words == name
            assert all(abs(int(v) - 1000 * c / 84) <= 1 for v, c in zip(box, o["box"], strict=True))  # TINY: 84 px
    assert {r["meta"]["form"] for r in rows} == {"list", "boxed"}
    assert MULTI_DESCRIBE_TASK not in run_data_synthesis(TINY, tmp_path / "plain", progress=False).counts["train"]


# tasks that place objects and never move a camera over them: every object sits on the grid
PLACED_ONLY = ("common_object", "correspondence", "diff", "group_grounding", "reasoning", "refer_grounding", SINGLE_TASK, DESCRIBE_TASK, MULTI_TASK, MULTI_DESCRIBE_TASK)


@pytest.mark.parametrize("task", PLACED_ONLY)
def test_object_grid_puts_every_placed_object_on_the_patch_grid(task):
    """``object_grid: 14``: squares whose corners and sides are whole patches, one side per size class,
    so the same object is the same patches wherever it stands (docs/world.md: why the base needs it)."""
    knobs = WorldKnobs(image_size=112, object_grid=14)
    sides = {size: grid_side(size, 112, 1.0, 14) for size in SIZE_WORDS}
    assert sides == {"small": 14, "medium": 28, "large": 42}
    seen = Counter()
    for seed in range(20):
        s = generate(task, seed, knobs)
        for sc in s.scenes:
            for o in sc:
                x1, y1, x2, y2 = o.box
                assert all(v % 14 == 0 for v in o.box), (task, seed, o)
                assert x2 - x1 == y2 - y1 and (x2 - x1 in (sides[o.size], 56)), (task, seed, o)  # 56: the query picture's showcase
                seen[o.size] += 1
    assert set(seen) == set(SIZE_WORDS)


def test_object_grid_draws_the_same_patches_wherever_the_object_stands():
    import numpy as np

    from mirg_lib.world.objects import Obj

    a = Obj("star", "red", "striped", "medium", (14.0, 28.0, 42.0, 56.0))
    b = a.moved((70.0, 0.0, 98.0, 28.0))
    ia, ib = (np.asarray(render(112, 112, [o], (200, 200, 196), 0.0, 0)) for o in (a, b))
    assert np.array_equal(ia[28:56, 14:42], ib[0:28, 70:98])


def test_object_grid_is_checked():
    with pytest.raises(ValueError, match="same sides"):
        DataConfig(image_size=140, object_grid=14)  # small and medium both round to two patches
    with pytest.raises(ValueError, match="object_grid"):
        DataConfig(image_size=112, object_grid=2)
    assert DataConfig(image_size=112, object_grid=14).knobs().object_grid == 14
