"""Rejection sampling (``04_rejection_sampling``): keep the RL items the stage-1 model gets partly right.

Zhang et al. sample the merged cold-start model several times per RL item and drop the items it gets
all right (nothing to learn) or all wrong (no signal for GRPO's group-relative advantage).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .backends import GenerationConfig, Request, Sampling, drop_cache, generate, generation_tag, processes
from .config import config_hash
from .cot import judge
from .formats import IN_DOMAIN
from .generation import seen_size
from .io import atomic_dir, write_json, write_jsonl
from .items import first_per_task, load_pool_items
from .prompts import with_suffix
from .trainers import model_identity


@dataclass
class RejectionConfig:
    """Section ``rejection`` of the params."""

    k: int = field(default=8, metadata={"help": "samples per RL item from the stage-1 model"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens per sample"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generation batch: the k samples of batch_size // k items at a time"})
    tasks: list[str] = field(default_factory=lambda: [*IN_DOMAIN, "single_refer"], metadata={"help": "pool tasks the RL items come from"})
    max_items_per_task: int = field(default=0, metadata={"help": "the first N pool items of each task not used for CoT SFT (0: all)"})
    recipe: Literal["zhang", "mirg"] = field(default="zhang", metadata={"help": "the prompt and reply form sampled"})
    frame: Literal["auto", "rel1000", "abs"] = field(default="auto", metadata={"help": "how replies' boxes are read; abs: Qwen2.5-VL's pixel boxes"})
    box_notation: Literal["json", "tokens"] = field(default="json", metadata={"help": "the boxes Zhang et al.'s prompt asks for: json (the paper's) or tokens (Qwen2-VL's); as cot.box_notation"})
    enabled: bool = field(default=True, metadata={"help": "false: keep every item (the papers' w/o rejection sampling row)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})


@dataclass
class RejectionResult:
    root: Path
    table: list[dict[str, Any]]
    kept_ids: list[str]
    seconds: float
    skipped: bool = False


def run_rejection_sampling(cfg: RejectionConfig, model_path: str | Path, data_dir: str | Path, out_dir: str | Path, exclude_ids: set[str] | None = None,
                           generation: GenerationConfig | None = None, launch: Any = None) -> RejectionResult:
    """Writes ``rl_items.jsonl`` (the kept ids with their hit counts) and ``table.json``. The samples come from
    ``generation``'s backend (default: ``hf`` in this process), over ``launch``'s processes where it gives
    this stage several; an interrupted run resumes from the replies it had (:mod:`mirg_lib.backends`)."""
    out_dir = Path(out_dir)
    generation = generation or GenerationConfig()
    digest = config_hash(cfg) + ":" + model_identity(model_path) + generation_tag(generation)
    stamp = out_dir / "table.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("config_hash") == digest:
            kept = [json.loads(line)["id"] for line in (out_dir / "rl_items.jsonl").read_text().splitlines() if line.strip()]
            return RejectionResult(out_dir, old["rows"], kept, old.get("seconds", 0.0), skipped=True)
    t0 = time.perf_counter()
    pool = [it for it in load_pool_items(Path(data_dir) / "train" / "mgrounding.json") if not exclude_ids or it.id not in exclude_ids]
    items = first_per_task(pool, cfg.tasks, cfg.max_items_per_task)
    style = "zhang" if cfg.recipe == "zhang" else "mirg_bbox"
    hits: list[int] = []
    if cfg.enabled:
        requests = [Request(with_suffix(it.question, cfg.recipe, cfg.box_notation), tuple(str(p) for p in it.images), cfg.k) for it in items]
        sampling = Sampling(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        per_call = max(1, cfg.batch_size // cfg.k)  # the k samples of several items share a generation batch
        replies = generate(generation, model_path, requests, sampling, out_dir, stage="rejection", per_batch=per_call, batch_size=cfg.batch_size,
                           launch=launch, progress="rejection sampling")
        from .models import load_processor

        processor = load_processor(model_path) if cfg.frame == "abs" else None
        for it, rs in zip(items, replies, strict=True):
            size = None
            if processor is not None:
                with Image.open(it.images[it.target_image - 1]) as im:
                    size = seen_size(processor, im.convert("RGB"))
            hits.append(sum(judge(style, rs, it, cfg.frame, size)))
    else:
        hits = [-1] * len(items)
    counts: Counter[str] = Counter()
    kept = []
    for it, h in zip(items, hits, strict=True):
        counts[f"{it.task}/items"] += 1
        if h == cfg.k:
            counts[f"{it.task}/all right"] += 1
        elif h == 0:
            counts[f"{it.task}/all wrong"] += 1
        else:
            counts[f"{it.task}/kept"] += 1
            kept.append({"id": it.id, "task": it.task, "hits": h})
    rows = [
        {"task": t, "items": counts[f"{t}/items"], "all right": counts[f"{t}/all right"], "all wrong": counts[f"{t}/all wrong"], "kept": counts[f"{t}/kept"]}
        for t in sorted({it.task for it in items})
    ]
    seconds = time.perf_counter() - t0
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "rl_items.jsonl", kept)
        write_json(tmp / "table.json", {"config": dataclasses.asdict(cfg), "config_hash": digest, "rows": rows, "seconds": round(seconds, 2),
                                        "backend": generation.backend, "processes": processes(generation, launch, "rejection")})
    drop_cache(out_dir)
    return RejectionResult(out_dir, rows, [k["id"] for k in kept], seconds)
