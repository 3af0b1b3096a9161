"""Probe: more of the base's multi-image curriculum, then the profile's SFTs on it (docs/log.md).

    .venv/bin/python bench/probe_base_multi.py --steps 1000

Continues the shipped base (``checkpoints/embedded-base``) with ``--steps`` more steps of its own multi-image
phase (``base_model._multi_phase``: the profile's ``base_model`` settings, the pool's ``multi_refer`` and
``multi_describe`` items beside as many single-image ones, constant ``--lr``) into
``runs/embedded/probe_base_multi_<steps>``; scores it with the plain prompt on all 500 MIG-Bench items and
the 200 single-image items; then trains notebook 03's CoT-SFT (``sft_zhang.jsonl``) and answer-only SFT
(``sft_answer.jsonl``) of ``runs/embedded/cot`` on it with the profile's settings and scores each with its
prompt. Prints one JSON line. Needs ``make reproduce`` to have run notebooks 01-02.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib import pipeline  # noqa: E402
from mirg_lib.base_model import BaseModelConfig, _multi_phase  # noqa: E402
from mirg_lib.config import load_params, stage_config  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402


def _summary(row: dict) -> dict:
    """The figures a probe prints of a ``pipeline.scored_row``."""
    return {k: row[k] for k in ("avg", "in_domain", "single", "unparseable")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000, help="more multi-image phase steps")
    ap.add_argument("--lr", type=float, default=None, help="their learning rate (default: the profile's multi_phase_lr)")
    args = ap.parse_args()

    params = load_params("embedded")
    ddir = pipeline.data_dir(params)
    cfg = stage_config(BaseModelConfig, params, "base_model")
    cfg = dataclasses.replace(cfg, multi_phase_steps=args.steps, multi_phase_lr=args.lr if args.lr is not None else cfg.multi_phase_lr)
    name = f"probe_base_multi_{args.steps}_lr{cfg.multi_phase_lr:g}"
    out = stage_dir("embedded", name)
    base = out / "checkpoint"
    t0 = time.perf_counter()
    if not (base / "mirg.json").is_file():
        _multi_phase(cfg, ddir, out, pipeline.base_path(params), base, progress=False, digest=name)
    trained = time.perf_counter() - t0
    result = {"tag": name, "base_s": round(trained, 1)}
    result["base"] = _summary(pipeline.scored_row(params, name, name, base, prompt="plain"))
    for variant in ("zhang", "answer"):
        scfg = pipeline.sft_config(params, variant)
        sft_name = f"{name}_sft_{variant}"
        ck = pipeline.train_sft(scfg, base, stage_dir("embedded", "cot") / f"sft_{variant}.jsonl", ddir, stage_dir("embedded", sft_name))
        result[f"sft_{variant}"] = _summary(pipeline.scored_row(params, sft_name, sft_name, ck, prompt=scfg.prompt_recipe))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
