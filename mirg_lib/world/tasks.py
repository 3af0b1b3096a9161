"""One generator per task: the ten MIG-Bench tasks and single-image referring expressions.

Each generator draws a :class:`Sample` from a seeded ``random.Random``: images, the question in the
real benchmark's phrasing, the target image and box, and the full scene (every object of every image)
for the scripted teacher. Every generator checks, before returning, that exactly one object satisfies
the question (``_unique``); a draw that fails the check is drawn again, never written.

Where the world departs from the real benchmark: objects are coloured shapes, not photographs, so
"the same object" means the same (shape, colour, pattern); ``reasoning`` asks attribute rules
("the same colour but a different shape") instead of commonsense; ``correspondence`` asks for the
object of the same shape (its "function") drawn in another colour and pattern.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations

from PIL import Image

from ..boxes import Box, Frame, format_box_tokens
from ..formats import ORDINAL_WORDS
from .objects import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    SHAPES,
    SIZES,
    Identity,
    Obj,
    distractor_identities,
    grid_side,
    mark_box,
    near_identity,
    object_side,
    place_box,
    random_identity,
    reading_order_key,
    render,
)

SINGLE_TASK = "single_refer"
# training-pool only: one object per image, named in full and then boxed, in Qwen-VL's grounded-caption form
# (<|object_ref_start|>the small red striped circle<|object_ref_end|><|box_start|>...<|box_end|>): direct
# supervision of every attribute, the base model's perception curriculum
DESCRIBE_TASK = "single_describe"
DESCRIBE_TEMPLATES = (
    "Describe the object in the image and give its bounding box.",
    "What is the object in the image? Name it and locate it.",
    "Name the object you see and provide its bounding box coordinate.",
)
# training-pool only: several images, the question names one of them and describes an object in it, answered
# with its box in that image: the image indexing and per-image box frame a pretrained VLM brings from its
# multi-image data, without any benchmark task's logic (which object differs, recurs, corresponds)
MULTI_TASK = "multi_refer"
MULTI_TEMPLATES = (
    "In the {nth} image, please find the bounding box coordinates for the area described by: {ref}.",
    "Please locate {ref} in image-{n} and give its bounding box.",
    "Find {ref} in the {ordinal} image and locate it.",
    "Which region of Image-{n} is described by {ref}? Give its bounding box coordinates.",
)
# training-pool only: several images, the question names one of them, the answer names and boxes every object of
# it in reading order (grounded captions, as single_describe's): what a pretrained VLM's dense captions give it,
# and what a reasoning that reads each image out before comparing them needs
MULTI_DESCRIBE_TASK = "multi_describe"
MULTI_DESCRIBE_TEMPLATES = (  # answered with every object's box
    "Name every object in the {nth} image and give the bounding box of each.",
    "List the objects of image-{n} with their bounding boxes.",
    "What objects does the {ordinal} image show? Name and locate each one.",
    "Describe Image-{n}: every object and its bounding box coordinates.",
)
MULTI_LIST_TEMPLATES = (  # answered in words: "Image 2: the small red solid circle, the large blue dotted star."
    "What objects are in the {nth} image?",
    "List the objects of image-{n}.",
    "Name every object you see in the {ordinal} image.",
    "Which objects does Image-{n} show?",
)
# the base model's curriculum tasks, each with the DataConfig field that sizes it in the training pool
CURRICULUM_TASKS = {DESCRIBE_TASK: "n_single_describe_train", MULTI_TASK: "n_multi_refer_train", MULTI_DESCRIBE_TASK: "n_multi_describe_train"}

GROUP_TEMPLATES = (
    "Please find the bounding box coordinates for the area described by: {ref}.",
    "Identify the bounding box of the region described by the following expression: {ref}.",
    "Please locate the bounding box of the region described in this sentence: {ref}.",
    "Please determine the bounding box coordinates for the area described here: {ref}.",
    "Please specify the bounding box coordinates for the region indicated by this sentence: {ref}.",
    "Please provide the bounding box coordinate of the region this sentence describes: {ref}.",
)


class WorldError(RuntimeError):
    """A draw that does not make a well-posed question (retried by the caller)."""


@dataclass(frozen=True)
class WorldKnobs:
    """The difficulty knobs a generator reads (from the data stage config)."""

    image_size: int = 140
    objects_per_image: tuple[int, int] = (3, 5)
    object_scale: float = 1.0
    distractor_similarity: float = 0.5
    noise: float = 6.0
    max_images: int = 6
    view_shift: float = 0.15
    extra_attribute_prob: float = 0.3
    position_cue: float = 0.0
    object_grid: int = 0


@dataclass
class Sample:
    task: str
    images: list[Image.Image]
    scenes: list[list[Obj]]
    question: str
    target_image: int  # 1-based
    target: Obj  # the answer object, its box in the target image's pixels
    additional_info: str = ""
    need_format: bool = True
    meta: dict = field(default_factory=dict)

    @property
    def answer_box(self) -> Box:
        img = self.images[self.target_image - 1]
        return Box(*self.target.box, frame=Frame.ABS, size=(img.width, img.height))

    def answer_rel(self) -> list[float]:
        return [round(v, 4) for v in self.answer_box.to(Frame.REL1).coords]

    def answer_text(self) -> str:
        """The MGrounding-style answer: box tokens in 0-1000 (with the image named for group grounding)."""
        if self.task == DESCRIBE_TASK:
            return grounded_caption(self.target, self.answer_box.size)
        if self.task == MULTI_DESCRIBE_TASK:
            objs = in_reading_order(self.scenes[self.target_image - 1], self.answer_box.size)
            if self.meta.get("form") == "list":
                return list_image(self.target_image, ["the " + o.describe() for o in objs])
            return ", ".join(grounded_caption(o, self.answer_box.size) for o in objs)
        tokens = format_box_tokens(self.answer_box)
        if self.task == "group_grounding":
            return f"It's in the {ORDINAL_WORDS[self.target_image - 1]} image. {tokens}"
        return tokens


def object_ref(words: str) -> str:
    """An object named as a grounded caption names it, before its box: ``<|object_ref_start|>the <words><|object_ref_end|>``."""
    return f"<|object_ref_start|>the {words}<|object_ref_end|>"


def grounded_caption(obj: Obj, size: tuple[int, int]) -> str:
    """Qwen-VL's grounded caption of one object: ``<|object_ref_start|>the small red striped circle<|object_ref_end|>``
    then its box tokens (0-1000) in an image of ``size`` (width, height) pixels."""
    return object_ref(obj.describe()) + format_box_tokens(Box(*obj.box, frame=Frame.ABS, size=size))


def in_reading_order(objs: list[Obj], size: tuple[int, int]) -> list[Obj]:
    """An image's objects as they are read out (:func:`reading_order_key`)."""
    return sorted(objs, key=lambda o: reading_order_key(o.box, size))


def list_image(n: int, names: list[str]) -> str:
    """Image ``n``'s objects in words, in reading order: "Image 2: the small red solid circle, the large blue
    dotted star." (the base's ``multi_describe`` list form, and how the scripted teacher reads an image out)."""
    return f"Image {n}: " + ", ".join(names) + "."


def _unique(condition: bool, what: str) -> None:
    if not condition:
        raise WorldError(what)


def _n_objects(rng: random.Random, k: WorldKnobs, extra: int = 0) -> int:
    lo, hi = k.objects_per_image
    return rng.randint(lo, hi) + extra


def _scene(
    rng: random.Random,
    k: WorldKnobs,
    identities: list[Identity],
    first_oid: int = 0,
    width: int | None = None,
    height: int | None = None,
    sizes: list[str] | None = None,
) -> list[Obj]:
    """Place objects of the given identities without overlap (raises WorldError if crowded)."""
    w = width or k.image_size
    h = height or k.image_size
    taken: list[tuple[float, ...]] = []
    objs = []
    for i, ident in enumerate(identities):
        size = sizes[i] if sizes else rng.choice(SIZES)
        box = _place(rng, k, size, w, h, taken)
        if box is None:
            raise WorldError("scene too crowded")
        taken.append(box)
        objs.append(Obj(ident[0], ident[1], ident[2], size, box, first_oid + i))
    return objs


def _place(rng: random.Random, k: WorldKnobs, size: str, w: int, h: int, taken: list[tuple[float, ...]], aspect: bool = True) -> tuple[float, float, float, float] | None:
    """A free box for a ``size`` object: a drawn side (and aspect) anywhere, or with ``object_grid`` a square of
    whole grid cells on the grid. The side and aspect are drawn either way, so the grid changes no other draw."""
    side = object_side(rng, size, min(w, h), k.object_scale)
    a = rng.uniform(0.85, 1.15) if aspect else 1.0
    if k.object_grid:
        g = grid_side(size, min(w, h), k.object_scale, k.object_grid)
        return place_box(rng, g, g, w, h, taken, grid=k.object_grid)
    return place_box(rng, side * a, side / a, w, h, taken)


def _bg(rng: random.Random) -> tuple[int, int, int]:
    return rng.choice(BACKGROUNDS)


def _render(k: WorldKnobs, objs: list[Obj], bg, noise_seed: int, brightness: float = 1.0, size=None) -> Image.Image:
    """``render`` with the world's noise and position cue, at the world's image size unless ``size``."""
    w, h = size or (k.image_size, k.image_size)
    return render(w, h, objs, bg, k.noise, noise_seed, brightness, k.position_cue)


def _draw(rng: random.Random, k: WorldKnobs, objs: list[Obj], bg=None, brightness: float = 1.0, size=None) -> Image.Image:
    return _render(k, objs, bg or _bg(rng), rng.randrange(2**31), brightness, size)


def _count(objs: list[Obj], pred: Callable[[Obj], bool]) -> int:
    return sum(1 for o in objs if pred(o))


def _n_images(rng: random.Random, k: WorldKnobs, lo: int, hi: int) -> int:
    hi = min(hi, k.max_images)
    lo = min(lo, hi)
    return rng.randint(lo, hi)


def _rel1000(box: tuple[float, ...], size: int) -> str:
    return format_box_tokens(Box(*box, frame=Frame.ABS, size=(size, size)))


# ---------------------------------------------------------------------------------------------- tasks


def gen_common_object(rng: random.Random, k: WorldKnobs) -> Sample:
    n = _n_images(rng, k, 3, 5)
    target = random_identity(rng)
    pool = distractor_identities(rng, target, max(3, n * 2), k.distractor_similarity)
    scenes = []
    for _ in range(n):
        m = _n_objects(rng, k) - 1
        idents = [target] + rng.sample(pool, min(m, len(pool)))
        rng.shuffle(idents)
        scenes.append(_scene(rng, k, idents))
    in_all = set.intersection(*({o.identity for o in s} for s in scenes))
    _unique(in_all == {target}, "exactly one identity common to all images")
    for s in scenes:
        _unique(_count(s, lambda o: o.identity == target) == 1, "target once per image")
    kk = rng.randint(1, n)
    tobj = next(o for o in scenes[kk - 1] if o.identity == target)
    images = [_draw(rng, k, s) for s in scenes]
    q = f"These images share one object in common. Recognize and locate this object in the {kk}th image. "
    return Sample("common_object", images, scenes, q, kk, tobj, meta={"common": list(target)})


def _change(rng: random.Random, k: WorldKnobs, objs: list[Obj]) -> tuple[list[Obj], Obj, str, Obj | None]:
    """Apply one difference; returns (new objects, the answer object, kind, the object before)."""
    kind = rng.choice(("colour", "shape", "pattern", "add", "remove"))
    if kind == "add":
        ident = random_identity(rng)
        size = rng.choice(SIZES)
        box = _place(rng, k, size, k.image_size, k.image_size, [o.box for o in objs], aspect=False)
        if box is None:
            raise WorldError("no room to add an object")
        new = Obj(*ident, size, box, max(o.oid for o in objs) + 1)
        return objs + [new], new, kind, None
    i = rng.randrange(len(objs))
    old = objs[i]
    if kind == "remove":
        return objs[:i] + objs[i + 1 :], old, kind, old
    if kind == "colour":
        new = Obj(old.shape, rng.choice([c for c in COLOURS if c != old.colour]), old.pattern, old.size, old.box, old.oid)
    elif kind == "shape":
        new = Obj(rng.choice([s for s in SHAPES if s != old.shape]), old.colour, old.pattern, old.size, old.box, old.oid)
    else:
        new = Obj(old.shape, old.colour, rng.choice([p for p in PATTERNS if p != old.pattern]), old.size, old.box, old.oid)
    return objs[:i] + [new] + objs[i + 1 :], new, kind, old


def _differences(a: list[Obj], b: list[Obj], dx: float = 0.0, dy: float = 0.0) -> int:
    """How many objects differ between two renderings of a scene (b shifted by dx, dy)."""
    ka = {(o.identity, round(o.box[0] + dx), round(o.box[1] + dy), round(o.box[2] + dx), round(o.box[3] + dy)) for o in a}
    kb = {(o.identity, round(o.box[0]), round(o.box[1]), round(o.box[2]), round(o.box[3])) for o in b}
    return max(len(ka - kb), len(kb - ka))


def gen_diff(rng: random.Random, k: WorldKnobs) -> Sample:
    n_obj = _n_objects(rng, k, extra=1)
    a = _scene(rng, k, [random_identity(rng) for _ in range(n_obj)])
    b, tobj, kind, before = _change(rng, k, a)
    _unique(_differences(a, b) == 1, "exactly one difference")
    bg = _bg(rng)
    seed = rng.randrange(2**31)
    images = [_render(k, s, bg, seed) for s in (a, b)]
    q = "Compare these two images carefully and give me the coordinates of their difference. "
    meta = {"change": kind, "before": before.to_json() if before else None}
    return Sample("diff", images, [a, b], q, 2, tobj, meta=meta)


def gen_view_diff(rng: random.Random, k: WorldKnobs) -> Sample:
    n_obj = _n_objects(rng, k, extra=1)
    a = _scene(rng, k, [random_identity(rng) for _ in range(n_obj)])
    s = k.image_size
    # the second camera: a shift that keeps every object in view, another exposure and noise
    min_x, min_y = min(o.box[0] for o in a), min(o.box[1] for o in a)
    max_x, max_y = max(o.box[2] for o in a), max(o.box[3] for o in a)
    lim = k.view_shift * s
    edge = 0 if k.object_grid else 1  # gridded objects may touch the border
    dx = round(rng.uniform(max(-lim, edge - min_x), min(lim, s - edge - max_x)))
    dy = round(rng.uniform(max(-lim, edge - min_y), min(lim, s - edge - max_y)))
    shifted = [o.moved((o.box[0] + dx, o.box[1] + dy, o.box[2] + dx, o.box[3] + dy)) for o in a]
    b, tobj, kind, before = _change(rng, k, shifted)
    _unique(_differences(a, b, dx, dy) == 1, "exactly one real difference")
    bg = _bg(rng)
    img_a = _render(k, a, bg, rng.randrange(2**31))
    img_b = _render(k, b, bg, rng.randrange(2**31), brightness=rng.uniform(0.8, 1.15))
    q = "Compare these two images carefully and give me the coordinates of their real difference in the second image.  Find it and locate it in the second image. "
    meta = {"change": kind, "shift": [dx, dy], "before": before.to_json() if before else None}
    return Sample("view_diff", [img_a, img_b], [a, b], q, 2, tobj, meta=meta)


def gen_object_tracking(rng: random.Random, k: WorldKnobs) -> Sample:
    n = min(6, k.max_images)
    s = k.image_size
    target = random_identity(rng)
    n_obj = max(2, _n_objects(rng, k) - 1)
    idents = [target] + distractor_identities(rng, target, n_obj - 1, k.distractor_similarity)
    first = _scene(rng, k, idents, sizes=[rng.choice(("small", "medium")) for _ in idents])
    vel = [(rng.uniform(-0.06, 0.06) * s, rng.uniform(-0.06, 0.06) * s) for _ in first]
    frames = [first]
    for _ in range(1, n):
        prev = frames[-1]
        cur = []
        for j, o in enumerate(prev):
            vx, vy = vel[j]
            x1, y1, x2, y2 = o.box
            if x1 + vx < 1 or x2 + vx > s - 1:
                vx = -vx
            if y1 + vy < 1 or y2 + vy > s - 1:
                vy = -vy
            # an object touching the border (object_grid places them there) would leave the image either way
            vx = vx if 0 <= x1 + vx and x2 + vx <= s else 0.0
            vy = vy if 0 <= y1 + vy and y2 + vy <= s else 0.0
            vel[j] = (vx, vy)
            cur.append(o.moved((round(x1 + vx), round(y1 + vy), round(x2 + vx), round(y2 + vy))))
        frames.append(cur)
    for fr in frames:
        t = fr[0]
        _unique(all(not _touch(t.box, o.box) for o in fr[1:]), "target never touches another object")
        _unique(_count(fr, lambda o: o.identity == target) == 1, "target unique in every frame")
    kk = rng.randint(2, n)
    bg = _bg(rng)
    images = [_render(k, fr, bg, rng.randrange(2**31)) for fr in frames]
    mark_box(images[0], first[0].box)
    q = (
        "These are a sequence of images containing moving objects. For the object in the first image marked with red "
        f"bounding box({_rel1000(first[0].box, s)}), please locate it in the {kk}th image. "
    )
    return Sample("object_tracking", images, frames, q, kk, frames[kk - 1][0], need_format=False, meta={"marked": first[0].to_json()})


def _touch(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def gen_multi_view(rng: random.Random, k: WorldKnobs) -> Sample:
    n = _n_images(rng, k, 3, 5)
    s = k.image_size
    world = round(s * (1.0 + 2 * k.view_shift))
    target = random_identity(rng)
    m = _n_objects(rng, k, extra=2)
    idents = [target] + distractor_identities(rng, target, m - 1, k.distractor_similarity)
    objs = _scene(rng, k, idents, width=world, height=world)
    t = objs[0]
    views, scenes = [], []
    for _ in range(n):
        zoom = rng.uniform(0.9, 1.15)
        span = s / zoom
        # the camera keeps the target fully in view
        ox_lo, ox_hi = max(0.0, t.box[2] - span + 2), min(t.box[0] - 2, world - span)
        oy_lo, oy_hi = max(0.0, t.box[3] - span + 2), min(t.box[1] - 2, world - span)
        if ox_lo > ox_hi or oy_lo > oy_hi:
            raise WorldError("target cannot be kept in view")
        ox, oy = rng.uniform(ox_lo, ox_hi), rng.uniform(oy_lo, oy_hi)
        view = []
        for o in objs:
            b = tuple(round((v - off) * zoom) for v, off in zip(o.box, (ox, oy, ox, oy), strict=True))
            clipped = (max(0, b[0]), max(0, b[1]), min(s, b[2]), min(s, b[3]))
            if clipped[2] - clipped[0] < 3 or clipped[3] - clipped[1] < 3:
                continue
            if o.oid == t.oid and clipped != b:
                raise WorldError("target cut by the view")
            view.append((o.moved(b), o.moved(clipped)))
        views.append(view)
        scenes.append([c for _, c in view])
    for sc in scenes:
        _unique(_count(sc, lambda o: o.identity == target) == 1, "target once in every view")
        _unique(_count(sc, lambda o: o.oid == t.oid) == 1, "target fully in every view")
    kk = rng.randint(2, n)
    bg = _bg(rng)
    images = [_render(k, [full for full, _ in v], bg, rng.randrange(2**31)) for v in views]
    first_t = scenes[0][0]
    mark_box(images[0], first_t.box)
    q = (
        "These images share one object in common(the object marked with red bounding box in the first image"
        f"({_rel1000(first_t.box, s)}). Recognize and locate this object in the {kk}th image. "
    )
    tobj = next(o for o in scenes[kk - 1] if o.oid == t.oid)
    return Sample("multi_view", images, scenes, q, kk, tobj, meta={"marked": first_t.to_json()})


def gen_region(rng: random.Random, k: WorldKnobs) -> Sample:
    n = _n_images(rng, k, 2, 4)
    s = k.image_size
    m = max(n - 1, _n_objects(rng, k, extra=1))
    objs = _scene(rng, k, [random_identity(rng) for _ in range(m)])
    unique_objs = [o for o in objs if _count(objs, lambda p, o=o: p.identity == o.identity) == 1]
    _unique(len(unique_objs) >= n - 1, "enough distinguishable regions")
    chosen = rng.sample(unique_objs, n - 1)
    bg = _bg(rng)
    src = _render(k, objs, bg, rng.randrange(2**31))
    crops, regions = [], []
    for o in chosen:
        w, h = o.box[2] - o.box[0], o.box[3] - o.box[1]
        mx, my = rng.uniform(0.25, 0.7) * w, rng.uniform(0.25, 0.7) * h
        cb = (max(0, round(o.box[0] - mx)), max(0, round(o.box[1] - my)), min(s, round(o.box[2] + mx)), min(s, round(o.box[3] + my)))
        regions.append(Obj(o.shape, o.colour, o.pattern, o.size, tuple(float(v) for v in cb), o.oid))
        crops.append(src.crop(cb).resize((s, s), Image.Resampling.BICUBIC))
    for i, r in enumerate(regions):
        _unique(all(r.box != q.box for j, q in enumerate(regions) if j != i), "regions differ")
    kk = rng.randint(1, n - 1)
    q = f"You are given a source image followed by its several regions. Please locate the {kk}th region picture in the source image. "
    scenes = [objs] + [[] for _ in crops]
    return Sample("region", [src] + crops, scenes, q, 1, regions[kk - 1], meta={"regions": [r.to_json() for r in regions], "region_index": kk})


def _showcase(rng: random.Random, k: WorldKnobs, ident: Identity, size: str = "large") -> tuple[Image.Image, Obj]:
    """One object alone in the middle of an image (the query picture of refer/reasoning)."""
    s = k.image_size
    side = object_side(rng, size, s, k.object_scale) * 1.3
    x, y = (s - side) / 2 + rng.uniform(-4, 4), (s - side) / 2 + rng.uniform(-4, 4)
    if k.object_grid:  # centred on the grid (the side and jitter above are drawn either way)
        g = k.object_grid
        side = g * round(grid_side(size, s, k.object_scale, g) * 1.3 / g)
        x = y = g * ((s - side) // (2 * g))
    o = Obj(*ident, size, (round(x), round(y), round(x + side), round(y + side)), 0)
    return _draw(rng, k, [o]), o


def gen_refer_grounding(rng: random.Random, k: WorldKnobs) -> Sample:
    target = random_identity(rng)
    q_img, q_obj = _showcase(rng, k, target)
    m = _n_objects(rng, k)
    idents = [target] + distractor_identities(rng, target, m - 1, k.distractor_similarity)
    rng.shuffle(idents)
    scene = _scene(rng, k, idents, first_oid=1)
    _unique(_count(scene, lambda o: o.identity == target) == 1, "query object once in image 2")
    tobj = next(o for o in scene if o.identity == target)
    q = "Find and locate where does the object in image-1 locate in the image-2."
    return Sample("refer_grounding", [q_img, _draw(rng, k, scene)], [[q_obj], scene], q, 2, tobj)


ATTRS = ("size", "colour", "pattern")


def referring_expression(rng: random.Random, target: Obj, others: list[Obj], extra_prob: float) -> str:
    """The shortest description (shape plus some of size, colour, pattern) that only ``target``
    satisfies among ``others``; sometimes one attribute more, as people say."""

    def fits(o: Obj, attrs: tuple[str, ...]) -> bool:
        return o.shape == target.shape and all(getattr(o, a) == getattr(target, a) for a in attrs)

    for r in range(0, 4):
        subsets = list(combinations(ATTRS, r))
        rng.shuffle(subsets)
        for attrs in subsets:
            if not any(fits(o, attrs) for o in others):
                if r < 3 and rng.random() < extra_prob:
                    attrs = attrs + (rng.choice([a for a in ATTRS if a not in attrs]),)
                _unique(not any(fits(o, attrs) for o in others), "expression unique")
                return "the " + target.describe(tuple(attrs))
    raise WorldError("no expression singles out the target")


def _scenes_with_target(rng: random.Random, k: WorldKnobs, lo: int, hi: int) -> tuple[list[list[Obj]], int, Obj]:
    """``lo`` to ``hi`` (at most ``max_images``) scenes of random objects, a target image (1-based) and an
    object of it."""
    n = _n_images(rng, k, lo, hi)
    scenes = [_scene(rng, k, [random_identity(rng) for _ in range(_n_objects(rng, k))], first_oid=10 * i) for i in range(n)]
    kk = rng.randint(1, n)
    return scenes, kk, rng.choice(scenes[kk - 1])


def gen_group_grounding(rng: random.Random, k: WorldKnobs) -> Sample:
    scenes, kk, tobj = _scenes_with_target(rng, k, 3, 5)
    others = [o for s in scenes for o in s if o is not tobj]
    ref = referring_expression(rng, tobj, others, k.extra_attribute_prob)
    q = rng.choice(GROUP_TEMPLATES).format(ref=f"<|object_ref_start|>{ref}<|object_ref_end|>")
    images = [_draw(rng, k, s) for s in scenes]
    info = f"It is in the {ORDINAL_WORDS[kk - 1]} image. {_rel1000(tobj.box, k.image_size)}. "
    return Sample("group_grounding", images, scenes, q, kk, tobj, additional_info=info, need_format=False, meta={"expression": ref})


REASONING_RULES = {
    "same_colour": (
        "Which object in Image-2 has the same colour as the object in Image-1 but a different shape? Find it and locate it in the second image. ",
        lambda key, o: o.colour == key.colour and o.shape != key.shape,
    ),
    "same_shape": (
        "Locate the object in Image-2 that has the same shape as the object in Image-1 but a different colour. Find it and locate it in the second image. ",
        lambda key, o: o.shape == key.shape and o.colour != key.colour,
    ),
    "same_pattern": (
        "The object in Image-1 has a pattern. Which object in Image-2 shares that pattern but neither its colour nor its shape? Find it and locate it in the second image. ",
        lambda key, o: o.pattern == key.pattern and o.colour != key.colour and o.shape != key.shape,
    ),
}


def gen_reasoning(rng: random.Random, k: WorldKnobs) -> Sample:
    rule = rng.choice(sorted(REASONING_RULES))
    question, pred = REASONING_RULES[rule]
    key_ident = random_identity(rng)
    q_img, key = _showcase(rng, k, key_ident)
    m = _n_objects(rng, k)
    idents: list[Identity] = []
    # the answer: satisfies the rule
    for _ in range(200):
        cand = random_identity(rng)
        if pred(key, Obj(*cand, "small", (0, 0, 1, 1))):
            idents.append(cand)
            break
    # distractors: near the key, but failing the rule
    for _ in range(400):
        if len(idents) >= m:
            break
        cand = near_identity(rng, key_ident) if rng.random() < k.distractor_similarity else random_identity(rng)
        if not pred(key, Obj(*cand, "small", (0, 0, 1, 1))):
            idents.append(cand)
    _unique(len(idents) >= 2, "enough objects")
    rng.shuffle(idents)
    scene = _scene(rng, k, idents, first_oid=1)
    matches = [o for o in scene if pred(key, o)]
    _unique(len(matches) == 1, "exactly one object satisfies the rule")
    return Sample("reasoning", [q_img, _draw(rng, k, scene)], [[key], scene], question, 2, matches[0], meta={"rule": rule})


def gen_correspondence(rng: random.Random, k: WorldKnobs) -> Sample:
    m1 = _n_objects(rng, k)
    shapes1 = rng.sample(SHAPES, m1)
    first = _scene(rng, k, [(sh, rng.choice(list(COLOURS)), rng.choice(PATTERNS)) for sh in shapes1])
    marked = rng.choice(first)
    m2 = _n_objects(rng, k)
    other_shapes = rng.sample([sh for sh in SHAPES if sh != marked.shape], m2 - 1)
    counterpart = (
        marked.shape,
        rng.choice([c for c in COLOURS if c != marked.colour]),
        rng.choice([p for p in PATTERNS if p != marked.pattern]),
    )
    idents = [counterpart] + [(sh, rng.choice(list(COLOURS)), rng.choice(PATTERNS)) for sh in other_shapes]
    rng.shuffle(idents)
    second = _scene(rng, k, idents, first_oid=10)
    _unique(_count(second, lambda o: o.shape == marked.shape) == 1, "one object of the marked shape")
    tobj = next(o for o in second if o.shape == marked.shape)
    images = [_draw(rng, k, first), _draw(rng, k, second)]
    mark_box(images[0], marked.box)
    q = (
        "You are now presented with two objects. For the area marked by the red bounding box in the first image, identify "
        "and locate the corresponding area in the second image that serves a similar function or shares a similar meaning. "
    )
    return Sample("correspondence", images, [first, second], q, 2, tobj, meta={"marked": marked.to_json()})


def gen_single_refer(rng: random.Random, k: WorldKnobs) -> Sample:
    scene = _scene(rng, k, [random_identity(rng) for _ in range(_n_objects(rng, k, extra=1))])
    tobj = rng.choice(scene)
    ref = referring_expression(rng, tobj, [o for o in scene if o is not tobj], k.extra_attribute_prob)
    q = rng.choice(GROUP_TEMPLATES).format(ref=f"<|object_ref_start|>{ref}<|object_ref_end|>")
    return Sample(SINGLE_TASK, [_draw(rng, k, scene)], [scene], q, 1, tobj, need_format=False, meta={"expression": ref})


def gen_multi_refer(rng: random.Random, k: WorldKnobs) -> Sample:
    """2 to ``max_images`` scenes; an object of one of them, described so that only it fits *in that image*
    (other images may hold its twin: the image is named), boxed in that image's frame."""
    scenes, kk, tobj = _scenes_with_target(rng, k, 2, 4)
    ref = referring_expression(rng, tobj, [o for o in scenes[kk - 1] if o is not tobj], k.extra_attribute_prob)
    q = rng.choice(MULTI_TEMPLATES).format(ref=f"<|object_ref_start|>{ref}<|object_ref_end|>", n=kk, nth=f"{kk}th", ordinal=ORDINAL_WORDS[kk - 1])
    return Sample(MULTI_TASK, [_draw(rng, k, s) for s in scenes], scenes, q, kk, tobj, need_format=False, meta={"expression": ref})


def gen_multi_describe(rng: random.Random, k: WorldKnobs) -> Sample:
    """2 to 4 scenes; one named; its objects named in full in reading order, each with its box (grounded
    captions) or, half the time, in words only (``meta["form"]``: ``boxed`` or ``list``); the first is the
    sample's target. Two objects of one identity and size in the named image would read alike: drawn again."""
    scenes, kk, _ = _scenes_with_target(rng, k, 2, 4)
    size = (k.image_size, k.image_size)
    order = in_reading_order(scenes[kk - 1], size)
    _unique(len({o.describe() for o in order}) == len(order), "every object of the named image described apart")
    form = rng.choice(("boxed", "list"))
    q = rng.choice(MULTI_DESCRIBE_TEMPLATES if form == "boxed" else MULTI_LIST_TEMPLATES).format(n=kk, nth=f"{kk}th", ordinal=ORDINAL_WORDS[kk - 1])
    meta = {"described": [o.oid for o in order], "form": form}
    return Sample(MULTI_DESCRIBE_TASK, [_draw(rng, k, s) for s in scenes], scenes, q, kk, order[0], need_format=False, meta=meta)


def _one_object(rng: random.Random, k: WorldKnobs, task: str, templates: tuple[str, ...], meta: Callable[[Obj], dict]) -> Sample:
    scene = _scene(rng, k, [random_identity(rng)])
    return Sample(task, [_draw(rng, k, scene)], [scene], rng.choice(templates), 1, scene[0], need_format=False, meta=meta(scene[0]))


def gen_single_describe(rng: random.Random, k: WorldKnobs) -> Sample:
    return _one_object(rng, k, DESCRIBE_TASK, DESCRIBE_TEMPLATES, lambda o: {"expression": "the " + o.describe()})


GENERATORS: dict[str, Callable[[random.Random, WorldKnobs], Sample]] = {
    "diff": gen_diff,
    "view_diff": gen_view_diff,
    "common_object": gen_common_object,
    "object_tracking": gen_object_tracking,
    "multi_view": gen_multi_view,
    "region": gen_region,
    "refer_grounding": gen_refer_grounding,
    "group_grounding": gen_group_grounding,
    "reasoning": gen_reasoning,
    "correspondence": gen_correspondence,
    SINGLE_TASK: gen_single_refer,
    DESCRIBE_TASK: gen_single_describe,
    MULTI_TASK: gen_multi_refer,
    MULTI_DESCRIBE_TASK: gen_multi_describe,
}


def generate(task: str, seed: int, knobs: WorldKnobs, max_tries: int = 200) -> Sample:
    """A well-posed sample of ``task``; deterministic in ``seed``."""
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(GENERATORS)}")
    rng = random.Random(seed)
    last = None
    for _ in range(max_tries):
        try:
            sample = GENERATORS[task](rng, knobs)
        except WorldError as e:
            last = e
            continue
        check_sample(sample)
        return sample
    raise RuntimeError(f"could not draw a well-posed {task} sample in {max_tries} tries (last: {last}); relax the difficulty knobs")


def check_sample(s: Sample) -> None:
    """Invariants every written sample satisfies (also asserted by the tests)."""
    assert 1 <= s.target_image <= len(s.images), (s.task, s.target_image)
    img = s.images[s.target_image - 1]
    b = s.target.box
    assert 0 <= b[0] < b[2] <= img.width and 0 <= b[1] < b[3] <= img.height, (s.task, b, img.size)
    assert len(s.scenes) == len(s.images)
    assert "additional_info" not in s.question
