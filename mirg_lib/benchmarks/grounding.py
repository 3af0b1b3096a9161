"""Grounding benchmarks (Ref-L4, LISA-Grounding, ReVOS-Grounding): the item, reading its box from a
record, and the score.

An item's target is one box in one of its images, kept in the benchmark's own pixels (``Box`` in the
``abs`` frame, with the image's size) and compared in 0-1 relative coordinates, which leaves IoU unchanged.
A reply's box is read as MIG-Bench's are (:func:`mirg_lib.scoring.predicted_box`: Migician's protocol by
default, the first box of the ``<answer>`` block or the reply, its frame ``auto`` unless told: ``abs`` with
the size the model saw the image at, for Qwen2.5-VL's pixel answers).

Scores, as the benchmarks' official code reports them: Acc@0.5 (a box with IoU >= 0.5 is right; Ref-L4 also
Acc@0.75, Acc@0.9 and mAcc, the mean of the accuracies at 0.5, 0.55, ..., 0.95), and mIoU (the mean IoU,
an unreadable reply 0). Over all items and per subtask; an unreadable reply counts as wrong and apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..boxes import Box, Frame, iou_xyxy
from ..scoring import Prediction, predicted_box
from ._rows import Row

THRESHOLDS = (0.5, 0.75, 0.9)
MACC_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.5:0.95, Ref-L4's mAcc


@dataclass
class GroundingItem:
    """One referring question over ``images`` whose answer is ``box`` (pixels of image ``target_image``, 1-based)."""

    id: str
    subtask: str
    images: list[str]
    question: str
    box: Box
    target_image: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> tuple[float, float, float, float]:
        """The box in 0-1 relative coordinates of its image."""
        return self.box.to(Frame.REL1).coords


def image_size(row: Row, name: str, path: str) -> tuple[int, int]:
    """The (width, height) of an image file, from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise row.error(name, f"{path} is not a readable image ({e})") from None


def pixel_box(row: Row, name: str, value: Any, size: tuple[int, int], layout: str) -> Box:
    """A record's box in pixels, ``layout`` ``xyxy`` or ``xywh``; refused unless 4 finite numbers making a
    box of positive size inside the image (by at most 1 % outside, clipped)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise row.error(name, f"expected 4 numbers [{', '.join(layout)}] in pixels, got {value!r:.80}")
    try:
        vals = [float(v) for v in value if not isinstance(v, bool) and isinstance(v, (int, float))]
    except OverflowError:
        vals = []
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise row.error(name, f"expected 4 finite numbers, got {value!r:.80}")
    x1, y1, a, b = vals
    x2, y2 = (x1 + a, y1 + b) if layout == "xywh" else (a, b)
    w, h = size
    if x2 <= x1 or y2 <= y1:
        raise row.error(name, f"not a box of positive size ({layout} {vals})")
    clipped = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
    if x1 < -0.01 * w or y1 < -0.01 * h or x2 > 1.01 * w or y2 > 1.01 * h or clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise row.error(name, f"lies outside its {w}x{h} image ({layout} {vals}); is it in another layout or frame?")
    return Box(*clipped, Frame.ABS, size)


def reply_box(reply: object, frame: str = "auto", seen_size: tuple[int, int] | None = None, protocol: str = "migician") -> tuple[float, float, float, float] | None:
    """The box a reply gives, in 0-1 relative coordinates, or None (never raises)."""
    text = reply if isinstance(reply, str) else ""
    return predicted_box(Prediction(0, text, frame, seen_size), protocol)


def score_grounding(items: list[GroundingItem], replies: list[object], frame: str = "auto", seen_sizes: list[tuple[int, int] | None] | None = None, protocol: str = "migician") -> dict[str, Any]:
    """Acc@0.5 / 0.75 / 0.9, mAcc (0.5:0.95) and mIoU over all items and per subtask (percentages)."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} items but {len(replies)} replies")
    sizes = seen_sizes or [None] * len(items)
    ious: list[float] = []
    unreadable: list[bool] = []
    for it, reply, size in zip(items, replies, sizes, strict=True):
        box = reply_box(reply, frame, size, protocol)
        unreadable.append(box is None)
        ious.append(0.0 if box is None else iou_xyxy(it.answer, box))

    def summary(idx: list[int]) -> dict[str, Any]:
        vals = [ious[i] for i in idx]
        out: dict[str, Any] = {"n": len(idx)}
        for t in THRESHOLDS:
            out[f"acc@{t}"] = 100.0 * sum(v >= t for v in vals) / len(vals)
        out["macc"] = sum(100.0 * sum(v >= t for v in vals) / len(vals) for t in MACC_THRESHOLDS) / len(MACC_THRESHOLDS)
        out["miou"] = 100.0 * sum(vals) / len(vals)
        out["unreadable"] = sum(unreadable[i] for i in idx)
        return out

    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.subtask, []).append(i)
    return {
        "metric": "acc@0.5",
        "all": summary(list(range(len(items)))) if items else None,
        "subtasks": {t: summary(idx) for t, idx in sorted(groups.items())},
        "protocol": protocol,
        "ious": ious,
    }
