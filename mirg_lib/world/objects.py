"""The objects of the embedded world and how they are drawn.

An object has a shape, a colour, a pattern and a size class; its *identity* is (shape, colour,
pattern), which is what "the same object" means across images. Every shape fills its box on all four
sides, so the box drawn is exactly the ground truth.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 200, 30),
    "purple": (148, 73, 189),
    "orange": (255, 127, 14),
    "cyan": (23, 190, 207),
    "pink": (240, 110, 180),
}
PATTERNS = ("solid", "striped", "dotted", "hollow")
SIZES = ("small", "medium", "large")
# side of the object as a fraction of the image side, per size class (times WorldConfig.object_scale)
SIZE_RANGES = {"small": (0.13, 0.18), "medium": (0.21, 0.27), "large": (0.31, 0.38)}
SIZE_WORDS = {"small": "small", "medium": "medium-sized", "large": "large"}
BACKGROUNDS = ((200, 200, 196), (222, 214, 196), (190, 200, 210), (206, 214, 196), (180, 180, 184), (226, 222, 226))
MARK_COLOUR = (255, 0, 0)

Identity = tuple[str, str, str]


def reading_order_key(box, size) -> tuple[int, float]:
    """Where an object comes when an image's objects are read out: top to bottom in four bands of the image's
    height (a 112 px image's rows of merged vision tokens), left to right within a band, by box centre."""
    cy = (box[1] + box[3]) / 2
    return min(3, int(4 * cy / size[1])), (box[0] + box[2]) / 2


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    pattern: str
    size: str
    box: tuple[float, float, float, float]  # absolute pixels in its image, x2/y2 exclusive
    oid: int = 0  # the same physical object keeps its oid across the images of a sample

    @property
    def identity(self) -> Identity:
        return (self.shape, self.colour, self.pattern)

    def moved(self, box: tuple[float, float, float, float]) -> Obj:
        return replace(self, box=tuple(float(v) for v in box))  # type: ignore[arg-type]

    def describe(self, attrs: tuple[str, ...] = ("size", "colour", "pattern", "shape")) -> str:
        words = []
        if "size" in attrs:
            words.append(SIZE_WORDS[self.size])
        if "colour" in attrs:
            words.append(self.colour)
        if "pattern" in attrs:
            words.append(self.pattern)
        words.append(self.shape)
        return " ".join(words)

    def to_json(self) -> dict:
        return {
            "oid": self.oid,
            "shape": self.shape,
            "colour": self.colour,
            "pattern": self.pattern,
            "size": self.size,
            "box": [round(v, 2) for v in self.box],
        }


def random_identity(rng: random.Random, exclude: set[Identity] | frozenset = frozenset()) -> Identity:
    for _ in range(1000):
        ident = (rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(PATTERNS))
        if ident not in exclude:
            return ident
    raise RuntimeError("attribute space exhausted")


def near_identity(rng: random.Random, ident: Identity, exclude: set[Identity] | frozenset = frozenset()) -> Identity:
    """An identity differing from ``ident`` in exactly one attribute (a hard distractor)."""
    for _ in range(100):
        which = rng.randrange(3)
        pools = (SHAPES, tuple(COLOURS), PATTERNS)
        new = list(ident)
        new[which] = rng.choice([v for v in pools[which] if v != ident[which]])
        cand = (new[0], new[1], new[2])
        if cand not in exclude:
            return cand
    return random_identity(rng, exclude | {ident})


def distractor_identities(rng: random.Random, target: Identity, k: int, similarity: float, exclude: set[Identity] | frozenset = frozenset()) -> list[Identity]:
    out: list[Identity] = []
    banned = set(exclude) | {target}
    for _ in range(k):
        ident = near_identity(rng, target, banned) if rng.random() < similarity else random_identity(rng, banned)
        out.append(ident)
    return out


def object_side(rng: random.Random, size: str, image_side: int, scale: float) -> float:
    lo, hi = SIZE_RANGES[size]
    return rng.uniform(lo, hi) * scale * image_side


def grid_side(size: str, image_side: int, scale: float, grid: int) -> int:
    """The side of a ``size`` object in a gridded world: its class's middle side rounded to whole grid cells."""
    lo, hi = SIZE_RANGES[size]
    return grid * max(1, round((lo + hi) / 2 * scale * image_side / grid))


def boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], gap: float = 0.0) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def place_box(
    rng: random.Random,
    w: float,
    h: float,
    width: int,
    height: int,
    taken: list[tuple[float, ...]],
    gap: float = 3.0,
    margin: float = 2.0,
    tries: int = 200,
    grid: int = 0,
) -> tuple[float, float, float, float] | None:
    """A box of size ``w x h`` inside the image, clear of ``taken``; None if none is found.

    ``grid``: the box's corner on that pixel grid (no margin; neighbours may share an edge)."""
    if grid:
        nx, ny = int((width - w) // grid), int((height - h) // grid)
        if nx < 0 or ny < 0:
            return None
        for _ in range(tries):
            x, y = grid * rng.randint(0, nx), grid * rng.randint(0, ny)
            box = (float(x), float(y), float(x + w), float(y + h))
            if not any(boxes_overlap(box, t) for t in taken):
                return box
        return None
    if w + 2 * margin > width or h + 2 * margin > height:
        return None
    for _ in range(tries):
        x = rng.uniform(margin, width - margin - w)
        y = rng.uniform(margin, height - margin - h)
        box = (round(x), round(y), round(x + w), round(y + h))
        if not any(boxes_overlap(box, t, gap) for t in taken):
            return tuple(float(v) for v in box)  # type: ignore[return-value]
    return None


def _polygon(shape: str) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "hexagon":
        return [(0.25, 0.0), (0.75, 0.0), (1.0, 0.5), (0.75, 1.0), (0.25, 1.0), (0.0, 0.5)]
    if shape == "cross":
        a, b = 0.33, 0.67
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    if shape == "star":
        pts = []
        for i in range(10):
            r = 0.5 if i % 2 == 0 else 0.21
            ang = -math.pi / 2 + i * math.pi / 5
            pts.append((0.5 + r * math.cos(ang), 0.5 + r * math.sin(ang)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        return [((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)) for x, y in pts]
    return None


def _mask(shape: str, w: int, h: int, hollow: bool) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    lw = max(2, round(min(w, h) / 7))
    if shape == "circle":
        d.ellipse((0, 0, w - 1, h - 1), fill=255)
        if hollow:
            d.ellipse((lw, lw, w - 1 - lw, h - 1 - lw), fill=0)
        return m
    if shape == "square":
        d.rectangle((0, 0, w - 1, h - 1), fill=255)
        if hollow:
            d.rectangle((lw, lw, w - 1 - lw, h - 1 - lw), fill=0)
        return m
    poly = _polygon(shape)
    assert poly is not None, shape
    pts = [(x * (w - 1), y * (h - 1)) for x, y in poly]
    d.polygon(pts, fill=255)
    if hollow:
        d.line(pts + [pts[0]], fill=0, width=1)  # keep the outer edge crisp
        inner = Image.new("L", (w, h), 0)
        di = ImageDraw.Draw(inner)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        k = max(0.0, 1.0 - 2.2 * lw / max(2, min(w, h)))
        di.polygon([(cx + (x - cx) * k, cy + (y - cy) * k) for x, y in pts], fill=255)
        d.polygon(pts, fill=255)
        arr = np.array(m, dtype=np.int16) - np.array(inner, dtype=np.int16)
        m = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return m


def _texture(colour: tuple[int, int, int], pattern: str, w: int, h: int) -> Image.Image:
    tex = Image.new("RGB", (w, h), colour)
    if pattern == "striped":
        d = ImageDraw.Draw(tex)
        step = max(4, round(min(w, h) / 4))
        light = tuple(min(255, c + (255 - c) * 3 // 4) for c in colour)
        for off in range(-h, w + h, step):
            d.line((off, 0, off + h, h), fill=light, width=max(1, step // 2 - 1))
    elif pattern == "dotted":
        d = ImageDraw.Draw(tex)
        step = max(4, round(min(w, h) / 3.5))
        r = max(1, step // 4)
        for yy in range(step // 2, h, step):
            for xx in range(step // 2, w, step):
                d.ellipse((xx - r, yy - r, xx + r, yy + r), fill=(250, 250, 250))
    return tex


def draw_object(img: Image.Image, obj: Obj) -> None:
    x1, y1, x2, y2 = (round(v) for v in obj.box)
    w, h = x2 - x1, y2 - y1
    if w < 2 or h < 2:
        return
    mask = _mask(obj.shape, w, h, obj.pattern == "hollow")
    tex = _texture(COLOURS[obj.colour], obj.pattern, w, h)
    img.paste(tex, (x1, y1), mask)


def render(
    width: int,
    height: int,
    objects: list[Obj],
    background: tuple[int, int, int],
    noise: float,
    noise_seed: int,
    brightness: float = 1.0,
    cue: float = 0.0,
) -> Image.Image:
    """Background with seeded noise, then the objects in order (later ones on top).

    ``cue`` > 0 (grey levels) makes the background a coordinate map, CoordConv-style (Liu et al. 2018): red
    and blue are ``50 + cue * x`` and ``50 + cue * y`` (x, y in 0-1), the same in every image. A small model
    trained from scratch can read where it is from it, standing in for the absolute-position sense a
    pretrained vision tower brings (Qwen's ViT has only relative rotary positions).
    """
    rs = np.random.default_rng(noise_seed)
    base = np.empty((height, width, 3), dtype=np.float32)
    base[:] = background
    if cue:
        xs, ys = np.arange(width, dtype=np.float32)[None, :], np.arange(height, dtype=np.float32)[:, None]
        base[:, :, 0] = 50.0 + cue * xs / max(1, width - 1)
        base[:, :, 2] = 50.0 + cue * ys / max(1, height - 1)
    if noise > 0:
        base += rs.normal(0.0, noise, size=(height, width, 1)).astype(np.float32)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    for o in objects:
        draw_object(img, o)
    if brightness != 1.0:
        arr = np.asarray(img, dtype=np.float32) * brightness
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


def mark_box(img: Image.Image, box: tuple[float, ...], width: int = 2) -> None:
    """The red bounding box MIG-Bench draws around a referenced object."""
    d = ImageDraw.Draw(img)
    x1, y1, x2, y2 = box
    pad = width
    d.rectangle(
        (max(0, x1 - pad), max(0, y1 - pad), min(img.width - 1, x2 + pad - 1), min(img.height - 1, y2 + pad - 1)),
        outline=MARK_COLOUR,
        width=width,
    )
