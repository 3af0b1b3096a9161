"""One SFT variant of the pipeline under overrides, then its MIG-Bench scores (README, "The pipeline").

    .venv/bin/python bench/probe_sft.py --profile embedded --variant zhang \
        --set sft.learning_rate=0.002 --set sft.gradient_accumulation_steps=1 --set sft.num_train_epochs=10 \
        --set eval.max_items_per_task=10

Runs ``pipeline.sft`` (notebook 03's stage: trl SFTTrainer + peft LoRA, merged) and ``pipeline.evaluate``
with the recipe's prompt into ``runs/<profile>/eval/probe_<variant>``; prints the wall times, the logged
loss and token accuracy every 50 steps, the scores and the first answers.
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


def report_sft(log_file: Path, scores: dict, predictions: Path, every: int = 50) -> None:
    """Print an SFT run's logged loss and token accuracy (the first 5 steps, every ``every`` and the last), its
    MIG-Bench scores and its first two answers."""
    rows = [r for r in map(json.loads, log_file.read_text().splitlines()) if r.get("loss") is not None]
    for r in rows:
        if r["step"] % every == 0 or r["step"] <= 5 or r is rows[-1]:
            print(f"step {r['step']}: loss {r['loss']:.3f}, token accuracy {r.get('mean_token_accuracy', float('nan')):.3f}")
    print(json.dumps({"avg": scores["avg"], "unparseable": scores["unparseable"], "tasks": {t: v["acc"] for t, v in scores["tasks"].items()}}))
    for line in predictions.read_text().splitlines()[:2]:
        print(json.loads(line)["response"][:300])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--variant", default="zhang", choices=["zhang", "answer", "mirg_text", "mirg_bbox"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override (YAML value)")
    args = ap.parse_args()
    params = load_params(args.profile, parse_overrides(args.set))
    t0 = time.perf_counter()
    path = pipeline.sft(params, args.variant)
    t1 = time.perf_counter()
    prompt = "plain" if args.variant == "answer" else ("zhang" if args.variant == "zhang" else "mirg")
    s = pipeline.evaluate(params, path, f"probe_{args.variant}", prompt=prompt)
    print(f"sft {t1 - t0:.0f} s, eval {time.perf_counter() - t1:.0f} s")
    report_sft(stage_dir(params.profile, f"sft_{args.variant}") / "train_log.jsonl", s, stage_dir(params.profile, "eval") / f"probe_{args.variant}" / "predictions.jsonl")

if __name__ == "__main__":
    main()
