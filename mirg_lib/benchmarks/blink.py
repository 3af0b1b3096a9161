"""BLINK (Fu et al. 2024), the multiple-choice multi-image subtasks of Zhang et al.'s Table 6.

The published layout (the ``BLINK-Benchmark/BLINK`` dataset): one config per subtask, each a parquet file
per split, with ``idx``, ``question``, ``sub_task``, ``image_1`` .. ``image_4`` (``{"bytes", "path"}``, the
unused ones null), ``choices`` (the options' texts), ``answer`` (``"(A)"``; only ``val`` has answers),
``prompt`` (the question with its options, as BLINK asks it) and ``explanation``. A JSON list or JSON Lines
file with the same fields and image paths (relative to the file's folder or ``image_root``) reads the same.
A record without ``sub_task`` takes its folder's name (the config's).

Scored as BLINK's official code scores it: accuracy per subtask, the average over subtasks; the letter of a
free-form reply read by :func:`~mirg_lib.benchmarks.choice.extract_letter` (no LLM judge).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ._rows import Row, image_file, need, read_rows
from .choice import LETTERS, ChoiceItem

NAME = "blink"
FIELDS = ("idx", "question", "sub_task", "image_1", "image_2", "image_3", "image_4", "choices", "answer", "prompt", "explanation")
# Zhang et al.'s Table 6: the BLINK subtasks they report (config names as published)
PAPER_SUBTASKS = ("Counting", "Forensic_Detection", "IQ_Test", "Jigsaw", "Multi-view_Reasoning", "Visual_Similarity", "Visual_Correspondence")
_ANSWER = re.compile(r"\s*(?:\(\s*([A-Z])\s*\)|([A-Z]))\s*")


def looks_like(record: Any) -> bool:
    """Whether a record is BLINK's (its own field names)."""
    return isinstance(record, dict) and "image_1" in record and "choices" in record and "idx" in record


def _answer(row: Row, choices: list[str]) -> str:
    raw = need(row, "answer", str)
    m = _ANSWER.fullmatch(raw)
    letter = (m.group(1) or m.group(2)) if m else None
    if letter is None or letter not in LETTERS[: len(choices)]:
        raise row.error("answer", f"expected the right option's letter as '(A)' .. '({LETTERS[len(choices) - 1]})', got {raw!r:.40}")
    return letter


def parse(row: Row, root: Path, cache: Path) -> ChoiceItem:
    idx = need(row, "idx", (str, int))
    choices = need(row, "choices", list)
    if not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) for c in choices):
        raise row.error("choices", f"expected 2-26 option texts, got {choices!r:.80}")
    answer = _answer(row, choices)
    question = row.value.get("question") or row.value.get("prompt")
    if not isinstance(question, str) or not question.strip():
        raise row.error("question", "missing (neither 'question' nor 'prompt' holds the question)")
    subtask = row.value.get("sub_task") or row.file.parent.name
    if not isinstance(subtask, str) or not subtask.strip():
        raise row.error("sub_task", f"expected a subtask name, got {subtask!r:.40}")
    images = []
    for k in range(1, 5):
        value = row.value.get(f"image_{k}")
        if value is None:
            continue
        images.append(image_file(row, f"image_{k}", value, root, cache / re.sub(r"[^A-Za-z0-9_-]", "_", subtask)))  # never outside the cache
    if not images:
        raise row.error("image_1", "missing (a BLINK item has 1-4 images)")
    extra = {k: v for k, v in row.value.items() if k not in FIELDS and not k.startswith("image_")}
    if isinstance(row.value.get("prompt"), str):
        extra["prompt"] = row.value["prompt"]
    return ChoiceItem(f"{subtask}/{idx}", subtask, images, question.strip(), list(choices), answer, extra)


def read(path: str | os.PathLike, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[ChoiceItem]:
    """Every answered item of a local BLINK copy (a file or the published folder of subtask configs); the
    parquet's embedded images are written under ``cache`` (default: ``runs/benchmarks/blink_images``)."""
    from ..paths import runs_dir

    cache = Path(cache) if cache is not None else runs_dir() / "benchmarks" / "blink_images"
    items = []
    for row in read_rows(path):
        root = Path(image_root) if image_root is not None else row.file.parent
        items.append(parse(row, root, cache))
    _unique(items)
    return items


def _unique(items: list[ChoiceItem]) -> None:
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise ValueError(f"BLINK: item {it.id!r} appears twice (the same idx in one subtask)")
        seen.add(it.id)
