import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirg_lib.formats import MigRecord, RecordError
from mirg_lib.io import write_jsonl
from mirg_lib.scoring import (
    Prediction,
    ground_truth_predictions,
    load_predictions,
    migician_auto_scale,
    migician_raw_boxes,
    score,
    score_files,
)


def _preds(rows):
    return {r["index"]: Prediction(r["index"], r["response"], task=r.get("task")) for r in rows}


def test_ground_truth_scores_100_on_every_real_task(real_mig):
    s = score(real_mig, _preds(ground_truth_predictions(real_mig)))
    assert len(s["tasks"]) == 10
    assert all(v["acc"] == 100.0 for v in s["tasks"].values())
    assert s["avg"] == 100.0 and s["in_domain"] == 100.0 and s["out_of_domain"] == 100.0
    assert s["missing"] == 0 and s["unparseable"] == 0 and s["gt_reordered"] == 5 and s["gt_clipped"] == 2
    assert s["image_aware"]["group_grounding"]["acc"] == 100.0


def test_shifted_boxes_drop_as_iou_predicts(real_mig):
    # a box shifted by s of its width has IoU (1 - s) / (1 + s): 0.6 at s = 0.25, 0.38 at s = 0.45
    s25 = score(real_mig, _preds(ground_truth_predictions(real_mig, 0.25)))
    s45 = score(real_mig, _preds(ground_truth_predictions(real_mig, 0.45)))
    assert s25["avg"] == 100.0
    assert s45["avg"] == 0.0 and all(v["acc"] == 0.0 for v in s45["tasks"].values())
    # half the records shifted: each task loses exactly its shifted share
    rows = ground_truth_predictions(real_mig)
    shifted = ground_truth_predictions(real_mig, 0.45)
    mixed = [shifted[i] if i % 2 else rows[i] for i in range(len(rows))]
    s = score(real_mig, _preds(mixed))
    for task, v in s["tasks"].items():
        idx = [r.index for r in real_mig if r.task == task]
        assert v["correct"] == sum(1 for i in idx if i % 2 == 0), task


def test_missing_and_unparseable_count_as_wrong(real_mig):
    rows = ground_truth_predictions(real_mig)
    preds = _preds(rows[:100])
    preds[0] = Prediction(0, "I cannot tell.")
    s = score(real_mig, preds)
    assert s["missing"] == len(real_mig) - 100 and s["unparseable"] == 1
    assert s["tasks"]["common_object"]["correct"] == 99


def test_migician_parsing_rules():
    assert migician_raw_boxes("a (1, 2),(3,4) then [0.1, 0.2, 0.3, 0.4]") == [(1, 2, 3, 4)]
    assert migician_raw_boxes("[0.1, 0.2, 0.3, 0.4]") == [(0.1, 0.2, 0.3, 0.4)]
    assert migician_raw_boxes("[100, 200, 300, 400]") == [(100, 200, 300, 400)]
    assert migician_raw_boxes("<box>1 2 3 4</box>") == [(1, 2, 3, 4)]
    assert migician_raw_boxes("[0, 0.5, 0.3, 1]") == []  # mixed ints and floats: Migician reads nothing
    # per-value scaling: >= 1 with one box, > 1 with several (Migician's own quirk)
    assert migician_auto_scale([(0.5, 1.0, 500, 900)]) == (0.5, 0.001, 0.5, 0.9)
    assert migician_auto_scale([(0.5, 1.0, 500, 900), (1, 1, 1, 1)]) == (0.5, 1.0, 0.5, 0.9)


def _rec(i, task, answer, info=""):
    return MigRecord(task, ["a", "b", "c"], "q", answer, info, True, i)


def test_answer_block_frames_and_image_aware_group_grounding():
    recs = [
        _rec(0, "diff", [0.1, 0.1, 0.5, 0.5]),
        _rec(1, "group_grounding", [0.2, 0.2, 0.4, 0.4], "It is in the third image. <|box_start|>(200,200),(400,400)<|box_end|>. "),
        _rec(2, "group_grounding", [0.2, 0.2, 0.4, 0.4], "It is in the third image. ..."),
        _rec(3, "region", [0.1, 0.1, 0.5, 0.5]),
    ]
    preds = {
        # the reasoning's box is not the answer
        0: Prediction(0, "<think>(0,0),(999,999)</think><answer>(100,100),(500,500)</answer>"),
        1: Prediction(1, "It's in the third image. <|box_start|>(200,200),(400,400)<|box_end|>"),
        2: Prediction(2, "It's in the first image. <|box_start|>(200,200),(400,400)<|box_end|>"),
        # Qwen2.5-VL: pixels of a 200x100 resized input
        3: Prediction(3, '{"bbox_2d": [20, 10, 100, 50]}', frame="abs", image_size=(200, 100)),
    }
    s = score(recs, preds)
    assert s["tasks"]["diff"]["acc"] == 100.0 and s["tasks"]["region"]["acc"] == 100.0
    assert s["tasks"]["group_grounding"]["acc"] == 100.0
    assert s["image_aware"]["group_grounding"] == {"acc": 50.0, "correct": 1, "total": 2, "image_acc": 50.0}
    assert s["in_domain"] == 100.0 and s["out_of_domain"] == 100.0
    # read as Migician's auto frame the pixel box is a different box: wrong
    preds[3] = Prediction(3, '{"bbox_2d": [20, 10, 100, 50]}')
    assert score(recs, preds)["tasks"]["region"]["acc"] == 0.0
    assert score(recs, preds, protocol="lenient")["tasks"]["region"]["acc"] == 0.0


def test_prediction_file_errors(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"index": 0, "response": "x"}\n{"index": "1", "response": "y"}\n')
    with pytest.raises(RecordError, match=r"p\.jsonl, line 2, field 'index'"):
        load_predictions(p)
    p.write_text('{"index": 0, "response": "x", "frame": "abs"}\n')
    with pytest.raises(RecordError, match="image_size"):
        load_predictions(p)
    p.write_text('{"index": 0, "response": "x"}\n{"index": 0, "response": "y"}\n')
    with pytest.raises(RecordError, match="duplicate"):
        load_predictions(p)
    p.write_text('{"index": 0, "response": 5}\n')
    with pytest.raises(RecordError, match="'response'"):
        load_predictions(p)
    with pytest.raises(ValueError, match="do not exist"):
        score([_rec(0, "diff", [0.1, 0.1, 0.5, 0.5])], {7: Prediction(7, "x")})
    with pytest.raises(ValueError, match="says task"):
        score([_rec(0, "diff", [0.1, 0.1, 0.5, 0.5])], {0: Prediction(0, "x", task="region")})


def test_cli_prints_one_json_object(real_mig_file, tmp_path):
    from mirg_lib.formats import load_mig_bench

    preds = tmp_path / "gt.jsonl"
    write_jsonl(preds, ground_truth_predictions(load_mig_bench(real_mig_file), 0.0))
    out = subprocess.run(
        [sys.executable, "-m", "mirg_lib", "score", "--benchmark", str(real_mig_file), "--predictions", str(preds)],
        capture_output=True, text=True, check=True,
    )
    s = json.loads(out.stdout)
    assert s["avg"] == 100.0 and set(s["tasks"]) == set(json.loads(json.dumps(s["tasks"])))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    out = subprocess.run([sys.executable, "-m", "mirg_lib", "score", "--benchmark", str(real_mig_file), "--predictions", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "bad.jsonl, line 1: not valid JSON" in out.stderr


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["auto", "rel1", "rel1000", "abs"]), st.sampled_from(["migician", "lenient"]))
def test_any_reply_gets_a_score(text, frame, protocol):
    recs = [_rec(0, "group_grounding", [0.2, 0.2, 0.4, 0.4], "It is in the third image. ")]
    size = (100, 80) if frame == "abs" else None
    for body in (text, '{"bbox_2d": [NaN, Infinity, 1, 2]}', '{"bbox_2d": [NaN, NaN, Infinity, Infinity]}', "[1e999, 2, 3, 4]", "(0,0),(0,0)"):
        s = score(recs, {0: Prediction(0, body, frame=frame, image_size=size)}, protocol=protocol)
        assert 0.0 <= s["tasks"]["group_grounding"]["mean_iou"] <= 1.0


@pytest.mark.parametrize("threshold", [0, 0.0, -0.5, 1.0001, 2, float("nan"), float("inf"), True, "0.5", None])
def test_a_threshold_outside_0_1_is_refused(threshold, tmp_path):
    recs = [_rec(0, "diff", [0.1, 0.1, 0.5, 0.5])]
    garbage = {0: Prediction(0, "no box here")}
    with pytest.raises(ValueError, match="IoU threshold must lie in"):
        score(recs, garbage, threshold=threshold)
    with pytest.raises(ValueError, match="IoU threshold must lie in"):
        score_files(tmp_path / "never-read.json", tmp_path / "never-read.jsonl", threshold=threshold)
    assert score(recs, garbage, threshold=1.0)["avg"] == 0.0
    assert score(recs, {0: Prediction(0, "(100,100),(500,500)")}, threshold=1)["avg"] == 100.0


def test_cli_threshold_and_bad_files_exit_2_naming_the_file(real_mig_file, tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"index": 0, "response": "x"}\n')
    run = [sys.executable, "-m", "mirg_lib", "score", "--benchmark", str(real_mig_file), "--predictions", str(preds)]
    out = subprocess.run([*run, "--threshold", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "error: IoU threshold must lie in (0, 1], got 0.0" in out.stderr
    preds.write_bytes(b'{"index": 0, "response": "x"}\n{"index": 1, "response": "\xff"}\n')
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 2 and f"error: {preds}, line 2: not UTF-8 text" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([*run[:5], str(tmp_path), *run[6:]], capture_output=True, text=True)
    assert out.returncode == 2 and f"error: {tmp_path}: is a directory, not a file" in out.stderr


def test_prediction_task_and_size_checks(tmp_path):
    recs = [_rec(0, "diff", [0.1, 0.1, 0.5, 0.5])]
    assert score(recs, {0: Prediction(0, "(100,100),(500,500)", task=" Diff ")})["avg"] == 100.0
    p = tmp_path / "p.jsonl"
    for text, says in [
        ('{"index": 0, "response": "x", "frame": "abs", "image_size": [640, ' + "9" * 400 + "]}\n", r"p\.jsonl, line 1, field 'image_size'"),
        ('\n{"index": ' + "9" * 5000 + ', "response": "x"}\n', r"p\.jsonl, line 2: an integer of 5000 digits"),
        ('{"index": 0, "response": "x"} {"index": 1}\n', r"p\.jsonl, line 1: not valid JSON \(extra data"),
        ('{"index": 0, "response": "x", "response": "y"}\r\n\r\n{"index": 1, "response": "x"}\r\n', r"p\.jsonl, line 1, field 'response': duplicate key"),
    ]:
        p.write_text(text)
        with pytest.raises(RecordError, match=says):
            load_predictions(p)
    p.write_text('{"index": 0, "response": "x"}\r\n\r\n{"index": 1, "response": "a\u2028b"}\r\n')
    assert sorted(load_predictions(p)) == [0, 1] and load_predictions(p)[1].response == "a\u2028b"


def test_a_task_name_with_spaces_is_no_extra_task(tmp_path):
    from mirg_lib.formats import load_mig_bench

    rec = {"images": ["a.png", "b.png"], "question": "Q", "answer": [0.1, 0.1, 0.5, 0.5], "additional_info": "", "need_format": True}
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps([dict(rec, task="diff"), dict(rec, task="diff "), dict(rec, task="region")]))
    preds = tmp_path / "p.jsonl"
    write_jsonl(preds, [{"index": 0, "response": "(100,100),(500,500)"}, {"index": 1, "task": "diff ", "response": "(100,100),(500,500)"}])
    s = score_files(bench, preds)
    assert list(s["tasks"]) == ["diff", "region"] and s["tasks"]["diff"]["correct"] == 2 and s["avg"] == 50.0
    assert [r.task for r in load_mig_bench(bench)] == ["diff", "diff", "region"]


def test_caption_scores_count_objects_named_and_boxed(tmp_path):
    """multi_describe replies: the ground truth scores 100 in both forms (boxed captions, a listing in words); a
    wrong word, a box off its object, a missing caption or name each cost exactly what they should; anything
    else is a reply that names nothing."""
    from mirg_lib.items import load_bench_items
    from mirg_lib.scoring import caption_scores
    from mirg_lib.world import DataConfig
    from mirg_lib.world.build import heldout_bench

    cfg = DataConfig(image_size=112, object_grid=14)
    bench, _ = heldout_bench(cfg, "multi_describe", tmp_path / "held", 8)
    items = load_bench_items(bench)
    truth = [_answer(cfg, i) for i in range(8)]
    assert {it.scene["meta"]["form"] for it in items} == {"boxed", "list"}
    assert caption_scores(items, truth) == {"objects": 100.0, "boxed": 100.0, "count": 100.0, "exact": 100.0}
    n_objects = sum(len(it.scene["images"][it.target_image - 1]["objects"]) for it in items)
    one_less = round(100 * (n_objects - 1) / n_objects, 1)
    for i in (next(k for k, it in enumerate(items) if it.scene["meta"]["form"] == f) for f in ("boxed", "list")):
        def but(reply, i=i):
            return caption_scores(items, [reply if k == i else t for k, t in enumerate(truth)])

        if items[i].scene["meta"]["form"] == "boxed":
            first = truth[i].split(", ")
            got = but(", ".join([first[0].replace("<|object_ref_start|>the ", "<|object_ref_start|>the purple-ish ", 1), *first[1:]]))
            assert got["objects"] == one_less and got["exact"] == round(700 / 8, 1) and got["boxed"] == 100.0
            dropped = but(", ".join(first[1:]))
            assert dropped["count"] == round(700 / 8, 1) and dropped["objects"] == one_less
            far = first[0][: first[0].index("<|box_start|>")] + "<|box_start|>(999,999),(1000,1000)<|box_end|>"
            moved = but(", ".join([far, *first[1:]]))
            assert moved["boxed"] < 100.0 and moved["objects"] == one_less and moved["count"] == 100.0
        else:
            head, names = truth[i].rstrip(".").split(": ", 1)
            names = names.split(", ")
            assert but(f"{head}: " + ", ".join(["the purple-ish thing", *names[1:]]) + ".")["objects"] == one_less
            dropped = but(f"{head}: " + ", ".join(names[1:]) + ".")
            assert dropped["count"] == round(700 / 8, 1) and dropped["objects"] == one_less and dropped["boxed"] == 100.0
            other = items[i].target_image % len(items[i].scene["images"]) + 1  # the right names, said of another image
            wrong = but(f"Image {other}: " + ", ".join(names) + ".")
            assert wrong["objects"] < one_less and wrong["exact"] == round(700 / 8, 1)
            assert but(f"Image {other}: the x. {truth[i]}") == but(truth[i])  # the named image's listing counts
    assert caption_scores(items, ["", "x" * 100_000, "<|object_ref_start|>" * 5000, "Image 1: " * 5000, *truth[4:]])["count"] == 50.0


def _answer(cfg, i):
    from mirg_lib.world import generate
    from mirg_lib.world.build import sample_seed

    return generate("multi_describe", sample_seed(cfg.seed, "heldout", "multi_describe", i), cfg.knobs()).answer_text()
