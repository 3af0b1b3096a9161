"""Score the base model's intermediate checkpoints while ``00_base_model`` trains (README, "The base model").

    .venv/bin/python bench/score_base_checkpoints.py --profile embedded [--threads 1]

Every ``runs/<profile>/base_model/trainer/checkpoint-N`` (a complete folder: weights and processor) is
scored greedily on the profile's single-image referring test with the evaluation stage's own code; each
result is printed and appended to ``runs/<profile>/base_model/checkpoint_scores.jsonl`` (a checkpoint
already scored there is skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib.config import load_params  # noqa: E402
from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (leave the rest to the training)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.profile)
    stage = stage_dir(params.profile, "base_model")
    bench = stage_dir(params.profile, "data") / "test" / "single_refer.json"
    out = stage / "checkpoint_scores.jsonl"
    done = {json.loads(line)["checkpoint"] for line in out.read_text().splitlines()} if out.is_file() else set()
    ckpts = {int(ck.name.split("-")[1]): ck for ck in (stage / "trainer").glob("checkpoint-*")}
    for step, ck in sorted(ckpts.items()):
        if ck.name in done or not (ck / "processor_config.json").is_file():
            continue
        cfg = EvalConfig(prompt="plain", max_new_tokens=args.max_new_tokens, batch_size=50)
        s = evaluate_checkpoint(ck, bench, cfg, stage / "checkpoint_eval" / ck.name)
        row = {
            "checkpoint": ck.name,
            "step": step,
            "single_image_acc@0.5": s["avg"],
            "mean_iou": round(s["tasks"]["single_refer"]["mean_iou"], 4),
            "unparseable": s["unparseable"],
            "scored_at": time.strftime("%Y-%m-%d %H:%M"),
        }
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
