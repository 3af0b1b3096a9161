"""Readers and writers for the two real data formats.

* **MIG-Bench** (the benchmark): a JSON list of records with ``task``, ``images`` (paths relative to
  the benchmark folder), ``question``, ``answer`` (``[x1, y1, x2, y2]`` in 0-1 relative to the
  target image), ``additional_info`` and ``need_format``.
* **MGrounding-630k** (the training pool): LLaMA-Factory sharegpt JSON with ``id``, ``images``,
  ``conversations`` (``from`` human/gpt, ``value``; one ``<image>`` placeholder per image) and ``type``.

The embedded world is written in exactly these formats and read back by exactly this code.
A bad record is a :class:`RecordError` naming the file, the record's index (0-based position in the
JSON list) or line (1-based, for JSON Lines and for errors in the file's text) and the field; nothing
is silently skipped. A file that cannot be read as UTF-8 JSON, a duplicate key, an integer too long to
convert and a directory given as a file are RecordErrors too. Extra fields are kept (in ``extra``) and
written back.
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
# the project's own single-image test (the embedded world's test/single_refer.json), in MIG-Bench's format
SINGLE_TASKS = ("single_refer",)
# the embedded world's base-model curriculum tasks (held-out benches of them score the base: tools/)
CURRICULUM_TASKS = ("single_describe", "multi_refer", "multi_describe")
KNOWN_TASKS = (*MIG_TASKS, *SINGLE_TASKS, *CURRICULUM_TASKS)
_TASK_NAMES = {t.casefold(): t for t in KNOWN_TASKS}
# Zhang et al.'s split (their Table 3 checks out this way): trained on these four, the rest unseen.
IN_DOMAIN = ("diff", "common_object", "region", "refer_grounding")
OUT_OF_DOMAIN = tuple(t for t in MIG_TASKS if t not in IN_DOMAIN)

MIG_FIELDS = ("task", "images", "question", "answer", "additional_info", "need_format")
IMAGE_PLACEHOLDER = "<image>"


# answers may overshoot the image by this much (the real file's worst is 1.048) and are clipped to it
ANSWER_TOLERANCE = 0.05


class RecordError(ValueError):
    """A malformed record or file: names the file, the record's 0-based ``index`` in a JSON list or the
    1-based ``line`` of the file, and the field."""

    def __init__(
        self,
        file: str | os.PathLike,
        index: int | None,
        field: str | None,
        problem: str,
        *,
        line: int | None = None,
    ):
        self.file, self.index, self.field, self.problem, self.line = str(file), index, field, problem, line
        where = f"{self.file}"
        if index is not None:
            where += f", index {index}"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class MissingImageError(FileNotFoundError):
    def __init__(self, path: str | os.PathLike, file: str | os.PathLike, index: int):
        self.path = str(path)
        super().__init__(f"{file}, index {index}: image not found: {path}")


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
    clipped: bool = False  # the file's answer overshot the image slightly; see load_mig_bench

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


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class _HugeInteger(ValueError):
    def __init__(self, digits: int):
        super().__init__(digits)
        self.digits = digits


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # beyond Python's integer string-conversion limit
        raise _HugeInteger(len(text.lstrip("-"))) from None


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_int=_integer)
_JSON_WS = re.compile(r"[ \t\n\r]*")


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def read_text(path: str | os.PathLike) -> str:
    """A file's UTF-8 text; anything but a missing file (a directory, unreadable, not UTF-8) is a RecordError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise RecordError(path, None, None, "is a directory, not a file") from None
    except OSError as e:
        raise RecordError(path, None, None, f"cannot be read ({e.strerror or e})") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RecordError(path, None, None, f"not UTF-8 text (byte 0x{data[e.start]:02x}, offset {e.start})", line=line) from None


def decode_json(path: str | os.PathLike, text: str, pos: int = 0, *, index: int | None = None, line: int | None = None) -> tuple[Any, int]:
    """One JSON value of ``text`` from ``pos`` (no whitespace before it) and where it ends.

    Any problem is a RecordError naming ``path`` and ``index`` or ``line`` (else the line of the error).
    Duplicate keys and integers too long to convert are refused; NaN and Infinity are read as Python does.
    """
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        at = line if line is not None else e.lineno
        raise RecordError(path, index, None, f"not valid JSON ({e.msg}, column {e.colno})", line=at) from None
    except _DuplicateKey as e:
        key, problem = e.key, "duplicate key"
    except _HugeInteger as e:
        key, problem = None, f"an integer of {e.digits} digits"
    except RecursionError:
        key, problem = None, "nested too deeply"
    if line is None:
        problem += f" (in the value starting at line {_line_of(text, pos)})"
    raise RecordError(path, index, key, problem, line=line)


def _load_json_list(path: Path) -> list[Any]:
    """The records of a file holding one JSON list, decoded one by one so an error names its index."""
    text = read_text(path)
    n = len(text)
    i = _JSON_WS.match(text, 0).end()  # type: ignore[union-attr]
    if i >= n or text[i] != "[":
        value, end = decode_json(path, text, i)
        if _JSON_WS.match(text, end).end() != n:  # type: ignore[union-attr]
            raise RecordError(path, None, None, "not valid JSON (extra data after the value)", line=_line_of(text, end))
        raise RecordError(path, None, None, f"expected a JSON list of records, got {type(value).__name__}")
    records: list[Any] = []
    i = _JSON_WS.match(text, i + 1).end()  # type: ignore[union-attr]
    if i < n and text[i] == "]":
        i += 1
    else:
        while True:
            value, i = decode_json(path, text, i, index=len(records))
            records.append(value)
            i = _JSON_WS.match(text, i).end()  # type: ignore[union-attr]
            if i < n and text[i] == ",":
                i = _JSON_WS.match(text, i + 1).end()  # type: ignore[union-attr]
                continue
            if i < n and text[i] == "]":
                i += 1
                break
            raise RecordError(path, None, None, f"not valid JSON (expected ',' or ']' after index {len(records) - 1})", line=_line_of(text, i))
    if _JSON_WS.match(text, i).end() != n:  # type: ignore[union-attr]
        raise RecordError(path, None, None, "not valid JSON (extra data after the list)", line=_line_of(text, i))
    return records


load_json_records = _load_json_list  # the name the benchmark readers use (mirg_lib.benchmarks)


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


def _task_name(path: Path, i: int, rec: dict) -> str:
    raw = _need(path, i, rec, "task", str)
    task = raw.strip()
    if not task:
        raise RecordError(path, i, "task", "empty task name")
    known = _TASK_NAMES.get(task.casefold())
    if known is None:
        raise RecordError(path, i, "task", f"unknown task {raw!r:.80}; expected one of {', '.join(KNOWN_TASKS)}")
    return known


def _answer_box(path: Path, i: int, answer: list) -> tuple[list[float], bool, bool]:
    """The answer with its corners ordered and clipped to the image, and whether either was needed."""
    if len(answer) != 4:
        raise RecordError(path, i, "answer", f"expected 4 numbers [x1, y1, x2, y2], got {len(answer)} values")
    vals: list[float] = []
    for v in answer:
        try:
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(float(v))
        except OverflowError:
            ok = False
        if not ok:
            raise RecordError(path, i, "answer", f"expected finite numbers, got {answer!r:.80}")
        vals.append(float(v))
    if max(vals) > 1 + ANSWER_TOLERANCE or min(vals) < -ANSWER_TOLERANCE:
        raise RecordError(
            path, i, "answer", f"expected 0-1 relative coordinates (at most {ANSWER_TOLERANCE} beyond the image), got {vals}"
        )
    x1, y1, x2, y2 = vals
    reordered = x2 < x1 or y2 < y1
    box = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    clipped = max(box) > 1 or min(box) < 0
    box = [min(1.0, max(0.0, v)) for v in box]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise RecordError(path, i, "answer", f"degenerate box (zero width or height within the image): {vals}")
    return box, reordered, clipped


def parse_mig_record(path: Path, i: int, rec: Any) -> MigRecord:
    task = _task_name(path, i, rec)
    images = _image_list(path, i, rec)
    question = _need(path, i, rec, "question", str)
    vals, reordered, clipped = _answer_box(path, i, _need(path, i, rec, "answer", list))
    info = rec.get("additional_info", "")
    if info is None:
        info = ""
    if not isinstance(info, str):
        raise RecordError(path, i, "additional_info", f"expected str, got {type(info).__name__}")
    need_format = rec.get("need_format", True)
    if not isinstance(need_format, bool):
        raise RecordError(path, i, "need_format", f"expected true or false, got {need_format!r:.40}")
    extra = {k: v for k, v in rec.items() if k not in MIG_FIELDS}
    return MigRecord(task, images, question, vals, info, need_format, i, extra, reordered, clipped)


def load_mig_bench(path: str | os.PathLike, image_root: str | os.PathLike | None = None, check: bool = False) -> list[MigRecord]:
    """Read a MIG-Bench annotation file completely.

    The real file has 5 answers with swapped corners (x2 < x1 or y2 < y1). Migician's scorer can
    never mark those right; we order the corners and flag the record (``reordered``) so that the
    ground truth scores 100% and the count is visible. It also has 2 answers a little past the image
    (up to 1.048): answers up to ``ANSWER_TOLERANCE`` outside 0-1 are clipped to it and flagged
    (``clipped``), farther ones refused. A task name is one of ``KNOWN_TASKS`` (surrounding spaces and
    case ignored). With ``check=True`` every image must exist under ``image_root`` (default: the
    file's folder).
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
