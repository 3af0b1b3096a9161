"""Boxes and their coordinate frames.

Three frames meet in this project, and mixing them is the most reported reproduction bug of these
recipes (docs/scoring.md):

* ``rel1``    -- 0-1 relative to the image (MIG-Bench answers),
* ``rel1000`` -- 0-1000 relative to the image (Qwen2-VL box tokens, MGrounding-630k),
* ``abs``     -- absolute pixels of the image *as the model saw it* (Qwen2.5-VL answers refer to
  the resized model input, not to the file on disk).

Every :class:`Box` carries its frame, and an ``abs`` box also the ``(width, height)`` it refers to,
so a conversion can never silently assume one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Frame(StrEnum):
    REL1 = "rel1"
    REL1000 = "rel1000"
    ABS = "abs"

    @classmethod
    def parse(cls, value: str | Frame) -> Frame:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown coordinate frame {value!r}; expected one of {[f.value for f in cls]}") from None


_SCALE = {Frame.REL1: 1.0, Frame.REL1000: 1000.0}


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``(x1, y1, x2, y2)`` in a named frame.

    ``size`` is the ``(width, height)`` in pixels that an ``abs`` box refers to; relative boxes may
    carry it too (it is then used only when converting to ``abs``).
    """

    x1: float
    y1: float
    x2: float
    y2: float
    frame: Frame = Frame.REL1
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame", Frame.parse(self.frame))
        if self.size is not None:
            w, h = self.size
            object.__setattr__(self, "size", (int(w), int(h)))
        if self.frame is Frame.ABS and self.size is None:
            raise ValueError("an 'abs' box needs the (width, height) of the image it refers to")

    @property
    def coords(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def _full(self, frame: Frame, size: tuple[int, int] | None) -> tuple[float, float]:
        if frame is Frame.ABS:
            if size is None:
                raise ValueError("converting to or from 'abs' needs the image (width, height)")
            return float(size[0]), float(size[1])
        return _SCALE[frame], _SCALE[frame]

    def to(self, frame: Frame | str, size: tuple[int, int] | None = None) -> Box:
        """This box in ``frame``; ``size`` is the image size for ``abs`` (defaults to ``self.size``)."""
        frame = Frame.parse(frame)
        target_size = size if size is not None else self.size
        sw, sh = self._full(self.frame, self.size)
        tw, th = self._full(frame, target_size)
        return Box(
            self.x1 / sw * tw,
            self.y1 / sh * th,
            self.x2 / sw * tw,
            self.y2 / sh * th,
            frame,
            target_size,
        )

    def rounded(self) -> Box:
        """Integer coordinates, as box tokens and pixel answers are written."""
        return Box(*(float(round(v)) for v in self.coords), self.frame, self.size)

    @property
    def is_finite(self) -> bool:
        """Whether every coordinate is a finite float (an integer too large for one is not)."""
        try:
            return all(math.isfinite(v) for v in self.coords)
        except OverflowError:
            return False

    @property
    def is_proper(self) -> bool:
        """Finite, with positive width and height (not degenerate, not inverted)."""
        return self.is_finite and self.x2 > self.x1 and self.y2 > self.y1

    def inside_image(self, tol: float = 1e-6) -> bool:
        """Whether the box lies within the image it refers to (0..full in its frame)."""
        if not self.is_finite:
            return False
        if self.frame is Frame.ABS:
            fw, fh = float(self.size[0]), float(self.size[1])  # type: ignore[index]
        else:
            fw = fh = _SCALE[self.frame]
        return (
            -tol * fw <= self.x1 <= self.x2 <= fw * (1 + tol) and -tol * fh <= self.y1 <= self.y2 <= fh * (1 + tol)
        )

    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)


def iou_xyxy(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` tuples in the same frame.

    Returns 0.0 (never raises, never NaN) when either box is non-finite, degenerate or inverted.
    """
    try:
        ax1, ay1, ax2, ay2 = (float(v) for v in a)
        bx1, by1, bx2, by2 = (float(v) for v in b)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    vals = (ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
    if not all(math.isfinite(v) for v in vals):
        return 0.0
    if ax2 <= ax1 or ay2 <= ay1 or bx2 <= bx1 or by2 <= by1:
        return 0.0
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if not math.isfinite(union) or union <= 0:
        return 0.0
    return max(0.0, min(1.0, inter / union))


def iou(a: Box, b: Box) -> float:
    """IoU of two boxes, compared in 0-1 relative coordinates whatever their frames."""
    try:
        ra, rb = a.to(Frame.REL1), b.to(Frame.REL1)
    except (ValueError, ZeroDivisionError, OverflowError):
        return 0.0
    return iou_xyxy(ra.coords, rb.coords)


def format_box_tokens(box: Box) -> str:
    """Qwen2-VL box tokens ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` in 0-1000 integers."""
    b = box.to(Frame.REL1000).rounded()
    x1, y1, x2, y2 = (int(v) for v in b.coords)
    return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"


def qwen25_resized_size(width: int, height: int, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """(width, height) of the image Qwen2.5-VL actually sees, for the ``abs`` frame.

    Uses transformers' own ``smart_resize`` so the frame matches the processor exactly.
    """
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(w), int(h)
