"""Reading COCO-style annotation files (ODinW's subsets, MC-Bench): the sections as checked records.

A bad entry is a :class:`~mirg_lib.formats.RecordError` naming the file, the entry's index in its section
and the field as ``section.field`` (``annotations.bbox``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..formats import RecordError, decode_json, read_text
from ..scoring import MAX_IMAGE_SIDE


def load(path: Path) -> dict[str, Any]:
    text = read_text(path)
    start = len(text) - len(text.lstrip())
    value, _ = decode_json(path, text, start)
    if not isinstance(value, dict):
        raise RecordError(path, None, None, f"expected a COCO-style JSON object, got {type(value).__name__}")
    return value


def section(path: Path, data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    entries = data.get(name)
    if not isinstance(entries, list):
        raise RecordError(path, None, name, f"expected a list, got {type(entries).__name__}")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise RecordError(path, i, name, f"expected an object, got {type(e).__name__}")
    return entries


def field_of(path: Path, sec: str, i: int, entry: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if entry.get(name) is None:
        raise RecordError(path, i, f"{sec}.{name}", "missing")
    value = entry[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RecordError(path, i, f"{sec}.{name}", f"expected {' or '.join(k.__name__ for k in kinds)}, got {value!r:.60}")
    return value


def images(path: Path, data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """id -> the image entry (``file_name``, ``width``, ``height`` checked); a repeated id is an error."""
    out: dict[int, dict[str, Any]] = {}
    for i, e in enumerate(section(path, data, "images")):
        iid = field_of(path, "images", i, e, "id", int)
        field_of(path, "images", i, e, "file_name", str)
        for side in ("width", "height"):
            if not 0 < field_of(path, "images", i, e, side, int) <= MAX_IMAGE_SIDE:
                raise RecordError(path, i, f"images.{side}", f"expected a positive size of at most {MAX_IMAGE_SIDE} pixels, got {e[side]}")
        if iid in out:
            raise RecordError(path, i, "images.id", f"image id {iid} appears twice")
        out[iid] = e
    return out


def xywh_box(path: Path, i: int, entry: dict[str, Any], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """An annotation's ``bbox`` (absolute ``[x, y, w, h]``) as xyxy pixels, checked against its image."""
    raw = field_of(path, "annotations", i, entry, "bbox", list)
    try:
        vals = [float(v) for v in raw if isinstance(v, (int, float)) and not isinstance(v, bool)]
    except OverflowError:
        vals = []
    if len(raw) != 4 or len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise RecordError(path, i, "annotations.bbox", f"expected 4 finite numbers [x, y, w, h], got {raw!r:.60}")
    x, y, w, h = vals
    W, H = size
    if w <= 0 or h <= 0:
        raise RecordError(path, i, "annotations.bbox", f"not a box of positive size ({raw})")
    box = (max(0.0, x), max(0.0, y), min(float(W), x + w), min(float(H), y + h))
    if x < -0.01 * W or y < -0.01 * H or x + w > 1.01 * W or y + h > 1.01 * H or box[2] <= box[0] or box[3] <= box[1]:
        raise RecordError(path, i, "annotations.bbox", f"lies outside its {W}x{H} image ({raw})")
    return box
