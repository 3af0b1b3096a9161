"""What every benchmark reader shares: the records of a local copy (a file, or a folder of them, as
published: JSON lists, JSON Lines, parquet) with where each came from, and its images as files.

A malformed file or record is a :class:`~mirg_lib.formats.RecordError` naming the file, the record's index
(0-based, in a JSON list or a parquet table; JSON Lines: its 1-based line) and the field, as the MIG-Bench
reader's are; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..formats import MissingImageError, RecordError, decode_json, load_json_records, read_text, resolve_image

SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Row:
    """One record of a benchmark file: the file, its index there (``line`` for JSON Lines) and the value."""

    file: Path
    index: int
    value: Any
    line: int | None = None

    def error(self, field: str | None, problem: str) -> RecordError:
        return RecordError(self.file, None if self.line else self.index, field, problem, line=self.line)


def files_of(path: str | os.PathLike) -> list[Path]:
    """``path`` itself, or a folder's benchmark files (every ``.json``, ``.jsonl`` and ``.parquet`` under it,
    in sorted order); none is an error."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not found:
            raise RecordError(path, None, None, f"a folder with no benchmark file ({', '.join(SUFFIXES)}) in it")
        return found
    if not path.exists():
        raise FileNotFoundError(f"no such benchmark file or folder: {path}")
    return [path]


def read_rows(path: str | os.PathLike) -> list[Row]:
    """Every record of every file of ``path`` (:func:`files_of`)."""
    rows: list[Row] = []
    for f in files_of(path):
        if f.suffix == ".parquet":
            rows += [Row(f, i, v) for i, v in enumerate(_parquet(f))]
        elif f.suffix == ".jsonl":
            text = read_text(f)
            for n, line in enumerate(text.split("\n"), 1):  # JSON Lines end at "\n" only
                line = line.removesuffix("\r")
                if line.strip():
                    value, _ = decode_json(f, line.strip(), 0, line=n)
                    rows.append(Row(f, len(rows), value, line=n))
        elif read_text(f).lstrip().startswith("{"):  # one object: a COCO-style file (ODinW, MC-Bench) is one record
            text = read_text(f)
            value, _ = decode_json(f, text, len(text) - len(text.lstrip()))
            rows.append(Row(f, 0, value))
        else:
            rows += [Row(f, i, v) for i, v in enumerate(load_json_records(f))]
    return rows


def _parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise RecordError(path, None, None, f"not a readable parquet file ({e})") from None


def need(row: Row, name: str, kind: type | tuple[type, ...], *, empty: bool = False) -> Any:
    """Field ``name`` of the record, of type ``kind`` (a bool is no int), not empty unless ``empty``."""
    if not isinstance(row.value, dict):
        raise row.error(None, f"expected an object, got {type(row.value).__name__}")
    if name not in row.value or row.value[name] is None:
        raise row.error(name, "missing")
    value = row.value[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise row.error(name, f"expected {want}, got {type(value).__name__}: {value!r:.80}")
    if not empty and isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str) else value):
        raise row.error(name, "empty")
    return value


def image_file(row: Row, name: str, value: Any, root: Path, cache: Path) -> str:
    """The file of an image field: a path (relative to ``root``), which must exist, or the published
    parquet's ``{"bytes": ..., "path": ...}``, written once under ``cache`` (named by its checksum)."""
    if isinstance(value, str) and value.strip():
        p = resolve_image(root, value)
        if not p.is_file():
            raise MissingImageError(p, row.file, row.index)
        return str(p)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)) and value["bytes"]:
        from PIL import Image, UnidentifiedImageError

        data = bytes(value["bytes"])
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = (im.format or "png").lower()
        except (UnidentifiedImageError, OSError) as e:
            raise row.error(name, f"its bytes are not an image ({e})") from None
        out = cache / f"{hashlib.sha256(data).hexdigest()[:24]}.{fmt}"
        if not out.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(out.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(out)
        return str(out)
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"].strip():
        return image_file(row, name, value["path"], root, cache)
    raise row.error(name, f"expected an image path or {{'bytes': ...}}, got {type(value).__name__}: {value!r:.80}")
