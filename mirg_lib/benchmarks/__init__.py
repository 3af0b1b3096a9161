"""The evaluation layer's benchmarks beyond MIG-Bench: one small module each.

A benchmark module has ``NAME``, ``looks_like(record)`` (whether a record of a local file is in its
published layout), ``read(path, image_root=None, cache=None)`` (the items of a local copy, a malformed record
refused with its file, index and field) and its items' kind, which says how replies are scored:

* ``choice`` (:mod:`.choice`): multiple-choice accuracy per subtask, averaged over subtasks (BLINK, MMIU);
* ``grounding`` (:mod:`.grounding`): one box per item, Acc@0.5 (0.75, 0.9, mAcc) and mIoU (Ref-L4,
  LISA-Grounding, ReVOS-Grounding);
* ``detection`` (:mod:`.detection`): every box of a category, COCO mAP by pycocotools (ODinW);
* ``multi_context`` (:mod:`.mcbench`): every box a text names across two images, weighted AP50 and
  image-level accuracy (MC-Bench).

Adding a benchmark is adding its module to :data:`MODULES`; the stages and the CLI go through :func:`read`,
:func:`detect` and :func:`score`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from . import blink, lisa, mcbench, mmiu, odinw, refl4, revos
from ._rows import read_rows
from .choice import ChoiceItem, score_choices
from .detection import DetectionItem, score_detection
from .grounding import GroundingItem, score_grounding

SCORING_VERSION = 2  # part of a cached benchmark score's stamp (pipeline.evaluate_benchmarks): raise it when a reader or scorer changes
MODULES: dict[str, ModuleType] = {m.NAME: m for m in (blink, mmiu, refl4, lisa, revos, odinw, mcbench)}
KINDS = {
    "blink": "choice",
    "mmiu": "choice",
    "ref_l4": "grounding",
    "lisa": "grounding",
    "revos": "grounding",
    "odinw": "detection",
    "mc_bench": "multi_context",
}


def get(name: str) -> ModuleType:
    """The module of benchmark ``name``."""
    try:
        return MODULES[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(sorted(MODULES))}") from None


def detect(path: str | os.PathLike) -> str:
    """Which benchmark a local file (or folder) is, from its first record's field names (the CLI names a
    folder's benchmark instead: a published folder may hold other files)."""
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
    items = get(name).read(path, image_root=image_root, cache=cache)
    seen: set[str] = set()
    for it in items:  # a prediction names its item by id: two items of one id would share a reply
        if it.id in seen:
            raise ValueError(f"{path}: two {name} items share the id {it.id!r} (a repeated record id, or two files of one name)")
        seen.add(it.id)
    return name, items


def prompt_text(item: Any, style: str = "plain", notation: str = "json") -> str:
    """What a model is asked for ``item`` with a recipe's prompt (``plain``, ``zhang``, ``mirg``): a
    multiple-choice question with its lettered options (a reasoning recipe asks for the letter in
    ``<answer>``); a grounding, detection or MC-Bench question with the recipe's box instruction
    (:func:`mirg_lib.prompts.with_suffix`)."""
    from ..prompts import CHOICE_REASONING_SUFFIX, with_suffix

    if isinstance(item, ChoiceItem):
        return item.prompt_text() + (CHOICE_REASONING_SUFFIX if style in ("zhang", "mirg") else "")
    question = item.question
    if isinstance(item, mcbench.MCBenchItem):
        question = f"{question.rstrip('.')}. Box every instance this describes in the two images, saying which image each box is in."
    return with_suffix(question, style, notation)


def score(name: str, items: list[Any], replies: list[object], **how: Any) -> dict[str, Any]:
    """Score ``replies`` (one per item, in order) by benchmark ``name``'s protocol; ``how``: a grounding
    benchmark's ``frame``, ``seen_sizes`` and ``protocol`` (:func:`.grounding.score_grounding`), a multiple-choice
    benchmark's ``judge`` (:mod:`.judge`; other kinds ignore it)."""
    kind = KINDS[get(name).NAME]
    judge = how.pop("judge", None)
    if kind == "choice":
        if how:
            raise ValueError(f"benchmark {name!r} (multiple choice) takes no {', '.join(sorted(how))}")
        res = {"benchmark": name, **score_choices(items, replies, judge)}
        if name == mmiu.NAME:
            res["types"] = mmiu.type_means(res["subtasks"])
        return res
    if kind == "grounding":
        return {"benchmark": name, **score_grounding(items, replies, **how)}
    if kind in ("detection", "multi_context"):
        how.pop("protocol", None)  # every box is read, in any notation
        scorer = score_detection if kind == "detection" else mcbench.score_mc_bench
        return {"benchmark": name, **scorer(items, replies, **how)}
    raise ValueError(f"benchmark {name!r}: no scorer for kind {kind!r}")


__all__ = ["KINDS", "MODULES", "ChoiceItem", "DetectionItem", "GroundingItem", "detect", "get", "read", "score"]


def _pixel_size(value: Any) -> tuple[int, int] | None:
    ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    return (value[0], value[1]) if ok else None


def load_replies(path: str | os.PathLike, items: list[Any], need_size: str | None = None) -> tuple[list[str | None], list[Any]]:
    """The replies of a predictions file (JSON Lines: ``response``, and ``id``, the item's id as its reader
    names it, or ``index``, its position in the reader's order; a grounding reply in pixels may carry the
    ``image_size`` it was made at, an MC-Bench reply the ``image_sizes`` of its images; ``need_size`` names the
    field every line must have), in the order of ``items``: None where an item has no prediction. A bad line is a RecordError naming the file, the line and the field; so is an
    unknown or repeated item."""
    from pathlib import Path

    from ..formats import RecordError, decode_json, read_text

    path = Path(path)
    where = {it.id: i for i, it in enumerate(items)}
    replies: list[str | None] = [None] * len(items)
    sizes: list[tuple[int, int] | None] = [None] * len(items)
    for n, line in enumerate(read_text(path).split("\n"), 1):  # a reply may hold U+2028 and the like: JSON Lines end at "\n" only
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        row, _ = decode_json(path, line.strip(), 0, line=n)

        def bad(field: str | None, problem: str, n: int = n) -> RecordError:
            return RecordError(path, None, field, problem, line=n)

        if not isinstance(row, dict):
            raise bad(None, f"expected a JSON object, got {type(row).__name__}")
        if "id" in row:
            if not isinstance(row["id"], str) or row["id"] not in where:
                raise bad("id", f"no item {row['id']!r:.80} in the benchmark")
            i = where[row["id"]]
        else:
            i = row.get("index")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(items):
                raise bad("index", f"expected the item's id, or its position 0-{len(items) - 1}, got {i!r:.40}")
        if not isinstance(row.get("response"), str):
            raise bad("response", f"expected the raw reply as a string, got {type(row.get('response')).__name__}")
        if replies[i] is not None:
            raise bad("id" if "id" in row else "index", f"a second prediction for item {items[i].id!r}")
        if row.get("image_size") is not None:
            sizes[i] = _pixel_size(row["image_size"])
            if sizes[i] is None:
                raise bad("image_size", f"expected [width, height] in pixels, got {row['image_size']!r:.40}")
        elif row.get("image_sizes") is not None:
            many = row["image_sizes"]
            got = [_pixel_size(v) for v in many] if isinstance(many, list) else []
            if len(got) != len(items[i].images) or None in got:
                raise bad("image_sizes", f"expected one [width, height] per image ({len(items[i].images)}), got {many!r:.60}")
            sizes[i] = got
        if need_size and row.get(need_size) is None:
            raise bad(need_size, "a reply in pixels (frame abs) needs the size of each image as the model saw it")
        replies[i] = row["response"]
    return replies, sizes


def score_files(benchmark: str | os.PathLike, predictions: str | os.PathLike, name: str | None = None, image_root: str | os.PathLike | None = None, frame: str = "auto", protocol: str = "migician", judge: Any = None) -> dict[str, Any]:
    """Score a predictions file against a local copy of a benchmark (``name``, else detected from its
    fields): what ``python -m mirg_lib score --benchmark-kind`` prints. An item without a prediction is wrong
    and counted in ``missing``."""
    name, items = read(benchmark, name, image_root)
    kind = KINDS[name]
    need = None if frame != "abs" or kind == "choice" else "image_sizes" if kind == "multi_context" else "image_size"
    replies, sizes = load_replies(predictions, items, need_size=need)
    if kind in ("grounding", "detection") and any(isinstance(v, list) for v in sizes):
        raise ValueError(f"benchmark {name!r}: a reply's 'image_size' is one [width, height] (the target image's), not 'image_sizes'")
    if kind == "multi_context" and any(isinstance(v, tuple) for v in sizes):
        raise ValueError(f"benchmark {name!r}: a reply's sizes are 'image_sizes', one [width, height] per image")
    how: dict[str, Any] = {}
    if kind == "multi_context":
        how = {"frame": frame, "seen_sizes": sizes if frame == "abs" else None}
    elif KINDS[name] != "choice":
        how = {"frame": frame, "seen_sizes": sizes, "protocol": protocol}
    elif frame != "auto" or any(sizes):
        raise ValueError(f"benchmark {name!r} is multiple choice: its replies have no frame or image size")
    if judge is not None and KINDS[name] == "choice":
        how["judge"] = judge
    res = score(name, items, [r if r is not None else "" for r in replies], **how)
    res["missing"] = sum(r is None for r in replies)
    return res


@dataclass
class BenchmarksConfig:
    """Section ``benchmarks`` of the params: the papers' other benchmarks, scored in notebook 06 beside MIG-Bench."""

    analogue_items: int = field(default=0, metadata={"help": "items per embedded analogue drawn by the world (BLINK-, Ref-L4-, ReVOS-, ODinW-like); 0: none"})
    files: dict[str, str] = field(default_factory=dict, metadata={"help": "local copies laid out as published: benchmark (blink, mmiu, ref_l4, lisa, revos, odinw, mc_bench) -> file or folder"})
    image_roots: dict[str, str] = field(default_factory=dict, metadata={"help": "a local copy's image folder, where its images are not beside its file"})
    judge_base_url: str = field(default="", metadata={"help": "an OpenAI-compatible endpoint whose model reads the multiple-choice replies the rules cannot ('': no judge, the default)"})
    judge_model: str = field(default="", metadata={"help": "the judge's model name at that endpoint"})
    judge_api_key_env: str = field(default="", metadata={"help": "the NAME of the environment variable holding the judge's API key ('' : none)"})

    def __post_init__(self) -> None:
        if self.analogue_items < 0:
            raise ValueError(f"benchmarks.analogue_items must be >= 0, got {self.analogue_items}")
        for key in ("files", "image_roots"):
            unknown = sorted(set(getattr(self, key)) - set(MODULES))
            if unknown:
                raise ValueError(f"benchmarks.{key}: unknown benchmark(s) {unknown}; expected some of {sorted(MODULES)}")


def headline(scores: dict[str, Any]) -> dict[str, Any]:
    """A benchmark's scores in brief, as a result row carries them: its headline metric over all items, the
    same per subtask, the number of items and of unreadable replies."""
    kind = KINDS[scores["benchmark"]]
    if kind == "choice":
        per = {t: s["acc"] for t, s in scores["subtasks"].items()}
        out = {"metric": "accuracy", "score": scores["avg"], "subtasks": per, "n": scores["n"], "unreadable": scores["undecidable"]}
        if "types" in scores:  # MMIU: each relation type, and the semantic ones' task mean (Zhang et al.'s Table 7 AVG)
            out["types"] = scores["types"]
            out["semantic"] = mmiu.semantic_mean(scores["subtasks"])
        return out
    if kind == "grounding":
        per = {t: s["acc@0.5"] for t, s in scores["subtasks"].items()}
        a = scores["all"] or {}
        return {"metric": "acc@0.5", "score": a.get("acc@0.5"), "miou": a.get("miou"), "subtasks": per, "n": a.get("n", 0), "unreadable": a.get("unreadable", 0)}
    if kind == "detection":
        per = {t: s["map"] for t, s in scores["subtasks"].items()}
        return {"metric": "mAP", "score": scores["avg"], "ap50": scores["avg_ap50"], "subtasks": per, "n": scores["n"], "unreadable": scores["unreadable"]}
    a = scores["all"] or {}
    per = {t: s["ap50"] for t, s in scores["subtasks"].items()}
    return {"metric": "ap50", "score": a.get("ap50"), "accuracy": a.get("accuracy"), "subtasks": per, "n": a.get("n", 0), "unreadable": scores["unreadable"]}
