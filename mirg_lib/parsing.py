"""Reading a model's answer: tags, boxes in every form the two recipes use, MIRG-RL trajectories.

Forms understood, wherever they stand in the text:

* ``<think>...</think><answer>...</answer>`` tags (Zhang et al., MIRG-RL);
* JSON ``{"bbox_2d": [x1, y1, x2, y2], "label": "..."}``, bare or inside a ```json fence, alone or
  in a list;
* Qwen box tokens ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` and the bare ``(x1,y1),(x2,y2)``;
* plain lists ``[x1, y1, x2, y2]``;
* the MIRG-RL trajectory form
  ``<bbox_id>[N-M]</bbox_id><|object_ref_start|>obj<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
  (image N, object M; later mentions repeat only the ``<bbox_id>``).

When an ``<answer>`` block exists the box is taken from it, so boxes written while reasoning never
count as the answer. Nothing here raises on any input string: a reply that cannot be read yields
``None`` fields, which rewards and the scorer turn into 0. Every function takes time linear in the
length of the text: tags are found once with ``str.find``, the patterns cannot backtrack over what
they read (possessive quantifiers), and each look-ahead from a tag is bounded.
"""

from __future__ import annotations

import functools
import json
import math
import re
from bisect import bisect_left
from dataclasses import dataclass, field

# possessive throughout: giving back a digit or a space never lets a match succeed, so none is tried
_NUM = r"[-+]?+(?:\d++(?:\.\d*+)?+|\.\d++)(?:[eE][-+]?+\d++)?+"
_S = r"\s*+"

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
STRICT_FORMAT_RE = re.compile(
    r"\A\s*+<think>(?:(?!</?think>|</?answer>).)*+</think>\s*+<answer>(?:(?!</?think>|</?answer>).)*+</answer>\s*+\Z", re.S
)

BOX_TOKEN_RE = re.compile(
    r"<\|box_start\|>" + _S + r"\(" + _S + f"({_NUM})" + _S + "," + _S + f"({_NUM})" + _S + r"\)" + _S + "," + _S
    + r"\(" + _S + f"({_NUM})" + _S + "," + _S + f"({_NUM})" + _S + r"\)" + _S + r"<\|box_end\|>"
)
PAIR_RE = re.compile(
    r"\(" + _S + f"({_NUM})" + _S + "," + _S + f"({_NUM})" + _S + r"\)" + _S + "," + _S
    + r"\(" + _S + f"({_NUM})" + _S + "," + _S + f"({_NUM})" + _S + r"\)"
)
LIST_RE = re.compile(r"\[" + _S + f"({_NUM})" + _S + "," + _S + f"({_NUM})" + _S + "," + _S + f"({_NUM})" + _S + "," + _S + f"({_NUM})" + _S + r"\]")
BBOX_ID_RE = re.compile(r"<bbox_id>\s*+(?:\[\s*+)?(\d++)\s*+-\s*+(\d++)\s*+(?:\]\s*+)?</bbox_id>")
OBJECT_REF_OPEN, OBJECT_REF_CLOSE = "<|object_ref_start|>", "<|object_ref_end|>"
_WS_RE = re.compile(r"\s*+")

_MENTION_WINDOW = 2000  # how far after a <bbox_id> its label and box may reach
_MAX_INDEX_DIGITS = 9  # an image or object number longer than this names nothing
_PARSE_CACHE = 256  # replies remembered by parse_response (a GRPO batch's completions)
_MAX_JSON_CANDIDATES = 256
_JSON_WINDOW = 8192  # the longest JSON box object read; each candidate is decoded from at most this much
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "last": -1,
}
IMAGE_WORD_RE = re.compile(
    r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth)\s++(?:image|picture|frame|view)\b", re.I
)
IMAGE_NUM_RE = re.compile(r"\b(?:image|picture|frame|view)[\s\-_#]*+(\d{1,2})\b|\b(\d{1,2})(?:st|nd|rd|th)\s++(?:image|picture|frame|view)\b", re.I)


@dataclass(frozen=True)
class FoundBox:
    """Four numbers read from the text, in whatever frame the model wrote them."""

    values: tuple[float, float, float, float]
    kind: str  # "json", "box_tokens", "pair", "list"
    start: int
    label: str | None = None


@dataclass(frozen=True)
class TrajectoryObject:
    """One ``<bbox_id>[N-M]</bbox_id>`` mention: image N, object M (both 1-based as written)."""

    image: int
    index: int
    start: int
    label: str | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class ParsedResponse:
    text: str
    think: str | None
    answer: str | None
    well_formed: bool  # exactly <think>..</think><answer>..</answer>, nothing around
    box: FoundBox | None  # the first box of the answer (or of the whole text if no <answer>)
    boxes: tuple[FoundBox, ...] = ()
    image_index: int | None = None  # 1-based, from the answer
    trajectory: tuple[TrajectoryObject, ...] = field(default=())

    @property
    def json_box(self) -> bool:
        return self.box is not None and self.box.kind == "json"


def _floats(groups: tuple[str, ...]) -> tuple[float, float, float, float] | None:
    try:
        vals = tuple(map(float, groups))
    except (TypeError, ValueError, OverflowError):
        return None
    return vals if len(vals) == 4 else None  # type: ignore[return-value]


def _coordinate(v: int | float) -> float:
    """A JSON number as a float; an integer too large for one is infinite, as ``1e999`` is."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _json_value_box(obj: object) -> tuple[tuple[float, float, float, float], str | None] | None:
    if not isinstance(obj, dict):
        return None
    raw = obj.get("bbox_2d", obj.get("bbox"))
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        return None
    vals: list[float] = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        vals.append(_coordinate(v))
    label = obj.get("label")
    return (vals[0], vals[1], vals[2], vals[3]), label if isinstance(label, str) else None


def _json_boxes(text: str) -> list[tuple[FoundBox, int]]:
    """JSON objects holding a ``bbox_2d`` (or ``bbox``), with where each ends.

    At most ``_MAX_JSON_CANDIDATES`` opening braces are tried, each on at most ``_JSON_WINDOW``
    characters, so the cost is bounded whatever follows them.
    """
    found: list[tuple[FoundBox, int]] = []
    decoder = json.JSONDecoder()
    pos = 0
    for _ in range(_MAX_JSON_CANDIDATES):
        i = text.find("{", pos)
        if i < 0:
            break
        try:
            obj, end = decoder.raw_decode(text[i : i + _JSON_WINDOW])
        except (ValueError, RecursionError):
            pos = i + 1
            continue
        got = _json_value_box(obj)
        if got is not None:
            found.append((FoundBox(got[0], "json", i, got[1]), i + end))
            pos = i + end
        else:
            pos = i + 1
    return found


def _overlaps(spans: list[tuple[int, int]], starts: list[int], a: int, b: int) -> bool:
    """Whether ``[a, b)`` overlaps one of ``spans`` (disjoint, sorted; ``starts`` their starts)."""
    k = bisect_left(starts, b) - 1  # the last span starting before b ends furthest of those
    return k >= 0 and spans[k][1] > a


def find_boxes(text: str) -> list[FoundBox]:
    """Every box in ``text``, in order of appearance.

    A span read as one form is not read again as another (the list inside a JSON box, the pair
    inside box tokens).
    """
    if not isinstance(text, str) or not text:
        return []
    json_found = _json_boxes(text)
    found: list[FoundBox] = [fb for fb, _ in json_found]
    spans: list[tuple[int, int]] = [(fb.start, end) for fb, end in json_found]
    for rx, kind in ((BOX_TOKEN_RE, "box_tokens"), (PAIR_RE, "pair"), (LIST_RE, "list")):
        starts = [s for s, _ in spans]
        new: list[tuple[int, int]] = []
        for m in rx.finditer(text):  # one pattern's matches never overlap each other
            span = m.span()
            if starts and _overlaps(spans, starts, *span):
                continue
            vals = _floats(m.groups())
            if vals is None:
                continue
            new.append(span)
            found.append(FoundBox(vals, kind, span[0]))
        if new:
            spans = sorted(spans + new)
    found.sort(key=lambda fb: fb.start)
    return found


def _index(digits: str) -> int | None:
    """An image or object number as written, or None when it is too long to name one."""
    d = digits.lstrip("0")
    return int(d or "0") if len(d) <= _MAX_INDEX_DIGITS else None


def _tag_positions(text: str, tag: str) -> list[int]:
    out, i = [], text.find(tag)
    while i >= 0:
        out.append(i)
        i = text.find(tag, i + len(tag))
    return out


def parse_trajectory(text: str) -> list[TrajectoryObject]:
    """Every ``<bbox_id>[N-M]</bbox_id>`` mention, with its label and box where they follow it
    (within ``_MENTION_WINDOW`` characters of it)."""
    if not isinstance(text, str):
        return []
    out: list[TrajectoryObject] = []
    ref_ends: list[int] | None = None
    for m in BBOX_ID_RE.finditer(text):
        img, idx = _index(m.group(1)), _index(m.group(2))
        if img is None or idx is None:
            continue
        limit = min(len(text), m.end() + _MENTION_WINDOW)
        pos = _WS_RE.match(text, m.end(), limit).end()  # type: ignore[union-attr]
        label = None
        box = None
        if text.startswith(OBJECT_REF_OPEN, pos, limit):
            if ref_ends is None:
                ref_ends = _tag_positions(text, OBJECT_REF_CLOSE)
            inner = pos + len(OBJECT_REF_OPEN)
            k = bisect_left(ref_ends, inner)
            if k < len(ref_ends) and ref_ends[k] + len(OBJECT_REF_CLOSE) <= limit:
                label = text[inner : ref_ends[k]].strip()
                pos = ref_ends[k] + len(OBJECT_REF_CLOSE)
        pos = _WS_RE.match(text, pos, limit).end()  # type: ignore[union-attr]
        bm = BOX_TOKEN_RE.match(text, pos, limit)
        if bm:
            box = _floats(bm.groups())
        out.append(TrajectoryObject(img, idx, m.start(), label, box))
    return out


def image_index_from_text(text: str) -> int | None:
    """The 1-based image an answer names: ``<bbox_id>[N-M]``, 'the third image', 'Image-3', '3th image'.

    The first naming counts; one whose number is too long to be an image names none.
    """
    if not isinstance(text, str) or not text:
        return None
    candidates: list[tuple[int, int | None]] = []
    m = BBOX_ID_RE.search(text)
    if m:
        candidates.append((m.start(), _index(m.group(1))))
    m = IMAGE_WORD_RE.search(text)
    if m:
        candidates.append((m.start(), _ORDINALS[m.group(1).lower()]))
    m = IMAGE_NUM_RE.search(text)
    if m:
        candidates.append((m.start(), int(m.group(1) or m.group(2))))
    if not candidates:
        return None
    return min(candidates, key=lambda c: c[0])[1]


def _block(text: str, open_tag: str, close_tag: str) -> str | None:
    """The text between the first ``open_tag`` and the first ``close_tag`` after it."""
    i = text.find(open_tag)
    if i < 0:
        return None
    j = text.find(close_tag, i + len(open_tag))
    return text[i + len(open_tag) : j] if j >= 0 else None


def answer_region(text: str) -> tuple[str | None, str]:
    """(the <answer> block or None, the text that holds the answer: that block, else the whole reply)."""
    if not isinstance(text, str):
        return None, ""
    block = _block(text, ANSWER_OPEN, ANSWER_CLOSE)
    if block is not None:
        return block, block
    i = text.find(ANSWER_OPEN)
    if i >= 0:  # opened but never closed (a truncated reply): the rest is the answer
        rest = text[i + len(ANSWER_OPEN) :]
        return rest, rest
    return None, text


def parse_response(text: object) -> ParsedResponse:
    """Read one model reply. Never raises.

    The last ``_PARSE_CACHE`` replies read are remembered, so the rewards of one batch, each reading
    the same completions, parse each of them once.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return _parse_text(text)


@functools.lru_cache(maxsize=_PARSE_CACHE)
def _parse_text(text: str) -> ParsedResponse:
    answer, region = answer_region(text)
    boxes = tuple(find_boxes(region))
    return ParsedResponse(
        text=text,
        think=_block(text, THINK_OPEN, THINK_CLOSE),
        answer=answer,
        well_formed=bool(STRICT_FORMAT_RE.match(text)),
        box=boxes[0] if boxes else None,
        boxes=boxes,
        image_index=image_index_from_text(region),
        trajectory=tuple(parse_trajectory(text)),
    )


def completion_text(completion: object) -> str:
    """The text of one trl completion: a plain string, or conversational messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content", "")
        return completion_text(content)
    if isinstance(completion, (list, tuple)):
        parts = []
        for part in completion:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict) and "content" in part:
                if part.get("role", "assistant") == "assistant":
                    parts.append(completion_text(part["content"]))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return "" if completion is None else str(completion)
