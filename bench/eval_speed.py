"""Batched against one-request-at-a-time evaluation: the same model, the same items, side by side in one run.

    python bench/eval_speed.py                                    # the embedded profile's GRPO model, 10 items per task
    python bench/eval_speed.py --checkpoint /models/Qwen2.5-VL-7B-Instruct --bench /data/mig-bench/MIG_data.json --frame abs

Both passes are ``mirg_lib.evaluation.evaluate_checkpoint`` (greedy) on one loaded model, once with
``--batch-size`` requests per generation call and once with one; the answers are compared item by item.
Prints one JSON object: device, date, commit, the seconds and items per second of each pass, the speed-up
and how many predictions are identical (with the first that differ).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--checkpoint", default="", help="a model folder (default: runs/<profile>/<--stage>/checkpoint)")
    ap.add_argument("--stage", default="grpo")
    ap.add_argument("--bench", default="", help="a MIG-Bench file (default: the profile's)")
    ap.add_argument("--items-per-task", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=0, help="0: the profile's eval.max_new_tokens")
    ap.add_argument("--prompt", default="zhang", choices=["plain", "zhang", "mirg"])
    ap.add_argument("--frame", default="auto", choices=["auto", "rel1000", "abs"])
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    import torch

    from mirg_lib.config import load_params, stage_config
    from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint
    from mirg_lib.models import load_model, load_processor
    from mirg_lib.paths import stage_dir
    from mirg_lib.pipeline import bench_file
    from mirg_lib.results import provenance, report

    params = load_params(args.profile)
    ckpt = Path(args.checkpoint) if args.checkpoint else stage_dir(params.profile, args.stage) / "checkpoint"
    bench = Path(args.bench) if args.bench else bench_file(params, False)
    cfg = stage_config(EvalConfig, params, "eval")
    cfg.prompt, cfg.frame, cfg.max_items_per_task, cfg.bf16 = args.prompt, args.frame, args.items_per_task, args.bf16  # type: ignore[assignment]
    if args.max_new_tokens:
        cfg.max_new_tokens = args.max_new_tokens
    device = "cuda" if torch.cuda.is_available() else None
    model = load_model(ckpt, dtype=torch.bfloat16 if args.bf16 else torch.float32, device=device)
    processor = load_processor(ckpt)
    tmp = Path(tempfile.mkdtemp(prefix="mirg-eval-speed-"))
    warm = dataclasses.replace(cfg, max_items_per_task=1, max_new_tokens=4)
    evaluate_checkpoint(ckpt, bench, warm, None, model=model, processor=processor)
    runs, preds = {}, {}
    for name, bs in (("batched", args.batch_size), ("one_at_a_time", 1)):
        cfg.batch_size = bs
        scores = evaluate_checkpoint(ckpt, bench, cfg, tmp / name, model=model, processor=processor)
        preds[name] = [json.loads(line) for line in (tmp / name / "predictions.jsonl").read_text().splitlines()]
        runs[name] = {"batch_size": bs, "seconds": scores["seconds"], "items_per_s": scores["samples_per_second"], "avg": scores["avg"]}
    same = [a["response"] == b["response"] for a, b in zip(preds["batched"], preds["one_at_a_time"], strict=True)]
    differ = [{"index": a["index"], "batched": a["response"], "one_at_a_time": b["response"]}
              for a, b, s in zip(preds["batched"], preds["one_at_a_time"], same, strict=True) if not s]
    result = {
        **provenance(),
        "model": str(ckpt), "bench": str(bench), "items": len(same), "max_new_tokens": cfg.max_new_tokens, "dtype": "bf16" if args.bf16 else "fp32",
        **runs,
        "speedup": round(runs["one_at_a_time"]["seconds"] / runs["batched"]["seconds"], 2),
        "identical_predictions": sum(same),
        "first_differences": differ[:3],
    }
    return report(result, args.out)


if __name__ == "__main__":
    main()
