"""LISA-Grounding (the box version of LISA's reasoning segmentation test), Zhang et al.'s Table 4.

Two published layouts, both read: ``image``, ``problem`` (the instruction), ``solution`` (absolute
``[x1, y1, x2, y2]``); and ``image_path``, ``instruction``, ``boxes`` (one absolute ``[x1, y1, x2, y2]``,
or a list holding one). Image paths are relative to ``image_root`` (default: the file's folder). Scored by
Acc@0.5 and mIoU (:func:`~mirg_lib.benchmarks.grounding.score_grounding`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._rows import Row, image_file, need, read_rows
from .grounding import GroundingItem, image_size, pixel_box

NAME = "lisa"
LAYOUTS = (("image", "problem", "solution"), ("image_path", "instruction", "boxes"))


def looks_like(record: Any) -> bool:
    return isinstance(record, dict) and any(all(k in record for k in layout) for layout in LAYOUTS)


def parse(row: Row, root: Path, cache: Path) -> GroundingItem:
    if not isinstance(row.value, dict):
        raise row.error(None, f"expected an object, got {type(row.value).__name__}")
    image_key, text_key, box_key = LAYOUTS[1] if "image_path" in row.value else LAYOUTS[0]
    image = image_file(row, image_key, need(row, image_key, str), root, cache)
    question = need(row, text_key, str).strip()
    raw = need(row, box_key, list)
    if box_key == "boxes" and raw and isinstance(raw[0], list):
        if len(raw) != 1:
            raise row.error(box_key, f"expected one box, got {len(raw)}")
        raw = raw[0]
    box = pixel_box(row, box_key, raw, image_size(row, image_key, image), "xyxy")
    extra = {k: v for k, v in row.value.items() if k not in (image_key, text_key, box_key)}
    return GroundingItem(f"{row.file.stem}/{row.index}", "lisa", [image], question, box, 1, extra)


def read(path: str | os.PathLike, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[GroundingItem]:
    """Every item of a local LISA-Grounding file (or a folder of them)."""
    from ..paths import runs_dir

    cache = Path(cache) if cache is not None else runs_dir() / "benchmarks" / "lisa_images"
    return [parse(row, Path(image_root) if image_root is not None else row.file.parent, cache) for row in read_rows(path)]
