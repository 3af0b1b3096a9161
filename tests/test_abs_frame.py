"""Qwen2.5-VL's absolute-pixel frame end to end: rewards in GRPO rows, rejection judging and the
evaluation stage all read pixel boxes at the size the processor resized the image to (the most
reported reproduction bug is reading them at the original size, or as 0-1000)."""

import pytest
from PIL import Image

from mirg_lib.boxes import Box, Frame, qwen25_resized_size
from mirg_lib.cot import judge
from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint
from mirg_lib.formats import load_mig_bench
from mirg_lib.generation import seen_size
from mirg_lib.grpo import grpo_rows
from mirg_lib.items import first_per_task, item_from_mig, load_pool_items
from mirg_lib.models import build_processor, train_tokenizer
from mirg_lib.rewards import zhang_accuracy

# 112-pixel world images seen at 56 x 56: pixel boxes at the seen size are half those at the original
SMALL = 56 * 56


@pytest.fixture(scope="module")
def shrinking_processor(smoke_world):
    tok = train_tokenizer(["the red circle (1,2),(3,4)"] * 4, 400)
    return build_processor(tok, min_pixels=SMALL, max_pixels=SMALL)


def _abs_reply(rel, size, json_box=True):
    b = Box(*rel, frame=Frame.REL1).to(Frame.ABS, size=size).rounded()
    vals = [int(v) for v in b.coords]
    if json_box:
        return f'<think>found it</think><answer>{{"bbox_2d": [{vals[0]}, {vals[1]}, {vals[2]}, {vals[3]}]}}</answer>'
    return "<|box_start|>({},{}),({},{})<|box_end|>".format(*vals)


@pytest.mark.parametrize("size", [(112, 112), (300, 200), (1000, 37), (640, 480)])
def test_seen_size_is_qwen25_smart_resize(size):
    tok = train_tokenizer(["a b c"] * 4, 300)
    proc = build_processor(tok, min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    assert seen_size(proc, Image.new("RGB", size)) == qwen25_resized_size(*size, min_pixels=56 * 56, max_pixels=28 * 28 * 64)


def test_grpo_rows_carry_the_seen_size_and_rewards_use_it(smoke_world, shrinking_processor):
    items = load_pool_items(smoke_world.train_file)[:12]
    with pytest.raises(ValueError, match="needs the processor"):
        grpo_rows(items, "zhang", "abs")
    rows = grpo_rows(items, "zhang", "abs", shrinking_processor)
    assert all(r["image_size"] == [56, 56] for r in rows)
    replies = [_abs_reply(r["answer"], tuple(r["image_size"])) for r in rows]
    cols = {k: [r[k] for r in rows] for k in ("answer", "box_frame", "image_size")}
    assert min(zhang_accuracy(replies, **cols)) >= 0.5
    # the same pixel boxes read against the original 112-pixel image are a quarter of the area
    wrong = dict(cols, image_size=[[112, 112]] * len(rows))
    assert max(zhang_accuracy(replies, **wrong)) < 0.5
    assert "image_size" not in grpo_rows(items[:2], "zhang", "rel1000")[0]


def test_judge_reads_pixel_boxes(smoke_world):
    it = load_pool_items(smoke_world.train_file)[0]
    reply = _abs_reply(it.answer, (56, 56))
    assert judge("zhang", [reply], it, "abs", (56, 56)) == [True]
    assert judge("zhang", [reply], it, "abs", (112, 112)) == [False]


def test_evaluation_scores_pixel_boxes_at_the_seen_size(smoke_world, nano_checkpoint, shrinking_processor, monkeypatch, tmp_path):
    """Replies that are the ground truth in pixels of the 56-pixel seen image score 100 with
    ``frame: abs``, and not when read by Migician's 0-1000 rule."""
    records = first_per_task(load_mig_bench(smoke_world.test_file), None, 3)  # the order evaluation goes in
    root = smoke_world.test_file.parent
    queue = []

    def truth(model, processor, messages, images, **kw):
        out = []
        for msgs, ims in zip(messages, images, strict=True):
            r = queue.pop(0)
            assert r.question.strip() in msgs[0]["content"][-1]["text"]
            k = item_from_mig(r, root).target_image
            assert len(ims) == len(r.images)
            prefix = f"It is in image {k}. " if r.task == "group_grounding" else ""
            out.append(prefix + _abs_reply(r.answer, seen_size(processor, ims[k - 1]), json_box=False))
        return out

    monkeypatch.setattr("mirg_lib.generation.generate_batch", truth)
    queue[:] = records
    cfg = EvalConfig(prompt="plain", max_new_tokens=64, max_items_per_task=3, frame="abs")
    scores = evaluate_checkpoint(nano_checkpoint, smoke_world.test_file, cfg, tmp_path / "abs", model=object(), processor=shrinking_processor)
    assert scores["avg"] == 100.0
    lines = (tmp_path / "abs" / "predictions.jsonl").read_text().splitlines()
    assert all('"image_size": [56, 56]' in line for line in lines)
    queue[:] = records
    auto = evaluate_checkpoint(nano_checkpoint, smoke_world.test_file, EvalConfig(prompt="plain", max_new_tokens=64, max_items_per_task=3, frame="auto"), None, model=object(), processor=shrinking_processor)
    assert auto["avg"] < 20.0
