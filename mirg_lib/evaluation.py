"""Evaluation stage: batched generation for any checkpoint, a predictions file in the scoring format,
and the scores (per task, in/out of domain, image-aware group grounding).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .backends import GenerationConfig, HFBackend, Request, Sampling, drop_cache, generate
from .formats import load_mig_bench
from .generation import seen_size
from .io import write_json, write_jsonl
from .items import first_per_task, item_from_mig
from .prompts import with_suffix
from .scoring import Prediction, score


@dataclass
class EvalConfig:
    """Section ``eval`` of the params."""

    prompt: Literal["plain", "zhang", "mirg"] = field(default="zhang", metadata={"help": "the recipe's prompt the model is asked with"})
    box_notation: Literal["json", "tokens"] = field(default="json", metadata={"help": "the boxes Zhang et al.'s prompt asks for: json (the paper's) or tokens (Qwen2-VL's); as cot.box_notation"})
    max_new_tokens: int = field(default=256, metadata={"help": "greedy tokens per answer"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generation batch"})
    max_items_per_task: int = field(default=0, metadata={"help": "the first N items of each MIG-Bench task (0: all); the single-image test is scored whole"})
    frame: Literal["auto", "rel1000", "abs"] = field(default="auto", metadata={"help": "how answers' boxes are read; auto: Migician's rule; abs: Qwen2.5-VL's pixel boxes"})
    protocol: Literal["migician", "lenient"] = field(default="migician", metadata={"help": "Migician's scoring, or a lenient reading of any box in the reply"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 weights"})


def cached_scores(out_dir: str | Path | None, stamp: str | None) -> dict[str, Any] | None:
    """The scores already in ``out_dir`` (with their predictions) when they carry ``stamp``, else None."""
    if stamp is None or out_dir is None:
        return None
    done = Path(out_dir) / "scores.json"
    if done.is_file() and (Path(out_dir) / "predictions.jsonl").is_file():
        old = json.loads(done.read_text())
        if old.get("stamp") == stamp:
            return old
    return None


def evaluate_checkpoint(model_path: str | Path, bench_file: str | Path, cfg: EvalConfig, out_dir: str | Path | None = None, model=None, processor=None, stamp: str | None = None,
                        generation: GenerationConfig | None = None, launch: Any = None) -> dict[str, Any]:
    """Generate for every benchmark record (greedy), write ``predictions.jsonl`` and ``scores.json``.

    With ``stamp`` (what the scores are made from: model, config, benchmark) the scores carry it, and scores
    already in ``out_dir`` with the same stamp are returned without generating. The replies come from
    ``generation``'s backend (default: ``hf`` in this process; ``model`` / ``processor``: already loaded), over
    ``launch``'s processes where it gives the evaluation several (:mod:`mirg_lib.backends`)."""
    old = cached_scores(out_dir, stamp)
    if old is not None:
        return old
    generation = generation or GenerationConfig()
    bench_file = Path(bench_file)
    records = load_mig_bench(bench_file)
    records = first_per_task(records, None, cfg.max_items_per_task)
    requests = [Request(with_suffix(r.question, cfg.prompt, cfg.box_notation), tuple(str(bench_file.parent / p) for p in r.images)) for r in records]
    t0 = time.perf_counter()
    if records and (model is not None or cfg.frame == "abs"):  # the hf backend around a loaded model, or the seen sizes
        processor = _processor(model_path, processor)
    replies = _replies(model_path, requests, cfg, out_dir, model, processor, generation, launch, f"evaluating {bench_file.name}")
    rows = []
    for r, (reply,) in zip(records, replies, strict=True):
        row = {"index": r.index, "task": r.task, "response": reply, "frame": cfg.frame}
        if cfg.frame == "abs":  # Qwen2.5-VL: pixels of the target image as the model saw it
            row["image_size"] = list(_seen(processor, bench_file.parent / r.images[item_from_mig(r, bench_file.parent).target_image - 1]))
        rows.append(row)
    seconds = time.perf_counter() - t0
    preds = {row["index"]: Prediction(row["index"], row["response"], row["frame"], tuple(row["image_size"]) if "image_size" in row else None, row["task"]) for row in rows}
    scores = score(records, preds, protocol=cfg.protocol)
    scores["seconds"] = round(seconds, 2)
    scores["backend"] = generation.backend
    scores["samples_per_second"] = round(len(records) / seconds, 3) if seconds > 0 else None
    if stamp is not None:
        scores["stamp"] = stamp
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_jsonl(out_dir / "predictions.jsonl", rows)
        write_json(out_dir / "scores.json", scores)
        drop_cache(out_dir)
    return scores


def _replies(model_path, requests: list[Request], cfg: EvalConfig, out_dir, model, processor, generation: GenerationConfig, launch: Any, progress: str) -> list[list[str]]:
    """Greedy replies to ``requests`` in batches of ``cfg.batch_size`` (:func:`mirg_lib.backends.generate`)."""
    backend = None
    if model is not None:  # a model already loaded (with its processor): the hf backend around it
        backend = HFBackend(str(model_path), batch_size=cfg.batch_size, model=model, processor=processor)
    return generate(generation, model_path, requests, Sampling(max_new_tokens=cfg.max_new_tokens), out_dir, stage="eval", per_batch=cfg.batch_size,
                    batch_size=cfg.batch_size, dtype="bfloat16" if cfg.bf16 else "float32", launch=launch, backend=backend, progress=progress)


def _processor(model_path, processor):
    from .models import load_processor

    return processor if processor is not None else load_processor(model_path)


def _seen(processor, path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return seen_size(processor, im.convert("RGB"))


def evaluate_benchmark(model_path: str | Path, benchmark: str | Path, cfg: EvalConfig, out_dir: str | Path | None = None, name: str | None = None, image_root: str | Path | None = None, model=None, processor=None, stamp: str | None = None, judge=None,
                       generation: GenerationConfig | None = None, launch: Any = None) -> dict[str, Any]:
    """Generate greedily for every item of a local copy of one of the papers' other benchmarks
    (:mod:`mirg_lib.benchmarks`: ``name``, else told from its fields), with ``cfg.prompt``'s recipe, and score
    the replies by that benchmark's protocol; ``predictions.jsonl`` (``id``, ``response``, and ``image_size``
    with ``cfg.frame: abs``) and ``scores.json`` go to ``out_dir``. ``stamp`` as for :func:`evaluate_checkpoint`;
    ``judge``: a multiple-choice benchmark's LLM judge (:mod:`mirg_lib.benchmarks.judge`, none by default)."""
    from . import benchmarks

    old = cached_scores(out_dir, stamp)
    if old is not None:
        return old
    generation = generation or GenerationConfig()
    name, items = benchmarks.read(benchmark, name, image_root)
    kind = benchmarks.KINDS[name]
    requests = [Request(benchmarks.prompt_text(it, cfg.prompt, cfg.box_notation), tuple(str(p) for p in it.images)) for it in items]
    t0 = time.perf_counter()
    if items and (model is not None or (cfg.frame == "abs" and kind in ("grounding", "detection", "multi_context"))):
        processor = _processor(model_path, processor)
    replies = _replies(model_path, requests, cfg, out_dir, model, processor, generation, launch, f"evaluating {name}")
    rows, sizes = [], []
    for it, (reply,) in zip(items, replies, strict=True):
        row: dict[str, Any] = {"id": it.id, "response": reply}
        size = None
        if cfg.frame == "abs" and kind in ("grounding", "detection"):  # Qwen2.5-VL: pixels of the image as it saw it
            size = _seen(processor, Path(it.images[getattr(it, "target_image", 1) - 1]))
            row["image_size"] = list(size)
        elif cfg.frame == "abs" and kind == "multi_context":  # boxes in either image: each image's size as seen
            size = [_seen(processor, Path(p)) for p in it.images]
            row["image_sizes"] = [list(v) for v in size]
        rows.append(row)
        sizes.append(size)
    seconds = time.perf_counter() - t0
    how: dict[str, Any] = {}
    if kind in ("grounding", "detection"):
        how = {"frame": cfg.frame, "seen_sizes": sizes}
        if kind == "grounding":
            how["protocol"] = cfg.protocol
    elif kind == "multi_context":
        how = {"frame": cfg.frame, "seen_sizes": sizes if cfg.frame == "abs" else None}
    elif judge is not None:
        how = {"judge": judge}
    if out_dir is not None:  # the replies first: a judge that fails while scoring loses none of them
        out_dir = Path(out_dir)
        (out_dir / "scores.json").unlink(missing_ok=True)
        write_jsonl(out_dir / "predictions.jsonl", rows)
    scores = benchmarks.score(name, items, [r["response"] for r in rows], **how)
    scores.update(prompt=cfg.prompt, box_notation=cfg.box_notation, seconds=round(seconds, 2), n_items=len(items), backend=generation.backend)
    if stamp is not None:
        scores["stamp"] = stamp
    if out_dir is not None:
        write_json(out_dir / "scores.json", scores)
        drop_cache(out_dir)
    return scores
