"""ODinW (Li et al. 2022, "Object Detection in the Wild"), the five subsets of Zhang et al.'s ODinW table:
Oxford Pets, Pascal VOC, Wildfire Smoke, Open Poetry Vision, Vector.

The published layout: per subset (and variant), a COCO JSON per split (``test/annotations_without_background.json``
or ``_annotations.coco.json``) with ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``image_id``, ``category_id``, absolute ``[x, y, w, h]`` ``bbox``) and ``categories`` (``id``, ``name``);
images beside it (or under ``image_root``). Given a folder, every COCO JSON under it is one subset (only those
of ``test`` folders where there are any: ODinW is scored on its test split), named by its first folder below
the given one, and two files of one subset are refused; given a file, it is named by the nearest folder above
it that is no split name.

One item per image and category present in it: "Locate every <category> in the image.", answered with all
its boxes. Scored by COCO mAP (0.5:0.95) and AP50 per subset with pycocotools, averaged over subsets
(:func:`~mirg_lib.benchmarks.detection.score_detection`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..boxes import Box, Frame
from ..formats import RecordError
from ._rows import Row, files_of, image_file
from .coco import field_of, section, xywh_box
from .coco import images as coco_images
from .coco import load as load_coco
from .detection import DetectionItem

NAME = "odinw"
PAPER_SUBSETS = ("OxfordPets", "PascalVOC", "WildfireSmoke", "OpenPoetryVision", "VectorJune")  # as published
_SPLITS = {"train", "valid", "val", "test", "annotations", "minival", "large", "by-breed", "by-species", "mini_val"}


def looks_like(record: Any) -> bool:
    return isinstance(record, dict) and {"images", "annotations", "categories"} <= set(record) and "descriptions" not in record


def subset_name(file: Path, given: Path) -> str:
    if given.is_dir() and file != given:
        rel = file.relative_to(given).parts
        if len(rel) > 1:
            return rel[0]
    for parent in file.parents:
        if parent.name and parent.name.casefold() not in _SPLITS:
            return parent.name
    return file.stem


def read_file(path: Path, subset: str, image_root: Path | None, cache: Path) -> list[DetectionItem]:
    data = load_coco(path)
    imgs = coco_images(path, data)
    cats: dict[int, str] = {}
    for i, e in enumerate(section(path, data, "categories")):
        cats[field_of(path, "categories", i, e, "id", int)] = field_of(path, "categories", i, e, "name", str)
    truths: dict[tuple[int, int], list[Box]] = {}
    for i, e in enumerate(section(path, data, "annotations")):
        iid = field_of(path, "annotations", i, e, "image_id", int)
        cid = field_of(path, "annotations", i, e, "category_id", int)
        if iid not in imgs:
            raise RecordError(path, i, "annotations.image_id", f"no image {iid} in 'images'")
        if cid not in cats:
            raise RecordError(path, i, "annotations.category_id", f"no category {cid} in 'categories'")
        size = (imgs[iid]["width"], imgs[iid]["height"])
        truths.setdefault((iid, cid), []).append(Box(*xywh_box(path, i, e, size), Frame.ABS, size))
    root = image_root if image_root is not None else path.parent
    items = []
    positions = {iid: k for k, iid in enumerate(imgs)}
    for (iid, cid), boxes in sorted(truths.items()):
        img = imgs[iid]
        file = image_file(Row(path, positions[iid], img), "images.file_name", img["file_name"], root, cache)
        name = cats[cid]
        items.append(DetectionItem(f"{subset}/{iid}/{cid}", subset, [file], f"Locate every {name} in the image.", name, cid, iid, (img["width"], img["height"]), boxes))
    return items


def read(path: str | os.PathLike, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[DetectionItem]:
    """Every item of a local ODinW subset file, or of every subset under a folder."""
    from ..paths import runs_dir

    given = Path(path)
    cache = Path(cache) if cache is not None else runs_dir() / "benchmarks" / "odinw_images"
    files = [f for f in files_of(given) if f.suffix == ".json"]
    if given.is_dir() and any("test" in f.relative_to(given).parts for f in files):
        files = [f for f in files if "test" in f.relative_to(given).parts]  # the published splits: ODinW is scored on test
    by_subset: dict[str, Path] = {}
    for f in files:
        name = subset_name(f, given)
        if name in by_subset:
            raise RecordError(f, None, None, f"a second annotation file for subset {name!r} (the first: {by_subset[name]}); point at one split of each subset")
        by_subset[name] = f
    items: list[DetectionItem] = []
    for name, f in by_subset.items():
        items += read_file(f, name, Path(image_root) if image_root is not None else None, cache)
    return items
