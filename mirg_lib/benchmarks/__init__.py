"""The evaluation layer's benchmarks beyond MIG-Bench: one small module each.

A benchmark module has ``NAME``, ``looks_like(record)`` (whether a record of a local file is in its
published layout), ``read(path, image_root=None, cache=None)`` (the items of a local copy, a malformed record
refused with its file, index and field) and its items' kind, which says how replies are scored:

* ``choice`` (:mod:`.choice`): multiple-choice accuracy per subtask, averaged over subtasks (BLINK, MMIU);
* ``grounding`` (:mod:`.grounding`): one box per item, Acc@0.5 (0.75, 0.9, mAcc) and mIoU (Ref-L4,
  LISA-Grounding, ReVOS-Grounding).

Adding a benchmark is adding its module to :data:`MODULES`; the stages and the CLI go through :func:`read`,
:func:`detect` and :func:`score`.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from . import blink, lisa, mmiu, refl4, revos
from ._rows import read_rows
from .choice import ChoiceItem, score_choices
from .grounding import GroundingItem, score_grounding

MODULES: dict[str, ModuleType] = {m.NAME: m for m in (blink, mmiu, refl4, lisa, revos)}
KINDS = {"blink": "choice", "mmiu": "choice", "ref_l4": "grounding", "lisa": "grounding", "revos": "grounding"}


def get(name: str) -> ModuleType:
    """The module of benchmark ``name``."""
    try:
        return MODULES[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(sorted(MODULES))}") from None


def detect(path: str | os.PathLike) -> str:
    """Which benchmark a local file (or folder) is, from its first record's field names."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no records to tell its benchmark by")
    found = [name for name, m in MODULES.items() if m.looks_like(rows[0].value)]
    if len(found) != 1:
        keys = sorted(rows[0].value) if isinstance(rows[0].value, dict) else type(rows[0].value).__name__
        raise ValueError(f"{rows[0].file}: cannot tell which benchmark its records are (fields {keys}); name it ({', '.join(sorted(MODULES))})")
    return found[0]


def read(path: str | os.PathLike, name: str | None = None, image_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> tuple[str, list[Any]]:
    """The benchmark's name (``name``, else :func:`detect`) and the items of its local copy at ``path``."""
    name = name or detect(path)
    return name, get(name).read(path, image_root=image_root, cache=cache)


def score(name: str, items: list[Any], replies: list[object], **how: Any) -> dict[str, Any]:
    """Score ``replies`` (one per item, in order) by benchmark ``name``'s protocol; ``how``: a grounding
    benchmark's ``frame``, ``seen_sizes`` and ``protocol`` (:func:`.grounding.score_grounding`)."""
    kind = KINDS[get(name).NAME]
    if kind == "choice":
        if how:
            raise ValueError(f"benchmark {name!r} (multiple choice) takes no {', '.join(sorted(how))}")
        return {"benchmark": name, **score_choices(items, replies)}
    if kind == "grounding":
        return {"benchmark": name, **score_grounding(items, replies, **how)}
    raise ValueError(f"benchmark {name!r}: no scorer for kind {kind!r}")


__all__ = ["KINDS", "MODULES", "ChoiceItem", "GroundingItem", "detect", "get", "read", "score"]
