"""Probe: GRPO from the embedded profile's CoT-SFT model at other lengths and rates (docs/log.md).

    .venv/bin/python bench/probe_grpo.py --steps 64 --lr 2e-4 --seed 0

Notebook 05's GRPO (``pipeline.grpo``: Zhang et al.'s recipe, its rewards, on the RL items rejection sampling
kept) from ``runs/embedded/sft_zhang``, with ``--steps``, ``--lr``, ``--seed`` and ``--generations`` over the
profile's settings, into ``runs/embedded/probe_grpo_<tag>``; then the evaluation stage on all 500 MIG-Bench
items and the 200 single-image items. Prints one JSON line with the start's scores beside the trained
model's. Needs ``make reproduce`` to have run notebooks 01-04.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib import pipeline  # noqa: E402
from mirg_lib.config import load_params  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402


def _summary(row: dict) -> dict:
    """The figures a probe prints of a ``pipeline.scored_row``."""
    return {k: row[k] for k in ("avg", "in_domain", "single", "unparseable")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="GRPO optimiser steps (default: the profile's)")
    ap.add_argument("--lr", type=float, default=None, help="GRPO learning rate (default: the profile's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generations", type=int, default=None, help="rollouts per prompt (default: the profile's)")
    args = ap.parse_args()

    over = {"grpo.seed": args.seed}
    for key, value in (("grpo.max_steps", args.steps), ("grpo.learning_rate", args.lr), ("grpo.num_generations", args.generations)):
        if value is not None:
            over[key] = value
    params = load_params("embedded", over)
    g = params.data["grpo"]
    tag = f"s{g['max_steps']}_lr{g['learning_rate']:g}_g{g.get('num_generations', 8)}_seed{args.seed}"
    t0 = time.perf_counter()
    start = pipeline.model_path(params, "sft_zhang")
    before = _summary(pipeline.scored_row(params, "sft_zhang", "sft_zhang", start))
    name = f"probe_grpo_{tag}"
    ck = pipeline.grpo(params, name=name)
    trained = time.perf_counter() - t0
    after = _summary(pipeline.scored_row(params, name, name, ck))
    log = stage_dir("embedded", name) / "train_log.jsonl"
    rewards = [r["reward"] for r in map(json.loads, log.read_text().splitlines()) if "reward" in r] if log.is_file() else []
    print(json.dumps({
        "tag": tag, "start": before, "grpo": after, "delta_avg": round(after["avg"] - before["avg"], 2),
        "reward_first_last": [rewards[0], rewards[-1]] if rewards else None, "grpo_s": round(trained, 1), "wall_s": round(time.perf_counter() - t0, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
