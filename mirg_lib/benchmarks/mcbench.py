"""MC-Bench (Xu et al. 2024), multi-context visual grounding: a text prompt over two images, every
instance it names in either image boxed (none, for a negative sample). The v2 abstract of Zhang et al.
reports it (+6.37 %).

The published layout (``mc-bench_v0.2_val.json``), one COCO-like object: ``descriptions`` (``id``,
``images_id``: the sample's two image ids, ``text``, ``positive_sample``, ``text_style``: Referring,
Comparison or Reasoning), ``images`` (``id``, ``file_name``, ``width``, ``height``, ``text_id``,
``inter_img_id``), ``annotations`` (``image_id``, ``text_id``, ``category_id``: the instance's group,
"group 1" .. "group 7", absolute ``[x, y, w, h]`` ``bbox``) and ``categories``. One item per description.

A reply's boxes are every box of its answer (:func:`~mirg_lib.benchmarks.detection.reply_boxes`'s
notations and frames), each in the image named last before it ("Image 2: ..."; a ``<bbox_id>[N-M]``
trajectory names its own), image 1 when none is named. A reply gives one group.

Scored as MC-Bench's official ``eval_mc_bench.py`` scores it:

* **instance level**: AP50 by pycocotools, averaged over groups weighted by their number of ground-truth
  boxes; where a sample's ground truth has several groups, the reply's boxes are given the group whose
  boxes they match best (the mean IoU of an optimal one-to-one matching, over both images), as the official
  code permutes predicted groups;
* **image level**: a sample is right when, in each of its two images, the reply has a box exactly when the
  ground truth has one.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..boxes import Box, Frame, iou_xyxy
from ..formats import RecordError
from ..parsing import IMAGE_NUM_RE, answer_region, find_boxes, parse_response
from ._rows import Row, image_file
from .coco import field_of, section, xywh_box
from .coco import images as coco_images
from .coco import load as load_coco
from .detection import MAX_BOXES, box_pixels, coco_ap

NAME = "mc_bench"
_EXACT_UP_TO = 7  # an optimal matching by enumeration up to this many boxes a side (7! = 5,040); greedy beyond


@dataclass
class MCBenchItem:
    """One description over two images; ``truth[k]``: the (group, box) pairs of image k + 1."""

    id: str
    subtask: str
    images: list[str]
    question: str
    image_ids: list[int]
    sizes: list[tuple[int, int]]
    truth: list[list[tuple[int, Box]]]
    positive: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def looks_like(record: Any) -> bool:
    return isinstance(record, dict) and "descriptions" in record and "annotations" in record


def read(path: str | os.PathLike, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[MCBenchItem]:
    """Every sample of a local MC-Bench annotation file."""
    from ..paths import runs_dir

    path = Path(path)
    cache = Path(cache) if cache is not None else runs_dir() / "benchmarks" / "mc_bench_images"
    root = Path(image_root) if image_root is not None else path.parent
    data = load_coco(path)
    imgs = coco_images(path, data)
    groups = {field_of(path, "categories", i, e, "id", int) for i, e in enumerate(section(path, data, "categories"))}
    truth: dict[int, list[tuple[int, Box]]] = {}
    for i, e in enumerate(section(path, data, "annotations")):
        iid = field_of(path, "annotations", i, e, "image_id", int)
        if iid not in imgs:
            raise RecordError(path, i, "annotations.image_id", f"no image {iid} in 'images'")
        group = field_of(path, "annotations", i, e, "category_id", int)
        if group not in groups:
            raise RecordError(path, i, "annotations.category_id", f"no group {group} in 'categories'")
        size = (imgs[iid]["width"], imgs[iid]["height"])
        truth.setdefault(iid, []).append((group, Box(*xywh_box(path, i, e, size), Frame.ABS, size)))
    positions = {iid: k for k, iid in enumerate(imgs)}
    items = []
    used: set[int] = set()
    seen: set[int] = set()
    for i, d in enumerate(section(path, data, "descriptions")):
        did = field_of(path, "descriptions", i, d, "id", int)
        pair = field_of(path, "descriptions", i, d, "images_id", list)
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v in imgs for v in pair):
            raise RecordError(path, i, "descriptions.images_id", f"expected the ids of its two images, got {pair!r:.60}")
        if pair[0] == pair[1] or any(v in used for v in pair):
            raise RecordError(path, i, "descriptions.images_id", f"images {pair} are not two images of this sample alone (each image belongs to one sample)")
        used.update(pair)
        if did in seen:
            raise RecordError(path, i, "descriptions.id", f"description id {did} appears twice")
        seen.add(did)
        text = field_of(path, "descriptions", i, d, "text", str).strip()
        if not text:
            raise RecordError(path, i, "descriptions.text", "empty")
        style = d.get("text_style", "all")
        if not isinstance(style, str) or not style.strip():
            raise RecordError(path, i, "descriptions.text_style", f"expected a non-empty string, got {style!r:.40}")
        positive = d.get("positive_sample", True)
        if not isinstance(positive, bool):
            raise RecordError(path, i, "descriptions.positive_sample", f"expected true or false, got {positive!r:.40}")
        files = [image_file(Row(path, positions[iid], imgs[iid]), "images.file_name", imgs[iid]["file_name"], root, cache) for iid in pair]
        extra = {k: v for k, v in d.items() if k not in ("id", "images_id", "text", "text_style", "positive_sample")}
        items.append(MCBenchItem(f"mc_bench/{did}", style, files, text, list(pair), [(imgs[v]["width"], imgs[v]["height"]) for v in pair],
                                 [list(truth.get(iid, [])) for iid in pair], positive, extra))
    return items


def placed_boxes(reply: object, sizes: list[tuple[int, int]], frame: str = "auto", seen_sizes: list[tuple[int, int]] | None = None) -> list[list[tuple[float, float, float, float]]]:
    """The reply's boxes per image (pixels of that image): each in the image named last before it."""
    out: list[list[tuple[float, float, float, float]]] = [[] for _ in sizes]
    if not isinstance(reply, str):
        return out
    _, region = answer_region(reply)
    traj = [o for o in parse_response(region).trajectory if o.box is not None]  # the answer's, not the reasoning's
    if traj:
        found = [(o.image, o.box) for o in traj[:MAX_BOXES]]
    else:
        names = [(m.start(), int(m.group(1) or m.group(2))) for m in IMAGE_NUM_RE.finditer(region)]
        found, k = [], 0
        for fb in find_boxes(region)[:MAX_BOXES]:
            while k < len(names) and names[k][0] < fb.start:  # both in order of appearance: one pass
                k += 1
            found.append((names[k - 1][1] if k else 1, fb.values))
    for image, values in found:
        if 1 <= image <= len(sizes):
            box = box_pixels(values, sizes[image - 1], frame, seen_sizes[image - 1] if seen_sizes else None)
            if box is not None:
                out[image - 1].append(box)
    return out


def _matched_ious(dts: list[tuple[float, ...]], gts: list[tuple[float, ...]]) -> list[float]:
    """The IoUs of a one-to-one matching of ``dts`` to ``gts`` with the largest total: exact (every
    assignment of the smaller side) up to ``_EXACT_UP_TO`` boxes a side, greedy by IoU beyond."""
    if not dts or not gts:
        return []
    m = [[iou_xyxy(d, g) for g in gts] for d in dts]
    if len(dts) > len(gts):
        m = [list(col) for col in zip(*m, strict=True)]
    rows, cols = len(m), len(m[0])
    if cols <= _EXACT_UP_TO:
        best = max((tuple(m[r][c] for r, c in enumerate(perm)) for perm in itertools.permutations(range(cols), rows)), key=sum)
        return list(best)
    used_r: set[int] = set()
    used_c: set[int] = set()
    vals = []
    for v, r, c in sorted(((m[r][c], r, c) for r in range(rows) for c in range(cols)), reverse=True):
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            vals.append(v)
    return vals


def score_mc_bench(items: list[MCBenchItem], replies: list[object], frame: str = "auto", seen_sizes: list[Any] | None = None) -> dict[str, Any]:
    """Instance-level AP50 (weighted over groups) and image-level accuracy, over all items and per text style."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} items but {len(replies)} replies")
    placed = [placed_boxes(r, it.sizes, frame, (seen_sizes[i] if seen_sizes else None)) for i, (it, r) in enumerate(zip(items, replies, strict=True))]

    def summary(idx: list[int]) -> dict[str, Any]:
        images, truths, dets, right = {}, [], [], 0
        groups: set[int] = set()
        for i in idx:
            it, boxes = items[i], placed[i]
            for iid, size in zip(it.image_ids, it.sizes, strict=True):
                images[iid] = size
            truths += [(iid, g, b.coords) for iid, tr in zip(it.image_ids, it.truth, strict=True) for g, b in tr]
            present = sorted({g for tr in it.truth for g, _ in tr})
            groups |= set(present)
            group = present[0] if present else 1
            if len(present) > 1:  # the group the reply's boxes match best, as the official code permutes groups
                def mean_iou(g: int, it=it, boxes=boxes) -> float:
                    vals = [v for k in range(2) for v in _matched_ious(boxes[k], [b.coords for gg, b in it.truth[k] if gg == g])]
                    return sum(vals) / len(vals) if vals else 0.0
                group = max(present, key=mean_iou)
            dets += [(iid, group, b) for iid, bs in zip(it.image_ids, boxes, strict=True) for b in bs]
            right += all(bool(tr) == bool(bs) for tr, bs in zip(it.truth, boxes, strict=True))
        cats = {g: f"group {g}" for g in groups | {1}}
        ap = coco_ap(images, truths, cats, dets)
        counts = {g: sum(1 for _, gg, _ in truths if gg == g) for g in sorted(cats)}
        total = sum(counts.values())
        weighted = 0.0
        if ap["precision"] is not None and total:
            for k, g in enumerate(sorted(cats)):
                p = ap["precision"][0, :, k, 0, 2]  # IoU 0.5, every recall, area all, 100 detections
                p = p[p > -1]
                if p.size:
                    weighted += counts[g] / total * float(p.mean())
        return {"n": len(idx), "ap50": 100.0 * weighted, "accuracy": 100.0 * right / len(idx), "detections": len(dets)}

    styles: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        styles.setdefault(it.subtask, []).append(i)
    return {
        "metric": "ap50",
        "all": summary(list(range(len(items)))) if items else None,
        "subtasks": {s: summary(idx) for s, idx in sorted(styles.items())},
        "unreadable": sum(not any(p) for p in placed),
    }
