"""One item type for every stage: a question, its images, the ground-truth box and image.

Items come from a MIG-Bench file (the benchmark) or an MGrounding-630k file (the training pool), real
or embedded, through the same readers. The ground truth is kept in 0-1 relative coordinates of the
target image; the target image is 1-based.

Where the formats do not name the target image, it is read as the benchmark implies it: group
grounding from ``additional_info`` (MIG-Bench) or the answer ("It's in the third image", MGrounding);
otherwise the last image the question names ("...locate it in the 2th image", "image-2", "the second
image"), the source image for ``region``, and the last image for the difference tasks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .boxes import Box, Frame
from .formats import ORDINAL_WORDS, MGroundingRecord, MigRecord, group_target_image, resolve_image
from .parsing import find_boxes, image_index_from_text

_NUM_IMG = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)\s+(?:image|picture|frame|view)\b|\bimage[\s\-_]*(\d{1,2})\b", re.I)
_WORD_IMG = re.compile(r"\b(" + "|".join(ORDINAL_WORDS) + r")\s+(?:image|picture|frame|view)\b", re.I)


@dataclass
class Item:
    id: str
    task: str
    images: list[Path]
    question: str
    answer: list[float]  # 0-1 relative to the target image
    target_image: int  # 1-based
    scene: dict[str, Any] | None = field(default=None, repr=False)
    reference: str | None = None  # the dataset's own answer text, if any


def first_per_task(objs: list[Any], tasks: list[str] | None, max_per_task: int) -> list[Any]:
    """The first ``max_per_task`` objects (items or records) of each task in ``tasks`` (None: every
    task; 0: no cap), in their order."""
    seen: dict[str, int] = {}
    out = []
    for o in objs:
        if (tasks is None or o.task in tasks) and (not max_per_task or seen.get(o.task, 0) < max_per_task):
            out.append(o)
            seen[o.task] = seen.get(o.task, 0) + 1
    return out


def target_image_from_question(question: str, task: str, n_images: int) -> int:
    if task == "region" or "source image" in question:
        return 1
    mentions: list[tuple[int, int]] = []
    for m in _NUM_IMG.finditer(question):
        mentions.append((m.start(), int(m.group(1) or m.group(2))))
    for m in _WORD_IMG.finditer(question):
        mentions.append((m.start(), ORDINAL_WORDS.index(m.group(1).lower()) + 1))
    if mentions:
        k = max(mentions)[1]
        if 1 <= k <= n_images:
            return k
    return n_images


def item_from_mig(record: MigRecord, root: Path, scene: dict[str, Any] | None = None) -> Item:
    if record.task == "group_grounding":
        k = group_target_image(record) or target_image_from_question(record.question, record.task, len(record.images))
    else:
        k = target_image_from_question(record.question, record.task, len(record.images))
    if scene is not None:
        k = scene["target_image"]
    return Item(
        id=str(record.extra.get("id", record.index)),
        task=record.task,
        images=[resolve_image(root, p) for p in record.images],
        question=record.question,
        answer=list(record.answer),
        target_image=k,
        scene=scene,
    )


def item_from_mgrounding(record: MGroundingRecord, root: Path, scene: dict[str, Any] | None = None) -> Item:
    """The answer's first box is read as 0-1000 (MGrounding's frame); its image from the answer text. An answer
    with no box is an error, unless the embedded world's scene gives the box (a curriculum answer in words)."""
    answer_text = record.answer
    boxes = find_boxes(answer_text)
    if boxes:
        rel = Box(*boxes[0].values, frame=Frame.REL1000).to(Frame.REL1)
    elif scene is not None and scene.get("answer"):  # an embedded curriculum answer in words (a list of an image's objects)
        rel = Box(*scene["answer"], frame=Frame.REL1)
    else:
        raise ValueError(f"{record.id}: the answer holds no box: {answer_text!r:.80}")
    k = image_index_from_text(answer_text) or target_image_from_question(record.question, record.type, len(record.images))
    if scene is not None:
        k = scene["target_image"]
    return Item(
        id=record.id,
        task=record.type,
        images=[resolve_image(root, p) for p in record.images],
        question=record.question,
        answer=[round(v, 6) for v in rel.coords],
        target_image=k,
        scene=scene,
        reference=answer_text,
    )


def load_scenes(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def load_pool_items(mgrounding_file: Path, tasks: list[str] | None = None) -> list[Item]:
    """Items of a training pool (MGrounding format), with scenes when the embedded world wrote them."""
    from .formats import load_mgrounding

    scenes = load_scenes(mgrounding_file.parent / "scenes.jsonl")
    recs = load_mgrounding(mgrounding_file)
    return [item_from_mgrounding(r, mgrounding_file.parent, scenes.get(r.id)) for r in recs if tasks is None or r.type in tasks]


def pool_items(data_dir: str | Path, ids: list[str], what: str) -> list[Item]:
    """The training pool's items (``<data_dir>/train/mgrounding.json``) with these ``ids``, in their order; an
    id the pool does not hold is an error naming ``what`` asked for it."""
    by_id = {it.id: it for it in load_pool_items(Path(data_dir) / "train" / "mgrounding.json")}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{what}: {len(missing)} ids not in the training pool, first {missing[:3]}")
    return [by_id[i] for i in ids]


def load_bench_items(mig_file: Path, tasks: list[str] | None = None) -> list[Item]:
    """Items of a benchmark (MIG-Bench format); embedded scenes are matched by record index."""
    from .formats import load_mig_bench

    scene_rows = load_scenes(mig_file.parent / "scenes.jsonl")
    by_index = {(r["task"] == "single_refer", r["record_index"]): r for r in scene_rows.values()}
    recs = load_mig_bench(mig_file)
    out = []
    for r in recs:
        if tasks is not None and r.task not in tasks:
            continue
        scene = by_index.get((r.task == "single_refer", r.index))
        if scene is not None and scene["task"] != r.task:
            scene = None
        out.append(item_from_mig(r, mig_file.parent, scene))
    return out
