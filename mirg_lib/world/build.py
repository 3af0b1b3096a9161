"""The data-synthesis stage: the embedded world written in the real formats.

Output (``runs/<profile>/data/``), all paths inside the JSON files relative to the file's folder:

* ``test/mig_bench.json``      -- MIG-Bench format, the ten tasks (the embedded benchmark)
* ``test/single_refer.json``   -- MIG-Bench format, single-image referring expressions
* ``train/mgrounding.json``    -- MGrounding-630k sharegpt format, the ten tasks + ``single_refer`` (+ the base model's ``single_describe``, ``multi_refer``)
* ``{test,train}/scenes.jsonl``-- every object of every image, line by line with the records
                                  (what the scripted teacher reasons from); never shown to a model
* ``contact_sheet.png``        -- one example per task with the ground truth drawn
* ``manifest.json``            -- config, its digest, counts and checksums

The same seed gives byte-identical files. The folder appears only when complete.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm  # text bars: they show in papermill logs and executed notebooks alike

from ..config import config_hash
from ..formats import MIG_TASKS, MGroundingRecord, MigRecord, write_mgrounding, write_mig_bench
from ..io import atomic_dir, sha256_file, sha256_tree, write_json, write_jsonl
from .objects import SIZES, grid_side
from .tasks import CURRICULUM_TASKS, GENERATORS, SINGLE_TASK, Sample, WorldKnobs, generate

ALL_TASKS = list(MIG_TASKS)


@dataclass
class DataConfig:
    """The embedded world: sizes and difficulty knobs (section ``data`` of the params)."""

    seed: int = field(default=0, metadata={"help": "one seed for the whole world"})
    image_size: int = field(default=140, metadata={"help": "image side in pixels, a multiple of 28 (Qwen2-VL's patch x merge)"})
    n_test_per_task: int = field(default=50, metadata={"help": "benchmark items per MIG-Bench task"})
    n_train_per_task: int = field(default=200, metadata={"help": "training-pool items per task"})
    n_single_test: int = field(default=100, metadata={"help": "single-image referring test items"})
    n_single_train: int = field(default=1000, metadata={"help": "single-image referring training items"})
    test_tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS), metadata={"help": "MIG-Bench tasks of the benchmark"})
    train_tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS), metadata={"help": "MIG-Bench tasks of the training pool"})
    objects_per_image: list[int] = field(default_factory=lambda: [3, 5], metadata={"help": "[min, max] objects per image"})
    object_scale: float = field(default=1.0, metadata={"help": "multiplies every object's size"})
    distractor_similarity: float = field(default=0.5, metadata={"help": "chance a distractor differs from the target in one attribute only"})
    noise: float = field(default=6.0, metadata={"help": "background noise, std in grey levels"})
    max_images: int = field(default=6, metadata={"help": "most images in one question"})
    view_shift: float = field(default=0.15, metadata={"help": "camera shift of multi_view / view_diff, fraction of the image"})
    extra_attribute_prob: float = field(default=0.3, metadata={"help": "chance a referring expression names one attribute more than needed"})
    position_cue: float = field(default=0.0, metadata={"help": "grey levels of the background's coordinate map (red = x, blue = y); 0: none"})
    n_single_describe_train: int = field(default=0, metadata={"help": "pool items of one object named in full, then boxed (base-model curriculum)"})
    n_multi_refer_train: int = field(default=0, metadata={"help": "pool items of several images, one named, an object in it boxed (base-model curriculum)"})
    n_multi_describe_train: int = field(default=0, metadata={"help": "pool items of several images, one named, its every object read out, boxed or in words (base-model curriculum)"})
    object_grid: int = field(default=0, metadata={"help": "pixels; > 0: objects are squares on this grid (14: the vision tower's patches); 0: anywhere"})
    contact_sheet: bool = field(default=True, metadata={"help": "draw one example per task with its ground truth"})
    source: Literal["embedded", "local"] = field(default="embedded", metadata={"help": "embedded: draw the world; local: read real MIG-Bench / MGrounding-630k files"})
    mig_bench: str = field(default="", metadata={"help": "local: MIG-Bench's MIG_data.json"})
    mig_bench_images: str = field(default="", metadata={"help": "local: the folder MIG_data.json's image paths start from ('': the file's folder)"})
    single_test: str = field(default="", metadata={"help": "local: a single-image test in MIG-Bench's format, task single_refer ('': none)"})
    single_test_images: str = field(default="", metadata={"help": "local: the folder single_test's image paths start from ('': the file's folder)"})
    mgrounding: list[str] = field(default_factory=list, metadata={"help": "local: the MGrounding-630k sharegpt JSON files (the training pool)"})
    mgrounding_images: str = field(default="", metadata={"help": "local: the folder their image paths start from ('': each file's folder)"})
    task_map: dict[str, str] = field(default_factory=dict, metadata={"help": "local: MGrounding `type` -> this project's task name; unmapped types stay as they are"})
    max_train_per_task: int = field(default=0, metadata={"help": "local: at most this many pool records per task, in file order (0: all)"})

    def __post_init__(self) -> None:
        if self.source == "local":
            if not self.mig_bench:
                raise ValueError("source 'local' needs mig_bench, the path of MIG-Bench's MIG_data.json")
            if self.max_train_per_task < 0:
                raise ValueError("max_train_per_task must be >= 0")
        if self.image_size < 56 or self.image_size % 28:
            raise ValueError(f"image_size must be a multiple of 28 and at least 56, got {self.image_size}")
        for name in ("n_test_per_task", "n_train_per_task", "n_single_test", "n_single_train", *CURRICULUM_TASKS.values()):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("test_tasks", "train_tasks"):
            bad = [t for t in getattr(self, name) if t not in ALL_TASKS]
            if bad:
                raise ValueError(f"{name}: unknown tasks {bad}; known: {ALL_TASKS}")
        lo_hi = self.objects_per_image
        if len(lo_hi) != 2 or not 2 <= lo_hi[0] <= lo_hi[1] <= 7:
            raise ValueError(f"objects_per_image must be [min, max] with 2 <= min <= max <= 7, got {lo_hi}")
        for name in ("distractor_similarity", "extra_attribute_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if not 0.5 <= self.object_scale <= 1.5:
            raise ValueError("object_scale must lie in [0.5, 1.5]")
        if not 2 <= self.max_images <= 6:
            raise ValueError("max_images must lie in [2, 6]")
        if not 0.0 <= self.position_cue <= 200.0:
            raise ValueError("position_cue must lie in [0, 200] grey levels")
        if not 0.0 <= self.view_shift <= 0.3:
            raise ValueError("view_shift must lie in [0, 0.3]")
        if self.object_grid:
            if not 4 <= self.object_grid <= self.image_size // 4:
                raise ValueError(f"object_grid must be 0 or lie in [4, image_size / 4], got {self.object_grid}")
            sides = [grid_side(s, self.image_size, self.object_scale, self.object_grid) for s in SIZES]
            if len(set(sides)) < len(sides):
                raise ValueError(f"object_grid {self.object_grid}: the size classes round to the same sides {dict(zip(SIZES, sides, strict=True))} at image_size {self.image_size}; use a finer grid")

    def knobs(self) -> WorldKnobs:
        return WorldKnobs(
            image_size=self.image_size,
            objects_per_image=(self.objects_per_image[0], self.objects_per_image[1]),
            object_scale=self.object_scale,
            distractor_similarity=self.distractor_similarity,
            noise=self.noise,
            max_images=self.max_images,
            view_shift=self.view_shift,
            extra_attribute_prob=self.extra_attribute_prob,
            position_cue=self.position_cue,
            object_grid=self.object_grid,
        )


@dataclass
class WorldManifest:
    root: Path
    config_hash: str
    counts: dict[str, dict[str, int]]
    seconds: float
    skipped: bool = False

    @property
    def test_file(self) -> Path:
        return self.root / "test" / "mig_bench.json"

    @property
    def single_test_file(self) -> Path:
        return self.root / "test" / "single_refer.json"

    @property
    def train_file(self) -> Path:
        return self.root / "train" / "mgrounding.json"

    @property
    def contact_sheet(self) -> Path:
        return self.root / "contact_sheet.png"

    def table(self) -> list[dict[str, Any]]:
        """Rows of (task, test items, train items) for display."""
        tasks = sorted(set(self.counts.get("test", {})) | set(self.counts.get("train", {})), key=_task_order)
        return [{"task": t, "test": self.counts.get("test", {}).get(t, 0), "train": self.counts.get("train", {}).get(t, 0)} for t in tasks]


def _task_order(t: str) -> int:
    order = ALL_TASKS + [SINGLE_TASK, *CURRICULUM_TASKS]
    return order.index(t) if t in order else len(order)


def sample_seed(seed: int, split: str, task: str, i: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}/{task}/{i}".encode()).digest()[:8], "big")


def heldout_bench(cfg: DataConfig, task: str, folder: Path, n: int) -> tuple[Path, list[str]]:
    """``n`` items of ``task`` drawn with ``cfg``'s knobs and seeds the data stage never uses (split
    ``heldout``), written to ``folder`` as a MIG-Bench file ``<task>.json`` with its images and scenes
    (``scenes.jsonl``, so the items carry them), and each item's referring expression beside it
    (``expressions.json``; "" where it has none). Returns the file and the expressions; a folder whose stamp
    (``heldout.json``, written last) says the same world, task and ``n`` is reused."""
    from ..config import config_hash, versioned_digest

    folder = Path(folder)
    bench, wanted, scenes, stamp = folder / f"{task}.json", folder / "expressions.json", folder / "scenes.jsonl", folder / "heldout.json"
    key = versioned_digest({"data": config_hash(cfg), "task": task, "n": n})
    if stamp.is_file() and json.loads(stamp.read_text()).get("digest") == key:
        return bench, json.loads(wanted.read_text())
    stamp.unlink(missing_ok=True)
    records, expressions, rows = [], [], []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = generate(task, sample_seed(cfg.seed, "heldout", task, i), cfg.knobs())
        rels = [f"images/{i:05d}.png"] if len(s.images) == 1 else [f"images/{i:05d}_{j}.png" for j in range(1, len(s.images) + 1)]
        for img, rel in zip(s.images, rels, strict=True):
            img.save(folder / rel)
        records.append(MigRecord(task, rels, s.question, s.answer_rel(), need_format=False, index=i))
        expressions.append(s.meta.get("expression", ""))
        rows.append(scene_row(f"heldout-{task}-{i}", "heldout", i, s))
    write_mig_bench(records, bench)
    write_jsonl(scenes, rows)
    wanted.write_text(json.dumps(expressions))
    stamp.write_text(json.dumps({"digest": key, "task": task, "n": n}))
    return bench, expressions


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=6)


def scene_row(sid: str, split: str, index: int, s: Sample) -> dict[str, Any]:
    """A sample's line of ``scenes.jsonl``: every image's size and objects, the target, the answer (an ``Item.scene``)."""
    return {
        "id": sid,
        "split": split,
        "task": s.task,
        "record_index": index,
        "question": s.question,
        "target_image": s.target_image,
        "target": s.target.to_json(),
        "answer": s.answer_rel(),
        "images": [{"size": [im.width, im.height], "objects": [o.to_json() for o in sc]} for im, sc in zip(s.images, s.scenes, strict=True)],
        "meta": s.meta,
    }


def _plan(cfg: DataConfig) -> dict[str, list[tuple[str, int]]]:
    test = [(t, cfg.n_test_per_task) for t in cfg.test_tasks] + [(SINGLE_TASK, cfg.n_single_test)]
    train = [(t, cfg.n_train_per_task) for t in cfg.train_tasks] + [(SINGLE_TASK, cfg.n_single_train)]
    train += [(task, getattr(cfg, n)) for task, n in CURRICULUM_TASKS.items() if getattr(cfg, n)]
    return {"test": test, "train": train}


PARALLEL_MIN_ITEMS = 500  # fewer items are drawn in the calling process (a worker pool costs ~0.1 s to start)


Drawn = tuple[dict[str, Any], list[str], str, bool, str, Sample | None]


def _draw_item(seed: int, knobs: WorldKnobs, out: Path, job: tuple[str, str, int]) -> Drawn:
    """Draw item ``i`` of ``task`` in ``split`` (``job``) and write its images under ``out``; returns what the
    item's records need (its scene row, image paths, additional info, need_format, MGrounding answer) and, for
    the first test item of a task, the sample itself (for the contact sheet). Runs in a worker process."""
    split, task, i = job
    s = generate(task, sample_seed(seed, split, task, i), knobs)
    rel_images = [f"images/{task}/{i:05d}_{j + 1}.png" for j in range(len(s.images))]
    for img, rel in zip(s.images, rel_images, strict=True):
        _save_png(img, out / split / rel)
    row = scene_row(f"{split}-{task}-{i:05d}", split, -1, s)
    return row, rel_images, s.additional_info, s.need_format, s.answer_text(), s if (split == "test" and i == 0) else None


def _drawn(draw: Callable[[tuple[str, str, int]], Drawn], jobs: list[tuple[str, str, int]], workers: int) -> Iterator[Drawn]:
    """``draw`` (:func:`_draw_item` with the world's seed, knobs and folder) over ``jobs``, in order: in this process, or spread over ``workers`` forked processes
    (each item's draw depends on its own seed alone, so the files are the same either way). Forked, not
    spawned: a spawned worker re-imports the caller's script, which breaks scripts without a main guard;
    the workers draw with PIL and numpy only. Where fork is missing the world is drawn in this process."""
    import multiprocessing

    if workers <= 1 or len(jobs) < PARALLEL_MIN_ITEMS or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(draw, jobs)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from pool.map(draw, jobs, chunksize=64)


def world_workers() -> int:
    """Processes that draw the world: ``MIRG_WORLD_WORKERS``, else one per available core (at most 8)."""
    env = os.environ.get("MIRG_WORLD_WORKERS")
    if env:
        return max(1, int(env))
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def write_world(cfg: DataConfig, out: Path, progress: bool = True, workers: int | None = None) -> dict[str, dict[str, int]]:
    """Draw and write every sample into ``out`` (an empty folder), over ``workers`` processes (default
    :func:`world_workers`); the files do not depend on how many."""
    knobs = cfg.knobs()
    counts: dict[str, dict[str, int]] = {}
    plan = _plan(cfg)
    total = sum(n for items in plan.values() for _, n in items)
    bar = tqdm(total=total, desc="drawing the embedded world", disable=not progress, mininterval=2.0)
    examples: dict[str, Sample] = {}
    workers = world_workers() if workers is None else workers
    draw = functools.partial(_draw_item, cfg.seed, knobs, out)
    for split, items in plan.items():
        mig: list[MigRecord] = []
        single: list[MigRecord] = []
        mg: list[MGroundingRecord] = []
        scenes: list[dict[str, Any]] = []
        counter: Counter[str] = Counter()
        jobs = [(split, task, i) for task, n in items for i in range(n)]
        for row, rel_images, info, need_format, answer_text, example in _drawn(draw, jobs, workers):
            task = row["task"]
            if split == "test":
                target = single if task == SINGLE_TASK else mig
                rec = MigRecord(task, rel_images, row["question"], row["answer"], info, need_format, len(target))
                target.append(rec)
                row["record_index"] = rec.index
                if example is not None:
                    examples.setdefault(task, example)
            else:
                human = "<image>\n" * len(rel_images) + row["question"]
                mg.append(MGroundingRecord(row["id"], rel_images, [{"from": "human", "value": human}, {"from": "gpt", "value": answer_text}], task, len(mg)))
                row["record_index"] = len(mg) - 1
            scenes.append(row)
            counter[task] += 1
            bar.update(1)
        if split == "test":
            write_mig_bench(mig, out / "test" / "mig_bench.json")
            write_mig_bench(single, out / "test" / "single_refer.json")
        else:
            write_mgrounding(mg, out / "train" / "mgrounding.json")
        write_jsonl(out / split / "scenes.jsonl", scenes)
        counts[split] = dict(counter)
    bar.close()
    if cfg.contact_sheet and examples:
        contact_sheet([examples[t] for t in sorted(examples, key=_task_order)]).save(out / "contact_sheet.png", optimize=False)
    return counts


def data_checksums(root: Path) -> dict[str, str]:
    """The checksums a data folder's ``manifest.json`` records of its data files (``files``): every
    ``*.json*`` below ``root`` but the manifest and ``timing.json``, by relative path."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*.json*")) if p.relative_to(root).as_posix() not in ("manifest.json", "timing.json")}


def _ends_whole(path: Path) -> bool:
    """For a manifest that recorded no checksum: whether the JSON file ``path`` ends as a whole one does
    (``]`` or ``}``; a cheap check that catches most truncations, not every one)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        return f.read().rstrip().endswith((b"]", b"}"))


def data_mismatch(out_dir: Path, manifest: dict[str, Any]) -> str | None:
    """What in ``out_dir`` no longer is what its ``manifest`` recorded (a file changed, cut short or gone
    since), or None when all is as written: each data file's checksum (``files``), each split's images
    (``images_sha256``, one digest over the folder: about 0.1 ms an image from the page cache, some 2 s
    for the embedded profile's ~23,000).
    Without ``files`` (a manifest that records none) each data file there must exist and end whole."""
    files = manifest.get("files")
    if files is None:
        for rel in ("test/mig_bench.json", "test/single_refer.json", "train/mgrounding.json"):
            p = out_dir / rel
            if not p.is_file():
                return f"{rel} is missing"
            if not _ends_whole(p):
                return f"{rel} ends short of a whole JSON file (cut short)"
    for rel, want in (files or {}).items():
        p = out_dir / rel
        if not p.is_file():
            return f"{rel} is missing"
        if sha256_file(p) != want:
            return f"{rel} does not have the checksum the manifest recorded (changed or cut short since)"
    for split, want in (manifest.get("images_sha256") or {}).items():
        images = out_dir / split / "images"
        if not images.is_dir() or sha256_tree(images) != want:
            return f"{split}/images does not have the checksum the manifest recorded (an image changed, cut short or gone)"
    return None


def reused_manifest(out_dir: Path, digest: str) -> WorldManifest | None:
    """The data already in ``out_dir`` when its ``manifest.json`` was written for ``digest`` (its wall time from
    ``timing.json``), else None: the data stage's skip, for the drawn world and the real files alike.

    The files are checked against the manifest first (:func:`data_mismatch`): a folder whose data changed or
    was cut short since is not reused, with a warning naming the file, and the stage builds it again (a drawn
    world is the same again for its seed; the real files' folder is a copy made from the sources)."""
    import warnings

    manifest_path = out_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        old = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        warnings.warn(f"{manifest_path} is not JSON (cut short?): building the data again", stacklevel=3)
        return None
    if old.get("config_hash") != digest:
        return None
    bad = data_mismatch(out_dir, old)
    if bad is not None:
        warnings.warn(f"{out_dir}: {bad}; not reusing it, building the data again", stacklevel=3)
        return None
    try:
        timing = json.loads((out_dir / "timing.json").read_text()) if (out_dir / "timing.json").is_file() else {}
    except json.JSONDecodeError:  # a wall time only, not data
        timing = {}
    return WorldManifest(out_dir, digest, old["counts"], float(timing.get("seconds", 0.0)), skipped=True)


def run_data_synthesis(cfg: DataConfig, out_dir: str | Path, force: bool = False, progress: bool = True) -> WorldManifest:
    """The stage: build the world in ``out_dir`` unless it is already there for this same config."""
    out_dir = Path(out_dir)
    digest = config_hash(cfg)
    reused = None if force else reused_manifest(out_dir, digest)
    if reused is not None:
        return reused
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        counts = write_world(cfg, tmp, progress)
        seconds = time.perf_counter() - t0
        files = data_checksums(tmp)
        write_json(
            tmp / "manifest.json",
            {
                "config": dataclasses.asdict(cfg),
                "config_hash": digest,
                "counts": counts,
                "files": files,
                "images_sha256": {split: sha256_tree(tmp / split / "images") for split in ("test", "train") if (tmp / split / "images").exists()},
            },
        )
        # wall time lives apart, so that the data files (manifest included) are byte-identical per seed
        write_json(tmp / "timing.json", {"seconds": round(seconds, 2)})
    return WorldManifest(out_dir, digest, counts, seconds)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(samples: list[Sample], thumb: int = 112) -> Image.Image:
    """One row per sample: its images, the ground-truth box in green on the target image, the question."""
    font, small = _font(14), _font(11)
    label_w, pad, text_h = 150, 6, 30
    n_cols = max(len(s.images) for s in samples)
    row_h = thumb + text_h + 2 * pad
    sheet = Image.new("RGB", (label_w + n_cols * (thumb + pad) + pad, row_h * len(samples)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for r, s in enumerate(samples):
        y0 = r * row_h + pad
        d.text((pad, y0 + thumb // 2 - 8), s.task, fill=(0, 0, 0), font=font)
        for j, img in enumerate(s.images):
            x0 = label_w + j * (thumb + pad)
            t = img.resize((thumb, thumb), Image.Resampling.BICUBIC)
            if j + 1 == s.target_image:
                td = ImageDraw.Draw(t)
                fx, fy = thumb / img.width, thumb / img.height
                x1, y1, x2, y2 = s.target.box
                td.rectangle((x1 * fx, y1 * fy, x2 * fx - 1, y2 * fy - 1), outline=(0, 200, 0), width=3)
            sheet.paste(t, (x0, y0))
            d.text((x0 + 2, y0 + 2), str(j + 1), fill=(0, 0, 0), font=small)
        q = s.question.replace("<|object_ref_start|>", "").replace("<|object_ref_end|>", "")
        width_chars = max(40, (sheet.width - label_w) // 6)
        d.text((label_w, y0 + thumb + 2), "\n".join(textwrap.wrap(q, width_chars)[:2]), fill=(60, 60, 60), font=small)
        d.line((0, (r + 1) * row_h - 1, sheet.width, (r + 1) * row_h - 1), fill=(220, 220, 220))
    return sheet


__all__ = ["DataConfig", "WorldManifest", "run_data_synthesis", "write_world", "contact_sheet", "GENERATORS"]
