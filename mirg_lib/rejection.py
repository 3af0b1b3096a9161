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
from tqdm import tqdm

from .config import config_hash
from .cot import judge
from .formats import IN_DOMAIN
from .generation import generate_batch, seen_size
from .io import atomic_dir, write_json, write_jsonl
from .items import first_per_task, load_pool_items
from .prompts import user_turn, with_suffix
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


def run_rejection_sampling(cfg: RejectionConfig, model_path: str | Path, data_dir: str | Path, out_dir: str | Path, exclude_ids: set[str] | None = None) -> RejectionResult:
    """Writes ``rl_items.jsonl`` (the kept ids with their hit counts) and ``table.json``."""
    import torch

    from .models import load_model, load_processor

    out_dir = Path(out_dir)
    digest = config_hash(cfg) + ":" + model_identity(model_path)
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
        device = "cuda" if torch.cuda.is_available() else None
        model, processor = load_model(model_path, device=device), load_processor(model_path)
        per_call = max(1, cfg.batch_size // cfg.k)  # the k samples of several items share a generation batch
        for start in tqdm(range(0, len(items), per_call), desc="rejection sampling", mininterval=5):
            chunk = items[start : start + per_call]
            images = [[Image.open(p).convert("RGB") for p in it.images] for it in chunk]
            msgs = [user_turn(len(imgs), with_suffix(it.question, cfg.recipe, cfg.box_notation)) for it, imgs in zip(chunk, images, strict=True)]
            replies = generate_batch(
                model, processor, [m for m in msgs for _ in range(cfg.k)], [im for im in images for _ in range(cfg.k)],
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, do_sample=True, batch_size=cfg.batch_size, seed=cfg.seed + start,
            )
            for j, (it, imgs) in enumerate(zip(chunk, images, strict=True)):
                size = seen_size(processor, imgs[it.target_image - 1]) if cfg.frame == "abs" else None
                hits.append(sum(judge(style, replies[j * cfg.k : (j + 1) * cfg.k], it, cfg.frame, size)))
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
        write_json(tmp / "table.json", {"config": dataclasses.asdict(cfg), "config_hash": digest, "rows": rows, "seconds": round(seconds, 2)})
    return RejectionResult(out_dir, rows, [k["id"] for k in kept], seconds)
