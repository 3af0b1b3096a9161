"""The data stage on real files (``data.source: local``): laid out as the real downloads are (MIG-Bench's
``./MIG-Bench/images/...`` paths, several MGrounding files with their own type names), read by the same
readers, checked, and written so that the later stages read them as they read the embedded world."""

import json
import shutil
from pathlib import Path

import pytest

from mirg_lib import pipeline
from mirg_lib.config import ConfigError, load_params, stage_config
from mirg_lib.formats import MissingImageError, RecordError, load_mgrounding, load_mig_bench
from mirg_lib.items import load_bench_items, load_pool_items
from mirg_lib.local_data import run_local_data
from mirg_lib.world import DataConfig

RENAMED = {"diff": "static_diff", "common_object": "common"}  # a real file's own type names, mapped back by task_map


def _real_layout(world, root: Path) -> Path:
    """The smoke world rewritten as the downloads lay out: MIG-Bench/MIG_data.json with paths from the folder
    above it, MGrounding in two files with their own image folder and type names, one answer without a box."""
    (root / "MIG-Bench" / "images").mkdir(parents=True)
    bench = json.loads(world.test_file.read_text())
    for i, rec in enumerate(bench):
        new = []
        for j, img in enumerate(rec["images"]):
            name = f"{i}_{j}.png"
            shutil.copy(world.test_file.parent / img, root / "MIG-Bench" / "images" / name)
            new.append(f"./MIG-Bench/images/{name}")
        rec["images"] = new
    (root / "MIG-Bench" / "MIG_data.json").write_text(json.dumps(bench))
    pool = json.loads(world.train_file.read_text())
    (root / "mg" / "imgs").mkdir(parents=True)
    for rec in pool:
        new = []
        for img in rec["images"]:
            name = Path(img).name
            shutil.copy(world.train_file.parent / img, root / "mg" / "imgs" / name)
            new.append(f"imgs/{name}")
        rec["images"] = new
        rec["type"] = RENAMED.get(rec["type"], rec["type"])
    text_only = dict(pool[0], id="no-box", conversations=[pool[0]["conversations"][0], {"from": "gpt", "value": "It is not there."}])
    half = len(pool) // 2
    (root / "mg" / "part1.json").write_text(json.dumps(pool[:half]))
    (root / "mg" / "part2.json").write_text(json.dumps(pool[half:] + [text_only]))
    return root


@pytest.fixture
def real(smoke_world, tmp_path, monkeypatch):
    root = _real_layout(smoke_world, tmp_path / "downloads")
    monkeypatch.setenv("MIRG_TEST_DATA", str(root))
    profile = tmp_path / "local.yaml"
    profile.write_text(
        "extends: smoke\n"
        "data:\n"
        "  source: local\n"
        "  mig_bench: ${MIRG_TEST_DATA}/MIG-Bench/MIG_data.json\n"
        "  mig_bench_images: ${MIRG_TEST_DATA}\n"
        "  mgrounding: ['${MIRG_TEST_DATA}/mg/part1.json', '${MIRG_TEST_DATA}/mg/part2.json']\n"
        "  mgrounding_images: ${MIRG_TEST_DATA}/mg\n"
        "  task_map: {static_diff: diff, common: common_object}\n"
    )
    return root, profile


def test_real_files_are_checked_and_laid_out_for_the_later_stages(real, smoke_world):
    root, profile = real
    params = load_params(profile)
    m = pipeline.data(params)
    want_bench = load_bench_items(smoke_world.test_file)
    got_bench = load_bench_items(m.test_file)
    assert [(b.task, b.answer, b.target_image, [p.read_bytes() for p in b.images]) for b in got_bench] == \
        [(b.task, b.answer, b.target_image, [p.read_bytes() for p in b.images]) for b in want_bench]
    assert all(p.is_absolute() for b in got_bench for p in b.images)
    want_pool = {it.id: it for it in load_pool_items(smoke_world.train_file)}
    got_pool = load_pool_items(m.train_file)
    assert len(got_pool) == len(want_pool) and "no-box" not in {it.id for it in got_pool}
    for it in got_pool:  # types mapped back; boxes and images as the world wrote them
        w = want_pool[it.id]
        assert (it.task, it.answer, it.question, it.target_image) == (w.task, w.answer, w.question, w.target_image)
    assert m.counts["train"] == {t: sum(w.task == t for w in want_pool.values()) for t in m.counts["train"]}
    assert load_mig_bench(m.single_test_file) == [] and m.counts["single_test"] == {}
    manifest = json.loads((m.root / "manifest.json").read_text())
    assert manifest["dropped"]["count"] == 1 and manifest["dropped"]["first"][0]["id"] == "no-box"
    assert "holds no box" in manifest["dropped"]["first"][0]["why"] and manifest["dropped"]["first"][0]["file"].endswith("part2.json")
    # the same files again: reused; a source file changed: read again
    assert pipeline.data(params).skipped
    (root / "mg" / "part2.json").write_text((root / "mg" / "part2.json").read_text())
    assert not pipeline.data(params).skipped


def test_max_train_per_task_and_the_cot_tasks_select_by_mapped_type(real, tmp_path):
    _, profile = real
    params = load_params(profile, {"data.max_train_per_task": 2})
    m = pipeline.data(params)
    assert m.counts["train"] and all(n <= 2 for n in m.counts["train"].values())
    assert {"diff", "common_object"} <= set(m.counts["train"])
    assert not {"static_diff", "common"} & set(m.counts["train"])


def test_bad_real_files_name_file_record_and_field(real, tmp_path):
    root, profile = real
    cfg = stage_config(DataConfig, load_params(profile), "data")
    # a missing image: the file, the record and the path
    victim = sorted((root / "mg" / "imgs").iterdir())[0]
    victim.rename(victim.with_suffix(".gone"))
    with pytest.raises(MissingImageError, match=r"part[12]\.json, index \d+: image not found: .*" + victim.name):
        run_local_data(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written for the next stage
    victim.with_suffix(".gone").rename(victim)
    # a malformed record
    part1 = json.loads((root / "mg" / "part1.json").read_text())
    bad = [dict(r) for r in part1]
    bad[3]["conversations"] = "none"
    (root / "mg" / "part1.json").write_text(json.dumps(bad))
    with pytest.raises(RecordError, match=r"part1\.json, index 3.*conversations"):
        run_local_data(cfg, tmp_path / "out")
    # an id twice across files
    dup = part1 + [dict(part1[0])]
    (root / "mg" / "part1.json").write_text(json.dumps(dup))
    with pytest.raises(RecordError, match=rf"index {len(part1)}.*id.*also the id of .*part1\.json index 0"):
        run_local_data(cfg, tmp_path / "out")
    # a path that does not exist, and a profile variable that is not set
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        run_local_data(stage_config(DataConfig, load_params(profile, {"data.mig_bench": str(root / "nope.json")}), "data"), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"local.yaml \[data\].mig_bench: \$\{MIRG_UNSET_DATA\} is not set"):
        stage_config(DataConfig, load_params(profile, {"data.mig_bench": "${MIRG_UNSET_DATA}/MIG_data.json"}), "data")


def test_the_real_mig_bench_annotations_read_as_downloaded(real_mig_file, tmp_path):
    """MIG-Bench's own MIG_data.json (4,295 records, paths ./MIG-Bench/images/...) with stand-in image files:
    every record read, every path resolved against the folder above MIG-Bench/, the per-task counts kept."""
    root = tmp_path / "dl"
    records = json.loads(real_mig_file.read_text())
    for rec in records:
        for img in rec["images"]:
            p = root / img
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
    (root / "MIG-Bench").mkdir(exist_ok=True)
    shutil.copy(real_mig_file, root / "MIG-Bench" / "MIG_data.json")
    cfg = DataConfig(source="local", mig_bench=str(root / "MIG-Bench" / "MIG_data.json"), mig_bench_images=str(root))
    m = run_local_data(cfg, tmp_path / "out")
    got = load_mig_bench(m.test_file)
    assert len(got) == len(records) == 4295 and sum(m.counts["test"].values()) == 4295 and len(m.counts["test"]) == 10
    assert all(Path(p).is_file() and Path(p).is_absolute() for r in got for p in r.images)
    assert [r.question for r in got] == [r["question"] for r in records]
    assert load_mgrounding(m.train_file) == []


def test_a_local_checkpoint_is_scored_on_the_real_files(real, nano_checkpoint):
    """Data and model both from local paths (a checkpoint folder as ``base_model.model_name_or_path``): the
    evaluation and result files run as on the embedded world; no single-image test leaves that column empty."""
    from mirg_lib.results import load_results, results_dir

    _, profile = real
    params = load_params(profile, {"base_model.model_name_or_path": str(nano_checkpoint), "eval.max_items_per_task": 0})
    pipeline.data(params)
    assert pipeline.base_path(params) == nano_checkpoint
    [row] = pipeline.evaluate_models(params, {"base": "base_model"}, results="scores")
    assert row["n_records"] == sum(pipeline.data(params).counts["test"].values()) and row["single"] is None
    assert set(row["tasks"]) == set(pipeline.data(params).counts["test"]) and 0.0 <= row["avg"] <= 100.0
    assert load_results(results_dir(params.profile) / "scores.json")["rows"][0]["model"] == "base"
