"""MMIU (Meng et al. 2024), the multi-image understanding benchmark of Zhang et al.'s Tables 7-8.

The published layout (``all.json`` of the MMIU release): a JSON list of records with ``task``,
``input_image_path`` (the item's images, relative to the release's folder or ``image_root``), ``question``,
``context`` (the options: "Select from the following choices.\\nA: ...\\nB: ..."), ``output`` (the right
option's letter) and more fields kept as they are (``options``, ``visual_input_component``, ``source``,
...). When ``options`` is a list of texts it gives the options, else they are read from ``context``.

Scored as MMIU's official code scores it: accuracy per task, averaged over tasks; the letter of a free-form
reply read by :func:`~mirg_lib.benchmarks.choice.extract_letter` (no LLM judge).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ._rows import Row, image_file, need, read_rows
from .choice import LETTERS, ChoiceItem

NAME = "mmiu"
FIELDS = ("task", "input_image_path", "question", "context", "output", "options")
_OPTION = re.compile(r"^\s*\(?([A-Z])\s*[\):.]\s*(.*\S)\s*$")
_ANSWER = re.compile(r"\s*\(?\s*([A-Z])\s*\)?\s*(?:[:.]\s*.*)?", re.S)


def looks_like(record: Any) -> bool:
    """Whether a record is MMIU's (its own field names)."""
    return isinstance(record, dict) and "input_image_path" in record and "output" in record


def options_of(row: Row) -> list[str]:
    """The options' texts in letter order: the ``options`` list, else the "A: ..." lines of ``context``."""
    given = row.value.get("options")  # MMIU's own release writes it as one string, like ``context``: read from that
    if isinstance(given, list):
        if len(given) < 2 or not all(isinstance(o, str) and o.strip() for o in given):
            raise row.error("options", f"expected at least two option texts, got {given!r:.80}")
        return [_OPTION.match(o).group(2) if _OPTION.match(o) else o for o in given]
    context = need(row, "context", str)
    found = [m for m in map(_OPTION.match, context.splitlines()) if m]
    letters = "".join(m.group(1) for m in found)
    if len(found) < 2 or letters != LETTERS[: len(found)]:
        raise row.error("context", f"expected its options as lines 'A: ...', 'B: ...' in order, got {context!r:.120}")
    return [m.group(2) for m in found]


def parse(row: Row, root: Path, cache: Path) -> ChoiceItem:
    task = need(row, "task", str).strip()
    paths = need(row, "input_image_path", list)
    images = [image_file(row, f"input_image_path[{j}]", p, root, cache) for j, p in enumerate(paths)]
    question = need(row, "question", str).strip()
    choices = options_of(row)
    raw = need(row, "output", str)
    m = _ANSWER.fullmatch(raw)
    if not m or m.group(1) not in LETTERS[: len(choices)]:
        raise row.error("output", f"expected the right option's letter (A-{LETTERS[len(choices) - 1]}), got {raw!r:.40}")
    extra = {k: v for k, v in row.value.items() if k not in FIELDS}
    return ChoiceItem(f"{task}/{row.file.stem}-{row.index}", task, images, question, choices, m.group(1), extra)


def read(path: str | os.PathLike, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[ChoiceItem]:
    """Every item of a local MMIU copy (``all.json``, or a folder of such files)."""
    from ..paths import runs_dir

    cache = Path(cache) if cache is not None else runs_dir() / "benchmarks" / "mmiu_images"
    return [parse(row, Path(image_root) if image_root is not None else row.file.parent, cache) for row in read_rows(path)]
