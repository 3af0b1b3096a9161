"""The papers' other benchmarks drawn by the embedded world (mirg_lib/world/analogues.py): well-posed items in
the published layouts, read back by mirg_lib.benchmarks' readers, and scored 100 when answered right."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mirg_lib import benchmarks
from mirg_lib.boxes import Box, Frame, format_box_tokens
from mirg_lib.world.analogues import ANALOGUES, draw, write_analogues
from mirg_lib.world.tasks import WorldKnobs

KNOBS = WorldKnobs(image_size=112, objects_per_image=(3, 5), object_grid=14)


@pytest.mark.parametrize("name", ANALOGUES)
def test_every_analogue_is_deterministic_in_its_seed(name):
    a, b = draw(name, 7, KNOBS), draw(name, 7, KNOBS)
    assert a.record == b.record and [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]
    assert [im.tobytes() for im in draw(name, 8, KNOBS).images] != [im.tobytes() for im in a.images]


def test_counting_items_have_one_right_count_among_distinct_choices_at_any_place():
    places = []
    for seed in range(200):
        d = draw("blink_counting", seed, KNOBS)
        choices = [int(c) for c in d.record["choices"]]
        assert len(set(choices)) == 4 and min(choices) >= 0
        assert choices["ABCD".index(d.record["answer"][1])] == d.record["count"] >= 1
        assert 2 <= len(d.images) <= 3 and "crosss" not in d.record["question"]
        places.append(d.record["answer"])
    assert all(25 <= places.count(f"({c})") <= 75 for c in "ABCD"), {c: places.count(f"({c})") for c in "ABCD"}  # no letter gives it away


def test_a_correspondence_letter_sits_inside_the_box_it_marks():
    from mirg_lib.world.analogues import letter_spot

    box = (28.0, 42.0, 70.0, 84.0)
    (x1, y1, x2, y2), corner = letter_spot(box)
    assert box[0] < x1 < x2 < box[2] and box[1] < y1 < y2 < box[3] and x1 <= corner[0] < x2 and y1 <= corner[1] < y2


def test_the_correspondence_letters_four_boxed_objects_one_of_them_the_first_images():
    for seed in range(20):
        d = draw("blink_correspondence", seed, KNOBS)
        assert d.record["choices"] == ["Point A", "Point B", "Point C", "Point D"] and d.record["answer"] in ("(A)", "(B)", "(C)", "(D)")
        red = [int(((np.asarray(im) == (255, 0, 0)).all(axis=-1)).sum()) for im in d.images]
        assert 0 < red[0] < red[1]  # one box in the first image, four boxes and their letters in the second


def test_the_spatial_shift_moves_every_object_one_way_inside_the_image():
    answers = []
    for seed in range(40):
        d = draw("mmiu_spatial", seed, KNOBS)
        options = [line.split(": ", 1)[1] for line in d.record["context"].splitlines()[1:]]
        assert sorted(options) == ["down", "left", "right", "up"] and len(d.images) == 2
        way = options["ABCD".index(d.record["output"])]
        dx, dy = d.record["shift"]
        assert {"left": dx < 0 == dy, "right": dx > 0 == dy, "up": dy < 0 == dx, "down": dy > 0 == dx}[way]
        answers.append(way)
    assert set(answers) == {"down", "left", "right", "up"}


def test_the_reasoning_target_and_the_image_search_have_one_answer():
    for seed in range(30):
        r = draw("lisa", seed, KNOBS).record
        assert r["problem"].startswith("Which object has the same colour as the ") and len(r["solution"]) == 4
        m = draw("mmiu", seed, KNOBS).record
        n = m["context"].count("\n")
        assert m["output"] in "ABCD"[:n] and m["question"].startswith("Which image shows the ")


def test_the_long_expression_and_the_single_frame_object_name_one_object():
    rng = random.Random(0)
    for seed in rng.sample(range(10_000), 30):
        d = draw("ref_l4", seed, KNOBS)
        x, y, w, h = d.record["bbox"]
        assert w > 0 and h > 0 and x + w <= 112 and y + h <= 112 and len(d.record["caption"].split()) >= 8
        r = draw("revos", seed, KNOBS).record
        assert sum(b is not None for b in r["bbox_list"]) == 1 and 3 <= len(r["bbox_list"]) <= 4


def test_written_analogues_read_back_and_score_100_when_answered_right(tmp_path):
    paths = write_analogues(tmp_path, 6, 0, KNOBS)
    assert set(paths) == {"blink", "ref_l4", "lisa", "revos", "odinw", "mmiu"}
    _, blink = benchmarks.read(paths["blink"], "blink")
    assert {it.subtask for it in blink} == {"Counting", "Visual_Similarity", "Visual_Correspondence"} and len(blink) == 18
    res = benchmarks.score("blink", blink, [f"<answer>{it.answer}</answer>" for it in blink])
    assert res["avg"] == 100.0 and res["undecidable"] == 0
    assert benchmarks.score("blink", blink, ["(Z)"] * len(blink))["avg"] == 0.0
    _, mmiu = benchmarks.read(paths["mmiu"])
    res = benchmarks.score("mmiu", mmiu, [f"Answer: {it.answer}" for it in mmiu])
    assert res["avg"] == 100.0 and res["types"] == {"high-level semantic (objective)": 100.0, "two-dimensional spatial": 100.0}
    search = [it for it in mmiu if it.subtask == "text2image_retrieval"]
    assert len(search) == 6 and all(2 <= len(it.choices) == len(it.images) <= 4 for it in search)
    for name in ("ref_l4", "lisa", "revos"):
        got, items = benchmarks.read(paths[name])
        assert got == name and len(items) == 6
        right = [format_box_tokens(Box(*it.answer, frame=Frame.REL1).to(Frame.REL1000).rounded()) for it in items]
        assert benchmarks.score(name, items, right)["all"]["acc@0.5"] == 100.0
    name, odinw = benchmarks.read(paths["odinw"], "odinw")
    replies = [" ".join(format_box_tokens(Box(*b.coords, frame=Frame.ABS, size=it.size).to(Frame.REL1000).rounded()) for b in it.boxes) for it in odinw]
    res = benchmarks.score("odinw", odinw, replies)
    assert set(res["subtasks"]) == {"Shapes", "Colours"} and all(v["ap50"] == pytest.approx(100.0) for v in res["subtasks"].values())
    assert res["avg"] > 90
    again = tmp_path / "again"
    write_analogues(again, 6, 0, KNOBS)
    assert (again / "ref_l4" / "ref-l4-val.json").read_bytes() == (tmp_path / "ref_l4" / "ref-l4-val.json").read_bytes()
