"""The papers' other benchmarks drawn by the embedded world, each in its published layout, so that the
readers and scorers of :mod:`mirg_lib.benchmarks` run end to end without a download.

Every analogue asks one of its benchmark's question types of the world's objects, and every item is
well-posed (one right answer, checked as it is drawn):

* ``blink/Counting/val.json`` (BLINK's fields, images as paths): how many objects of a colour and shape there
  are across 2-3 images; four numbers to choose from;
* ``blink/Visual_Similarity/val.json``: which of two images shows the same objects as the first (moved and
  re-lit) rather than other ones;
* ``blink/Visual_Correspondence/val.json``: an object boxed in the first image, four boxed and lettered A-D in
  the second (the same objects placed anew): which letter marks it;
* ``ref_l4/ref-l4-val.json`` (Ref-L4's fields, xywh boxes): one image, a long expression (every attribute
  and where in the image) naming one object;
* ``lisa/lisa_val.json`` (LISA-Grounding's fields, xyxy): an object found by reasoning about another ("the
  one of the same colour as the small red dotted star, another shape");
* ``mmiu/all.json`` (MMIU's fields, options in ``context``): which of 2-4 images shows a named object (MMIU's
  text-to-image retrieval, a high-level objective semantic task), and which way every object of an image moved
  in the next (its image spatial transformation estimation, a two-dimensional spatial task);
* ``revos/revos.json`` (ReVOS-Grounding's fields): 3-4 frames of a scene, an object that appears in one
  frame only, boxed in that frame;
* ``odinw/{Shapes,Colours}/test/annotations.json`` (COCO files, ODinW's layout of one folder per subset): every
  object of an image is an instance of its shape category, or of its colour's.

Deterministic in ``seed``: the same seed writes the same files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .objects import BACKGROUNDS, COLOURS, MARK_COLOUR, SHAPES, Obj, mark_box, random_identity
from .tasks import WorldError, WorldKnobs, _draw, _n_objects, _scene, referring_expression

ANALOGUES = ("blink_counting", "blink_similarity", "ref_l4", "lisa", "revos", "odinw", "mmiu", "blink_correspondence", "mmiu_spatial")
VERSION = 6  # part of a drawn set's stamp (pipeline.benchmark_sets): raise it when a drawer changes what it draws
_TRIES = 200


@dataclass
class Drawn:
    """One drawn item: its images and the record (image fields filled in by the writer)."""

    images: list[Image.Image]
    record: dict[str, Any]


def _where(box: tuple[float, ...], size: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / size, (box[1] + box[3]) / 2 / size
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    return "in the centre" if (row, col) == ("middle", "centre") else f"in the {row} {col} of the image"


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def letter_spot(box: tuple[float, ...]) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Where a correspondence letter goes: a white patch and the letter's corner, inside the top-left corner of
    the box it marks (objects never overlap, so no other box holds it)."""
    x1, y1 = int(box[0]) + 1, int(box[1]) + 1
    return (x1, y1, x1 + 7, y1 + 11), (x1 + 1, y1)


def draw_counting(rng: random.Random, k: WorldKnobs) -> Drawn:
    n = rng.randint(2, 3)
    scenes = [_scene(rng, k, [random_identity(rng) for _ in range(_n_objects(rng, k))], first_oid=10 * i) for i in range(n)]
    probe = rng.choice([o for s in scenes for o in s])
    count = sum(1 for s in scenes for o in s if (o.colour, o.shape) == (probe.colour, probe.shape))
    wrong = rng.sample(sorted(set(range(max(0, count - 3), count + 4)) - {count}), 3)
    choices = [count, *wrong]
    rng.shuffle(choices)  # the answer at any of the four places alike
    answer = "ABCD"[choices.index(count)]
    q = f"How many {probe.colour} {_plural(probe.shape)} are there in the {n} images together?"
    prompt = q + "\nSelect from the following choices.\n" + "\n".join(f"({'ABCD'[i]}) {c}" for i, c in enumerate(choices))
    return Drawn([_draw(rng, k, s) for s in scenes], {"question": q, "sub_task": "Counting", "choices": [str(c) for c in choices], "answer": f"({answer})", "prompt": prompt, "count": count})


def draw_similarity(rng: random.Random, k: WorldKnobs) -> Drawn:
    idents = [random_identity(rng) for _ in range(_n_objects(rng, k))]
    first = _scene(rng, k, idents)
    same = _scene(rng, k, idents, first_oid=10)  # the same objects, placed anew
    others = [random_identity(rng, set(idents)) for _ in idents]
    other = _scene(rng, k, others, first_oid=20)
    if {o.identity for o in other} & {o.identity for o in first}:
        raise WorldError("the other image shares an object")
    similar_second = rng.random() < 0.5
    pair = (same, other) if similar_second else (other, same)
    q = "Given the first image, which of the other two images shows the same objects?"
    choices = ["the second image", "the third image"]
    answer = "A" if similar_second else "B"
    prompt = q + "\nSelect from the following choices.\n(A) the second image\n(B) the third image"
    return Drawn([_draw(rng, k, first), _draw(rng, k, pair[0], brightness=0.9), _draw(rng, k, pair[1], brightness=0.9)],
                 {"question": q, "sub_task": "Visual_Similarity", "choices": choices, "answer": f"({answer})", "prompt": prompt})


def draw_correspondence(rng: random.Random, k: WorldKnobs) -> Drawn:
    """BLINK Visual_Correspondence-like: an object boxed in the first image; in the second (the same objects
    placed anew) four objects boxed and lettered A-D; which letter marks the same object."""
    idents = []
    while len(idents) < 4 + rng.randint(0, 1):
        ident = random_identity(rng, set(idents))
        idents.append(ident)
    first = _scene(rng, k, idents)
    second = _scene(rng, k, idents, first_oid=10)
    ref = rng.randrange(len(idents))
    others = rng.sample([i for i in range(len(idents)) if i != ref], 3)
    order = [ref, *others]
    rng.shuffle(order)
    img1, img2 = _draw(rng, k, first), _draw(rng, k, second, brightness=0.9)
    mark_box(img1, first[ref].box)
    draw = ImageDraw.Draw(img2)
    for letter, i in zip("ABCD", order, strict=True):
        mark_box(img2, second[i].box)
        patch, corner = letter_spot(second[i].box)
        draw.rectangle(patch, fill=(255, 255, 255))
        draw.text(corner, letter, fill=MARK_COLOUR)
    answer = "ABCD"[order.index(ref)]
    q = "An object is boxed in red in the first image. Which boxed point in the second image marks the same object?"
    prompt = q + "\nSelect from the following choices.\n" + "\n".join(f"({c}) Point {c}" for c in "ABCD")
    return Drawn([img1, img2], {"question": q, "sub_task": "Visual_Correspondence", "choices": [f"Point {c}" for c in "ABCD"], "answer": f"({answer})", "prompt": prompt})


def draw_long_expression(rng: random.Random, k: WorldKnobs) -> Drawn:
    scene = _scene(rng, k, [random_identity(rng) for _ in range(_n_objects(rng, k, extra=1))])
    target = rng.choice(scene)
    others = [o for o in scene if o is not target]
    referring_expression(rng, target, others, 0.0)  # raises unless some description singles it out
    if any(o.identity == target.identity for o in others):
        raise WorldError("the full description fits two objects")
    x1, y1, x2, y2 = target.box
    caption = f"the {target.describe()} {_where(target.box, k.image_size)}, next to {len(others)} other shapes"
    return Drawn([_draw(rng, k, scene)], {"caption": caption, "bbox": [x1, y1, x2 - x1, y2 - y1], "width": k.image_size, "height": k.image_size, "split": "val"})


def draw_single_frame_object(rng: random.Random, k: WorldKnobs) -> Drawn:
    n = rng.randint(3, 4)
    base = [random_identity(rng) for _ in range(max(2, _n_objects(rng, k) - 1))]
    target = random_identity(rng, set(base))
    kk = rng.randrange(n)
    frames: list[list[Obj]] = [_scene(rng, k, base + ([target] if i == kk else []), first_oid=0) for i in range(n)]
    if sum(1 for f in frames for o in f if o.identity == target) != 1:
        raise WorldError("the target in more than one frame")
    tobj = next(o for o in frames[kk] if o.identity == target)
    q = f"The frames show one scene over time. Find the {tobj.describe()}, which appears in one frame only."
    boxes = [list(tobj.box) if i == kk else None for i in range(n)]
    bg = rng.choice(BACKGROUNDS)  # one scene: one background in every frame
    images = [_draw(rng, k, f, bg=bg) for f in frames]
    return Drawn(images, {"question": q, "bbox_list": boxes, "frame": kk + 1})


def draw_reasoning_target(rng: random.Random, k: WorldKnobs) -> Drawn:
    """LISA-like: an object found by reasoning about another ("the one of the same colour, another shape")."""
    scene = _scene(rng, k, [random_identity(rng) for _ in range(_n_objects(rng, k, extra=1))])
    anchor = rng.choice(scene)
    if sum(1 for o in scene if o.identity == anchor.identity) != 1:
        raise WorldError("the anchor's description fits two objects")
    fits = [o for o in scene if o is not anchor and o.colour == anchor.colour and o.shape != anchor.shape]
    if len(fits) != 1:
        raise WorldError("not exactly one object of the anchor's colour and another shape")
    t = fits[0]
    problem = f"Which object has the same colour as the {anchor.describe()} but a different shape? Box it."
    return Drawn([_draw(rng, k, scene)], {"problem": problem, "solution": list(t.box)})


def draw_image_search(rng: random.Random, k: WorldKnobs) -> Drawn:
    """MMIU-like: which of 2-4 images holds a named object (it is in exactly one)."""
    n = rng.randint(2, 4)
    target = random_identity(rng)
    scenes = [_scene(rng, k, [random_identity(rng, {target}) for _ in range(_n_objects(rng, k) - 1)], first_oid=10 * i) for i in range(n)]
    kk = rng.randrange(n)
    scenes[kk] = _scene(rng, k, [o.identity for o in scenes[kk]] + [target], first_oid=10 * kk)
    if sum(1 for s in scenes for o in s if o.identity == target) != 1:
        raise WorldError("the object in more than one image")
    name = Obj(*target, size="small", box=(0, 0, 1, 1)).describe(("colour", "pattern", "shape"))
    options = [f"the {ordinal} image" for ordinal in ("first", "second", "third", "fourth")[:n]]
    context = "Select from the following choices.\n" + "\n".join(f"{'ABCD'[i]}: {o}" for i, o in enumerate(options))
    return Drawn([_draw(rng, k, s) for s in scenes], {"task": "text2image_retrieval", "question": f"Which image shows the {name}?", "context": context, "output": "ABCD"[kk]})


_SHIFTS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def draw_spatial_shift(rng: random.Random, k: WorldKnobs) -> Drawn:
    """MMIU two-dimensional-spatial-like (its image spatial transformation estimation): the second image is the
    first with every object moved the same way; which way."""
    scene = _scene(rng, k, [random_identity(rng) for _ in range(_n_objects(rng, k))])
    way = rng.choice(list(_SHIFTS))
    step = max(k.object_grid or 0, round(0.12 * k.image_size))
    dx, dy = (step * v for v in _SHIFTS[way])
    moved = [o.moved((o.box[0] + dx, o.box[1] + dy, o.box[2] + dx, o.box[3] + dy)) for o in scene]
    if any(b.box[0] < 0 or b.box[1] < 0 or b.box[2] > k.image_size or b.box[3] > k.image_size for b in moved):
        raise WorldError("an object would leave the image")
    bg = rng.choice(BACKGROUNDS)
    options = list(_SHIFTS)
    rng.shuffle(options)
    context = "Select from the following choices.\n" + "\n".join(f"{'ABCD'[i]}: {o}" for i, o in enumerate(options))
    q = "Every object of the first image has moved the same way in the second. Which way did they move?"
    record = {"task": "Image_Spatial_Transformation_Estimation", "question": q, "context": context, "output": "ABCD"[options.index(way)], "shift": [dx, dy]}
    return Drawn([_draw(rng, k, scene, bg=bg), _draw(rng, k, moved, bg=bg)], record)


def draw_detection(rng: random.Random, k: WorldKnobs) -> Drawn:
    scene = _scene(rng, k, [random_identity(rng) for _ in range(_n_objects(rng, k, extra=1))])
    return Drawn([_draw(rng, k, scene)], {"objects": [(o.shape, o.colour, o.box) for o in scene]})


DRAWERS = {
    "blink_counting": draw_counting,
    "blink_similarity": draw_similarity,
    "blink_correspondence": draw_correspondence,
    "ref_l4": draw_long_expression,
    "lisa": draw_reasoning_target,
    "revos": draw_single_frame_object,
    "odinw": draw_detection,
    "mmiu": draw_image_search,
    "mmiu_spatial": draw_spatial_shift,
}


def draw(name: str, seed: int, knobs: WorldKnobs) -> Drawn:
    """A well-posed item of analogue ``name``; deterministic in ``seed``."""
    rng = random.Random(seed)
    last = None
    for _ in range(_TRIES):
        try:
            return DRAWERS[name](rng, knobs)
        except WorldError as e:
            last = e
    raise RuntimeError(f"could not draw a well-posed {name} item in {_TRIES} tries (last: {last})")


def write_analogues(out: str | Path, n_per: int, seed: int, knobs: WorldKnobs) -> dict[str, Path]:
    """Draw ``n_per`` items of every analogue into ``out`` in the published layouts; returns each
    benchmark's file or folder, as :func:`mirg_lib.benchmarks.read` takes it."""
    out = Path(out)
    paths: dict[str, Path] = {}
    for a, name in enumerate(ANALOGUES):
        items = [draw(name, seed * 1_000_003 + a * 10_007 + i, knobs) for i in range(n_per)]
        if name.startswith("blink_"):
            folder = out / "blink" / items[0].record["sub_task"]
            folder.mkdir(parents=True, exist_ok=True)
            recs = []
            for i, d in enumerate(items):
                rec = {"idx": f"val_{d.record['sub_task']}_{i + 1}", **{k: v for k, v in d.record.items() if k != "count"}}
                for j, im in enumerate(d.images, 1):
                    im.save(folder / f"{i}_{j}.png")
                    rec[f"image_{j}"] = f"{i}_{j}.png"
                recs.append(rec)
            (folder / "val.json").write_text(json.dumps(recs, indent=1))
            paths["blink"] = out / "blink"
        elif name in ("ref_l4", "lisa"):  # one image per record: Ref-L4's file_name, LISA's image
            key, file = ("file_name", "ref-l4-val.json") if name == "ref_l4" else ("image", "lisa_val.json")
            folder = out / name
            (folder / "images").mkdir(parents=True, exist_ok=True)
            recs = []
            for i, d in enumerate(items):
                d.images[0].save(folder / "images" / f"{i}.png")
                recs.append({**({"id": i} if name == "ref_l4" else {}), key: f"images/{i}.png", **d.record})
            (folder / file).write_text(json.dumps(recs, indent=1))
            paths[name] = folder / file
        elif name.startswith("mmiu"):  # MMIU's tasks share one all.json, as the release's do
            folder = out / "mmiu"
            all_json = folder / "all.json"
            recs = json.loads(all_json.read_text()) if all_json.is_file() else []
            for i, d in enumerate(items):
                task = d.record["task"]
                (folder / task).mkdir(parents=True, exist_ok=True)
                files = []
                for j, im in enumerate(d.images):
                    im.save(folder / task / f"{i}_{j}.png")
                    files.append(f"./{task}/{i}_{j}.png")
                recs.append({**d.record, "input_image_path": files, "visual_input_component": "synthetic image", "source": "embedded"})
            folder.mkdir(parents=True, exist_ok=True)
            all_json.write_text(json.dumps(recs, indent=1))
            paths["mmiu"] = all_json
        elif name == "revos":
            folder = out / "revos"
            recs = []
            for i, d in enumerate(items):
                (folder / f"video_{i}").mkdir(parents=True, exist_ok=True)
                frames = []
                for j, im in enumerate(d.images):
                    im.save(folder / f"video_{i}" / f"{j:05d}.png")
                    frames.append(f"video_{i}/{j:05d}.png")
                recs.append({"video_id": f"video_{i}", "frames": frames, "question": d.record["question"], "bbox_list": d.record["bbox_list"]})
            (folder / "revos.json").write_text(json.dumps(recs, indent=1))
            paths["revos"] = folder / "revos.json"
        else:  # two subsets of the same images: every object an instance of its shape, or of its colour
            for subset, key, names in (("Shapes", 0, SHAPES), ("Colours", 1, tuple(COLOURS))):
                folder = out / "odinw" / subset / "test"
                folder.mkdir(parents=True, exist_ok=True)
                cats = {s: c for c, s in enumerate(names, 1)}
                images, anns = [], []
                for i, d in enumerate(items):
                    d.images[0].save(folder / f"{i}.png")
                    images.append({"id": i, "file_name": f"{i}.png", "width": d.images[0].width, "height": d.images[0].height})
                    for obj in d.record["objects"]:
                        x1, y1, x2, y2 = obj[2]
                        anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cats[obj[key]], "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
                coco = {"images": images, "annotations": anns, "categories": [{"id": c, "name": s} for s, c in cats.items()]}
                (folder / "annotations.json").write_text(json.dumps(coco, indent=1))
            paths["odinw"] = out / "odinw"
    return paths
