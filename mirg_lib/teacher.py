"""The teacher that writes chain-of-thought answers, behind one interface with two implementations.

* :class:`ScriptedTeacher` -- for the embedded world: it reads the scene it drew (``scenes.jsonl``)
  and writes the reasoning a strong VLM would, in the recipes' formats. It is fallible at a per-task
  error rate from params (it then reasons toward a distractor, or misplaces the box), so that
  Zhang et al.'s 4-of-4 filter has work to do. It stands in for Qwen2.5-VL-72B / GPT-4o.
* :class:`ModelTeacher` -- a real VLM (a local checkpoint, a ``vllm serve``, GPT-4o) through the generation
  backend of section ``generation`` (:mod:`mirg_lib.backends`: ``hf``, ``openai``, ``vllm``); an API key
  comes from the environment variable the backend names and is never shown, stored or sent to a redirect's
  target.

Answer formats written (``style``):

* ``zhang``     -- ``<think>..</think><answer>```json\\n{"bbox_2d": [...], "label": ".."}\\n```</answer>``
  (``notation="json"``, the paper's, Qwen2.5-VL's), or with Qwen2-VL's box tokens (``notation="tokens"``:
  ``<answer><|object_ref_start|>the label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|></answer>``)
* ``mirg_text`` -- MIRG-RL "reasoning only": objects named in words, the answer names the image
* ``mirg_bbox`` -- MIRG-RL "reasoning with image indices and boxes": every object as
  ``<bbox_id>[N-M]</bbox_id><|object_ref_start|>obj<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
  later mentions reuse the ``<bbox_id>``; the answer is the target's bbox_id and box.
* ``answer``    -- no reasoning: the MGrounding answer (the answer-only SFT baseline).

Boxes are written in the policy's frame: ``rel1000`` (Qwen2-VL) or ``abs`` (Qwen2.5-VL, pixels of the
resized input).

The scripted teacher's reasoning (``reasoning``) comes in two forms:

* ``hops`` (the CoT stage's) -- the object the question is about, named in words (the region's crop, image
  1's object, what changed), then the answer's object in its image, named and boxed: "Image 1 has the small
  orange dotted star where image 2 has <the small orange dotted diamond, boxed>." Two steps the base model
  has skills for (naming an object; grounding a named object in a named image); the answer repeats the last.
* ``read_out`` (the default: the base model's language curriculum was written with it, so the shipped base
  reads it) -- every image the question needs read out in words ("Image 1: the ..., the ...") before the
  comparison. A CoT-SFT on it scored below one on ``hops`` (docs/log.md, 2026-12-06).

In box tokens Zhang et al.'s reasoning boxes an object as Qwen2-VL's grounded caption
(``<|object_ref_start|>the ...<|object_ref_end|><|box_start|>...<|box_end|>``), the form the base grounds in.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .boxes import Box, Frame, qwen25_resized_size
from .formats import ORDINAL_WORDS
from .prompts import check_notation, with_suffix
from .world.objects import SIZE_WORDS, reading_order_key
from .world.tasks import list_image, object_ref

STYLES = ("zhang", "mirg_text", "mirg_bbox", "answer")
REASONINGS = ("read_out", "hops")


@dataclass
class TeacherItem:
    """One question for the teacher: its images (paths) and text, and, for the scripted teacher, the scene."""

    id: str
    task: str
    images: list[Path]
    question: str
    scene: dict[str, Any] | None = None


class Teacher(Protocol):
    def answer(self, items: Sequence[TeacherItem], n_samples: int, style: str) -> list[list[str]]:
        """``n_samples`` replies for each item."""
        ...


# ------------------------------------------------------------------------------------------- frames


def box_in_frame(box: Sequence[float], size: Sequence[int], frame: str, max_pixels: int | None = None) -> tuple[int, int, int, int]:
    """A pixel box of an image of ``size`` written as integers in the policy's frame."""
    b = Box(*box, frame=Frame.ABS, size=(int(size[0]), int(size[1])))
    if frame == "rel1000":
        out = b.to(Frame.REL1000)
    elif frame == "abs":
        w, h = qwen25_resized_size(int(size[0]), int(size[1]), max_pixels=max_pixels or 28 * 28 * 1280)
        out = b.to(Frame.ABS, size=(w, h))
    else:
        raise ValueError(f"teacher boxes are written in rel1000 or abs, not {frame!r}")
    x1, y1, x2, y2 = (int(round(v)) for v in out.coords)
    return x1, y1, x2, y2


def box_tokens(vals: Sequence[int]) -> str:
    return "<|box_start|>({},{}),({},{})<|box_end|>".format(*vals)


def json_box(vals: Sequence[float], label: str) -> str:
    """A box as Zhang et al.'s answers (and Qwen2.5-VL) write it: ```json {"bbox_2d": [...], "label": ...}```."""
    payload = json.dumps({"bbox_2d": list(vals), "label": label})
    return f"```json\n{payload}\n```"


# ------------------------------------------------------------------------------------------ scripted


def object_words(o: dict[str, Any]) -> str:
    """An object named in full, as the base model's curriculum names it: "small red solid circle"."""
    return f"{SIZE_WORDS[o['size']]} {o['colour']} {o['pattern']} {o['shape']}"


def _identity(o: dict[str, Any]) -> str:
    """What stays the same of an object across images (its size may not): "red solid circle"."""
    return f"{o['colour']} {o['pattern']} {o['shape']}"


def _reading_order(image: dict[str, Any], exact: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """An image's objects (scene dicts) as they are read out: the world's reading order (of the ``exact`` boxes
    when ``image``'s are a teacher's jittered copy of them, object for object)."""
    keys = [reading_order_key(o["box"], image["size"]) for o in (exact or image)["objects"]]
    return [o for _, o in sorted(zip(keys, image["objects"], strict=True), key=lambda t: t[0])]


@dataclass
class ScriptedTeacher:
    """Writes reasoning from the drawn scene; wrong at ``error_rates[task]`` (default ``error_rate``)."""

    error_rate: float = 0.2
    error_rates: dict[str, float] = field(default_factory=dict)
    frame: str = "rel1000"
    box_jitter: float = 0.03  # fraction of the box size: a teacher's boxes are never pixel-exact
    seed: int = 0
    max_pixels: int | None = None
    notation: str = "json"  # Zhang et al.'s replies: JSON boxes (the paper's) or Qwen2-VL's box tokens
    reasoning: str = "read_out"  # read_out or hops (the module's docstring); the CoT stage's is hops

    def __post_init__(self) -> None:
        check_notation(self.notation)
        if self.reasoning not in REASONINGS:
            raise ValueError(f"unknown reasoning {self.reasoning!r}; expected one of {REASONINGS}")

    def answer(self, items: Sequence[TeacherItem], n_samples: int, style: str) -> list[list[str]]:
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
        out = []
        for it in items:
            if it.scene is None:
                raise ValueError(f"{it.id}: the scripted teacher needs the item's scene, which only the embedded world has; for real data set cot.teacher to local or openai")
            out.append([self._one(it, k, style) for k in range(n_samples)])
        return out

    def _rng(self, item: TeacherItem, k: int) -> random.Random:
        return random.Random(f"{self.seed}/{item.id}/{k}")

    def _one(self, item: TeacherItem, k: int, style: str) -> str:
        rng = self._rng(item, k)
        sc = item.scene
        assert sc is not None
        imgs = sc["images"]
        t_img = sc["target_image"]
        target = sc["target"]
        rate = self.error_rates.get(item.task, self.error_rate)
        wrong = rng.random() < rate
        answer_img, answer_obj = t_img, target
        if wrong:
            pool = [(i + 1, o) for i, im in enumerate(imgs) for o in im["objects"] if (i + 1, o["oid"]) != (t_img, target["oid"])]
            same_img = [p for p in pool if p[0] == t_img]
            if same_img or pool:
                answer_img, answer_obj = rng.choice(same_img or pool)
            if item.task == "region" or answer_obj["box"] == target["box"]:
                # nothing else to point at: misplace the box instead
                answer_obj = dict(answer_obj, box=_shifted(target["box"], imgs[t_img - 1]["size"], rng))
        # the teacher's boxes are never pixel-exact: every object's box is off by a little, the same wherever it is written
        seen = [{"size": im["size"], "objects": [dict(o, box=_jitter(o["box"], im["size"], self.box_jitter, rng)) for o in im["objects"]]} for im in imgs]
        same = [o for o, j in zip(imgs[answer_img - 1]["objects"], seen[answer_img - 1]["objects"], strict=True) if o == answer_obj]
        answer_obj = dict(answer_obj, box=_jitter(answer_obj["box"], imgs[answer_img - 1]["size"], self.box_jitter, rng)) if not same else next(
            j for o, j in zip(imgs[answer_img - 1]["objects"], seen[answer_img - 1]["objects"], strict=True) if o == answer_obj
        )
        vals = box_in_frame(answer_obj["box"], imgs[answer_img - 1]["size"], self.frame, self.max_pixels)
        label = object_words(answer_obj) if "shape" in answer_obj else "region"
        mentions = _Mentions(seen, style, self.frame, self.max_pixels, exact=imgs, notation=self.notation)
        think = _reasoning(item.task, {**sc, "images": seen}, answer_img, answer_obj, mentions, hops=self.reasoning == "hops")
        if style == "answer":
            prefix = f"It's in the {ORDINAL_WORDS[answer_img - 1]} image. " if item.task == "group_grounding" else ""
            return prefix + box_tokens(vals)
        if style == "zhang":
            answer = json_box(vals, label) if self.notation == "json" else object_ref(label) + box_tokens(vals)
            return f"<think>{think}</think><answer>{answer}</answer>"
        if style == "mirg_text":
            return f"<think>{think}</think><answer>It is in the {ORDINAL_WORDS[answer_img - 1]} image. {box_tokens(vals)}</answer>"
        return f"<think>{think}</think><answer><bbox_id>[{mentions.id_of(answer_img, answer_obj)}]</bbox_id>{box_tokens(vals)}</answer>"


def _jitter(box: Sequence[float], size: Sequence[int], amount: float, rng: random.Random) -> list[float]:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    out = [x1 + rng.uniform(-amount, amount) * w, y1 + rng.uniform(-amount, amount) * h, x2 + rng.uniform(-amount, amount) * w, y2 + rng.uniform(-amount, amount) * h]
    out = [min(max(0.0, out[0]), size[0] - 1), min(max(0.0, out[1]), size[1] - 1), min(max(1.0, out[2]), size[0]), min(max(1.0, out[3]), size[1])]
    if out[2] <= out[0]:
        out[2] = min(size[0], out[0] + 1)
    if out[3] <= out[1]:
        out[3] = min(size[1], out[1] + 1)
    return out


def _shifted(box: Sequence[float], size: Sequence[int], rng: random.Random) -> list[float]:
    """The same box moved by more than its own size (a clearly wrong answer)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    dx = w * rng.choice((-1.2, 1.2))
    dy = h * rng.choice((-1.2, 1.2))
    nx1 = min(max(0.0, x1 + dx), size[0] - w)
    ny1 = min(max(0.0, y1 + dy), size[1] - h)
    return [nx1, ny1, nx1 + w, ny1 + h]


def _where(box: Sequence[float], size: Sequence[int]) -> str:
    """Coarse words for where a box lies: 'at the top left', 'in the centre'."""
    cx, cy = (box[0] + box[2]) / 2 / size[0], (box[1] + box[3]) / 2 / size[1]
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    row = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "")
    if not col and not row:
        return "in the centre"
    return "at the " + " ".join(w for w in (row, col) if w)


class _Mentions:
    """How a reasoning names an object of image N, by style: ``zhang`` as the answer writes it, named in full
    then its JSON box (``the small red solid circle: {"bbox_2d": [x1, y1, x2, y2]}``) or, in box tokens, as a
    grounded caption (:meth:`caption`); ``mirg_bbox`` as MIRG-RL's ``<bbox_id>[N-M]</bbox_id>`` with that caption on the
    first mention and the bbox_id alone after (M: the object's place in image N's reading order),
    ``mirg_text`` in words with a coarse place. :meth:`listing` reads out every object of an image in words,
    the same in every style."""

    def __init__(self, images: list[dict[str, Any]], style: str, frame: str, max_pixels: int | None, exact: list[dict[str, Any]] | None = None, notation: str = "json"):
        """``images``: the scene's images with the boxes to write; ``exact``: the same with the true boxes (the
        reading order's); ``notation``: the ``zhang`` style's boxes (``json`` or ``tokens``)."""
        self.images, self.style, self.frame, self.max_pixels, self.notation = images, style, frame, max_pixels, notation
        self.exact = exact or images
        self.seen: set[str] = set()

    def order(self, img: int) -> list[dict[str, Any]]:
        return _reading_order(self.images[img - 1], self.exact[img - 1])

    def id_of(self, img: int, obj: dict[str, Any]) -> str:
        order = self.order(img)
        for m, o in enumerate(order, start=1):
            if o.get("oid") == obj.get("oid") and o["box"] == obj["box"]:
                return f"{img}-{m}"
        return f"{img}-{len(order) + 1}"

    def caption(self, img: int, obj: dict[str, Any]) -> str:
        vals = box_in_frame(obj["box"], self.images[img - 1]["size"], self.frame, self.max_pixels)
        return object_ref(object_words(obj)) + box_tokens(vals)

    def __call__(self, img: int, obj: dict[str, Any]) -> str:
        if self.style == "mirg_text":
            return f"the {object_words(obj)} {_where(obj['box'], self.images[img - 1]['size'])}"
        if self.style == "zhang" and self.notation == "json":  # words, then the box as the answer writes it: the answer repeats it token for token
            vals = box_in_frame(obj["box"], self.images[img - 1]["size"], self.frame, self.max_pixels)
            return f"the {object_words(obj)}: " + json.dumps({"bbox_2d": list(vals)})
        if self.style != "mirg_bbox":
            return self.caption(img, obj)
        bid = self.id_of(img, obj)
        if bid in self.seen:
            return f"<bbox_id>[{bid}]</bbox_id>"
        self.seen.add(bid)
        return f"<bbox_id>[{bid}]</bbox_id>{self.caption(img, obj)}"

    def listing(self, img: int) -> str:
        """"Image N: " and every object of image N named in full, in reading order (as the base model's
        curriculum lists an image: ``world.tasks.list_image``)."""
        return list_image(img, ["the " + object_words(o) for o in self.order(img)])


_BECAUSE = {"same_colour": "it has the same colour but another shape", "same_shape": "it has the same shape but another colour",
            "same_pattern": "it shares the pattern but neither colour nor shape"}  # the reasoning task's rules, in words


def _reasoning(task: str, sc: dict[str, Any], img: int, obj: dict[str, Any], m: _Mentions, hops: bool = False) -> str:
    """A chain of thought from the scene that ends on (img, obj) named and boxed, which the answer repeats.
    ``read_out`` (``hops`` false): the objects of the images the question needs read out in words
    (:meth:`_Mentions.listing`), then compared. ``hops``: no read-out; the object the question is about (in
    words, or boxed where the question marks it), then (img, obj) in its image."""
    imgs = sc["images"]
    meta = sc.get("meta", {})

    def read(*images: int) -> str:  # the read-outs of ``images``, a space after them; none in hops
        return "" if hops else "".join(m.listing(i) + " " for i in images)

    if task == "common_object":
        return f"{read(*range(1, len(imgs) + 1))}The {_identity(obj)} is in every image. In image {img} it is {m(img, obj)}."
    if task in ("diff", "view_diff"):
        change, before = meta.get("change", "change"), meta.get("before")
        shift = "Image 2 is seen from a shifted camera." if task == "view_diff" else ""
        if hops:
            if change == "add":
                what = f"Image 2 has {m(img, obj)}; it is not in image 1."
            elif change == "remove" and before:
                what = f"Image 1 has the {object_words(before)}; it is missing from image 2, where it was at {m(img, obj)}."
            elif before:
                what = f"Image 1 has the {object_words(before)} where image 2 has {m(img, obj)}."
            else:
                what = f"In image 2, {m(img, obj)} differs."
            return f"{shift} {what}" if shift else what
        if change == "add":
            what = f"in image 2, {m(img, obj)} is new; it is not in image 1"
        elif change == "remove" and before:
            what = f"the {object_words(before)} of image 1 is missing from image 2; there it was at {m(img, obj)}"
        elif before:
            what = f"the {object_words(before)} of image 1 changed; in image 2 it is {m(img, obj)}"
        else:
            what = f"{m(img, obj)} differs"
        return f"{read(1, 2)}{shift + ' ' if shift else ''}The difference: {what}."
    if task in ("object_tracking", "multi_view"):
        verb = "moves through the frames" if task == "object_tracking" else "is seen from another view"
        marked = f"The marked object in image 1 is {m(1, imgs[0]['objects'][0])}. It {verb}."
        return f"{marked} In image {img} it is {m(img, obj)}." if hops else f"{marked} {read(img)}The {_identity(obj)} is {m(img, obj)}."
    if task == "region":
        region = meta.get("regions", [{}])[meta.get("region_index", 1) - 1]
        shown = f"Image {meta.get('region_index', 1) + 1} shows " + (f"the {_identity(region)}." if "shape" in region else "an object.")
        return f"{shown} In image 1 it is {m(1, obj)}." if hops else f"{shown} {read(1)}That region is {m(1, obj)}."
    if task == "refer_grounding":
        ref = imgs[0]["objects"][0]
        if hops:
            return f"Image 1 shows the {object_words(ref)}. In image 2 it is {m(img, obj)}."
        return f"{read(1, 2)}The {_identity(ref)} of image 1 is in image 2: {m(img, obj)}."
    if task == "single_refer":
        return f"I look for {meta.get('expression', 'the object')}. It is {m(img, obj)}."
    if task == "group_grounding":
        return f"{read(*range(1, len(imgs) + 1))}It is in image {img}: {meta.get('expression', 'the object')} is {m(img, obj)}."
    if task == "reasoning":
        because = _BECAUSE.get(meta.get("rule", ""), "it fits the question")
        return f"Image 1 shows {m(1, imgs[0]['objects'][0])}. {read(2)}The answer is {m(img, obj)}, because {because}."
    if task == "correspondence":
        marked = meta.get("marked", imgs[0]["objects"][0])
        where = "In image 2 the" if hops else f"{read(2)}The"
        return f"The marked object in image 1 is {m(1, marked)}, a {marked['shape']}. {where} object of the same shape is {m(img, obj)}."
    return f"The answer is {m(img, obj)}."


# ---------------------------------------------------------------------------------------- real VLMs


def _prompt(question: str, style: str, notation: str = "json") -> str:
    """A real teacher is asked with Zhang et al.'s prompt for every reasoning style, its boxes in ``notation``."""
    return with_suffix(question, "plain" if style == "answer" else "zhang", notation)


@dataclass
class ModelTeacher:
    """A real VLM as the teacher (``cot.teacher: model``): Qwen2.5-VL-72B in a folder, a ``vllm serve``, GPT-4o,
    through the generation backend (:mod:`mirg_lib.backends`, section ``generation``, its ``stages.cot``).

    Each style's replies wait in ``cache`` (one folder per style) until the stage's output is written, so an
    interrupted synthesis resumes where it stopped."""

    generation: Any  # backends.GenerationConfig, the cot stage's
    model: str  # a checkpoint folder (hf, vllm) or the served model's name (openai)
    temperature: float = 0.7
    max_new_tokens: int = 512
    batch_size: int = 8
    seed: int | None = 0
    notation: str = "json"  # the boxes the prompt asks for (NOTATIONS)
    cache: Path | None = None
    launch: Any = None

    def __post_init__(self) -> None:
        check_notation(self.notation)
        self._backend: Any = None  # made once, for every style (a 72B checkpoint is loaded once)

    def answer(self, items: Sequence[TeacherItem], n_samples: int, style: str) -> list[list[str]]:
        from .backends import Request, Sampling, generate, stage_backend

        requests = [Request(_prompt(it.question, style, self.notation), tuple(str(p) for p in it.images), n_samples) for it in items]
        if not requests:
            return []
        sampling = Sampling(temperature=self.temperature, max_new_tokens=self.max_new_tokens, seed=self.seed)
        per_batch = max(1, self.batch_size // n_samples)
        if self._backend is None:
            self._backend = stage_backend(self.generation, self.model, "cot", self.launch, self.batch_size, max_images=max(len(r.images) for r in requests))
        return generate(self.generation, self.model, requests, sampling, None if self.cache is None else Path(self.cache) / style, stage="cot",
                        per_batch=per_batch, batch_size=self.batch_size, launch=self.launch, backend=self._backend,
                        model_identity=None if Path(self.model).is_dir() else self.model, progress=f"teacher ({style})")
