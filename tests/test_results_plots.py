"""Result files and the figures drawn from them (made-up results, images and logs; no model)."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from mirg_lib import plots
from mirg_lib.formats import IN_DOMAIN, MIG_TASKS
from mirg_lib.results import (
    ResultsError,
    domain_means,
    load_results,
    model_row,
    results_dir,
    seed_summary,
    summarise,
    write_results,
)


def _scores(acc: dict[str, float], unparseable: int = 0) -> dict:
    tasks = {t: {"acc": acc.get(t, 0.0)} for t in MIG_TASKS}
    vals = [v["acc"] for v in tasks.values()]
    ind = [tasks[t]["acc"] for t in IN_DOMAIN]
    out = [tasks[t]["acc"] for t in MIG_TASKS if t not in IN_DOMAIN]
    return {"tasks": tasks, "avg": sum(vals) / 10, "in_domain": sum(ind) / 4, "out_of_domain": sum(out) / 6,
            "unparseable": unparseable, "n_records": 10}


def test_rows_round_trip_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRG_RUNS_DIR", str(tmp_path))
    row = model_row("CoT-SFT", "sft_zhang", _scores({"diff": 50.0, "reasoning": 20.0}, 3), {"avg": 40.0})
    path = write_results("p", "scores", [row], wall_s=1.5)
    assert path == results_dir("p") / "scores.json"
    data = load_results(path)
    assert data["rows"] == [row]
    prov = data["provenance"]
    assert prov["wall_s"] == 1.5 and (prov["device"] == "cpu" or prov["device"].startswith("cuda:"))
    assert prov["date"].startswith("20") and prov["torch"]
    assert row["single"] == 40.0 and row["tasks"]["diff"] == 50.0 and row["unparseable"] == 3
    assert domain_means(row) == pytest.approx({"in_domain": 12.5, "out_of_domain": 20.0 / 6, "avg": 7.0})


@pytest.mark.parametrize("patch, field", [
    ({"model": 3}, "'model'"),
    ({"tasks": [1, 2]}, "'tasks'"),
    ({"tasks": {"diff": "high"}}, "'tasks.diff'"),
    ({"tasks": {"no_such_task": 1.0}}, "unknown task 'no_such_task'"),
    ({"avg": float("nan")}, "'avg'"),
    ({"single": True}, "'single'"),
])
def test_a_malformed_row_names_file_row_and_field(tmp_path, patch, field):
    good = model_row("base", "base_model", _scores({}))
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"rows": [good, {**good, **patch}]}))
    with pytest.raises(ResultsError) as e:
        load_results(path)
    assert str(path) in str(e.value) and "row 1" in str(e.value) and field in str(e.value)


def test_missing_or_broken_result_files_are_named(tmp_path):
    with pytest.raises(ResultsError, match="no such result file"):
        load_results(tmp_path / "scores.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ResultsError, match="bad.json: not valid JSON"):
        load_results(tmp_path / "bad.json")
    (tmp_path / "norows.json").write_text("{}")
    with pytest.raises(ResultsError, match="'rows'"):
        load_results(tmp_path / "norows.json")


def test_seed_summary_and_grouping():
    s = seed_summary([7.5, 12.5, 11.0, 11.0])
    assert s["n"] == 4 and s["mean"] == pytest.approx(10.5) and s["std"] == pytest.approx(math.sqrt(4.5))
    assert seed_summary([3.0]) == {"mean": 3.0, "std": 0.0, "n": 1}
    with pytest.raises(ValueError):
        seed_summary([])
    rows = [dict(model_row(m, "grpo", _scores({"diff": d})), seed=k) for m, d, k in (("a", 10.0, 0), ("b", 40.0, 0), ("a", 30.0, 1))]
    out = summarise(rows)
    assert [s["model"] for s in out] == ["a", "b"] and out[0]["seeds"] == [0, 1]
    assert out[0]["tasks"]["diff"]["mean"] == 20.0 and out[0]["tasks"]["diff"]["std"] == pytest.approx(math.sqrt(200))
    assert out[1]["avg"]["std"] == 0.0 and out[0]["single"] is None


def _bar_heights(fig):
    return [round(p.get_height(), 6) for p in fig.axes[0].patches]


def test_bars_show_the_numbers_given():
    rows = [model_row("m1", "base_model", _scores({"diff": 10.0, "view_diff": 20.0})), model_row("m2", "grpo", _scores({"diff": 30.0}))]
    heights = _bar_heights(plots.task_bars(rows))
    assert len(heights) == 20 and heights[0] == 10.0 and heights[10] == 30.0  # m1 then m2, in-domain tasks first
    assert heights[4] == 20.0  # view_diff: the first out-of-domain task
    rows_seeds = [dict(r, seed=k) for k, r in enumerate([model_row("x", "g", _scores({t: 10.0 for t in MIG_TASKS})), model_row("x", "g", _scores({t: 30.0 for t in MIG_TASKS}))])]
    fig = plots.ablation_bars(rows_seeds)
    assert _bar_heights(fig) == [20.0]
    assert "(n=2)" in fig.axes[0].get_xticklabels()[0].get_text()


def _world(tmp_path):
    """A two-item benchmark with images, predictions for it, a GRPO log and the results pointing at them."""
    base = tmp_path / "runs" / "p"
    (base / "data" / "test" / "images").mkdir(parents=True)
    for name in ("a1", "a2", "b1"):
        Image.new("RGB", (40, 40), (20, 200, 20)).save(base / "data" / "test" / "images" / f"{name}.png")
    bench = [
        {"task": "diff", "images": ["images/a1.png", "images/a2.png"], "question": "Compare these two images.", "answer": [0.1, 0.1, 0.5, 0.5], "additional_info": "", "need_format": True},
        {"task": "refer_grounding", "images": ["images/b1.png"], "question": "Find the red circle.", "answer": [0.2, 0.2, 0.4, 0.4], "additional_info": "", "need_format": True},
    ]
    (base / "data" / "test" / "mig_bench.json").write_text(json.dumps(bench))
    (base / "eval" / "grpo").mkdir(parents=True)
    preds = [{"index": 0, "task": "diff", "response": "<answer>(100,100),(500,500)</answer>", "frame": "auto"},
             {"index": 1, "task": "refer_grounding", "response": "no box at all \x00 <|image_pad|>", "frame": "auto"}]
    (base / "eval" / "grpo" / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (base / "grpo").mkdir()
    log = [{"step": s, "reward": 0.5, "rewards/zhang_accuracy/mean": 0.1 * s, "rewards/zhang_format/mean": 1.0, "kl": 0.01 * s, "completions/mean_length": 60 + s} for s in (1, 2, 3)]
    (base / "grpo" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log) + json.dumps({"step": 3, "train_runtime": 1.0}) + "\n")
    return base


def test_make_figures_draws_everything_from_result_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRG_RUNS_DIR", str(tmp_path / "runs"))
    base = _world(tmp_path)
    with pytest.raises(ResultsError, match="no such result file"):
        plots.make_figures("p")
    rows = [model_row("base", "base_model", _scores({"diff": 100.0}), {"avg": 70.0}),
            model_row("GRPO", "grpo", _scores({"diff": 50.0}), None, predictions="eval/grpo/predictions.jsonl",
                      bench="data/test/mig_bench.json", train_log="grpo/train_log.jsonl")]
    write_results("p", "scores", rows)
    write_results("p", "ablations", [dict(r, seed=0) for r in rows])
    written = plots.make_figures("p", n_examples=2)
    assert sorted(p.name for p in written) == ["ablations_avg.png", "ablations_single.png", "domains.png", "grpo_curves.png", "qualitative.png", "tasks.png"]
    for p in written:
        assert p.parent == base / "figures"
        with Image.open(p) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    assert not list((base / "figures").glob(".*"))  # nothing left aside


def test_grpo_curves_plot_every_logged_step_and_bad_logs_are_named(tmp_path):
    base = _world(tmp_path)
    fig = plots.grpo_curves({"GRPO": base / "grpo" / "train_log.jsonl"})
    rewards, kl, length = fig.axes
    assert sorted(line.get_label() for line in rewards.get_lines()) == ["zhang_accuracy", "zhang_format"]
    assert list(kl.get_lines()[0].get_ydata()) == pytest.approx([0.01, 0.02, 0.03])
    assert list(length.get_lines()[0].get_xdata()) == [1, 2, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ResultsError, match="bad.jsonl: line 2 is not JSON"):
        plots.read_log(bad)


def test_qualitative_draws_both_boxes_and_survives_a_broken_reply(tmp_path):
    base = _world(tmp_path)
    bench, preds = base / "data" / "test" / "mig_bench.json", base / "eval" / "grpo" / "predictions.jsonl"
    fig = plots.qualitative(bench, preds, [0, 1], label="GRPO")
    boxes = [[(round(p.get_x()), round(p.get_width()), p.get_edgecolor()[:3]) for p in ax.patches] for ax in fig.axes]
    # item 0 (diff): the target is image 2; the answer names no image, so its box is drawn there too
    assert boxes[0] == [] and sorted(boxes[1]) == [(4, 16, (0.0, 1.0, 0.0)), (4, 16, (1.0, 0.0, 0.0))]
    assert boxes[2] == [(8, 8, (0.0, 1.0, 0.0))]  # item 1: no box could be read, only the ground truth
    with pytest.raises(ResultsError, match="no record with index 7"):
        plots.qualitative(bench, preds, [7])


def test_a_fresh_clone_draws_every_figure_and_prints_the_tables_from_the_committed_results(tmp_path):
    """No run (the tests' runs folder is empty): `make figures` and `tables` read results/embedded/."""
    from mirg_lib.ablations import readme_tables, report
    from mirg_lib.paths import ROOT, runs_dir
    from mirg_lib.plots import make_figures
    from mirg_lib.results import COMMITTED_DIR, result_sources

    assert not (runs_dir() / "embedded").exists()
    assert result_sources("embedded") == (COMMITTED_DIR / "embedded", COMMITTED_DIR / "embedded")
    written = make_figures("embedded", tmp_path / "figures")
    assert sorted(p.name for p in written) == ["ablations_avg.png", "ablations_single.png", "domains.png", "grpo_curves.png", "qualitative.png", "tasks.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
    assert report("embedded") == readme_tables(ROOT / "README.md")


def test_commit_results_copies_what_the_figures_read(tmp_path, monkeypatch):
    import shutil

    from mirg_lib.plots import make_figures
    from mirg_lib.results import COMMITTED_DIR, ResultsError, commit_results, result_sources

    monkeypatch.setenv("MIRG_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(ResultsError, match="no run of 'p' to commit"):
        commit_results("p", tmp_path / "c")
    run = tmp_path / "runs" / "p"  # a finished run, laid out as the pipeline writes one
    shutil.copytree(COMMITTED_DIR / "embedded", run)
    (run / "results").mkdir()
    for name in ("scores.json", "ablations.json", "claims.json"):
        (run / name).rename(run / "results" / name)
    for i in range(200, 210):  # images the qualitative figure does not show stay behind
        shutil.copy2(run / "data" / "test" / "images" / "diff" / "00000_1.png", run / "data" / "test" / "images" / "diff" / f"{i:05d}_1.png")
    assert result_sources("p") == (run / "results", run)
    copied = commit_results("p", tmp_path / "c")
    want = sorted(p.relative_to(COMMITTED_DIR / "embedded") for p in (COMMITTED_DIR / "embedded").rglob("*") if p.is_file())
    assert sorted(p.relative_to(tmp_path / "c") for p in copied) == want
    assert all((tmp_path / "c" / rel).read_bytes() == (COMMITTED_DIR / "embedded" / rel).read_bytes() for rel in want)
    monkeypatch.setattr("mirg_lib.results.COMMITTED_DIR", tmp_path)
    shutil.rmtree(run)  # no run any more: the copy alone draws every figure
    (tmp_path / "c").rename(tmp_path / "p")
    assert len(make_figures("p", tmp_path / "figures")) == 6
