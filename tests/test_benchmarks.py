"""The evaluation layer's benchmarks (mirg_lib/benchmarks): the letter a reply chose, multiple-choice scoring, and
the readers of BLINK's and MMIU's published layouts, with made-up images and malformed records."""

from __future__ import annotations

import io
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mirg_lib import benchmarks
from mirg_lib.benchmarks import blink, mmiu
from mirg_lib.benchmarks.choice import ChoiceItem, answer_text, extract_letter, score_choices
from mirg_lib.formats import MissingImageError, RecordError

OPTIONS = ["red", "blue", "green", "yellow"]


# ----------------------------------------------------------------------------------------------- the letter


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("(b)", "B"),
        ("  C. ", "C"),
        ("[D]", "D"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("answer:C", "C"),
        ("Final Answer - B", "B"),
        ("The correct option is (D)", "D"),
        ("I choose option C.", "C"),
        ("(A) red, because it is on the left", "A"),
        ("A. red", "A"),
        ("It must be (B), the blue one.", "B"),
        ("blue", "B"),
        ("Yellow.", "D"),
        ("the answer is B. Wait, no: the answer is C", "C"),  # the last statement is the final one
        ("Answer: (A)\n\nExplanation: (B) is wrong", "A"),  # an explicit statement beats a stray letter
        ("The answer is B because the cube is closer.", "B"),
        ("Answer: A\n\nExplanation: the red one is nearer.", "A"),
        ("The answer is C\n\nBecause it is round.", "C"),
        ("The answer is **C**", "C"),  # markdown emphasis
        ("A. red\nB. blue\nC. green\nD. yellow\nThe answer is C", "C"),
        # after a <think> block: the <answer> block, else what follows the thought
        ("<think>A looks right, or maybe (B)</think><answer>C</answer>", "C"),
        ("<think>(A) or (B)?</think>\nThe answer is D", "D"),
        ("<think>(A) or (B)?</think><answer>The answer is (B)</answer>", "B"),
        ("<answer>(B)", "B"),  # an answer block cut off before it closed
    ],
)
def test_the_letter_a_reply_chose(reply, letter):
    assert extract_letter(reply, OPTIONS) == letter


@pytest.mark.parametrize(
    "reply",
    [
        "Options (A) and (B) both fit",  # two letters: undecidable
        "(A) or (C)",
        "the answer is a red cube",  # the article is no letter
        "answer is Blue",  # nor the first letter of a word
        "The answer is E",  # no option E among four
        "<think>it is clearly (A)",  # a thought cut off before any answer
        "<think>(A)</think>",  # nothing after the thought
        "<answer>The answer is blue and green</answer>",
        "",
        "   ",
        "I cannot tell from these images.",
        "A. red\nB. blue\nC. green\nD. yellow",  # the options repeated, none chosen
        "Answer: I think it is hard to tell",  # 'I' the pronoun, not option I (there are only four here anyway)
    ],
)
def test_undecidable_replies_get_no_letter(reply):
    assert extract_letter(reply, OPTIONS) is None


def test_non_text_replies_get_no_letter():
    assert extract_letter(None, OPTIONS) is None
    assert extract_letter(3, OPTIONS) is None
    assert answer_text(b"B") == ""


def test_only_the_items_options_are_letters():
    assert extract_letter("C", ["yes", "no"]) is None
    assert extract_letter("B", ["yes", "no"]) == "B"
    assert extract_letter("no", ["yes", "no"]) == "B"


_PIECES = [*"ABCDEIabcde()[]<>/:.* \n", "answer", "<think>", "</think>", "<answer>", "</answer>", "option", "choose", " is "]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=400).map("".join))
def test_any_text_gets_a_letter_or_none_never_an_error(text):
    assert extract_letter(text, OPTIONS) in (None, "A", "B", "C", "D")


@pytest.mark.parametrize("junk", ["(" * 200_000, "answer " * 40_000, "<think>" * 30_000 + "</think>" * 30_000, "A" * 200_000, "answer is (" * 30_000])
def test_long_broken_replies_are_read_in_linear_time(junk):
    t = time.perf_counter()
    extract_letter(junk, OPTIONS)
    extract_letter(junk + " (B)", OPTIONS)
    assert time.perf_counter() - t < 2.0


def test_scores_average_over_subtasks_and_count_the_undecidable_apart():
    items = [
        ChoiceItem("c/0", "Counting", ["a.png"], "How many?", ["1", "2", "3"], "A"),
        ChoiceItem("c/1", "Counting", ["a.png"], "How many?", ["1", "2", "3"], "B"),
        ChoiceItem("c/2", "Counting", ["a.png"], "How many?", ["1", "2", "3"], "C"),
        ChoiceItem("j/0", "Jigsaw", ["a.png", "b.png"], "Which piece?", ["left", "right"], "B"),
    ]
    res = score_choices(items, ["(A)", "The answer is A", "(A) or (C)", "<think>...</think><answer>B</answer>"])
    assert res["subtasks"]["Counting"] == {"n": 3, "right": 1, "undecidable": 1, "acc": pytest.approx(100 / 3)}
    assert res["subtasks"]["Jigsaw"] == {"n": 1, "right": 1, "undecidable": 0, "acc": 100.0}
    assert res["avg"] == pytest.approx((100 / 3 + 100) / 2)  # per subtask, then averaged: not 2 of 4 items
    assert res["undecidable"] == 1 and res["n"] == 4 and res["judge"] is None
    assert res["letters"] == ["A", "A", None, "B"]
    with pytest.raises(ValueError, match="4 items but 3 replies"):
        score_choices(items, ["A", "B", "C"])


def test_an_items_prompt_lists_its_options_by_letter():
    it = ChoiceItem("x", "Counting", ["a.png"], "How many cubes?", ["one", "two"], "B")
    assert it.prompt_text() == "How many cubes?\n(A) one\n(B) two\nAnswer with the option's letter."


# ------------------------------------------------------------------------------------------------ readers


def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def _blink_rows(n_images=(2, 1)):
    rows = []
    for i, n in enumerate(n_images):
        row = {
            "idx": f"val_Counting_{i + 1}",
            "question": "How many blue cubes are in the images?",
            "sub_task": "Counting",
            "choices": ["1", "2", "3", "4"],
            "answer": "(C)",
            "prompt": "How many blue cubes are in the images?\nSelect from the following choices.\n(A) 1\n(B) 2\n(C) 3\n(D) 4",
            "explanation": "",
        }
        for k in range(1, 5):
            row[f"image_{k}"] = {"bytes": _png((10 * k, 20 * i, 30)), "path": f"{i}_{k}.png"} if k <= n else None
        rows.append(row)
    return rows


def _write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_blink_reads_the_published_parquet_with_its_embedded_images(tmp_path):
    _write_parquet(tmp_path / "BLINK" / "Counting" / "val-00000-of-00001.parquet", _blink_rows((2, 1)))
    name, items = benchmarks.read(tmp_path / "BLINK", cache=tmp_path / "cache")
    assert name == "blink" and [it.id for it in items] == ["Counting/val_Counting_1", "Counting/val_Counting_2"]
    first = items[0]
    assert first.subtask == "Counting" and first.answer == "C" and first.choices == ["1", "2", "3", "4"]
    assert len(first.images) == 2 and len(items[1].images) == 1  # the null image_3/image_4 are no images
    with Image.open(first.images[1]) as im:
        assert im.size == (8, 6) and im.getpixel((0, 0)) == (20, 0, 30)  # the bytes of image_2, written as a file
    assert first.question == "How many blue cubes are in the images?" and first.extra["prompt"].endswith("(D) 4")
    again = blink.read(tmp_path / "BLINK", cache=tmp_path / "cache")  # cached images are reused, same files
    assert [it.images for it in again] == [it.images for it in items]


def test_blink_reads_json_with_image_paths_and_takes_the_subtask_from_its_folder(tmp_path):
    folder = tmp_path / "Jigsaw"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png())
    (folder / "b.png").write_bytes(_png((0, 0, 255)))
    rec = {"idx": 7, "prompt": "Which piece fits?", "choices": ["left", "right"], "answer": "(B)", "image_1": "a.png", "image_2": "b.png"}
    (folder / "val.json").write_text(json.dumps([rec]))
    (it,) = blink.read(folder / "val.json")
    assert (it.id, it.subtask, it.answer, it.question) == ("Jigsaw/7", "Jigsaw", "B", "Which piece fits?")
    assert it.images == [str(folder / "a.png"), str(folder / "b.png")]


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"answer": "(E)"}, "answer", "expected the right option's letter"),
        ({"answer": "C"}, None, None),  # a bare letter is read too
        ({"choices": ["only one"]}, "choices", "expected 2-26 option texts"),
        ({"choices": "1,2,3"}, "choices", "expected list"),
        ({"idx": None}, "idx", "missing"),
        ({"image_1": None, "image_2": None}, "image_1", "a BLINK item has 1-4 images"),
        ({"image_2": {"bytes": b"not an image", "path": "x.png"}}, "image_2", "not an image"),
        ({"image_2": 5}, "image_2", "expected an image path"),
        ({"question": "", "prompt": None}, "question", "missing"),
    ],
)
def test_blink_refuses_a_malformed_record_naming_file_index_and_field(tmp_path, change, field, problem):
    rows = _blink_rows((2, 2))
    path = tmp_path / "Counting" / "val.parquet"
    if isinstance(change.get("choices"), str) or isinstance(change.get("image_2"), int):
        # a value of another type cannot share a parquet column: the same rows as JSON, images as paths
        path = tmp_path / "Counting" / "val.json"
        path.parent.mkdir(parents=True)
        (path.parent / "a.png").write_bytes(_png())
        for r in rows:
            r.update({"image_1": "a.png", "image_2": "a.png"})
        rows[1].update(change)
        path.write_text(json.dumps(rows))
    else:
        rows[1].update(change)
        _write_parquet(path, rows)
    if field is None:
        assert [it.answer for it in blink.read(path, cache=tmp_path / "c")] == ["C", "C"]
        return
    with pytest.raises(RecordError) as e:
        blink.read(path, cache=tmp_path / "c")
    assert (e.value.file, e.value.index, e.value.field) == (str(path), 1, field)
    assert problem in str(e.value)


def test_blink_refuses_a_missing_image_file_and_a_repeated_item(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    rec = {"idx": 1, "question": "q", "sub_task": "IQ_Test", "choices": ["x", "y"], "answer": "(A)", "image_1": "a.png", "image_2": "gone.png"}
    (tmp_path / "val.json").write_text(json.dumps([rec]))
    with pytest.raises(MissingImageError, match=r"index 0: image not found: .*gone.png"):
        blink.read(tmp_path / "val.json")
    rec["image_2"] = "a.png"
    (tmp_path / "val.json").write_text(json.dumps([rec, rec]))
    with pytest.raises(ValueError, match="'IQ_Test/1' appears twice"):
        blink.read(tmp_path / "val.json")


def _mmiu_release(tmp_path, records):
    (tmp_path / "Low-level-semantic" / "forensic").mkdir(parents=True)
    for name in ("1.jpg", "2.jpg"):
        Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "Low-level-semantic" / "forensic" / name)
    (tmp_path / "all.json").write_text(json.dumps(records))
    return tmp_path / "all.json"


def _mmiu_record(**change):
    rec = {
        "task": "forensic_detection_blink",
        "visual_input_component": "natural image",
        "source": "blink",
        "options": "A: the first image\nB: the second image",
        "question": "Which image is the real photograph?",
        "context": "Select from the following choices.\nA: the first image\nB: the second image",
        "input_image_path": ["./Low-level-semantic/forensic/1.jpg", "./Low-level-semantic/forensic/2.jpg"],
        "output": "B",
    }
    rec.update(change)
    return rec


def test_mmiu_reads_the_published_all_json(tmp_path):
    path = _mmiu_release(tmp_path, [_mmiu_record(), _mmiu_record(options=["A: yes", "B: no", "C: cannot tell"], output="C: cannot tell")])
    name, items = benchmarks.read(path)
    assert name == "mmiu" and len(items) == 2
    first, second = items
    assert first.subtask == "forensic_detection_blink" and first.choices == ["the first image", "the second image"] and first.answer == "B"
    assert first.images == [str(tmp_path / "Low-level-semantic/forensic/1.jpg"), str(tmp_path / "Low-level-semantic/forensic/2.jpg")]
    assert first.extra == {"visual_input_component": "natural image", "source": "blink"}
    assert second.choices == ["yes", "no", "cannot tell"] and second.answer == "C"
    assert first.id != second.id


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"output": "D"}, "output", "expected the right option's letter (A-B)"),
        ({"output": ""}, "output", "empty"),
        ({"context": "Select one.\nB: x\nA: y"}, "context", "lines 'A: ...', 'B: ...' in order"),
        ({"input_image_path": []}, "input_image_path", "empty"),
        ({"input_image_path": "one.jpg"}, "input_image_path", "expected list"),
        ({"task": 3}, "task", "expected str"),
        ({"question": None}, "question", "missing"),
    ],
)
def test_mmiu_refuses_a_malformed_record_naming_file_index_and_field(tmp_path, change, field, problem):
    path = _mmiu_release(tmp_path, [_mmiu_record(), _mmiu_record(**change)])
    with pytest.raises(RecordError) as e:
        mmiu.read(path)
    assert (e.value.file, e.value.index, e.value.field) == (str(path), 1, field)
    assert problem in str(e.value)


def test_mmiu_refuses_a_missing_image(tmp_path):
    path = _mmiu_release(tmp_path, [_mmiu_record(input_image_path=["./Low-level-semantic/forensic/9.jpg"])])
    with pytest.raises(MissingImageError, match="index 0: image not found"):
        mmiu.read(path)


def test_a_file_of_another_layout_is_not_guessed(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(ValueError, match=r"cannot tell which benchmark its records are \(fields \['foo'\]\)"):
        benchmarks.detect(tmp_path / "x.json")
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        benchmarks.read(tmp_path / "x.json", "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="no benchmark file"):
        benchmarks.read(tmp_path / "empty")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(RecordError, match="not a readable parquet file"):
        benchmarks.read(tmp_path / "bad.parquet", "blink")


def test_a_read_benchmark_is_scored_by_its_protocol(tmp_path):
    path = _mmiu_release(tmp_path, [_mmiu_record(), _mmiu_record(task="jigsaw", output="A")])
    name, items = benchmarks.read(path)
    res = benchmarks.score(name, items, ["<answer>B</answer>", "I choose (B)"])
    assert res["benchmark"] == "mmiu" and res["subtasks"]["forensic_detection_blink"]["acc"] == 100.0
    assert res["subtasks"]["jigsaw"]["acc"] == 0.0 and res["avg"] == 50.0 and res["undecidable"] == 0


# ---------------------------------------------------------------------------------------------- grounding


def _image(path, size=(256, 128)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)
    return path


def _grounding_items(tmp_path):
    from mirg_lib.benchmarks import refl4

    _image(tmp_path / "images" / "a.jpg")
    rec = {"id": 11, "caption": "the dark grey square in the upper left", "bbox": [32, 16, 96, 48], "file_name": "a.jpg", "width": 256, "height": 128, "split": "val"}
    (tmp_path / "ref-l4-val.json").write_text(json.dumps([rec, {**rec, "id": 12}, {**rec, "id": 13}, {**rec, "id": 14, "split": "test"}]))
    return refl4.read(tmp_path / "ref-l4-val.json", image_root=tmp_path / "images")


def test_grounding_scores_literal_replies_in_each_coordinate_convention(tmp_path):
    from mirg_lib.benchmarks.grounding import score_grounding

    items = _grounding_items(tmp_path)
    assert items[0].answer == (0.125, 0.125, 0.5, 0.5)  # xywh pixels of a 256x128 image, relative
    replies = [
        "<|box_start|>(125,125),(500,500)<|box_end|>",  # Qwen2-VL's 0-1000 box tokens: IoU 1
        "<think>left half?</think><answer>[0.125, 0.125, 0.3125, 0.5]</answer>",  # 0-1 relative: IoU exactly 0.5
        "I do not see it.",  # unreadable: IoU 0, counted apart
        "<think>(1,1),(2,2)</think><answer>(125,125),(500,500)</answer>",  # the answer block, not the thought
    ]
    res = score_grounding(items, replies)
    assert res["ious"] == [1.0, 0.5, 0.0, 1.0]
    assert res["all"] == {"n": 4, "acc@0.5": 75.0, "acc@0.75": 50.0, "acc@0.9": 50.0, "macc": 52.5, "miou": 62.5, "unreadable": 1}
    assert res["subtasks"]["val"]["n"] == 3 and res["subtasks"]["test"]["acc@0.9"] == 100.0
    # Qwen2.5-VL answers in pixels of the image as it saw it: read as 'abs' with that size, or wrongly as 0-1000
    pixels = ['```json\n{"bbox_2d": [64, 32, 256, 128], "label": "square"}\n```'] * 4
    assert score_grounding(items, pixels, frame="abs", seen_sizes=[(512, 256)] * 4)["all"]["acc@0.5"] == 100.0
    assert score_grounding(items, pixels)["all"]["acc@0.5"] == 0.0
    with pytest.raises(ValueError, match="4 items but 1 replies"):
        score_grounding(items, ["x"])


def test_ref_l4_reads_its_split_file_and_refuses_bad_boxes(tmp_path):
    from mirg_lib.benchmarks import refl4

    items = _grounding_items(tmp_path)
    assert [it.id for it in items] == ["val/11", "val/12", "val/13", "test/14"] and items[0].images == [str(tmp_path / "images" / "a.jpg")]
    assert items[0].extra == {"id": 11, "split": "val", "caption": "the dark grey square in the upper left"} and items[0].box.size == (256, 128)
    assert items[0].question == "Find the object this describes: the dark grey square in the upper left"
    path = tmp_path / "ref-l4-test.json"
    good = {"caption": "x", "bbox": [32, 16, 96, 48], "file_name": "a.jpg"}  # no width/height: read from the image
    path.write_text(json.dumps([good]))
    assert refl4.read(path, image_root=tmp_path / "images")[0].answer == (0.125, 0.125, 0.5, 0.5)
    for bad, field, problem in [
        ({"bbox": [32, 16, 250, 120]}, "bbox", "lies outside its 256x128 image"),  # xyxy given where xywh is meant
        ({"bbox": [32, 16, 0, 48]}, "bbox", "not a box of positive size"),
        ({"bbox": [32, 16, 96]}, "bbox", "expected 4 numbers [x, y, w, h]"),
        ({"bbox": [32, 16, "96", 48]}, "bbox", "expected 4 finite numbers"),
        ({"caption": ""}, "caption", "empty"),
        ({"width": -3, "height": 128}, "width", "expected a positive integer"),
        ({"width": True, "height": 128}, "width", "expected a positive integer"),
        ({"width": 256, "height": 10**30}, "height", "expected a positive integer of at most"),
        ({"bbox": [300, 10, 0.4, 5]}, "bbox", "lies outside its 256x128 image"),  # wholly outside: not clipped into an inverted box
    ]:
        path.write_text(json.dumps([good, {**good, **bad}]))
        with pytest.raises(RecordError) as e:
            refl4.read(path, image_root=tmp_path / "images")
        assert (e.value.index, e.value.field) == (1, field) and problem in str(e.value), str(e.value)
    path.write_text(json.dumps([{**good, "file_name": "b.jpg"}]))
    with pytest.raises(MissingImageError, match="b.jpg"):
        refl4.read(path, image_root=tmp_path / "images")


def test_lisa_grounding_reads_both_published_layouts(tmp_path):
    from mirg_lib.benchmarks import lisa

    _image(tmp_path / "img" / "1.jpg")
    recs = [
        {"image": "img/1.jpg", "problem": "what keeps the papers from flying away?", "solution": [32, 16, 128, 64], "normal_caption": "the stone"},
        {"image_path": "img/1.jpg", "instruction": "the thing one sits on", "boxes": [[0, 0, 128, 128]]},
        {"image_path": "img/1.jpg", "instruction": "the thing one sits on", "boxes": [0, 64, 256, 128]},
    ]
    (tmp_path / "lisa_test.json").write_text(json.dumps(recs))
    name, items = benchmarks.read(tmp_path / "lisa_test.json")
    assert name == "lisa" and [it.answer for it in items] == [(0.125, 0.125, 0.5, 0.5), (0.0, 0.0, 0.5, 1.0), (0.0, 0.5, 1.0, 1.0)]
    assert items[0].question == "what keeps the papers from flying away?" and items[0].extra == {"normal_caption": "the stone"}
    (tmp_path / "bad.json").write_text(json.dumps([recs[0], {**recs[1], "boxes": [[0, 0, 8, 8], [1, 1, 9, 9]]}]))
    with pytest.raises(RecordError, match=r"index 1, field 'boxes': expected one box, got 2"):
        lisa.read(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps([{**recs[0], "solution": [32, 16, 16, 64]}]))
    with pytest.raises(RecordError, match=r"index 0, field 'solution': not a box of positive size"):
        lisa.read(tmp_path / "bad.json")


def test_revos_grounding_sends_the_frames_and_finds_the_target_in_its_frame(tmp_path):
    from mirg_lib.benchmarks import revos

    for k in range(3):
        _image(tmp_path / "v1" / f"{k}.jpg")
    rec = {"video_id": "v1", "frames": ["v1/0.jpg", "v1/1.jpg", "v1/2.jpg"], "question": "the cat that jumps", "bbox_list": [None, [32, 16, 128, 64], []]}
    (tmp_path / "revos.json").write_text(json.dumps([rec]))
    name, (it,) = benchmarks.read(tmp_path / "revos.json")
    assert name == "revos" and it.target_image == 2 and len(it.images) == 3 and it.answer == (0.125, 0.125, 0.5, 0.5)
    for bad, problem in [
        ({"bbox_list": [None, None, None]}, "target's box in exactly one frame, got boxes in 0"),
        ({"bbox_list": [[0, 0, 9, 9], [32, 16, 128, 64], None]}, "exactly one frame, got boxes in 2"),
        ({"bbox_list": [None, [32, 16, 128, 64]]}, "one entry per frame (3), got 2"),
    ]:
        (tmp_path / "revos.json").write_text(json.dumps([{**rec, **bad}]))
        with pytest.raises(RecordError, match=r"index 0, field 'bbox_list'") as e:
            revos.read(tmp_path / "revos.json")
        assert problem in str(e.value)


def test_each_benchmark_is_told_apart_by_its_fields(tmp_path):
    cases = {
        "blink": {"idx": 1, "image_1": "a.png", "choices": ["x", "y"], "answer": "(A)"},
        "mmiu": {"task": "t", "input_image_path": ["a.png"], "output": "A"},
        "ref_l4": {"caption": "x", "bbox": [0, 0, 1, 1], "file_name": "a.png"},
        "lisa": {"image": "a.png", "problem": "x", "solution": [0, 0, 1, 1]},
        "revos": {"video_id": "v", "frames": ["a.png"], "question": "x", "bbox_list": [[0, 0, 1, 1]]},
        "odinw": {"images": [], "annotations": [], "categories": []},  # a COCO file: one object, not a list
        "mc_bench": {"descriptions": [], "images": [], "annotations": [], "categories": []},
    }
    for name, rec in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(rec if name in ("odinw", "mc_bench") else [rec]))
        assert benchmarks.detect(tmp_path / f"{name}.json") == name
    assert set(cases) == set(benchmarks.MODULES) == set(benchmarks.KINDS)


def test_the_score_command_scores_a_local_copy_by_its_benchmarks_protocol(tmp_path):
    import subprocess
    import sys

    path = _mmiu_release(tmp_path, [_mmiu_record(), _mmiu_record(task="jigsaw", output="A"), _mmiu_record(task="jigsaw", output="B")])
    items = mmiu.read(path)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(json.dumps(r) for r in [{"id": items[0].id, "response": "<answer>B</answer>"}, {"index": 1, "response": "(A) or (B)"}]))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mirg_lib", "score", "--benchmark", str(path), "--predictions", str(preds), *args], capture_output=True, text=True)

    out = cli()  # told from its fields
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["benchmark"] == "mmiu" and res["missing"] == 1 and res["undecidable"] == 2  # item 2 has no prediction
    assert res["subtasks"]["forensic_detection_blink"]["acc"] == 100.0 and res["subtasks"]["jigsaw"]["acc"] == 0.0 and res["avg"] == 50.0
    assert json.loads(cli("--benchmark-kind", "mmiu").stdout) == res
    wrong = cli("--benchmark-kind", "blink")
    assert wrong.returncode == 2 and "error:" in wrong.stderr and "field 'idx': missing" in wrong.stderr
    preds.write_text(json.dumps({"id": "nope", "response": "A"}))
    bad = cli()
    assert bad.returncode == 2 and "line 1, field 'id': no item 'nope'" in bad.stderr


def test_the_score_command_scores_grounding_replies_in_pixels(tmp_path):
    from mirg_lib import __main__ as cli

    items = _grounding_items(tmp_path)
    preds = tmp_path / "p.jsonl"
    rows = [{"id": it.id, "response": '{"bbox_2d": [64, 32, 256, 128]}', "image_size": [512, 256]} for it in items]
    preds.write_text("\n".join(json.dumps(r) for r in rows))
    res = benchmarks.score_files(tmp_path / "ref-l4-val.json", preds, image_root=tmp_path / "images", frame="abs")
    assert res["benchmark"] == "ref_l4" and res["all"]["acc@0.5"] == 100.0 and res["missing"] == 0
    assert cli.main(["score", "--benchmark", str(tmp_path / "ref-l4-val.json"), "--predictions", str(preds), "--image-root", str(tmp_path / "images"), "--frame", "abs"]) == 0
    with pytest.raises(ValueError, match="multiple choice: its replies have no frame"):
        path = _mmiu_release(tmp_path / "m", [_mmiu_record()])
        (tmp_path / "q.jsonl").write_text(json.dumps({"index": 0, "response": "A"}))
        benchmarks.score_files(path, tmp_path / "q.jsonl", frame="abs")


def test_the_score_command_still_scores_mig_bench_by_default(real_mig_file, tmp_path):
    from mirg_lib.__main__ import _benchmark_kind

    assert _benchmark_kind(str(real_mig_file)) == "mig_bench"


def test_the_score_command_reads_a_published_folder_when_told_its_benchmark(tmp_path):
    from mirg_lib import __main__ as cli

    _write_parquet(tmp_path / "BLINK" / "Counting" / "val-00000-of-00001.parquet", _blink_rows((2, 1)))
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "Counting/val_Counting_1", "response": "The answer is (C)."}))
    with pytest.raises(RecordError, match="is a directory, not a file .*--benchmark-kind blink"):
        cli._benchmark_kind(str(tmp_path / "BLINK"))
    res = benchmarks.score_files(tmp_path / "BLINK", preds, "blink")
    assert res["subtasks"]["Counting"] == {"n": 2, "right": 1, "undecidable": 1, "acc": 50.0} and res["missing"] == 1
    assert cli.main(["score", "--benchmark", str(tmp_path / "BLINK"), "--predictions", str(preds), "--benchmark-kind", "blink"]) == 0


# ---------------------------------------------------------------------------------------------- detection


def _odinw(tmp_path, annotations=None, images=None):
    folder = tmp_path / "odinw" / "OxfordPets" / "by-breed" / "test"
    _image(folder / "1.jpg", (100, 100))
    _image(folder / "2.jpg", (200, 100))
    data = {
        "images": images or [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}, {"id": 2, "file_name": "2.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
        "annotations": annotations
        or [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [100, 0, 100, 100], "area": 10000, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }
    (folder / "annotations_without_background.json").write_text(json.dumps(data))
    return tmp_path / "odinw", folder / "annotations_without_background.json"


def test_odinw_scores_by_coco_ap_as_computed_by_hand(tmp_path):
    from mirg_lib.benchmarks.detection import score_detection

    root, _ = _odinw(tmp_path)
    name, items = benchmarks.read(root, "odinw")
    assert name == "odinw" and [(it.id, it.category, len(it.boxes)) for it in items] == [("OxfordPets/1/1", "cat", 2), ("OxfordPets/2/2", "dog", 1), ("OxfordPets/2/3", "bird", 1)]
    assert items[0].question == "Locate every cat in the image."
    replies = [
        "<answer>(0,0),(500,500)</answer>",  # one of the two cats, in 0-1000: recall 1/2 at precision 1
        '[{"bbox_2d": [0.5, 0, 1, 1]}, {"bbox_2d": [0, 0, 0.1, 0.1]}]',  # the dog (0-1 relative), then a miss: precision 1 at recall 1
        "There is no bird.",  # no box: AP 0
    ]
    res = score_detection(items, replies)
    sub = res["subtasks"]["OxfordPets"]
    # COCO's 101-point interpolated AP at every IoU threshold: cat 51/101 (precision 1 up to recall 0.5), dog 1, bird 0
    assert sub["map"] == pytest.approx(100 * (51 / 101 + 1 + 0) / 3) and sub["ap50"] == pytest.approx(sub["map"])
    assert sub["detections"] == 3 and sub["unreadable"] == 1 and res["avg"] == sub["map"] and res["unreadable"] == 1
    # the same boxes in pixels of images the model saw at twice the size, read as 'abs'
    pixels = ["(0,0),(100,100)", "[200, 0, 400, 200] and [0, 0, 20, 20]", "none"]
    seen = [(200, 200), (400, 200), (400, 200)]
    assert score_detection(items, pixels, frame="abs", seen_sizes=seen)["avg"] == pytest.approx(sub["map"])
    assert score_detection(items, ["", "", ""])["avg"] == 0.0


def test_odinw_refuses_a_malformed_coco_file_naming_the_entry(tmp_path):
    from mirg_lib.benchmarks import odinw

    good = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50]}]
    for anns, images, index, field, problem in [
        ([{**good[0], "bbox": [0, 0, 150, 50]}], None, 0, "annotations.bbox", "lies outside its 100x100 image"),
        ([good[0], {**good[0], "image_id": 7}], None, 1, "annotations.image_id", "no image 7"),
        ([{**good[0], "category_id": 9}], None, 0, "annotations.category_id", "no category 9"),
        ([{**good[0], "bbox": None}], None, 0, "annotations.bbox", "missing"),
        (good, [{"id": 1, "file_name": "1.jpg", "width": 0, "height": 100}], 0, "images.width", "expected a positive size"),
        (good, [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}, {"id": 1, "file_name": "2.jpg", "width": 1, "height": 1}], 1, "images.id", "appears twice"),
    ]:
        root, file = _odinw(tmp_path, anns, images)
        with pytest.raises(RecordError) as e:
            odinw.read(root)
        assert (e.value.file, e.value.index, e.value.field) == (str(file), index, field) and problem in str(e.value), str(e.value)


def test_odinw_names_a_subset_by_its_folder(tmp_path):
    from mirg_lib.benchmarks import odinw

    _, file = _odinw(tmp_path)
    assert {it.subtask for it in odinw.read(file)} == {"OxfordPets"}  # the file alone: the nearest folder that is no split
    assert benchmarks.detect(file) == "odinw"


# ----------------------------------------------------------------------------------------------- MC-Bench


def _mc_bench(tmp_path, **change):
    for k in range(6):
        _image(tmp_path / "D1" / f"{k}.jpg", (100, 100))
    data = {
        "info": {"version": "0.2"},
        "descriptions": [
            {"id": 0, "images_id": [0, 1], "text": "The cups of the same colour", "positive_sample": True, "text_style": "Comparison"},
            {"id": 1, "images_id": [2, 3], "text": "The dog wearing a hat", "positive_sample": False, "text_style": "Referring"},
            {"id": 2, "images_id": [4, 5], "text": "The people doing the same thing", "positive_sample": True, "text_style": "Reasoning"},
        ],
        "images": [{"id": k, "text_id": k // 2, "inter_img_id": k % 2, "file_name": f"D1/{k}.jpg", "height": 100, "width": 100} for k in range(6)],
        "annotations": [
            {"id": 1, "image_id": 0, "text_id": 0, "category_id": 1, "area": 2500, "bbox": [0, 0, 50, 50], "iscrowd": 0},
            {"id": 2, "image_id": 1, "text_id": 0, "category_id": 1, "area": 2500, "bbox": [50, 50, 50, 50], "iscrowd": 0},
            {"id": 3, "image_id": 4, "text_id": 2, "category_id": 1, "area": 400, "bbox": [0, 0, 20, 20], "iscrowd": 0},
            {"id": 4, "image_id": 4, "text_id": 2, "category_id": 2, "area": 2500, "bbox": [50, 0, 50, 50], "iscrowd": 0},
            {"id": 5, "image_id": 5, "text_id": 2, "category_id": 2, "area": 2500, "bbox": [0, 50, 50, 50], "iscrowd": 0},
        ],
        "categories": [{"id": g, "name": f"group {g}"} for g in range(1, 8)],
    }
    data.update(change)
    (tmp_path / "mc-bench_v0.2_val.json").write_text(json.dumps(data))
    return tmp_path / "mc-bench_v0.2_val.json"


def test_mc_bench_scores_weighted_ap50_and_image_accuracy_as_its_official_code(tmp_path):
    from mirg_lib.benchmarks.mcbench import placed_boxes, score_mc_bench

    name, items = benchmarks.read(_mc_bench(tmp_path))
    assert name == "mc_bench" and [it.id for it in items] == ["mc_bench/0", "mc_bench/1", "mc_bench/2"]
    assert items[1].positive is False and items[1].truth == [[], []] and items[2].subtask == "Reasoning"
    assert [g for g, _ in items[2].truth[0]] == [1, 2] and items[2].images[1].endswith("D1/5.jpg")
    assert placed_boxes("Image 2: (500,500),(1000,1000). In image 1 (0,0),(500,500)", [(100, 100)] * 2) == [[(0.0, 0.0, 50.0, 50.0)], [(50.0, 50.0, 100.0, 100.0)]]
    assert placed_boxes("(0,0),(500,500)", [(100, 100)] * 2) == [[(0.0, 0.0, 50.0, 50.0)], []]  # no image named: image 1
    replies = [
        "<answer>Image 1: (0,0),(500,500); image 2: (500,500),(1000,1000)</answer>",  # both cups
        "No such dog in either image.",  # a negative sample answered with no box: right at image level
        "Image 1: (500,0),(1000,500). Image 2: (0,500),(500,1000)",  # group 2's two people, not group 1's
    ]
    res = score_mc_bench(items, replies)
    # group 1: 3 boxes, 2 found (sample 3's reply is given group 2, the one it matches), AP50 = 67/101 (recall 2/3);
    # group 2: both found, AP50 1; weighted by their 3 and 2 ground-truth boxes
    assert res["all"]["ap50"] == pytest.approx(100 * (3 / 5 * 67 / 101 + 2 / 5 * 1.0))
    assert res["all"]["accuracy"] == 100.0  # every image has a box exactly where the ground truth has one
    assert res["all"]["detections"] == 4 and res["unreadable"] == 1
    assert set(res["subtasks"]) == {"Comparison", "Referring", "Reasoning"} and res["subtasks"]["Referring"]["accuracy"] == 100.0
    # a box on the negative sample: image level wrong there; AP50 as before (every box scores 1.0, and this
    # false positive comes after the true ones)
    worse = score_mc_bench(items, [replies[0], "Image 2: (0,0),(300,300)", replies[2]])
    assert worse["all"]["accuracy"] == pytest.approx(200 / 3) and worse["subtasks"]["Referring"]["accuracy"] == 0.0
    assert worse["all"]["ap50"] == pytest.approx(res["all"]["ap50"]) and worse["all"]["detections"] == 5
    with pytest.raises(ValueError, match="3 items but 1 replies"):
        score_mc_bench(items, ["x"])


def test_mc_bench_refuses_a_malformed_file_naming_the_entry(tmp_path):
    from mirg_lib.benchmarks import mcbench

    base = json.loads(_mc_bench(tmp_path).read_text())
    for change, index, field, problem in [
        ({"descriptions": [{**base["descriptions"][0], "images_id": [0]}]}, 0, "descriptions.images_id", "ids of its two images"),
        ({"descriptions": [{**base["descriptions"][0], "images_id": [0, 99]}]}, 0, "descriptions.images_id", "ids of its two images"),
        ({"descriptions": [{**base["descriptions"][0], "text": " "}]}, 0, "descriptions.text", "empty"),
        ({"annotations": [{**base["annotations"][0], "category_id": 9}]}, 0, "annotations.category_id", "no group 9"),
        ({"annotations": [base["annotations"][0], {**base["annotations"][1], "bbox": [90, 90, 50, 50]}]}, 1, "annotations.bbox", "lies outside"),
    ]:
        path = _mc_bench(tmp_path, **change)
        with pytest.raises(RecordError) as e:
            mcbench.read(path)
        assert (e.value.file, e.value.index, e.value.field) == (str(path), index, field) and problem in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------------ the eval stage


def test_a_benchmark_prompt_follows_the_recipe():
    from mirg_lib.benchmarks import prompt_text
    from mirg_lib.benchmarks.grounding import GroundingItem
    from mirg_lib.boxes import Box

    choice = ChoiceItem("x", "Counting", ["a.png"], "How many cubes?", ["one", "two"], "B")
    assert prompt_text(choice) == choice.prompt_text()
    assert prompt_text(choice, "zhang").endswith("the option's letter, in <answer> </answer> tags.") and "JSON" not in prompt_text(choice, "zhang")
    ground = GroundingItem("g", "val", ["a.png"], "Find the object this describes: the red cup", Box(0, 0, 1, 1))
    assert prompt_text(ground, "zhang", "tokens").endswith("Output the bounding box as <|box_start|>(x1,y1),(x2,y2)<|box_end|>.")
    assert prompt_text(ground) == "Find the object this describes: the red cup"


def test_the_eval_stage_scores_a_checkpoint_on_another_benchmark(tmp_path, nano_checkpoint, monkeypatch):
    from mirg_lib.evaluation import EvalConfig, evaluate_benchmark

    items = _grounding_items(tmp_path)
    cfg = EvalConfig(prompt="zhang", box_notation="tokens", max_new_tokens=8, batch_size=3)
    out = tmp_path / "eval_refl4"
    res = evaluate_benchmark(nano_checkpoint, tmp_path / "ref-l4-val.json", cfg, out, image_root=tmp_path / "images", stamp="s1")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [it.id for it in items] and all(isinstance(r["response"], str) for r in rows)
    assert res["benchmark"] == "ref_l4" and res["all"]["n"] == 4 and res["n_items"] == 4 and res["prompt"] == "zhang"
    again = benchmarks.score_files(tmp_path / "ref-l4-val.json", out / "predictions.jsonl", image_root=tmp_path / "images")
    assert again["all"] == res["all"] and again["missing"] == 0  # the written predictions score the same from the CLI
    monkeypatch.setattr("mirg_lib.models.load_model", lambda *a, **k: pytest.fail("scores with the same stamp are reused"))
    assert evaluate_benchmark(nano_checkpoint, tmp_path / "ref-l4-val.json", cfg, out, image_root=tmp_path / "images", stamp="s1") == json.loads((out / "scores.json").read_text())


def test_the_pipeline_draws_the_analogues_once_and_scores_a_model_on_each(tmp_path, nano_checkpoint):
    from mirg_lib import pipeline
    from mirg_lib.config import load_params

    params = load_params("smoke", {"benchmarks.analogue_items": 2, "eval.max_new_tokens": 6})
    sets = pipeline.benchmark_sets(params)
    assert set(sets) == {"blink", "ref_l4", "lisa", "revos", "odinw", "mmiu"} and all(root is None for _, root in sets.values())
    stamp = {k: p.stat().st_mtime_ns for k, (p, _) in sets.items()}
    assert {k: p.stat().st_mtime_ns for k, (p, _) in pipeline.benchmark_sets(params).items()} == stamp  # drawn once
    mmiu_file = _mmiu_release(tmp_path / "mmiu", [_mmiu_record(input_image_path=["./Low-level-semantic/forensic/1.jpg"])])
    Image.new("RGB", (56, 56), (1, 2, 3)).save(tmp_path / "mmiu" / "Low-level-semantic" / "forensic" / "1.jpg")  # a size the processor takes
    params = load_params("smoke", {"benchmarks.analogue_items": 2, "eval.max_new_tokens": 6, "benchmarks.files": {"mmiu": str(mmiu_file)}})
    heads = pipeline.evaluate_benchmarks(params, nano_checkpoint, "nano")
    assert set(heads) == {"blink", "ref_l4", "lisa", "revos", "odinw", "mmiu"}  # the local MMIU copy in the place of its analogue
    assert heads["blink"]["metric"] == "accuracy" and heads["blink"]["n"] == 6 and set(heads["blink"]["subtasks"]) == {"Counting", "Visual_Similarity", "Visual_Correspondence"}
    assert heads["ref_l4"]["metric"] == "acc@0.5" and heads["ref_l4"]["n"] == 2 and heads["odinw"]["metric"] == "mAP"
    assert heads["mmiu"]["n"] == 1 and 0 <= heads["mmiu"]["score"] <= 100
    with pytest.raises(Exception, match="unknown benchmark"):
        pipeline.benchmark_sets(load_params("smoke", {"benchmarks.files": {"blinky": "x"}}))



def test_the_pronoun_i_is_not_option_i_and_a_letter_i_still_is():
    nine = list("abcdefghi")
    assert extract_letter("Answer: I think it is hard to tell", nine) is None
    assert extract_letter("The answer is I.", nine) == "I"


def test_review_cases_for_readers_and_predictions(tmp_path):
    from mirg_lib.benchmarks import lisa

    # LISA files of one folder keep their ids apart; a repeated Ref-L4 id is refused
    _image(tmp_path / "l" / "img" / "1.jpg")
    rec = {"image": "img/1.jpg", "problem": "x", "solution": [32, 16, 128, 64]}
    (tmp_path / "l" / "a.json").write_text(json.dumps([rec]))
    (tmp_path / "l" / "b.json").write_text(json.dumps([rec]))
    assert [it.id for it in lisa.read(tmp_path / "l")] == ["a/0", "b/0"]
    items = _grounding_items(tmp_path)
    (tmp_path / "dup.json").write_text(json.dumps([{"id": 1, "caption": "x", "bbox": [0, 0, 8, 8], "file_name": "a.jpg"}] * 2))
    with pytest.raises(ValueError, match="two ref_l4 items share the id 'dup/1'"):
        benchmarks.read(tmp_path / "dup.json", image_root=tmp_path / "images")
    # predictions: an id that is no string, a reply holding a line separator, pixels without their size
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": [items[0].id], "response": "x"}))
    with pytest.raises(RecordError, match="line 1, field 'id'"):
        benchmarks.load_replies(preds, items)
    preds.write_text(json.dumps({"id": items[0].id, "response": "a\u2028b"}, ensure_ascii=False))
    assert benchmarks.load_replies(preds, items)[0][0] == "a\u2028b"
    preds.write_text(json.dumps({"id": items[0].id, "response": "[0, 0, 10, 10]"}))
    with pytest.raises(RecordError, match="line 1, field 'image_size': a reply in pixels"):
        benchmarks.score_files(tmp_path / "ref-l4-val.json", preds, image_root=tmp_path / "images", frame="abs")
    # BLINK: an unbalanced answer, and a subtask name that would leave the image cache
    rows = _blink_rows((1,))
    rows[0]["answer"] = "(A"
    _write_parquet(tmp_path / "b1" / "val.parquet", rows)
    with pytest.raises(RecordError, match="field 'answer'"):
        blink.read(tmp_path / "b1" / "val.parquet", cache=tmp_path / "c")
    rows[0].update(answer="(A)", sub_task="../../escape")
    _write_parquet(tmp_path / "b2" / "val.parquet", rows)
    (it,) = blink.read(tmp_path / "b2" / "val.parquet", cache=tmp_path / "c")
    assert it.images[0].startswith(str(tmp_path / "c")) and ".." not in it.images[0]


def test_odinw_reads_the_test_split_of_a_published_folder_and_refuses_two_files_of_a_subset(tmp_path):
    from mirg_lib.benchmarks import odinw

    root, file = _odinw(tmp_path)
    train = file.parent.parent / "train"
    train.mkdir()
    (train / "annotations_without_background.json").write_text(file.read_text())
    assert {it.id for it in odinw.read(root)} == {"OxfordPets/1/1", "OxfordPets/2/2", "OxfordPets/2/3"}  # test only
    other = file.parent / "again.json"
    other.write_text(file.read_text())
    with pytest.raises(RecordError, match="a second annotation file for subset 'OxfordPets'"):
        odinw.read(root)


def test_mc_bench_reads_the_answers_trajectory_not_the_reasonings(tmp_path):
    from mirg_lib.benchmarks.mcbench import placed_boxes

    reply = ("<think><bbox_id>[1-1]</bbox_id><|object_ref_start|>a cup<|object_ref_end|><|box_start|>(100,100),(200,200)<|box_end|></think>"
             "<answer><bbox_id>[2-1]</bbox_id><|object_ref_start|>the cup<|object_ref_end|><|box_start|>(500,500),(1000,1000)<|box_end|></answer>")
    assert placed_boxes(reply, [(100, 100)] * 2) == [[], [(50.0, 50.0, 100.0, 100.0)]]
    base = json.loads(_mc_bench(tmp_path).read_text())
    from mirg_lib.benchmarks import mcbench

    for change, field in [
        ({"descriptions": [{**base["descriptions"][0], "positive_sample": "false"}]}, "descriptions.positive_sample"),
        ({"descriptions": [base["descriptions"][0], {**base["descriptions"][1], "images_id": [1, 2]}]}, "descriptions.images_id"),
        ({"descriptions": [base["descriptions"][0], {**base["descriptions"][1], "id": 0}]}, "descriptions.id"),
    ]:
        with pytest.raises(RecordError, match=field.replace(".", r"\.")):
            mcbench.read(_mc_bench(tmp_path, **change))


def test_the_readme_table_sets_the_papers_other_benchmarks_beside_the_measured_rows():
    from mirg_lib.ablations import other_benchmarks_table

    head = {"metric": "acc@0.5", "score": 32.5, "n": 40, "unreadable": 0, "subtasks": {}}
    scores = {"provenance": {"date": "2026-12-06T05:39:22", "device": "cpu", "commit": "056d457abc", "wall_s": 29.0},
              "rows": [{"model": "base", "benchmarks": {"ref_l4": {**head, "score": 12.5}}}, {"model": "CoT-SFT", "benchmarks": {"ref_l4": head}}]}
    lines = other_benchmarks_table(scores)
    assert "| ref_l4 | T4, Ref-L4 val, Acc@0.5 | 58.57 / 68.92 / 74.78 | analogue | acc@0.5 | 12.5 | 32.5 | 40 | 0 |" in lines
    mmiu = {"metric": "accuracy", "score": 40.0, "semantic": 55.0, "n": 9, "unreadable": 0, "subtasks": {}, "data": "local copy"}
    lines = other_benchmarks_table({**scores, "rows": [{"model": "base", "benchmarks": {"mmiu": mmiu}}]})
    assert "| mmiu | T7, MMIU semantic relations, AVG | 56.8 / 57.7 / 59.4 | local copy | accuracy (semantic types' tasks) | 55.0 | 9 | 0 |" in lines
    mmiu["types"] = {"two-dimensional spatial": 25.0}
    lines = other_benchmarks_table({**scores, "rows": [{"model": "base", "benchmarks": {"mmiu": mmiu}}]})
    assert any(line.startswith("| mmiu 2D spatial | T8, MMIU two-dimensional spatial, AVG | 37.8 / 38.6 / 40.4 | local copy | accuracy | 25.0 |") for line in lines)
    assert any("commit 056d457" in line for line in lines)
    assert other_benchmarks_table({"provenance": scores["provenance"], "rows": [{"model": "base"}]}) == []


# ---------------------------------------------------------------------------------------------- the judge


def _judge_server(answers):
    """An OpenAI-compatible stand-in on loopback answering each request with the next of ``answers``; yields its
    URL and the prompts it received."""
    import contextlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []
    queue = list(answers)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body["messages"][0]["content"])
            assert body["temperature"] == 0.0 and body["n"] == 1
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": queue.pop(0)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    @contextlib.contextmanager
    def run():
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        try:
            yield f"http://127.0.0.1:{srv.server_address[1]}/v1", seen
        finally:
            srv.shutdown()
            srv.server_close()

    return run()


def test_an_llm_judge_reads_only_the_undecidable_replies_and_is_named(monkeypatch):
    from mirg_lib.benchmarks.judge import make_judge

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    items = [ChoiceItem(f"c/{i}", "Counting", ["a.png"], "How many?", ["1", "2", "3"], "B") for i in range(3)]
    replies = ["(B)", "It could be two, I guess", "no idea at all"]
    with _judge_server(["B", "I cannot tell"]) as (url, seen):
        judge = make_judge(url, "judge-7b")
        res = score_choices(items, replies, judge)
    assert len(seen) == 2 and "Reply: It could be two, I guess" in seen[0] and "(B) 2" in seen[0]  # the rules read the first
    assert res["letters"] == ["B", "B", None] and res["judged"] == 1 and res["undecidable"] == 1
    assert res["judge"] == f"judge-7b at {url}" and res["avg"] == pytest.approx(200 / 3)
    assert make_judge("", "") is None and score_choices(items, replies)["judge"] is None
    with pytest.raises(ValueError, match="needs the model's name"):
        make_judge(url, "")


def test_mc_bench_replies_in_pixels_carry_each_images_size(tmp_path):
    path = _mc_bench(tmp_path)
    _, items = benchmarks.read(path)
    preds = tmp_path / "p.jsonl"
    rows = [{"id": "mc_bench/0", "response": "Image 1: [0, 0, 100, 100] Image 2: [100, 100, 200, 200]", "image_sizes": [[200, 200], [200, 200]]},
            {"id": "mc_bench/1", "response": "none", "image_sizes": [[200, 200], [200, 200]]},
            {"id": "mc_bench/2", "response": "Image 1: [100, 0, 200, 100]. Image 2: [0, 100, 100, 200]", "image_sizes": [[200, 200], [200, 200]]}]
    preds.write_text("\n".join(json.dumps(r) for r in rows))
    res = benchmarks.score_files(path, preds, frame="abs")
    assert res["all"]["accuracy"] == 100.0 and res["all"]["ap50"] == pytest.approx(100 * (3 / 5 * 67 / 101 + 2 / 5))  # as in 0-1000
    preds.write_text(json.dumps({**rows[0], "image_sizes": [[200, 200]]}))
    with pytest.raises(RecordError, match=r"line 1, field 'image_sizes': expected one \[width, height\] per image \(2\)"):
        benchmarks.score_files(path, preds, frame="abs")
    preds.write_text(json.dumps({"id": "mc_bench/0", "response": "x"}))
    with pytest.raises(RecordError, match="field 'image_sizes': a reply in pixels"):
        benchmarks.score_files(path, preds, frame="abs")


def test_the_eval_stage_writes_each_images_seen_size_for_mc_bench_in_pixels(tmp_path, nano_checkpoint):
    from mirg_lib.evaluation import EvalConfig, evaluate_benchmark

    path = _mc_bench(tmp_path)
    cfg = EvalConfig(prompt="plain", frame="abs", max_new_tokens=4, batch_size=3)
    res = evaluate_benchmark(nano_checkpoint, path, cfg, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["image_sizes"]) == 2 and all(w > 0 and h > 0 for w, h in r["image_sizes"]) for r in rows)
    assert res["benchmark"] == "mc_bench" and res["all"]["n"] == 3
    again = benchmarks.score_files(path, tmp_path / "out" / "predictions.jsonl", frame="abs")
    assert again["all"] == res["all"]


def test_mmiu_reports_each_relation_type_as_the_mean_of_its_tasks(tmp_path):
    from mirg_lib.benchmarks.mmiu import relation_type

    assert relation_type("Forensic_Detection_Blink") == "low-level semantic" and relation_type("jigsaw_puzzle_solving") == "two-dimensional spatial"
    assert relation_type("object_search") == "unmapped"
    recs = [_mmiu_record(task="forensic_detection_blink", output="B"), _mmiu_record(task="forensic_detection_forgerynet", output="A"),
            _mmiu_record(task="forensic_detection_forgerynet", output="B"), _mmiu_record(task="jigsaw_puzzle_solving", output="A")]
    name, items = benchmarks.read(_mmiu_release(tmp_path, recs))
    res = benchmarks.score(name, items, ["B", "A", "A", "(B)"])
    # low-level: forensic_detection_blink 100, forgerynet 50 -> 75 (the mean of its tasks, not of its 3 items)
    assert res["types"] == {"low-level semantic": 75.0, "two-dimensional spatial": 0.0}
    assert benchmarks.headline(res)["types"] == res["types"]


def test_notebook_06_scores_the_answer_only_sft_where_notebook_03_trained_it():
    from mirg_lib import ablations, pipeline
    from mirg_lib.config import load_params

    embedded = ablations.sft_variants(load_params("embedded"))
    assert list(pipeline.evaluation_models(embedded)) == ["base", "answer-only SFT", "CoT-SFT", "CoT-SFT + GRPO"]
    smoke = ablations.sft_variants(load_params("smoke", {"ablations.arms": [ablations.MIRG_NO_IMAGE]}))
    assert list(pipeline.evaluation_models(smoke)) == ["base", "CoT-SFT", "CoT-SFT + GRPO"]



def test_cached_benchmark_scores_are_reused_and_remade_when_a_file_changes(tmp_path, nano_checkpoint, monkeypatch):
    from mirg_lib import pipeline
    from mirg_lib.config import load_params

    folder = tmp_path / "mmiu"
    _mmiu_release(folder, [_mmiu_record(input_image_path=["./Low-level-semantic/forensic/1.jpg"])])
    Image.new("RGB", (56, 56), (1, 2, 3)).save(folder / "Low-level-semantic" / "forensic" / "1.jpg")
    params = load_params("smoke", {"eval.max_new_tokens": 4, "benchmarks.files": {"mmiu": str(folder)}})
    first = pipeline.evaluate_benchmarks(params, nano_checkpoint, "nano")
    assert first["mmiu"]["data"] == "local copy" and first["mmiu"]["n"] == 1
    calls = []
    import mirg_lib.models as models

    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert pipeline.evaluate_benchmarks(params, nano_checkpoint, "nano") == first and calls == []  # reused
    rec = _mmiu_record(input_image_path=["./Low-level-semantic/forensic/1.jpg"], output="A")
    (folder / "all.json").write_text(json.dumps([rec, rec]))  # a file inside the folder changes
    again = pipeline.evaluate_benchmarks(params, nano_checkpoint, "nano")
    assert calls and again["mmiu"]["n"] == 2


def test_a_failing_judge_loses_no_reply(tmp_path, nano_checkpoint, monkeypatch):
    from mirg_lib.evaluation import EvalConfig, evaluate_benchmark

    path = _mmiu_release(tmp_path, [_mmiu_record(input_image_path=["./Low-level-semantic/forensic/1.jpg"])])
    Image.new("RGB", (56, 56), (1, 2, 3)).save(tmp_path / "Low-level-semantic" / "forensic" / "1.jpg")

    class Broken:
        name = "broken"

        def __call__(self, item, reply):
            raise RuntimeError("the judge's server is down")

    with pytest.raises(RuntimeError, match="server is down"):
        evaluate_benchmark(nano_checkpoint, path, EvalConfig(prompt="plain", max_new_tokens=4), tmp_path / "out", judge=Broken())
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 1 and not (tmp_path / "out" / "scores.json").exists()


def test_mmius_headline_carries_the_semantic_types_mean_the_paper_reports(tmp_path):
    recs = [_mmiu_record(task="forensic_detection_blink", output="B"), _mmiu_record(task="emotion_recognition_expw", output="A"),
            _mmiu_record(task="jigsaw_puzzle_solving", output="A")]
    name, items = benchmarks.read(_mmiu_release(tmp_path, recs))
    head = benchmarks.headline(benchmarks.score(name, items, ["B", "B", "A"]))
    assert head["semantic"] == 50.0 and head["score"] == pytest.approx(200 / 3)  # semantic: forensic 100, emotion 0; jigsaw is spatial
