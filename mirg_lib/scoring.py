"""MIG-Bench scoring: Acc@0.5 per task, AVG, in-domain and out-of-domain.

Default protocol ``migician`` follows Migician's published evaluation code:

* the reply's first box, found by Migician's patterns in Migician's order (integer pairs
  ``(x1,y1),(x2,y2)``, then ``[f,f,f,f]`` floats, float pairs, ``(f,f,f,f)``, integer lists, ``<box>``);
* each value ``>= 1`` is read as 0-1000 and divided by 1000 (``> 1`` when the reply holds several
  boxes -- Migician's own quirk, kept);
* nothing parsed scores 0; correct when IoU >= 0.5; AVG is the unweighted mean of the tasks.

Two departures, both documented in docs/scoring.md: when the reply has an ``<answer>`` block the box is
taken from it (a CoT model's reasoning boxes are not its answer), and ground-truth boxes with
swapped corners are ordered on reading (5 records of the real file; Migician can never score them).
Ground-truth boxes a little past the image (2 records of the real file, up to 1.048) are clipped to it
on reading (``gt_clipped`` counts them). The IoU threshold must lie in (0, 1].

Protocol ``lenient`` reads the first box of the answer in any form :mod:`mirg_lib.parsing` knows
(JSON, box tokens, lists). A prediction may name its frame (``rel1``, ``rel1000``, ``abs`` with the
``image_size`` it was made at); ``auto`` (the default) is Migician's rule above.

``group_grounding`` is also scored image-aware: the box must be right *and* the reply must name the
right image, which Migician's protocol never checks.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .boxes import Box, Frame, iou_xyxy
from .formats import (
    IN_DOMAIN,
    MIG_TASKS,
    ORDINAL_WORDS,
    OUT_OF_DOMAIN,
    MigRecord,
    RecordError,
    decode_json,
    group_target_image,
    load_mig_bench,
    read_text,
)
from .parsing import answer_region, parse_response

PROTOCOLS = ("migician", "lenient")
_JSON_WS = " \t\n\r"
MAX_IMAGE_SIDE = 1_000_000  # pixels: a larger image_size in a prediction is a mistake, not an image

_MIGICIAN_PATTERNS = (
    re.compile(r"\((\d+),\s*(\d+)\),\s*\((\d+),\s*(\d+)\)"),
    re.compile(r"\[(\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+)\]"),
    re.compile(r"\((\d+\.\d+),(\d+\.\d+)\),\((\d+\.\d+),(\d+\.\d+)\)"),
    re.compile(r"\((\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+)\)"),
    re.compile(r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\]"),
    re.compile(r"<box>(\d+)\s+(\d+)\s+(\d+)\s+(\d+)</box>"),
)


def migician_raw_boxes(text: str, limit: int | None = None) -> list[tuple[float, float, float, float]]:
    """All boxes (or the first ``limit``) of the first Migician pattern that matches ``text``, unscaled."""
    if not isinstance(text, str):
        return []
    for rx in _MIGICIAN_PATTERNS:
        out: list[tuple[float, float, float, float]] = []
        for m in rx.finditer(text):
            if limit is not None and len(out) >= limit:
                break
            out.append(tuple(float(v) for v in m.groups()))  # type: ignore[arg-type]  # digits: never raises
        if out:
            return out
    return []


def migician_auto_scale(boxes: list[tuple[float, ...]]) -> tuple[float, float, float, float] | None:
    """Migician's per-value rule: >= 1 (one box) or > 1 (several) means 0-1000."""
    if not boxes:
        return None
    if len(boxes) == 1:
        return tuple(v / 1000 if v >= 1 else v for v in boxes[0])  # type: ignore[return-value]
    return tuple(v / 1000 if v > 1 else v for v in boxes[0])  # type: ignore[return-value]


@dataclass(frozen=True)
class Prediction:
    index: int
    response: str
    frame: str = "auto"  # auto | rel1 | rel1000 | abs
    image_size: tuple[int, int] | None = None
    task: str | None = None


def load_predictions(path: str | os.PathLike) -> dict[int, Prediction]:
    """Read a predictions JSONL file. A bad line names the file, the line (1-based) and the field."""
    path = Path(path)
    preds: dict[int, Prediction] = {}
    text = read_text(path).replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text files read
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        start = len(line) - len(line.lstrip(_JSON_WS))
        row, end = decode_json(path, line, start, line=lineno)
        if line[end:].strip(_JSON_WS):
            raise RecordError(path, None, None, f"not valid JSON (extra data after the object, column {end + 1})", line=lineno)
        pred = parse_prediction(path, lineno, row)
        if pred.index in preds:
            raise RecordError(path, None, "index", f"duplicate prediction for benchmark index {pred.index}", line=lineno)
        preds[pred.index] = pred
    return preds


def parse_prediction(path: Path, lineno: int, row: Any) -> Prediction:
    """One prediction row; ``lineno`` is its 1-based line, named by every error."""

    def bad(field: str | None, problem: str) -> RecordError:
        return RecordError(path, None, field, problem, line=lineno)

    if not isinstance(row, dict):
        raise bad(None, f"expected a JSON object, got {type(row).__name__}")
    idx = row.get("index")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        raise bad("index", f"expected a non-negative integer, got {idx!r:.40}")
    resp = row.get("response")
    if not isinstance(resp, str):
        raise bad("response", f"expected the raw model reply as a string, got {type(resp).__name__}")
    frame = row.get("frame", "auto")
    if frame not in ("auto", *(f.value for f in Frame)):
        raise bad("frame", f"expected auto, rel1, rel1000 or abs, got {frame!r:.40}")
    size = row.get("image_size")
    if size is not None:
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMAGE_SIDE for v in size)
        ):
            raise bad("image_size", f"expected [width, height] in pixels (1 to {MAX_IMAGE_SIDE}), got {size!r:.40}")
        size = (int(size[0]), int(size[1]))
    if frame == "abs" and size is None:
        raise bad("image_size", "an 'abs' prediction needs the [width, height] it was made at")
    task = row.get("task")
    if task is not None and not isinstance(task, str):
        raise bad("task", "expected a string")
    return Prediction(idx, resp, frame, size, task)


def predicted_box(pred: Prediction, protocol: str = "migician") -> tuple[float, float, float, float] | None:
    """The prediction's box in 0-1 relative coordinates, or None when nothing can be read."""
    _, region = answer_region(pred.response)
    if protocol == "migician":
        raw = migician_raw_boxes(region, limit=2)  # the first box, and whether there are several
        if not raw:
            return None
        if pred.frame == "auto":
            return migician_auto_scale(raw)
        first = raw[0]
    elif protocol == "lenient":
        parsed = parse_response(pred.response)
        if parsed.box is None:
            return None
        first = parsed.box.values
        if not all(math.isfinite(v) for v in first):
            return None
        if pred.frame == "auto":
            return first if max(abs(v) for v in first) <= 1 else tuple(v / 1000 for v in first)  # type: ignore[return-value]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    try:
        box = Box(*first, frame=Frame.parse(pred.frame), size=pred.image_size).to(Frame.REL1)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return box.coords


@dataclass
class ItemScore:
    index: int
    task: str
    iou: float
    correct: bool
    status: str  # ok | missing | unparseable
    image_correct: bool | None = None


def check_threshold(threshold: object) -> float:
    """The IoU threshold as a float; refused outside (0, 1] (at 0 every reply, garbage too, is right)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"IoU threshold must lie in (0, 1], got {threshold!r}")
    return float(threshold)


def score_item(record: MigRecord, pred: Prediction | None, protocol: str = "migician", threshold: float = 0.5) -> ItemScore:
    threshold = check_threshold(threshold)
    if pred is None:
        return ItemScore(record.index, record.task, 0.0, False, "missing", False if record.task == "group_grounding" else None)
    box = predicted_box(pred, protocol)
    if box is None:
        status, value = "unparseable", 0.0
    else:
        status, value = "ok", iou_xyxy(record.answer, box)
    correct = value >= threshold
    image_ok = None
    if record.task == "group_grounding":
        want = group_target_image(record)
        got = parse_response(pred.response).image_index  # the image the answer region names
        image_ok = want is not None and got == want
    return ItemScore(record.index, record.task, value, correct, status, image_ok)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def domain_means(accs: dict[str, float]) -> dict[str, float | None]:
    """AVG (the unweighted mean over the tasks given), in-domain and out-of-domain (Zhang et al.'s split) of
    per-task accuracies; None where no task of a group is given."""
    return {
        "avg": _mean(list(accs.values())),
        "in_domain": _mean([accs[t] for t in IN_DOMAIN if t in accs]),
        "out_of_domain": _mean([accs[t] for t in OUT_OF_DOMAIN if t in accs]),
    }


def score(
    records: list[MigRecord],
    predictions: dict[int, Prediction],
    protocol: str = "migician",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """The scores as one JSON-ready dict (docs/scoring.md lists the fields)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    threshold = check_threshold(threshold)
    by_index = {r.index: r for r in records}
    unknown = sorted(set(predictions) - set(by_index))
    if unknown:
        raise ValueError(f"{len(unknown)} predictions name benchmark indices that do not exist, first {unknown[:5]}")
    for idx, p in predictions.items():
        if p.task is not None and p.task.strip().casefold() != by_index[idx].task.casefold():
            raise ValueError(f"prediction for index {idx} says task {p.task!r}, the benchmark says {by_index[idx].task!r}")
    items = [score_item(r, predictions.get(r.index), protocol, threshold) for r in records]
    per_task: dict[str, list[ItemScore]] = defaultdict(list)
    for it in items:
        per_task[it.task].append(it)
    order = [t for t in MIG_TASKS if t in per_task] + sorted(t for t in per_task if t not in MIG_TASKS)
    tasks: dict[str, Any] = {}
    for t in order:
        its = per_task[t]
        n_ok = sum(i.correct for i in its)
        tasks[t] = {
            "acc": 100.0 * n_ok / len(its),
            "correct": n_ok,
            "total": len(its),
            "mean_iou": sum(i.iou for i in its) / len(its),
            "missing": sum(i.status == "missing" for i in its),
            "unparseable": sum(i.status == "unparseable" for i in its),
        }
    out: dict[str, Any] = {
        "protocol": protocol,
        "iou_threshold": threshold,
        "tasks": tasks,
        **domain_means({t: v["acc"] for t, v in tasks.items()}),
        "n_records": len(records),
        "n_predictions": len(predictions),
        "missing": sum(i.status == "missing" for i in items),
        "unparseable": sum(i.status == "unparseable" for i in items),
        "gt_reordered": sum(r.reordered for r in records),
        "gt_clipped": sum(r.clipped for r in records),
    }
    gg = per_task.get("group_grounding", [])
    if gg:
        n = sum(i.correct and bool(i.image_correct) for i in gg)
        out["image_aware"] = {
            "group_grounding": {
                "acc": 100.0 * n / len(gg),
                "correct": n,
                "total": len(gg),
                "image_acc": 100.0 * sum(bool(i.image_correct) for i in gg) / len(gg),
            }
        }
    return out


def score_files(benchmark: str | os.PathLike, predictions: str | os.PathLike, protocol: str = "migician", threshold: float = 0.5) -> dict[str, Any]:
    check_threshold(threshold)  # before reading either file
    return score(load_mig_bench(benchmark), load_predictions(predictions), protocol, threshold)


def ground_truth_predictions(records: list[MigRecord], shift: float = 0.0) -> list[dict[str, Any]]:
    """Prediction rows that answer with the ground truth (optionally shifted right by ``shift``
    of the box width), written as Qwen2-VL box tokens in 0-1000: the scorer's self-check."""
    rows = []
    for r in records:
        x1, y1, x2, y2 = r.answer
        dx = shift * (x2 - x1)
        b = Box(x1 + dx, y1, x2 + dx, y2, Frame.REL1).to(Frame.REL1000).rounded()
        text = "<|box_start|>({:d},{:d}),({:d},{:d})<|box_end|>".format(*(int(v) for v in b.coords))
        if r.task == "group_grounding" and (k := group_target_image(r)) is not None:
            text = f"It is in the {ORDINAL_WORDS[k - 1]} image. " + text
        rows.append({"index": r.index, "task": r.task, "response": text})
    return rows


# a grounded caption as the base model writes it: the object named, then its box in 0-1000
_LISTING = re.compile(r"Image (\d{1,2}): ([^.<>]{0,2000})\.")
_CAPTION = re.compile(r"<\|object_ref_start\|>(?:the )?([^<]{0,80}?)<\|object_ref_end\|><\|box_start\|>\((\d{1,4}),(\d{1,4})\),\((\d{1,4}),(\d{1,4})\)<\|box_end\|>")


def caption_scores(items: list[Any], replies: list[str], threshold: float = 0.5) -> dict[str, float]:
    """How well replies describe an image (the base model's ``multi_describe`` curriculum): for each item (with
    its embedded scene) the objects of its named image (``target_image``) against the reply's grounded captions
    (``<|object_ref_start|>words<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``, 0-1000) or, in a
    reply without one, the names of its listing of that image ("Image 2: the small red solid circle, the ....";
    a listing of another image names nothing). In %:

    * ``objects``: the image's objects the reply names word for word (a caption: and boxes at IoU >= ``threshold``);
    * ``boxed``: the captions whose box lands on some object of the image at IoU >= ``threshold``;
    * ``count``: the replies that name as many objects as the image has;
    * ``exact``: the replies that name (and box) every object and nothing else.

    Linear in the replies' length; a reply that names nothing scores 0."""
    from .world.objects import SIZE_WORDS

    threshold = check_threshold(threshold)
    found = named = boxed = captions = right_count = exact = 0
    for it, reply in zip(items, replies, strict=True):
        image = it.scene["images"][it.target_image - 1]
        size = tuple(image["size"])
        want = [(f"{SIZE_WORDS[o['size']]} {o['colour']} {o['pattern']} {o['shape']}", Box(*o["box"], frame=Frame.ABS, size=size).to(Frame.REL1000).coords) for o in image["objects"]]
        said = [(m.group(1).strip(), tuple(float(v) for v in m.groups()[1:])) for m in _CAPTION.finditer(reply or "")]
        if said:
            hits = sum(any(w == s and iou_xyxy(b, sb) >= threshold for s, sb in said) for w, b in want)
            boxed += sum(any(iou_xyxy(sb, b) >= threshold for _, b in want) for _, sb in said)
            captions += len(said)
            n_said = len(said)
        else:
            listing = next((m for m in _LISTING.finditer(reply or "") if int(m.group(1)) == it.target_image), None)  # the named image's
            names = [n.strip().removeprefix("the ") for n in listing.group(2).split(", ")] if listing else []
            hits = sum(min(names.count(w), [x for x, _ in want].count(w)) for w in {x for x, _ in want})
            n_said = len(names)
        found += hits
        named += len(want)
        right_count += n_said == len(want)
        exact += hits == len(want) == n_said
    n = max(1, len(items))
    return {
        "objects": round(100.0 * found / max(1, named), 1),
        "boxed": round(100.0 * boxed / max(1, captions), 1),
        "count": round(100.0 * right_count / n, 1),
        "exact": round(100.0 * exact / n, 1),
    }
