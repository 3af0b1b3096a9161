"""The ablation arms and the claims' statistics (made-up predictions on real MIG-Bench annotations; no model)."""

from __future__ import annotations

import json

import pytest

from mirg_lib import ablations
from mirg_lib.ablations import ARMS, ARMS_BY_LABEL, AblationsConfig, Claim, measure_claim, selected_arms
from mirg_lib.config import load_params
from mirg_lib.formats import IN_DOMAIN, MIG_TASKS, load_mig_bench, write_mig_bench
from mirg_lib.io import write_jsonl
from mirg_lib.scoring import ground_truth_predictions

PER_TASK = 6


@pytest.fixture
def bench(tmp_path, monkeypatch, real_mig):
    """runs/p/data/test/mig_bench.json: the first PER_TASK real records of every task."""
    monkeypatch.setenv("MIRG_RUNS_DIR", str(tmp_path))
    records = [r for t in MIG_TASKS for r in [x for x in real_mig if x.task == t][:PER_TASK]]
    path = tmp_path / "p" / "data" / "test" / "mig_bench.json"
    path.parent.mkdir(parents=True)
    write_mig_bench(records, path)
    return load_mig_bench(path)  # indices are positions in the file


def _write_row(tmp_path, records, label: str, right: dict[str, int], seed: int = 0, garbage: bool = False) -> dict:
    """A result row whose predictions get the first ``right[task]`` items of each task right (the rest answer
    three box widths away, or with ``garbage`` a reply no parser reads), its metrics computed independently."""
    gt = {p["index"]: p for p in ground_truth_predictions(records)}
    wrong = {p["index"]: p for p in ground_truth_predictions(records, shift=3.0)}
    rows, seen = [], {t: 0 for t in MIG_TASKS}
    for r in records:
        ok = seen[r.task] < right.get(r.task, 0)
        seen[r.task] += 1
        if ok:
            rows.append(gt[r.index])
        elif garbage:
            rows.append({"index": r.index, "task": r.task, "response": "<think>((( bbox_2d: [nan, 'x'</answer>"})
        else:
            rows.append(wrong[r.index])
    rel = f"eval/{label}_{seed}/predictions.jsonl"
    write_jsonl(tmp_path / "p" / rel, rows)
    accs = {t: 100.0 * min(right.get(t, 0), PER_TASK) / PER_TASK for t in MIG_TASKS}
    ind = sum(accs[t] for t in IN_DOMAIN) / len(IN_DOMAIN)
    out = sum(accs[t] for t in MIG_TASKS if t not in IN_DOMAIN) / (len(MIG_TASKS) - len(IN_DOMAIN))
    return {"model": label, "stage": label, "seed": seed, "tasks": accs, "avg": sum(accs.values()) / len(accs),
            "in_domain": ind, "out_of_domain": out, "single": None, "predictions": rel, "bench": "data/test/mig_bench.json"}


A_OVER_B = Claim("test", "A beats B", (("A", "avg", 1), ("B", "avg", -1)), 1.0)


def test_a_clear_effect_holds_and_its_reverse_is_reported(tmp_path, bench):
    all_right = {t: PER_TASK for t in MIG_TASKS}
    rows = [_write_row(tmp_path, bench, "A", all_right), _write_row(tmp_path, bench, "B", {})]
    res = measure_claim("p", rows, A_OVER_B, n_boot=200)
    assert res["measured"] == 100.0 and res["ci"] == [100.0, 100.0] and res["verdict"] == "held"
    assert res["items"] == len(bench) and res["seed_se"] is None
    flipped = Claim("test", "B beats A", (("B", "avg", 1), ("A", "avg", -1)), 1.0)
    assert measure_claim("p", rows, flipped, n_boot=200)["verdict"] == "reversed"


def test_a_small_difference_on_few_items_is_within_the_noise(tmp_path, bench):
    rows = [_write_row(tmp_path, bench, "A", {"diff": 2, "region": 1}), _write_row(tmp_path, bench, "B", {"diff": 1})]
    res = measure_claim("p", rows, A_OVER_B, n_boot=500)
    assert res["measured"] == pytest.approx(100.0 * 2 / PER_TASK / 10, abs=0.005)  # two more items right, 1/6 of a task each
    assert res["ci"][0] <= 0 <= res["ci"][1] and res["verdict"] == "not shown (within the noise)"


def test_garbage_replies_score_zero_rather_than_crash(tmp_path, bench):
    rows = [_write_row(tmp_path, bench, "A", {t: 3 for t in MIG_TASKS}), _write_row(tmp_path, bench, "B", {}, garbage=True)]
    res = measure_claim("p", rows, A_OVER_B, n_boot=200)
    assert res["measured"] == 50.0 and res["verdict"] == "held"


def test_seed_spread_can_veto_an_effect_the_items_support(tmp_path, bench):
    """A right on every item in one seed and none in the other: the item bootstrap alone sees a sure +50,
    the seeds say it is noise."""
    rows = [
        _write_row(tmp_path, bench, "A", {t: PER_TASK for t in MIG_TASKS}, seed=0),
        _write_row(tmp_path, bench, "A", {}, seed=1),
        _write_row(tmp_path, bench, "B", {}, seed=0),
        _write_row(tmp_path, bench, "B", {}, seed=1),
    ]
    res = measure_claim("p", rows, A_OVER_B, n_boot=200)
    assert res["measured"] == 50.0 and res["ci"] == [50.0, 50.0]
    assert res["seed_se"] == 50.0 and res["seeds"] == {"A": 2, "B": 2}
    assert res["verdict"] == "not shown (within the noise)"


def test_the_out_of_domain_contrast_is_a_difference_of_differences(tmp_path, bench):
    out_tasks = [t for t in MIG_TASKS if t not in IN_DOMAIN]
    rows = [
        _write_row(tmp_path, bench, ablations.COT_GRPO, {**{t: 4 for t in IN_DOMAIN}, **{t: 5 for t in out_tasks}}),
        _write_row(tmp_path, bench, ablations.ANSWER_SFT, {**{t: 4 for t in IN_DOMAIN}, **{t: 1 for t in out_tasks}}),
    ]
    claim = next(c for c in ablations.CLAIMS if "out of domain" in c.text)
    res = measure_claim("p", rows, claim, n_boot=200)
    assert res["measured"] == pytest.approx(100.0 * 4 / PER_TASK, abs=0.005)  # out: +4 items per task, in: 0
    assert res["paper_value"] == pytest.approx(12.76 - 3.46, abs=0.01)


def test_a_claim_without_its_rows_is_not_measured(tmp_path, bench):
    rows = [_write_row(tmp_path, bench, "A", {})]
    res = measure_claim("p", rows, A_OVER_B)
    assert res["measured"] is None and "no rows for ['B']" in res["verdict"]
    assert set(res) == set(measure_claim("p", [*rows, _write_row(tmp_path, bench, "B", {})], A_OVER_B, n_boot=10))  # same fields


def test_a_row_without_predictions_is_named(tmp_path, bench):
    from mirg_lib.results import ResultsError

    rows = [_write_row(tmp_path, bench, "A", {}), {**_write_row(tmp_path, bench, "B", {}), "predictions": None}]
    with pytest.raises(ResultsError, match="'B'.*'predictions'"):
        measure_claim("p", rows, A_OVER_B)


def test_every_claim_names_arms_that_exist_and_every_grpo_arm_starts_from_one():
    for c in ablations.CLAIMS:
        assert all(a in ARMS_BY_LABEL for a, _, _ in c.terms), c.text
        assert sum(w for _, _, w in c.terms) == 0, c.text  # a contrast: a constant shift of every arm cancels
    for arm in ARMS:
        assert (arm.kind == "grpo") == bool(arm.init), arm.label
        assert not arm.init or ARMS_BY_LABEL[arm.init].kind != "grpo"
    assert len({a.eval_name or a.stage for a in ARMS}) == len(ARMS)  # no two arms share an eval folder
    trained = [a.stage for a in ARMS if a.kind != "base"]
    assert len(set(trained)) == len(trained)  # nor a model folder


def test_selected_arms_bring_their_starting_arms_in_table_order():
    arms = selected_arms(AblationsConfig(arms=[ablations.MIRG_NO_IMAGE, ablations.NO_COLD]))
    assert [a.label for a in arms] == [ablations.BASE, ablations.NO_COLD, ablations.MIRG_BBOX, ablations.MIRG_NO_IMAGE]
    assert len(selected_arms(AblationsConfig())) == len(ARMS)


@pytest.mark.parametrize("kw, msg", [
    ({"arms": ["no such arm"]}, "unknown arm"),
    ({"seeds": []}, "distinct"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"confidence": 1.0}, "confidence"),
])
def test_bad_ablation_settings_are_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        AblationsConfig(**kw)


def test_arm_overrides_touch_a_copy_and_seeds_get_their_own_folders():
    params = load_params("smoke")
    before = json.dumps(params.data, sort_keys=True)
    changed = ablations._with(params, {"grpo.recipe": "mirg", "grpo.rewards": {"mirg_format": 1.0}, "grpo.seed": 3})
    assert json.dumps(params.data, sort_keys=True) == before
    assert changed.data["grpo"]["rewards"] == {"mirg_format": 1.0} and changed.data["grpo"]["seed"] == 3
    assert changed.profile == params.profile
    arm = ARMS_BY_LABEL[ablations.COT_GRPO]
    assert ablations.arm_stage(arm, 0) == "grpo" and ablations.arm_stage(arm, 2) == "grpo_seed2"
    assert ablations.arm_stage(ARMS_BY_LABEL[ablations.BASE], 2) == "base_model"


def test_claims_on_the_single_image_test_and_the_readme_report(tmp_path, bench):
    from mirg_lib.config import Params
    from mirg_lib.results import write_results

    def with_single(row):  # the single-image files: here the same benchmark and predictions
        return {**row, "single": row["avg"], "single_predictions": row["predictions"], "single_bench": row["bench"], "paper": {"MIRG-RL T3": 60.6}}

    rows = [with_single(_write_row(tmp_path, bench, ablations.MIRG_BBOX_RL, {t: 3 for t in MIG_TASKS})),
            with_single(_write_row(tmp_path, bench, ablations.MIRG_NO_IMAGE, {}))]
    smoke = load_params("smoke")
    params = Params("p", smoke.files, {**smoke.data, "ablations": {"bootstrap": 100}})
    write_results("p", "ablations", rows, wall_s=60.0, seeds=[0])
    claims = ablations.measure_claims(params)
    image = [c for c in claims if c["claim"].startswith("the image reward")]
    assert [c["metric"] for c in image] == ["MIG-Bench", "single-image"]
    assert image[0]["measured"] == image[1]["measured"] == 50.0 and image[1]["paper_value"] is None
    assert not any(c["metric"] == "single-image" and "out of domain" in c["claim"] for c in claims)
    text = ablations.report("p")
    assert "**MIRG-RL T3**" in text and "| reasoning+grounding SFT + GRPO | 60.6 | 50.0 |" in text
    line = next(x for x in text.splitlines() if "the image reward helps" in x and "MIG-Bench" in x)
    lo, hi = image[0]["ci"]
    assert 0 < lo < 50 < hi and line == f"| MIRG-RL | the image reward helps (text: +4.31) | MIG-Bench | 4.31 | 50.0 | [{lo}, {hi}] | - | held |"
    assert "wall time 1.0 min" in text


def test_notebook_03_trains_the_variants_the_selected_rows_need():
    from mirg_lib.ablations import COT_GRPO, MIRG_TEXT_RL, NO_COLD, sft_variants
    from mirg_lib.config import load_params

    assert sft_variants(load_params("smoke")) == ["zhang", "answer", "mirg_text", "mirg_bbox"]
    assert sft_variants(load_params("smoke", {"ablations.arms": [COT_GRPO, NO_COLD]})) == ["zhang"]
    assert sft_variants(load_params("smoke", {"ablations.arms": [MIRG_TEXT_RL]})) == ["zhang", "mirg_text"]
