"""Detection-style benchmarks (ODinW, MC-Bench): every box a reply gives, and COCO AP by pycocotools.

A reply's boxes are every box of its ``<answer>`` block (else of the whole reply), read by
:func:`mirg_lib.parsing.find_boxes` in any notation (Qwen2-VL's box tokens, a JSON ``bbox_2d``, a pair of
corners, a list). Their frame: ``auto`` reads a box whose numbers are all <= 1 as 0-1 relative and any other
as Qwen2-VL's 0-1000; ``rel1`` / ``rel1000`` say which; ``abs`` reads pixels of the image as the model saw it
(``seen_size``: Qwen2.5-VL's resized input), mapped back to the image's own pixels. A reply with no box
detects nothing, which COCO AP scores as a miss, as Migician's ODinW evaluation scores an unparseable reply 0.
Boxes carry no confidence: every detection scores 1.0.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any

from ..boxes import Box, Frame
from ..parsing import answer_region, find_boxes

MAX_BOXES = 100  # COCO's maxDets: a reply's boxes beyond it are not scored


@dataclass
class DetectionItem:
    """Find every instance of ``category`` in image ``image_id`` (``boxes``: the ground truth, pixels)."""

    id: str
    subtask: str
    images: list[str]
    question: str
    category: str
    category_id: int
    image_id: int
    size: tuple[int, int]
    boxes: list[Box]
    extra: dict[str, Any] = field(default_factory=dict)


def box_pixels(values: tuple[float, ...], size: tuple[int, int], frame: str = "auto", seen_size: tuple[int, int] | None = None) -> tuple[float, float, float, float] | None:
    """Four numbers a reply wrote as ``(x1, y1, x2, y2)`` pixels of an image of ``size``, or None when they are
    not finite, inverted or of no size (the module's docstring has the frames)."""
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return None
    if frame == "auto":
        use = Frame.REL1 if max(abs(v) for v in values) <= 1 else Frame.REL1000
    else:
        use = Frame.parse(frame)
    if use is Frame.ABS and seen_size is None:
        raise ValueError("frame 'abs' needs the size each image was seen at")
    try:
        box = Box(*values, frame=use, size=seen_size if use is Frame.ABS else None).to(Frame.ABS, size)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return box.coords if box.is_proper else None


def reply_boxes(reply: object, size: tuple[int, int], frame: str = "auto", seen_size: tuple[int, int] | None = None) -> list[tuple[float, float, float, float]]:
    """Every box of ``reply`` as ``(x1, y1, x2, y2)`` pixels of an image of ``size``; any reply gets a list,
    never an error (boxes that are not finite, inverted or of no size are dropped)."""
    if not isinstance(reply, str):
        return []
    _, region = answer_region(reply)
    found = (box_pixels(fb.values, size, frame, seen_size) for fb in find_boxes(region)[:MAX_BOXES])
    return [b for b in found if b is not None]


def coco_ap(images: dict[int, tuple[int, int]], truths: list[tuple[int, int, tuple[float, float, float, float]]], categories: dict[int, str], detections: list[tuple[int, int, tuple[float, float, float, float]]]) -> dict[str, Any]:
    """COCO bbox AP by pycocotools: ``images`` id -> (width, height); ``truths`` and ``detections``: (image id,
    category id, xyxy pixels). Returns mAP (0.5:0.95), AP50 and AP75 in percent, and pycocotools' precision
    array (``precision[iou, recall, category, area, maxdets]``, categories in sorted id order)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "width": w, "height": h} for i, (w, h) in sorted(images.items())],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": xywh(b), "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0} for k, (i, c, b) in enumerate(truths)],
        "categories": [{"id": c, "name": n} for c, n in sorted(categories.items())],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not detections:
            return {"map": 0.0, "ap50": 0.0, "ap75": 0.0, "precision": None, "detections": 0}
        dt = gt.loadRes([{"image_id": i, "category_id": c, "bbox": xywh(b), "score": 1.0} for i, c, b in detections])
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(images)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(0.0, float(s)) * 100 for s in ev.stats[:3]]  # -1 (no ground truth) reads as 0
    return {"map": stats[0], "ap50": stats[1], "ap75": stats[2], "precision": ev.eval["precision"], "detections": len(detections)}


def score_detection(items: list[DetectionItem], replies: list[object], frame: str = "auto", seen_sizes: list[tuple[int, int] | None] | None = None) -> dict[str, Any]:
    """COCO mAP (0.5:0.95) and AP50 per subtask (an ODinW subset), and their mean over subtasks, as ODinW
    reports them; ``unreadable``: replies with no box."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} items but {len(replies)} replies")
    sizes = seen_sizes or [None] * len(items)
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.subtask, []).append(i)
    subtasks = {}
    for name, idx in sorted(groups.items()):
        images, truths, cats, dets, unreadable = {}, [], {}, [], 0
        for i in idx:
            it = items[i]
            images[it.image_id] = it.size
            cats[it.category_id] = it.category
            truths += [(it.image_id, it.category_id, b.coords) for b in it.boxes]
            found = reply_boxes(replies[i], it.size, frame, sizes[i])
            unreadable += not found
            dets += [(it.image_id, it.category_id, b) for b in found]
        ap = coco_ap(images, truths, cats, dets)
        subtasks[name] = {"n": len(idx), "map": ap["map"], "ap50": ap["ap50"], "ap75": ap["ap75"], "detections": ap["detections"], "unreadable": unreadable}
    return {
        "metric": "mAP",
        "subtasks": subtasks,
        "avg": sum(s["map"] for s in subtasks.values()) / len(subtasks) if subtasks else None,
        "avg_ap50": sum(s["ap50"] for s in subtasks.values()) / len(subtasks) if subtasks else None,
        "n": len(items),
        "unreadable": sum(s["unreadable"] for s in subtasks.values()),
    }
