"""ReVOS-Grounding (the box version of ReVOS's reasoning video segmentation), Zhang et al.'s Table 4.

Records with ``video_id``, ``frames`` (the frames' image paths, relative to ``image_root``, default the
file's folder), ``question`` and ``bbox_list`` (one entry per frame: the target's absolute
``[x1, y1, x2, y2]`` in the one frame that holds it, null or ``[]`` in the others). The frames are sent as
one multi-image prompt; the reply's box is compared with the target's in its frame. Scored by Acc@0.5 and
mIoU (:func:`~mirg_lib.benchmarks.grounding.score_grounding`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._rows import Row, image_file, need, read_rows
from .grounding import GroundingItem, image_size, pixel_box

NAME = "revos"
FIELDS = ("video_id", "frames", "question", "bbox_list")


def looks_like(record: Any) -> bool:
    return isinstance(record, dict) and "video_id" in record and "bbox_list" in record


def parse(row: Row, root: Path, cache: Path) -> GroundingItem:
    video = need(row, "video_id", (str, int))
    frames = need(row, "frames", list)
    images = [image_file(row, f"frames[{j}]", p, root, cache) for j, p in enumerate(frames)]
    question = need(row, "question", str).strip()
    boxes = need(row, "bbox_list", list)
    if len(boxes) != len(frames):
        raise row.error("bbox_list", f"expected one entry per frame ({len(frames)}), got {len(boxes)}")
    held = [j for j, b in enumerate(boxes) if b not in (None, [])]
    if len(held) != 1:
        raise row.error("bbox_list", f"expected the target's box in exactly one frame, got boxes in {len(held)}")
    j = held[0]
    box = pixel_box(row, f"bbox_list[{j}]", boxes[j], image_size(row, f"frames[{j}]", images[j]), "xyxy")
    extra = {k: v for k, v in row.value.items() if k not in FIELDS}
    return GroundingItem(f"{video}/{row.index}", "revos", images, question, box, j + 1, extra)


def read(path: str | os.PathLike, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[GroundingItem]:
    """Every item of a local ReVOS-Grounding file (or a folder of them)."""
    from ..paths import runs_dir

    cache = Path(cache) if cache is not None else runs_dir() / "benchmarks" / "revos_images"
    return [parse(row, Path(image_root) if image_root is not None else row.file.parent, cache) for row in read_rows(path)]
