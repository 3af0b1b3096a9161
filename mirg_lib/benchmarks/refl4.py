"""Ref-L4 (Chen et al. 2024), single-image referring with long expressions, Zhang et al.'s Table 4.

The published layout: one file per split (``val``, ``test``) of records with ``caption`` (the expression),
``bbox`` (absolute ``[x, y, w, h]``), ``file_name`` (the image, relative to ``image_root``, default the
file's folder), ``width`` / ``height`` (read from the image when absent) and more fields kept as they are
(``id``, ``image_id``, ``ori_category_id``, ``is_rewrite``, ``split``...). Scored by Acc@0.5, Acc@0.75,
Acc@0.9, mAcc (0.5:0.95) and mIoU (:func:`~mirg_lib.benchmarks.grounding.score_grounding`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..scoring import MAX_IMAGE_SIDE
from ._rows import Row, image_file, need, read_rows
from .grounding import GroundingItem, image_size, pixel_box

NAME = "ref_l4"
FIELDS = ("caption", "bbox", "file_name", "width", "height")


def looks_like(record: Any) -> bool:
    return isinstance(record, dict) and "caption" in record and "bbox" in record and "file_name" in record


def parse(row: Row, root: Path, cache: Path) -> GroundingItem:
    caption = need(row, "caption", str).strip()
    image = image_file(row, "file_name", need(row, "file_name", str), root, cache)
    w, h = row.value.get("width"), row.value.get("height")
    if w is None or h is None:
        size = image_size(row, "file_name", image)
    else:
        for side, v in (("width", w), ("height", h)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_IMAGE_SIDE:
                raise row.error(side, f"expected a positive integer of at most {MAX_IMAGE_SIDE} pixels, got {v!r:.40}")
        size = (w, h)
    box = pixel_box(row, "bbox", need(row, "bbox", list), size, "xywh")
    split = row.value.get("split")
    subtask = split if isinstance(split, str) and split else row.file.stem
    ident = row.value.get("id", row.index)
    extra = {k: v for k, v in row.value.items() if k not in FIELDS}
    extra["caption"] = caption
    return GroundingItem(f"{subtask}/{ident}", subtask, [image], f"Find the object this describes: {caption}", box, 1, extra)


def read(path: str | os.PathLike, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[GroundingItem]:
    """Every item of a local Ref-L4 split file (or a folder of them)."""
    from ..paths import runs_dir

    cache = Path(cache) if cache is not None else runs_dir() / "benchmarks" / "ref_l4_images"
    return [parse(row, Path(image_root) if image_root is not None else row.file.parent, cache) for row in read_rows(path)]
