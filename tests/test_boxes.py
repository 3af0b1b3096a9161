import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirg_lib.boxes import Box, Frame, format_box_tokens, iou, iou_xyxy, qwen25_resized_size

unit = st.floats(0, 1, allow_nan=False)
sizes = st.tuples(st.integers(28, 4000), st.integers(28, 4000))


@st.composite
def rel_boxes(draw):
    x1, x2 = sorted(draw(st.lists(unit, min_size=2, max_size=2)))
    y1, y2 = sorted(draw(st.lists(unit, min_size=2, max_size=2)))
    return Box(x1, y1, x2, y2, Frame.REL1)


@given(rel_boxes(), sizes)
def test_round_trips_through_every_frame(box, size):
    for path in ([Frame.REL1000], [Frame.ABS], [Frame.REL1000, Frame.ABS], [Frame.ABS, Frame.REL1000]):
        b = box
        for f in path:
            b = b.to(f, size=size)
            assert b.frame is f
        back = b.to(Frame.REL1)
        for u, v in zip(back.coords, box.coords, strict=True):
            assert math.isclose(u, v, abs_tol=1e-9)


def test_known_conversions():
    b = Box(0.25, 0.5, 0.75, 1.0)
    assert b.to("rel1000").coords == (250.0, 500.0, 750.0, 1000.0)
    a = b.to(Frame.ABS, size=(640, 480))
    assert a.coords == (160.0, 240.0, 480.0, 480.0) and a.size == (640, 480)
    # abs at one size to abs at another (the resized model input): through the relative frame
    assert Box(10, 20, 30, 40, Frame.ABS, (100, 200)).to(Frame.ABS, size=(200, 100)).coords == (20.0, 10.0, 60.0, 20.0)


def test_abs_needs_a_size():
    with pytest.raises(ValueError, match="width, height"):
        Box(1, 2, 3, 4, Frame.ABS)
    with pytest.raises(ValueError, match="abs"):
        Box(0.1, 0.1, 0.2, 0.2).to(Frame.ABS)
    with pytest.raises(ValueError, match="unknown coordinate frame"):
        Box(0, 0, 1, 1, "pixels")


def test_iou_values_and_degenerate_cases():
    assert iou_xyxy([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert math.isclose(iou_xyxy([0, 0, 2, 1], [1, 0, 3, 1]), 1 / 3)
    assert iou_xyxy([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    for bad in ([1, 1, 0, 0], [0, 0, 0, 1], [0, 0, float("nan"), 1], [0, 0, float("inf"), 1], [1, 2, 3], "abcd", None):
        assert iou_xyxy([0, 0, 1, 1], bad) == 0.0
    # frames are reconciled before comparing
    assert math.isclose(iou(Box(0.1, 0.1, 0.5, 0.5), Box(100, 100, 500, 500, Frame.REL1000)), 1.0)
    assert math.isclose(iou(Box(0.1, 0.1, 0.5, 0.5), Box(10, 20, 50, 100, Frame.ABS, (100, 200))), 1.0)


@given(rel_boxes(), rel_boxes())
def test_iou_is_symmetric_and_bounded(a, b):
    v = iou(a, b)
    assert 0.0 <= v <= 1.0
    assert math.isclose(v, iou(b, a))


def test_box_tokens_and_validity():
    assert format_box_tokens(Box(0.1234, 0.5, 0.9, 1.0)) == "<|box_start|>(123,500),(900,1000)<|box_end|>"
    assert Box(0.1, 0.1, 0.2, 0.2).is_proper and not Box(0.2, 0.1, 0.1, 0.2).is_proper
    assert Box(0, 0, 1000, 1000, Frame.REL1000).inside_image()
    assert not Box(0, 0, 1100, 1000, Frame.REL1000).inside_image()


def test_qwen25_frame_uses_the_processors_resize():
    w, h = qwen25_resized_size(640, 480)
    assert w % 28 == 0 and h % 28 == 0
    assert abs(w / h - 640 / 480) < 0.1


def test_integers_too_large_for_a_float_give_zero_not_an_error():
    huge = 10**400
    assert iou_xyxy([0, 0, huge, 1], [0, 0, 1, 1]) == 0.0 and iou_xyxy([0, 0, 1, 1], [0, 0, 1, huge]) == 0.0
    assert iou(Box(0, 0, huge, 1000, Frame.REL1000), Box(0, 0, 1, 1)) == 0.0
    assert iou(Box(0, 0, 5, 5, Frame.ABS, (huge, 10)), Box(0, 0, 1, 1)) == 0.0
    b = Box(0, 0, huge, 1)
    assert not b.is_finite and not b.is_proper and not b.inside_image()
