"""CoT synthesis and filtering (``01`` extension and ``02_cot_filtering``).

* Synthesis: the teacher answers every training item ``n_samples`` times in each style.
* Zhang et al.'s filter: keep an item only when it has exactly ``n_samples`` samples and all are right
  (IoU >= 0.5 with the ground truth; for the MIRG styles also the right image). The kept item's SFT
  target is its first sample.
* MIRG-RL's trajectory reassembly: a "reasoning only" reply is rewritten so that every object it
  names reads ``<bbox_id>[N-M]</bbox_id><|object_ref_start|>obj<|object_ref_end|><|box_start|>..<|box_end|>``
  and later mentions reuse the bbox_id. The paper maps objects to images and boxes with a second VLM;
  for the embedded world the drawn scene is that map (:func:`reassemble`).
* A table of what was kept per task, like Zhang et al.'s Table 1.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .boxes import Box, Frame, qwen25_resized_size
from .config import versioned_digest
from .formats import IN_DOMAIN
from .io import atomic_dir, write_json, write_jsonl
from .items import Item, first_per_task, load_pool_items
from .rewards import mirg_image, zhang_accuracy
from .teacher import (
    STYLES,
    ModelTeacher,
    ScriptedTeacher,
    Teacher,
    TeacherItem,
    box_in_frame,
    box_tokens,
    object_words,
)
from .world.tasks import object_ref


@dataclass
class CotConfig:
    """Section ``cot`` of the params."""

    teacher: Literal["scripted", "model"] = field(default="scripted", metadata={"help": "scripted: the embedded world's teacher; model: a VLM through the generation backend (section generation, stages.cot)"})
    teacher_model: str = field(default="", metadata={"help": "model: a checkpoint folder (hf, vllm) or the served model's name (openai)"})
    n_samples: int = field(default=4, metadata={"help": "teacher samples per item; an item is kept when every one is right"})
    temperature: float = field(default=0.7, metadata={"help": "teacher sampling temperature"})
    error_rate: float = field(default=0.2, metadata={"help": "scripted: chance a sample is wrong"})
    error_rates: dict[str, float] = field(default_factory=dict, metadata={"help": "scripted: task -> error_rate where it differs"})
    tasks: list[str] = field(default_factory=lambda: [*IN_DOMAIN, "single_refer"], metadata={"help": "pool tasks the CoT items come from"})
    max_items_per_task: int = field(default=100, metadata={"help": "the first N pool items of each task (0: all)"})
    styles: list[str] = field(default_factory=lambda: ["zhang", "mirg_text", "mirg_bbox"], metadata={"help": "reply styles written: Zhang et al.'s CoT, MIRG-RL's text and bbox trajectories"})
    frame: Literal["rel1000", "abs"] = field(default="rel1000", metadata={"help": "the boxes' frame in the replies; abs: Qwen2.5-VL's pixel boxes"})
    box_notation: Literal["json", "tokens"] = field(default="json", metadata={"help": "Zhang et al.'s replies' boxes: json (the paper's, Qwen2.5-VL's) or tokens (Qwen2-VL's box tokens)"})
    max_new_tokens: int = field(default=512, metadata={"help": "local and openai teachers: tokens per sample"})
    batch_size: int = field(default=8, metadata={"help": "model teacher, hf backend: prompts per generate call"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def __post_init__(self) -> None:
        bad = [s for s in self.styles if s not in STYLES or s == "answer"]
        if bad:
            raise ValueError(f"cot.styles: unknown {bad}; expected among {[s for s in STYLES if s != 'answer']}")
        if self.n_samples < 1:
            raise ValueError("cot.n_samples must be >= 1")
        if self.teacher == "model" and not self.teacher_model:
            raise ValueError("cot.teacher 'model' needs cot.teacher_model: a checkpoint folder, or the name a server knows the model by")


def make_teacher(cfg: CotConfig, generation: Any = None, cache: Path | None = None, launch: Any = None) -> Teacher:
    """The teacher ``cfg`` names; a model teacher generates with ``generation`` (a :class:`~mirg_lib.backends.GenerationConfig`,
    default: ``hf``) for the cot stage, keeping its replies in ``cache`` until the stage is done."""
    if cfg.teacher == "scripted":
        return ScriptedTeacher(error_rate=cfg.error_rate, error_rates=dict(cfg.error_rates), frame=cfg.frame, seed=cfg.seed, notation=cfg.box_notation, reasoning=COT_REASONING)
    from .backends import GenerationConfig

    gen = (generation or GenerationConfig()).for_stage("cot")  # a stage's own settings lay over themselves unchanged
    return ModelTeacher(gen, cfg.teacher_model, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                        notation=cfg.box_notation, cache=cache, launch=launch)


def abs_size(item: Item) -> tuple[int, int]:
    """The size Qwen2.5-VL sees the item's target image at (the teacher's ``abs`` boxes are in it)."""
    with Image.open(item.images[item.target_image - 1]) as im:
        return qwen25_resized_size(*im.size)


_BOX_TOKENS = re.compile(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>")


def rel1000_to_abs(text: str, size: tuple[int, int]) -> str:
    """Every Qwen2-VL box (``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, 0-1000) rewritten in pixels of ``size``."""

    def sub(m: re.Match) -> str:
        b = Box(*(float(v) for v in m.groups()), frame=Frame.REL1000).to(Frame.ABS, size=size).rounded()
        return box_tokens([int(v) for v in b.coords])

    return _BOX_TOKENS.sub(sub, text)


# Enter the CoT stage's digest: bump the first when :func:`answer_only` writes other targets for the same items.
ANSWER_ONLY_FORM = 2
COT_REASONING = "hops"  # the scripted teacher's reasoning form (mirg_lib.teacher): the question's object, then the answer's


def answer_only(item: Item) -> str | None:
    """The answer-only SFT target of ``item``: the data's own answer (``reference``). On the embedded world's
    multi-image items whose answer is one box, the object the answer is about is named first, as a grounded
    caption names it (``<|object_ref_start|>the small red solid circle<|object_ref_end|>`` then the same box):
    the drawn target, which for ``region`` is the object the crop is drawn around and for a ``diff`` removal
    the object that was there. That is the form the base answers multi-image questions in; over bare boxes it
    raised MIG-Bench where bare boxes halved the base's in-domain accuracy, and naming only the objects drawn
    with exactly that box (leaving region and removal answers bare) lost the gain (docs/log.md, 2026-12-05).
    Single-image answers stay bare, as the base answers them (named, they lost 20 points of single-image
    grounding), and so do answers that are more than a box and every answer of real data (no drawn scene)."""
    ref, target = item.reference, (item.scene or {}).get("target")
    if not ref or len(item.images) < 2 or not isinstance(target, dict) or "shape" not in target or not _BOX_TOKENS.fullmatch(ref.strip()):
        return ref
    return object_ref(object_words(target)) + ref


def judge(style: str, replies: list[str], item: Item, frame: str = "auto", image_size: tuple[int, int] | None = None) -> list[bool]:
    """Right = IoU >= 0.5 (and, for the MIRG styles, the right image named). ``frame`` and
    ``image_size`` say how the replies' boxes are written (``abs``: pixels of an image seen at that size)."""
    n = len(replies)
    kw = {"answer": [item.answer] * n, "target_image": [item.target_image] * n, "box_frame": [frame] * n, "image_size": [image_size] * n}
    ok = [v >= 0.5 for v in zhang_accuracy(replies, **kw)]
    if style.startswith("mirg") and item.scene is not None and len(item.images) > 1:
        ok = [a and b == 1.0 for a, b in zip(ok, mirg_image(replies, **kw), strict=True)]
    return ok


_MENTION = re.compile(r"the ((?:[\w-]+ ){0,3}(?:circle|square|triangle|diamond|star|cross|hexagon))(?: (?:at the (?:top|bottom|left|right)(?: (?:left|right))?|in the centre))?")
_IMAGE = re.compile(r"\bimage (\d)\b|\b(first|second|third|fourth|fifth|sixth) image\b", re.I)  # "Image 2: the ..." too
_ORD = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6}


def reassemble(reply: str, scene: dict[str, Any], frame: str = "rel1000") -> str:
    """Rewrite a "reasoning only" reply into MIRG-RL's bbox form, using the scene as the object map.

    Each object description inside ``<think>`` is matched to the scene object of that description in
    the image named last before it (else the target image); the first mention becomes
    ``<bbox_id>[N-M]</bbox_id><|object_ref_start|>desc<|object_ref_end|><|box_start|>..<|box_end|>``,
    later ones the bbox_id alone. The answer becomes the target's bbox_id and box.
    """
    from .parsing import parse_response
    from .teacher import _reading_order

    parsed = parse_response(reply)
    if parsed.think is None or parsed.box is None:
        return reply
    images = scene["images"]
    seen: dict[str, str] = {}

    def find(img: int, desc: str) -> tuple[int, dict[str, Any]] | None:
        for i in [img] + [k for k in range(1, len(images) + 1) if k != img]:
            for j, o in enumerate(_reading_order(images[i - 1]), start=1):
                if object_words(o) == desc:
                    return i, {"m": j, **o}
        return None

    think = parsed.think
    out, pos, current = [], 0, scene["target_image"]
    events = sorted([(x.start(), "img", x) for x in _IMAGE.finditer(think)] + [(x.start(), "obj", x) for x in _MENTION.finditer(think)], key=lambda e: e[0])
    for start, kind, x in events:
        if kind == "img":
            current = int(x.group(1)) if x.group(1) else _ORD[x.group(2).lower()]
            continue
        hit = find(current, x.group(1))
        if hit is None or start < pos:
            continue
        img, obj = hit
        bid = f"{img}-{obj['m']}"
        if bid in seen:
            rep = f"<bbox_id>[{bid}]</bbox_id>"
        else:
            vals = box_in_frame(obj["box"], images[img - 1]["size"], frame)
            rep = f"<bbox_id>[{bid}]</bbox_id><|object_ref_start|>{x.group(1)}<|object_ref_end|>{box_tokens(vals)}"
            seen[bid] = rep
        out.append(think[pos:start])
        out.append(rep)
        pos = x.end()
    out.append(think[pos:])
    k = parsed.image_index or scene["target_image"]
    vals = tuple(int(round(v)) for v in parsed.box.values)
    hit = next((b for b in seen if b.startswith(f"{k}-")), None)
    answer = (f"<bbox_id>[{hit}]</bbox_id>" if hit else "") + box_tokens(vals)
    return f"<think>{''.join(out)}</think><answer>{answer}</answer>"


@dataclass
class CotResult:
    root: Path
    table: list[dict[str, Any]]
    seconds: float
    skipped: bool = False

    def sft_file(self, style: str) -> Path:
        return self.root / f"sft_{style}.jsonl"


def run_cot(cfg: CotConfig, data_dir: str | Path, out_dir: str | Path, teacher: Teacher | None = None, generation: Any = None, launch: Any = None) -> CotResult:
    """Synthesis, 4-of-4 filtering, reassembly; outputs ``samples_<style>.jsonl``, ``sft_<style>.jsonl``
    (id, task, completion), ``sft_answer.jsonl`` (the answer-only baseline on the same kept items),
    ``sft_mirg_reassembled.jsonl`` and ``table.json``. A model teacher generates with ``generation`` (section
    ``generation``; default ``hf``) over ``launch``'s processes where it gives the cot stage several."""
    from .backends import GenerationConfig, cache_dir, drop_cache, generation_tag

    out_dir = Path(out_dir)
    values = {**dataclasses.asdict(cfg), "answer_only_form": ANSWER_ONLY_FORM, "reasoning": COT_REASONING}
    if cfg.teacher == "model" and teacher is None:
        generation = (generation or GenerationConfig()).for_stage("cot")  # the settings the teacher will use
        values["generation"] = generation_tag(generation)
    digest = versioned_digest(values)
    stamp = out_dir / "table.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("config_hash") == digest:
            return CotResult(out_dir, old["rows"], old.get("seconds", 0.0), skipped=True)
    t0 = time.perf_counter()
    pool = load_pool_items(Path(data_dir) / "train" / "mgrounding.json")
    items = first_per_task(pool, cfg.tasks, cfg.max_items_per_task)
    teacher = teacher or make_teacher(cfg, generation, cache_dir(out_dir), launch)
    titems = [TeacherItem(i.id, i.task, i.images, i.question, i.scene) for i in items]
    counts: dict[str, Counter[str]] = {}
    with atomic_dir(out_dir) as tmp:
        kept_zhang: set[str] = set()
        for style in cfg.styles:
            replies = teacher.answer(titems, cfg.n_samples, style)
            samples, sft = [], []
            c: Counter[str] = Counter()
            for it, rs in zip(items, replies, strict=True):
                ok = judge(style, rs, it, cfg.frame, abs_size(it) if cfg.frame == "abs" else None)
                samples.append({"id": it.id, "task": it.task, "samples": rs, "correct": ok})
                c[f"{it.task}/candidates"] += 1
                if len(rs) == cfg.n_samples and all(ok):  # exactly n samples, all right (an empty list is not "all right")
                    c[f"{it.task}/kept"] += 1
                    sft.append({"id": it.id, "task": it.task, "completion": rs[0]})
                    if style == "zhang":
                        kept_zhang.add(it.id)
            counts[style] = c
            write_jsonl(tmp / f"samples_{style}.jsonl", samples)
            write_jsonl(tmp / f"sft_{style}.jsonl", sft)
            if style == "mirg_text":
                by_id = {it.id: it for it in items}
                write_jsonl(
                    tmp / "sft_mirg_reassembled.jsonl",
                    [dict(r, completion=reassemble(r["completion"], by_id[r["id"]].scene, cfg.frame)) for r in sft if by_id[r["id"]].scene is not None],
                )
        # the answer-only SFT baseline: the same kept items, the dataset's own answers (:func:`answer_only`), no reasoning
        answers = [{"id": it.id, "task": it.task, "completion": answer_only(it)} for it in items if it.id in kept_zhang]
        if cfg.frame == "abs":  # the dataset's answers are Qwen2-VL's 0-1000 boxes: rewrite them in pixels
            by_id = {it.id: it for it in items}
            answers = [dict(a, completion=rel1000_to_abs(a["completion"] or "", abs_size(by_id[a["id"]]))) for a in answers]
        write_jsonl(tmp / "sft_answer.jsonl", answers)
        rows = []
        for task in sorted({it.task for it in items}, key=lambda t: [*IN_DOMAIN, "single_refer"].index(t) if t in [*IN_DOMAIN, "single_refer"] else 99):
            row: dict[str, Any] = {"task": task}
            for style in cfg.styles:
                cand, kept = counts[style][f"{task}/candidates"], counts[style][f"{task}/kept"]
                row[f"{style} kept"] = kept
                row[f"{style} kept %"] = round(100.0 * kept / cand, 1) if cand else None
            row["candidates"] = counts[cfg.styles[0]][f"{task}/candidates"]
            rows.append(row)
        seconds = time.perf_counter() - t0
        table = {"config": dataclasses.asdict(cfg), "config_hash": digest, "rows": rows, "seconds": round(seconds, 2)}
        if isinstance(teacher, ModelTeacher):  # how it generated (the API key's variable name, never the key)
            from .backends import shown_url

            table["generation"] = {**dataclasses.asdict(teacher.generation), "base_url": shown_url(teacher.generation.base_url)}
        write_json(tmp / "table.json", table)
    drop_cache(out_dir)
    return CotResult(out_dir, rows, seconds)
