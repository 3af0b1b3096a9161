"""Rewards get literal completions and must give exact numbers; broken outputs give 0, never raise."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirg_lib.rewards import (
    RECIPE_REWARDS,
    REWARD_FUNCS,
    get_rewards,
    mirg_format,
    mirg_image,
    mirg_object,
    total_reward,
    zhang_accuracy,
    zhang_format,
)

GT = [0.2, 0.2, 0.6, 0.6]  # rel1


def zhang(box, label="x"):
    return f'<think>look</think><answer>```json\n{{"bbox_2d": {box}, "label": "{label}"}}\n```</answer>'


def test_zhang_exact_values():
    comps = [
        zhang([200, 200, 600, 600]),  # perfect, 0-1000 read by the auto frame
        zhang([200, 200, 400, 600]),  # half of the box: IoU 0.5
        zhang([0.2, 0.2, 0.6, 0.6]),  # 0-1 relative
        "<answer>[200, 200, 600, 600]</answer>",  # right box, wrong format
        zhang([600, 600, 200, 200]),  # inverted
        zhang([0, 0, 0, 0]),  # degenerate
        zhang([200, 200, 1600, 600]),  # out of image
        '<think>a</think><answer>{"bbox_2d": [NaN, 1, 2, 3]}</answer>',  # non-finite
        "",
    ]
    kw = {"answer": [GT] * len(comps)}
    acc = zhang_accuracy(comps, **kw)
    fmt = zhang_format(comps, **kw)
    assert acc[0] == pytest.approx(1.0) and acc[1] == pytest.approx(0.5) and acc[2] == pytest.approx(1.0)
    assert acc[3] == pytest.approx(1.0)
    assert acc[4:] == [0.0] * 5
    assert fmt == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    total = total_reward(RECIPE_REWARDS["zhang"], comps, **kw)
    assert total[0] == pytest.approx(1.5) and total[1] == pytest.approx(1.0) and total[3] == pytest.approx(1.0)


def test_the_format_reward_wants_the_rows_box_notation():
    tokens = "<think>a</think><answer><|object_ref_start|>the x<|object_ref_end|><|box_start|>(200,200),(600,600)<|box_end|></answer>"
    bare = "<think>a</think><answer>(200,200),(600,600)</answer>"
    comps = [zhang([200, 200, 600, 600]), tokens, bare, tokens.replace("(600,600)", "(100,600)")]
    assert zhang_format(comps, answer=[GT] * 4) == [1.0, 0.0, 0.0, 0.0]  # default: the paper's JSON
    assert zhang_format(comps, answer=[GT] * 4, box_notation=["tokens"] * 4) == [0.0, 1.0, 0.0, 0.0]
    assert zhang_accuracy(comps[:3], answer=[GT] * 3, box_notation=["tokens"] * 3) == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="box_notation"):
        zhang_format(comps[:1], answer=[GT], box_notation=["xml"])


def test_frames_from_the_dataset():
    comps = [zhang([64, 64, 192, 192])]  # pixels of a 320x320 resized input (Qwen2.5-VL)
    assert zhang_accuracy(comps, answer=[GT], box_frame=["abs"], image_size=[[320, 320]])[0] == pytest.approx(1.0)
    # the same numbers read as 0-1000 are a different, wrong box
    assert zhang_accuracy(comps, answer=[GT], box_frame=["rel1000"])[0] < 0.2
    # abs without a size is unreadable: 0, not an exception
    assert zhang_accuracy(comps, answer=[GT], box_frame=["abs"])[0] == 0.0


def test_mirg_rewards():
    good = (
        "<think>Reference <bbox_id>[1-1]</bbox_id><|object_ref_start|>cup<|object_ref_end|><|box_start|>(10,10),(20,20)<|box_end|></think>"
        "<answer><bbox_id>[3-2]</bbox_id><|box_start|>(200,200),(600,600)<|box_end|></answer>"
    )
    wrong_image = good.replace("[3-2]", "[2-2]")
    text_image = "<think>t</think><answer>It is in the third image. <|box_start|>(200,200),(600,600)<|box_end|></answer>"
    no_box = "<think>t</think><answer>the third image</answer>"
    comps = [good, wrong_image, text_image, no_box, [{"role": "assistant", "content": good}]]
    kw = {"answer": [GT] * 5, "target_image": [3] * 5}
    assert mirg_format(comps, **kw) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert mirg_image(comps, **kw) == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert [round(v, 6) for v in mirg_object(comps, **kw)] == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert total_reward(RECIPE_REWARDS["mirg"], comps, **kw) == pytest.approx([3.0, 2.0, 3.0, 1.0, 3.0])


def test_registry_and_weights():
    funcs, ws = get_rewards(RECIPE_REWARDS["zhang"])
    assert [f.__name__ for f in funcs] == ["zhang_accuracy", "zhang_format"] and ws == [1.0, 0.5]
    with pytest.raises(ValueError, match="unknown reward 'iou'"):
        get_rewards({"iou": 1.0})
    with pytest.raises(ValueError, match="finite"):
        get_rewards({"zhang_format": float("nan")})


def test_missing_dataset_column_is_a_clear_error():
    with pytest.raises(ValueError, match="'answer'"):
        zhang_accuracy(["x"])
    with pytest.raises(ValueError, match="'target_image'"):
        mirg_image(["x"], answer=[GT])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=4))
def test_any_output_gets_a_finite_reward(texts):
    kw = {"answer": [GT] * len(texts), "target_image": [1] * len(texts)}
    for name, f in REWARD_FUNCS.items():
        out = f(texts, **kw)
        assert len(out) == len(texts), name
        assert all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in out), name


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True)), min_size=4, max_size=4))
def test_any_numbers_in_the_answer_get_a_finite_reward(vals):
    text = '<think>t</think><answer>{{"bbox_2d": [{}, {}, {}, {}]}}</answer>'.format(*tuple(vals))
    for f in (zhang_accuracy, mirg_object):
        v = f([text], answer=[GT])[0]
        assert math.isfinite(v) and 0.0 <= v <= 1.0


def test_dataset_values_too_large_for_a_float_give_zero():
    comp = [zhang([200, 200, 600, 600])]
    assert zhang_accuracy(comp, answer=[[10**400, 0.2, 0.6, 0.6]]) == [0.0]
    assert mirg_image(comp, answer=[GT], target_image=[float("inf")]) == [0.0]
    assert mirg_image(["<answer>the first image</answer>"], answer=[GT], target_image=[1.0]) == [1.0]


def test_a_309_digit_integer_in_the_box_is_no_coordinate():
    text = zhang("[" + "1" * 309 + ", 200, 600, 600]")
    kw = {"answer": [GT], "target_image": [1]}
    assert zhang_accuracy([text], **kw) == [0.0] and zhang_format([text], **kw) == [0.0] and mirg_object([text], **kw) == [0.0]
    assert zhang_accuracy([text.replace("1" * 309, "200")], **kw)[0] == pytest.approx(1.0)
