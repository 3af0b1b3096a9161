"""Readers and writers for the two real data formats.

* **MIG-Bench** (the benchmark): a JSON list of records with ``task``, ``images`` (paths relative to
  the benchmark folder), ``question``, ``answer`` (``[x1, y1, x2, y2]`` in 0-1 relative to the
  target image), ``additional_info`` and ``need_format``.
* **MGrounding-630k** (the training pool): LLaMA-Factory sharegpt JSON with ``id``, ``images``,
  ``conversations`` (``from`` human/gpt, ``value``; one ``<image>`` placeholder per image) and ``type``.

The embedded world is written in exactly these formats and read back by exactly this code.
A bad record is a :class:`RecordError` naming the file, the record's index and the field; nothing is
silently skipped. Extra fields are kept (in ``extra``) and written back.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import write_json

MIG_TASKS = (
    "diff",
    "view_diff",
    "common_object",
    "object_tracking",
    "multi_view",
    "region",
    "refer_grounding",
    "group_grounding",
    "reasoning",
    "correspondence",
)
# Zhang et al.'s split (their Table 3 checks out this way): trained on these four, the rest unseen.
IN_DOMAIN = ("diff", "common_object", "region", "refer_grounding")
OUT_OF_DOMAIN = tuple(t for t in MIG_TASKS if t not in IN_DOMAIN)

MIG_FIELDS = ("task", "images", "question", "answer", "additional_info", "need_format")
IMAGE_PLACEHOLDER = "<image>"


class RecordError(ValueError):
    """A malformed record: names the file, the record's index and the field."""

    def __init__(self, file: str | os.PathLike, index: int | None, field: str | None, problem: str):
        self.file, self.index, self.field, self.problem = str(file), index, field, problem
        where = f"{self.file}"
        if index is not None:
            where += f", record {index}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class MissingImageError(FileNotFoundError):
    def __init__(self, path: str | os.PathLike, file: str | os.PathLike, index: int):
        self.path = str(path)
        super().__init__(f"{file}, record {index}: image not found: {path}")


@dataclass
class MigRecord:
    task: str
    images: list[str]
    question: str
    answer: list[float]  # 0-1 relative to the target image, corners ordered
    additional_info: str = ""
    need_format: bool = True
    index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    reordered: bool = False  # the file had the corners swapped; see load_mig_bench

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "task": self.task,
            "images": list(self.images),
            "question": self.question,
            "answer": [float(v) for v in self.answer],
            "additional_info": self.additional_info,
            "need_format": bool(self.need_format),
        }
        d.update(self.extra)
        return d


@dataclass
class MGroundingRecord:
    id: str
    images: list[str]
    conversations: list[dict[str, str]]
    type: str
    index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The first human turn, without its ``<image>`` placeholders."""
        text = self.conversations[0]["value"]
        return re.sub(r"(?:<image>\s*)", "", text, count=len(self.images)).strip()

    @property
    def answer(self) -> str:
        return self.conversations[1]["value"]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "images": list(self.images),
            "conversations": [dict(c) for c in self.conversations],
            "type": self.type,
        }
        d.update(self.extra)
        return d


def _load_json_list(path: Path) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise
    except json.JSONDecodeError as e:
        raise RecordError(path, None, None, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    if not isinstance(data, list):
        raise RecordError(path, None, None, f"expected a JSON list of records, got {type(data).__name__}")
    return data


def _need(path: Path, i: int, rec: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(rec, dict):
        raise RecordError(path, i, None, f"expected an object, got {type(rec).__name__}")
    if name not in rec:
        raise RecordError(path, i, name, "missing")
    value = rec[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise RecordError(path, i, name, f"expected {want}, got {type(value).__name__}: {value!r:.80}")
    return value


def _image_list(path: Path, i: int, rec: dict, name: str = "images") -> list[str]:
    images = _need(path, i, rec, name, list)
    if not images:
        raise RecordError(path, i, name, "empty image list")
    for j, p in enumerate(images):
        if not isinstance(p, str) or not p.strip():
            raise RecordError(path, i, f"{name}[{j}]", f"expected a non-empty path string, got {p!r:.80}")
    return list(images)


def resolve_image(root: Path, image: str) -> Path:
    p = Path(image)
    return p if p.is_absolute() else (root / p)


def check_images(records: list[MigRecord] | list[MGroundingRecord], file: str | os.PathLike, image_root: str | os.PathLike) -> None:
    """Raise :class:`MissingImageError` (naming the path) for the first image that does not exist."""
    root = Path(image_root)
    for rec in records:
        for img in rec.images:
            p = resolve_image(root, img)
            if not p.is_file():
                raise MissingImageError(p, file, rec.index)


def _load(path: str | os.PathLike, parse: Any, image_root: str | os.PathLike | None, check: bool) -> list[Any]:
    path = Path(path)
    records = [parse(path, i, rec) for i, rec in enumerate(_load_json_list(path))]
    if check:
        check_images(records, path, image_root if image_root is not None else path.parent)
    return records


def parse_mig_record(path: Path, i: int, rec: Any) -> MigRecord:
    task = _need(path, i, rec, "task", str)
    if not task:
        raise RecordError(path, i, "task", "empty task name")
    images = _image_list(path, i, rec)
    question = _need(path, i, rec, "question", str)
    answer = _need(path, i, rec, "answer", list)
    if len(answer) != 4:
        raise RecordError(path, i, "answer", f"expected 4 numbers [x1, y1, x2, y2], got {len(answer)} values")
    vals: list[float] = []
    for v in answer:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise RecordError(path, i, "answer", f"expected finite numbers, got {answer!r:.80}")
        vals.append(float(v))
    if max(vals) > 1.5 or min(vals) < -0.5:
        raise RecordError(path, i, "answer", f"expected 0-1 relative coordinates, got {vals}")
    x1, y1, x2, y2 = vals
    reordered = x2 < x1 or y2 < y1
    vals = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    if vals[2] <= vals[0] or vals[3] <= vals[1]:
        raise RecordError(path, i, "answer", f"degenerate box (zero width or height): {answer}")
    info = rec.get("additional_info", "")
    if info is None:
        info = ""
    if not isinstance(info, str):
        raise RecordError(path, i, "additional_info", f"expected str, got {type(info).__name__}")
    need_format = rec.get("need_format", True)
    if not isinstance(need_format, bool):
        raise RecordError(path, i, "need_format", f"expected true or false, got {need_format!r:.40}")
    extra = {k: v for k, v in rec.items() if k not in MIG_FIELDS}
    return MigRecord(task, images, question, vals, info, need_format, i, extra, reordered)


def load_mig_bench(path: str | os.PathLike, image_root: str | os.PathLike | None = None, check: bool = False) -> list[MigRecord]:
    """Read a MIG-Bench annotation file completely.

    The real file has 5 answers with swapped corners (x2 < x1 or y2 < y1). Migician's scorer can
    never mark those right; we order the corners and flag the record (``reordered``) so that the
    ground truth scores 100% and the count is visible. With ``check=True`` every image must exist
    under ``image_root`` (default: the file's folder).
    """
    return _load(path, parse_mig_record, image_root, check)


def write_mig_bench(records: list[MigRecord], path: str | os.PathLike) -> None:
    write_json(path, [r.to_json() for r in records])


def parse_mgrounding_record(path: Path, i: int, rec: Any) -> MGroundingRecord:
    rid = _need(path, i, rec, "id", (str, int))
    images = _image_list(path, i, rec)
    convs = _need(path, i, rec, "conversations", list)
    if len(convs) < 2:
        raise RecordError(path, i, "conversations", f"expected at least a human and a gpt turn, got {len(convs)}")
    for j, turn in enumerate(convs):
        fname = f"conversations[{j}]"
        if not isinstance(turn, dict):
            raise RecordError(path, i, fname, f"expected an object, got {type(turn).__name__}")
        want = "human" if j % 2 == 0 else "gpt"
        if turn.get("from") != want:
            raise RecordError(path, i, f"{fname}.from", f"expected {want!r}, got {turn.get('from')!r}")
        if not isinstance(turn.get("value"), str):
            raise RecordError(path, i, f"{fname}.value", "expected a string")
    n_placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
    if n_placeholders != len(images):
        raise RecordError(
            path, i, "conversations", f"{n_placeholders} '<image>' placeholders for {len(images)} images"
        )
    rtype = rec.get("type", "")
    if not isinstance(rtype, str):
        raise RecordError(path, i, "type", f"expected str, got {type(rtype).__name__}")
    extra = {k: v for k, v in rec.items() if k not in ("id", "images", "conversations", "type")}
    return MGroundingRecord(str(rid), images, [dict(t) for t in convs], rtype, i, extra)


def load_mgrounding(path: str | os.PathLike, image_root: str | os.PathLike | None = None, check: bool = False) -> list[MGroundingRecord]:
    """Read an MGrounding-630k (sharegpt) file completely; ``check`` as in :func:`load_mig_bench`."""
    return _load(path, parse_mgrounding_record, image_root, check)


def write_mgrounding(records: list[MGroundingRecord], path: str | os.PathLike) -> None:
    write_json(path, [r.to_json() for r in records])


ORDINAL_WORDS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_INFO_IMAGE_RE = re.compile(r"\bin the (" + "|".join(ORDINAL_WORDS) + r") image\b", re.I)


def group_target_image(record: MigRecord) -> int | None:
    """The 1-based target image of a group_grounding record, from its ``additional_info``.

    Only the scorer may call this: ``additional_info`` holds the answer and never reaches a prompt.
    """
    m = _INFO_IMAGE_RE.search(record.additional_info or "")
    return ORDINAL_WORDS.index(m.group(1).lower()) + 1 if m else None
