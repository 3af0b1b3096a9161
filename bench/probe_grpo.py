"""GRPO (notebook 05's stage) under overrides, then its greedy scores (README, "The pipeline").

    .venv/bin/python bench/probe_grpo.py --name grpo_lr1e-4 --set grpo.learning_rate=0.0001 --set grpo.max_steps=60

Runs ``pipeline.rejection`` (skipped when its output carries the same config) and ``pipeline.grpo`` from the
Zhang CoT-SFT model into ``runs/<profile>/<name>``, then ``pipeline.evaluate`` with Zhang et al.'s prompt on
MIG-Bench and the single-image test into ``runs/<profile>/eval/probe_<name>``. Prints one JSON line: the
overrides, the RL items, the training time, the mean accuracy reward over each third of the steps, the
share of steps whose rollouts all had the same reward, the last KL and the greedy Acc@0.5 (unparseable
answers) on both tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from mirg_lib import pipeline  # noqa: E402
from mirg_lib.config import load_params, parse_overrides  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.results import read_log  # noqa: E402


def thirds(values: list[float]) -> list[float]:
    """The mean of each third of ``values`` (the last third takes the remainder)."""
    n = len(values)
    if n < 3:
        return [round(sum(values) / n, 3)] if n else []
    q = n // 3
    parts = [values[:q], values[q : 2 * q], values[2 * q :]]
    return [round(sum(p) / len(p), 3) for p in parts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--name", required=True, help="the run's folder under runs/<profile>/ (not 'grpo', the pipeline's own)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override (YAML value)")
    args = ap.parse_args()
    if args.name == "grpo":
        ap.error("--name grpo would overwrite the pipeline's own GRPO stage")
    overrides = parse_overrides(args.set)
    params = load_params(args.profile, overrides)
    t0 = time.perf_counter()
    pipeline.rejection(params)
    rl = stage_dir(params.profile, "rejection") / "rl_items.jsonl"
    n_items = sum(1 for line in rl.read_text().splitlines() if line.strip())
    t1 = time.perf_counter()
    path = pipeline.grpo(params, name=args.name)
    t2 = time.perf_counter()
    steps = [r for r in read_log(stage_dir(params.profile, args.name) / "train_log.jsonl") if "reward" in r]
    acc_key = next((k for k in steps[0] if k.startswith("rewards/") and "accuracy" in k and k.endswith("/mean")), None) if steps else None
    out = {
        "name": args.name, "overrides": overrides, "rl_items": n_items,
        "rejection_s": round(t1 - t0), "grpo_s": round(t2 - t1),
        "accuracy_reward_thirds": thirds([r[acc_key] for r in steps]) if acc_key else None,
        "frac_reward_zero_std": round(sum(r.get("frac_reward_zero_std", 0.0) for r in steps) / max(len(steps), 1), 3),
        "last_kl": round(steps[-1].get("kl", float("nan")), 4) if steps else None,
    }
    for single in (False, True):
        s = pipeline.evaluate(params, path, f"probe_{args.name}", single=single, prompt="zhang")
        key = "single" if single else "mig"
        out[key] = s["avg"]
        out[key + "_unparseable"] = s["unparseable"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
