import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mirg_lib.parsing import (
    completion_text,
    find_boxes,
    image_index_from_text,
    parse_response,
    parse_trajectory,
)

ZHANG = '<think>Image 2 shows a workshop.</think><answer>```json\n{"bbox_2d": [22, 264, 322, 513], "label": "gloves"}\n```</answer>'
MIRG = (
    "<think>The cup <bbox_id>[1-1]</bbox_id><|object_ref_start|>cup<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|> "
    "matches <bbox_id>[2-3]</bbox_id><|object_ref_start|>mug<|object_ref_end|><|box_start|>(500,600),(700,800)<|box_end|>; "
    "as said, <bbox_id>[1-1]</bbox_id> is the reference.</think>"
    "<answer><bbox_id>[2-3]</bbox_id><|box_start|>(500,600),(700,800)<|box_end|></answer>"
)


def test_zhang_answer():
    p = parse_response(ZHANG)
    assert p.well_formed and p.json_box
    assert p.box.values == (22, 264, 322, 513) and p.box.label == "gloves"
    assert p.think == "Image 2 shows a workshop."


def test_json_without_fence_and_in_a_list():
    p = parse_response('<answer>[{"bbox_2d": [1.5, 2, 3, 4], "label": "x"}, {"bbox_2d": [5, 6, 7, 8]}]</answer>')
    assert p.box.values == (1.5, 2, 3, 4) and p.box.kind == "json"
    assert [b.values for b in p.boxes] == [(1.5, 2, 3, 4), (5, 6, 7, 8)]


def test_box_tokens_pairs_and_lists():
    assert parse_response("It's in the third image. <|box_start|>(316,58),(764,999)<|box_end|>").box.values == (316, 58, 764, 999)
    assert parse_response("(0.1,0.2),(0.3,0.4)").box.kind == "pair"
    assert parse_response("answer: [0.1, 0.2, 0.3, 0.4].").box.values == (0.1, 0.2, 0.3, 0.4)


def test_answer_block_wins_over_reasoning_boxes():
    p = parse_response(MIRG)
    assert p.well_formed
    assert p.box.values == (500, 600, 700, 800)
    assert p.image_index == 2
    traj = p.trajectory
    assert [(t.image, t.index) for t in traj] == [(1, 1), (2, 3), (1, 1), (2, 3)]
    assert traj[0].label == "cup" and traj[0].box == (10, 20, 30, 40)
    assert traj[2].label is None and traj[2].box is None  # a later mention reuses the bbox_id only
    assert parse_trajectory("no ids") == []


def test_truncated_answer_still_read():
    p = parse_response("<think>hm</think><answer>[1, 2, 3, 4")
    assert p.box is None and not p.well_formed
    p = parse_response("<think>hm</think><answer>[1, 2, 3, 4] and then")
    assert p.box.values == (1, 2, 3, 4) and not p.well_formed


def test_format_strictness():
    assert not parse_response("<answer>[1,2,3,4]</answer>").well_formed
    assert not parse_response("x <think>a</think><answer>b</answer>").well_formed
    assert not parse_response("<think>a</think><answer>b</answer><answer>c</answer>").well_formed
    assert not parse_response("<think>a<think>b</think><answer>c</answer>").well_formed
    assert parse_response("  <think>a</think>\n<answer>b</answer>\n").well_formed


def test_image_index_forms():
    assert image_index_from_text("It is in the fourth image.") == 4
    assert image_index_from_text("see Image-3") == 3
    assert image_index_from_text("in the 2th image") == 2
    assert image_index_from_text("<bbox_id>[5-1]</bbox_id>") == 5
    assert image_index_from_text("no image named") is None


def test_completion_text_conversational():
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]) == "ab"
    assert completion_text(None) == ""


nums = st.one_of(st.integers(-5000, 5000), st.floats(allow_nan=True, allow_infinity=True))
TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "```json", "```", "{", "}", "[", "]", "(", ")", ",", '"bbox_2d":', "<|box_start|>",
          "<|box_end|>", "<bbox_id>", "</bbox_id>", "[1-2]", "<|object_ref_start|>", "<|object_ref_end|>", "NaN", "1e999", "-", ".", " ", "image", "third"]


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_no_string_makes_the_parser_raise(text):
    p = parse_response(text)
    assert p.box is None or len(p.box.values) == 4


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TOKENS), nums.map(str), st.text(max_size=3)), max_size=40).map("".join))
def test_no_adversarial_mix_makes_the_parser_raise(text):
    parse_response(text)
    parse_trajectory(text)
    image_index_from_text(text)


box_vals = st.tuples(*[st.integers(0, 1000)] * 4)


@settings(max_examples=200, deadline=None)
@given(box_vals, st.sampled_from(["json", "fence", "tokens", "list"]), st.text(alphabet="abc xyz.", max_size=30))
def test_every_form_recovers_the_box(vals, form, noise):
    if form == "json":
        body = json.dumps({"bbox_2d": list(vals), "label": "obj"})
    elif form == "fence":
        body = "```json\n" + json.dumps([{"bbox_2d": list(vals)}]) + "\n```"
    elif form == "tokens":
        body = "<|box_start|>({},{}),({},{})<|box_end|>".format(*vals)
    else:
        body = "[{}, {}, {}, {}]".format(*vals)
    p = parse_response(f"<think>{noise} [9, 9, 9, 9]</think><answer>{noise}{body}</answer>")
    assert p.box is not None and p.box.values == tuple(float(v) for v in vals)
    assert find_boxes(body)[0].values == tuple(float(v) for v in vals)


def test_tags_pair_first_open_with_first_close():
    p = parse_response("<think>a<think>b</think>c</think><answer>x<answer>y</answer>z</answer>")
    assert p.think == "a<think>b" and p.answer == "x<answer>y" and not p.well_formed
    p = parse_response("<answer>" * 3 + "[1, 2, 3, 4]")  # never closed: the rest after the first is the answer
    assert p.answer == "<answer><answer>[1, 2, 3, 4]" and p.box.values == (1, 2, 3, 4)
    assert parse_response("<think>" * 5).think is None and parse_response("</think><think>a</think>").think == "a"


def test_bbox_id_spacing_and_mention_window():
    for text in ("<bbox_id> [ 2 - 3 ] </bbox_id>", "<bbox_id>2-3</bbox_id>", "<bbox_id>[2 -3]\n</bbox_id>"):
        assert [(t.image, t.index) for t in parse_trajectory(text)] == [(2, 3)] and image_index_from_text(text) == 2
    box = "<|box_start|>(1,2),(3,4)<|box_end|>"
    near = "<bbox_id>[1-2]</bbox_id> <|object_ref_start|>cup<|object_ref_end|>\n" + box
    assert parse_trajectory(near)[0].label == "cup" and parse_trajectory(near)[0].box == (1, 2, 3, 4)
    far = "<bbox_id>[1-2]</bbox_id><|object_ref_start|>" + "x" * 2000 + "<|object_ref_end|>" + box
    assert parse_trajectory(far)[0].label is None and parse_trajectory(far)[0].box is None  # past the window
    assert parse_trajectory("<bbox_id>[1-2]</bbox_id><|object_ref_start|>a<bbox_id>[3-4]</bbox_id>b<|object_ref_end|>")[0].label == "a<bbox_id>[3-4]</bbox_id>b"


def test_many_boxes_in_order_and_each_span_read_once():
    text = '{"bbox_2d": [1, 2, 3, 4]} ' + " ".join(f"[{i}, 1, 2, 3]" for i in range(3000)) + " <|box_start|>(5,6),(7,8)<|box_end|> (9,9),(10,10)"
    boxes = find_boxes(text)
    assert [b.kind for b in boxes[:2]] == ["json", "list"] and len(boxes) == 3003
    assert [b.values[0] for b in boxes[1:3001]] == list(range(3000))
    assert [(b.kind, b.values) for b in boxes[-2:]] == [("box_tokens", (5, 6, 7, 8)), ("pair", (9, 9, 10, 10))]
    long_label = '{"bbox_2d": [1, 2, 3, 4], "label": "' + "y" * 5000 + '"}'
    assert find_boxes(long_label)[0].kind == "json" and len(find_boxes(long_label)) == 1
