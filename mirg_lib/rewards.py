"""Rule-based rewards of the two recipes, with trl's reward-function signature.

Each function takes ``completions`` (strings, or conversational message lists) plus the dataset's
columns as keyword arguments, and returns one float per completion. Columns read:

* ``answer``       -- the ground-truth box, ``[x1, y1, x2, y2]`` in 0-1 relative to the target image;
* ``target_image`` -- the 1-based index of the image holding the answer (MIRG-RL's image reward);
* ``box_frame``    -- optional, the frame the policy writes boxes in: ``rel1000`` (Qwen2-VL),
  ``abs`` (Qwen2.5-VL, pixels of its resized input; needs ``image_size``), ``rel1``, or ``auto``
  (Migician's rule: values above 1 are 0-1000). Default ``auto``;
* ``image_size``   -- ``[width, height]`` of the target image as the model saw it (``abs`` only);
* ``box_notation`` -- optional, the box notation Zhang et al.'s format reward wants: ``json`` (the
  paper's ``{"bbox_2d": [..]}``, the default) or ``tokens`` (Qwen2-VL's ``<|box_start|>..<|box_end|>``).

Any model output, however broken or long, gets a number, in time linear in its length (see
:mod:`mirg_lib.parsing`): degenerate, inverted, out-of-image and non-finite boxes score 0, and nothing
raises. A missing *dataset column* is a configuration error and does raise.

Zhang et al.: ``r = 1.0 * IoU + 0.5 * format`` (format: ``<think>..</think><answer>..</answer>`` with a
JSON ``bbox_2d`` box in the answer, or box tokens for a Qwen2-VL policy). MIRG-RL: ``r = r_fmt + r_img + r_obj``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .boxes import Box, Frame, iou_xyxy
from .parsing import ParsedResponse, completion_text, parse_response

RewardFunc = Callable[..., list[float]]

# out-of-image slack, as a fraction of the image: rounding to 0-1000 integers must not cost reward
_INSIDE_TOL = 0.01


def _column(kwargs: dict[str, Any], name: str, n: int, default: Any = ...) -> list[Any]:
    if name not in kwargs or kwargs[name] is None:
        if default is ...:
            raise ValueError(
                f"reward needs the dataset column {name!r} (got columns: {sorted(k for k in kwargs if not k.startswith('_'))})"
            )
        return [default] * n
    col = kwargs[name]
    if not isinstance(col, (list, tuple)) or len(col) != n:
        raise ValueError(f"dataset column {name!r} must hold one value per completion ({n}), got {col!r:.80}")
    return list(col)


def predicted_rel_box(parsed: ParsedResponse, frame: str = "auto", image_size: Sequence[int] | None = None) -> tuple[float, ...] | None:
    """The answer's box in 0-1 relative coordinates, or None if it is missing or improper."""
    if parsed.box is None:
        return None
    vals = parsed.box.values
    if not all(math.isfinite(v) for v in vals):
        return None
    try:
        if frame in (None, "auto"):
            box = Box(*vals, frame=Frame.REL1 if max(vals) <= 1.0 else Frame.REL1000)
        else:
            size = tuple(int(v) for v in image_size) if image_size is not None else None
            box = Box(*vals, frame=Frame.parse(frame), size=size)  # type: ignore[arg-type]
        rel = box.to(Frame.REL1)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return None
    if not rel.is_proper or not rel.inside_image(tol=_INSIDE_TOL):
        return None
    return rel.coords


def _gt(ans: Any) -> tuple[float, ...] | None:
    try:
        vals = tuple(float(v) for v in ans)
    except (TypeError, ValueError, OverflowError):
        return None
    return vals if len(vals) == 4 else None


def _ious(completions: Sequence[Any], kwargs: dict[str, Any]) -> list[float]:
    n = len(completions)
    answers = _column(kwargs, "answer", n)
    frames = _column(kwargs, "box_frame", n, "auto")
    sizes = _column(kwargs, "image_size", n, None)
    out = []
    for comp, ans, fr, sz in zip(completions, answers, frames, sizes, strict=True):
        pred = predicted_rel_box(parse_response(completion_text(comp)), fr, sz)
        gt = _gt(ans)
        out.append(iou_xyxy(gt, pred) if pred is not None and gt is not None else 0.0)
    return out


def zhang_accuracy(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Zhang et al.'s accuracy reward: IoU of the answer's box with the ground truth."""
    return _ious(completions, kwargs)


_NOTATION_BOX_KIND = {"json": "json", "tokens": "box_tokens"}  # box_notation -> parsing.FoundBox.kind


def zhang_format(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1 when the reply is ``<think>..</think><answer>..</answer>`` and the answer's box, with finite,
    ordered corners, is in the row's ``box_notation``: a JSON ``{"bbox_2d": [x1, y1, x2, y2]}`` (``json``,
    the default) or ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` (``tokens``); else 0."""
    n = len(completions)
    notations = _column(kwargs, "box_notation", n, "json")
    out = []
    for comp, notation in zip(completions, notations, strict=True):
        want = _NOTATION_BOX_KIND.get(notation)
        if want is None:
            raise ValueError(f"dataset column 'box_notation' must be json or tokens, got {notation!r:.40}")
        p = parse_response(completion_text(comp))
        ok = p.well_formed and p.answer is not None and p.box is not None and p.box.kind == want
        if ok:
            x1, y1, x2, y2 = p.box.values  # type: ignore[union-attr]
            ok = all(math.isfinite(v) for v in (x1, y1, x2, y2)) and x2 > x1 and y2 > y1
        out.append(1.0 if ok else 0.0)
    return out


def mirg_format(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """MIRG-RL's r_fmt: 1 for a ``<think>..</think><answer>..</answer>`` reply whose answer holds a box."""
    out = []
    for comp in completions:
        p = parse_response(completion_text(comp))
        out.append(1.0 if p.well_formed and p.box is not None else 0.0)
    return out


def mirg_image(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """MIRG-RL's r_img: 1 when the image the answer names (``<bbox_id>[N-M]`` or 'the Nth image')
    is the target image."""
    n = len(completions)
    targets = _column(kwargs, "target_image", n)
    out = []
    for comp, tgt in zip(completions, targets, strict=True):
        got = parse_response(completion_text(comp)).image_index
        try:
            want = int(tgt)
        except (TypeError, ValueError, OverflowError):
            want = None
        out.append(1.0 if got is not None and want is not None and got == want else 0.0)
    return out


def mirg_object(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """MIRG-RL's r_obj: IoU of the answer's box with the ground truth."""
    return _ious(completions, kwargs)


REWARD_FUNCS: dict[str, RewardFunc] = {
    "zhang_accuracy": zhang_accuracy,
    "zhang_format": zhang_format,
    "mirg_format": mirg_format,
    "mirg_image": mirg_image,
    "mirg_object": mirg_object,
}

RECIPE_REWARDS: dict[str, dict[str, float]] = {
    "zhang": {"zhang_accuracy": 1.0, "zhang_format": 0.5},
    "mirg": {"mirg_format": 1.0, "mirg_image": 1.0, "mirg_object": 1.0},
}


def get_rewards(weights: dict[str, float]) -> tuple[list[RewardFunc], list[float]]:
    """Reward functions and weights by name, for ``GRPOTrainer(reward_funcs=...)`` and
    ``GRPOConfig(reward_weights=...)``."""
    if not weights:
        raise ValueError("no reward functions named")
    funcs, ws = [], []
    for name, w in weights.items():
        if name not in REWARD_FUNCS:
            raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARD_FUNCS)}")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise ValueError(f"reward weight for {name!r} must be a finite number, got {w!r}")
        funcs.append(REWARD_FUNCS[name])
        ws.append(float(w))
    return funcs, ws


def total_reward(weights: dict[str, float], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """The weighted sum of the named rewards, per completion (as GRPO combines them)."""
    funcs, ws = get_rewards(weights)
    parts = [f(completions, **kwargs) for f in funcs]
    return [sum(w * p[i] for w, p in zip(ws, parts, strict=True)) for i in range(len(completions))]
