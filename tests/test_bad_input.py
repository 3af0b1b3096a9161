"""Inputs found by fuzzing: any reply gets its rewards and scores in time linear in its length and never
raises; any bad input file is a RecordError naming the file, the index or line, and the field."""

import dataclasses
import json
import math
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirg_lib import parsing
from mirg_lib.formats import MigRecord, RecordError, load_mgrounding, load_mig_bench
from mirg_lib.parsing import parse_response, parse_trajectory
from mirg_lib.rewards import RECIPE_REWARDS, REWARD_FUNCS, total_reward
from mirg_lib.scoring import Prediction, load_predictions, predicted_box, score_item

GT = [0.2, 0.2, 0.4, 0.4]
RECORD = MigRecord("group_grounding", ["a", "b", "c"], "q", GT, "It is in the first image.", True, 0)


def every_reward_and_score(text: str) -> list[float]:
    """Every reward of both recipes (plain and conversational completions), and both protocols' IoU."""
    kw = {"answer": [GT, GT], "target_image": [1, 1]}
    comps = [text, [{"role": "assistant", "content": text}]]
    out: list[float] = []
    for weights in RECIPE_REWARDS.values():
        for name in weights:
            out += REWARD_FUNCS[name](comps, **kw)
        out += total_reward(weights, comps, **kw)
    for protocol in ("migician", "lenient"):
        out.append(score_item(RECORD, Prediction(0, text), protocol).iou)
    return out


def _check(values: list[float]) -> None:
    assert all(isinstance(v, float) and math.isfinite(v) and v >= 0.0 for v in values)


# ---- huge numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [309, 400, 4300, 5000, 20000])
def test_a_huge_json_integer_is_no_coordinate_and_no_crash(digits):
    big = "9" * digits
    text = f'<think>t</think><answer>{{"bbox_2d": [{big}, 0, 300, 400], "label": "x"}}</answer>'
    values = every_reward_and_score(text)
    _check(values)
    assert values[:4] == [0.0, 0.0, 0.0, 0.0]  # zhang accuracy and format, both completions
    assert values[-2:] == [0.0, 0.0]  # both protocols' IoU
    p = parse_response(text)
    assert p.box is not None and p.box.values[0] == math.inf  # as 1e999 reads: never a finite coordinate
    for protocol in ("migician", "lenient"):
        got = predicted_box(Prediction(0, text), protocol)
        assert got is None or not all(map(math.isfinite, got))


@pytest.mark.parametrize("digits", [10, 4301, 10000])
def test_a_huge_bbox_id_names_no_image(digits):
    big = "7" * digits
    text = f"<think>t</think><answer><bbox_id>[{big}-1]</bbox_id> in the first image <|box_start|>(200,200),(400,400)<|box_end|></answer>"
    _check(every_reward_and_score(text))
    p = parse_response(text)
    assert p.image_index is None  # the first naming names nothing, as a number that large never could
    assert parse_trajectory(text) == []
    assert REWARD_FUNCS["mirg_image"]([text], target_image=[1])[0] == 0.0
    ok = text.replace(big, "0001")
    assert parse_response(ok).image_index == 1 and parse_trajectory(ok)[0].image == 1


# ---- time linear in the length --------------------------------------------------------------------

FRAGMENTS = [
    "<think>", "<answer>", "<think><answer>", "</think><answer>", '{"bbox_2d": [', "<bbox_id>[", "<bbox_id> ", "<bbox_id>[1-",
    "1", "9" * 50, " ", "<|box_start|>(", "<|box_start|>(1,1),(2,2)<|box_end|>", "[1,2,3,4]", "(1,1),(2,2)", "[1.5, ",
    '{"a":', '{"a": "', '{"bbox_2d": [1,2,3,4]}', "<bbox_id>[1-1]</bbox_id><|object_ref_start|>", "<box>1 ", "first ",
    "image-", "(1, ", "<|object_ref_start|>",
]


def _repeat(unit: str, n: int) -> str:
    return (unit * (n // len(unit) + 1))[:n]


def _seconds(text: str, repeats: int = 1) -> float:
    """The best of ``repeats`` timings of every reward and score, each with the parse cache empty."""
    best = math.inf
    for _ in range(repeats):
        parsing._parse_text.cache_clear()
        t0 = time.perf_counter()
        _check(every_reward_and_score(text))
        best = min(best, time.perf_counter() - t0)
    return best


def _assert_linear(unit: str) -> None:
    """100 kB of ``unit`` repeated takes at most 20 times as long as 10 kB (quadratic would be 100 times;
    the constant covers the bounded work, such as 256 JSON candidates, and noise), and under a second."""
    t10 = _seconds(_repeat(unit, 10_000), repeats=3)
    bound = min(1.0, 20 * t10 + 0.05)
    t100 = _seconds(_repeat(unit, 100_000))
    if t100 >= bound:  # a busy machine: measure again before judging
        t100 = min(t100, _seconds(_repeat(unit, 100_000), repeats=2))
    assert t100 < bound, (unit, t10, t100)


@pytest.mark.parametrize("unit", FRAGMENTS)
def test_adversarial_replies_take_linear_time(unit):
    _assert_linear(unit)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS + ["</think>", "</answer>", "-1]</bbox_id>", ",", "0.5", "]", ")", "}"]), min_size=1, max_size=6))
def test_mixed_fragment_replies_take_linear_time(units):
    _assert_linear("".join(units))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join), st.text(max_size=20))
def test_fragment_mixes_never_raise(text, noise):
    _check(every_reward_and_score(text + noise))


def test_the_parse_cache_shares_only_frozen_results():
    text = "<think>a</think><answer>[1, 2, 3, 4]</answer>"
    parsing._parse_text.cache_clear()
    first = parse_response(text)
    assert parse_response(text) is first  # the rewards of one batch parse a completion once
    parsing._parse_text.cache_clear()
    again = parse_response(text)
    assert again == first and again is not first
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.box = None  # type: ignore[misc]


# ---- bad files ------------------------------------------------------------------------------------

MIG = {"task": "diff", "images": ["a.png", "b.png"], "question": "Q", "answer": [0.1, 0.2, 0.3, 0.4], "additional_info": "", "need_format": True}
MG = {
    "id": "x1",
    "images": ["a.png"],
    "conversations": [{"from": "human", "value": "<image>\nWhere?"}, {"from": "gpt", "value": "(1,2),(3,4)"}],
    "type": "diff",
}
PRED = {"index": 0, "response": "x"}


def _json_list(good: dict, bad_text: str) -> str:
    """A list of three records, the middle one (index 1, on line 3) ``bad_text``."""
    return "[\n" + json.dumps(good) + ",\n" + bad_text + ",\n" + json.dumps(good) + "\n]\n"


def _jsonl(good: dict, bad_text: str) -> str:
    """Three lines, the middle one (line 2) ``bad_text``."""
    return json.dumps(good) + "\n" + bad_text + "\n" + json.dumps(dict(good, index=2)) + "\n"


READERS = {  # reader, a good record, the file's layout, where its middle record is, a string field
    "mig_bench": (load_mig_bench, MIG, _json_list, "index 1", "question"),
    "mgrounding": (load_mgrounding, MG, _json_list, "index 1", "id"),
    "predictions": (load_predictions, PRED, _jsonl, "line 2", "response"),
}


def _bad(good: dict, kind: str) -> str:
    text = json.dumps(good)
    if kind == "duplicate key":
        return text[:-1] + ', "' + next(iter(good)) + '": 1}'
    if kind == "huge integer":
        return text[:-1] + ', "extra": ' + "1" * 5000 + "}"
    if kind == "deep nesting":
        return text[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    if kind == "syntax":
        return text[:-1] + ', "extra": tru}'
    raise AssertionError(kind)


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("kind", ["duplicate key", "huge integer", "deep nesting", "syntax"])
def test_every_reader_names_file_and_place_of_a_bad_value(tmp_path, reader, kind):
    load, good, layout, where, _ = READERS[reader]
    path = tmp_path / "input.data"
    path.write_text(layout(good, _bad(good, kind)))
    with pytest.raises(RecordError) as e:
        load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}, {where}"), msg
    if kind == "duplicate key":
        assert e.value.field == next(iter(good)) and "duplicate key" in msg
    if kind == "huge integer":
        assert "5000 digits" in msg
    if reader != "predictions":  # a JSON list: the record's index, and the line it starts on
        assert "line 3" in msg, msg
    path.write_text(layout(good, json.dumps(good if reader != "predictions" else dict(good, index=1))))
    assert len(load(path)) == 3  # the same file, well formed: every record read


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_refuses_a_directory_and_non_utf8(tmp_path, reader):
    load, good, layout, _, text_field = READERS[reader]
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(RecordError, match=rf"^{re.escape(str(folder))}: is a directory, not a file$"):
        load(folder)
    path = tmp_path / "latin1.json"
    middle = dict(good, **{text_field: "caf\xe9"}, **({"index": 1} if reader == "predictions" else {}))
    path.write_bytes(layout(good, json.dumps(middle, ensure_ascii=False)).encode("latin-1"))
    with pytest.raises(RecordError, match=rf"^{re.escape(str(path))}, line 3: not UTF-8 text \(byte 0xe9" if reader != "predictions"
                       else rf"^{re.escape(str(path))}, line 2: not UTF-8 text \(byte 0xe9"):
        load(path)
    path.write_bytes(layout(good, json.dumps(middle, ensure_ascii=False)).encode("utf-8"))
    assert len(load(path)) == 3
    with pytest.raises(FileNotFoundError, match="nope"):
        load(tmp_path / "nope.json")


def test_json_list_structure_errors_name_the_line(tmp_path):
    path = tmp_path / "b.json"
    for text, says in [
        ("[\n" + json.dumps(MIG) + "\n" + json.dumps(MIG) + "\n]", r"b\.json, line 3: not valid JSON \(expected ',' or '\]' after index 0\)"),  # a missing comma
        ("[" + json.dumps(MIG) + "] []", "extra data after the list"),
        ("[" + json.dumps(MIG) + ",]", r"index 1, line 1: not valid JSON \(Expecting value"),
        ('{"a": 1, "a": 2}', r"b\.json, field 'a': duplicate key"),
    ]:
        path.write_text(text)
        with pytest.raises(RecordError, match=says):
            load_mig_bench(path)
    path.write_text(" [ ] ")
    assert load_mig_bench(path) == []
