"""Score the base model's intermediate checkpoints while ``00_base_model`` trains (README, "The base model").

    .venv/bin/python bench/score_base_checkpoints.py --profile embedded [--threads 1]

Every ``runs/<profile>/base_model/trainer/checkpoint-N`` (a complete folder: weights and processor) is
scored greedily on the profile's single-image referring test with the evaluation stage's own code; each
result is printed and appended to ``runs/<profile>/base_model/checkpoint_scores.jsonl`` with the config
digest the work folder is stamped with (a checkpoint already scored there *for the same config* is skipped;
rows of another config's run stay in the file, told apart by that digest).
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


def locate_bench(params, folder: Path, n: int) -> Path:
    """``n`` one-object items of the profile's world drawn with seeds the data stage never uses (split
    ``heldout``), in MIG-Bench format: does the base localise a lone object, the curriculum task?"""
    from mirg_lib.config import stage_config
    from mirg_lib.formats import MigRecord, write_mig_bench
    from mirg_lib.world import DataConfig, generate
    from mirg_lib.world.build import sample_seed
    from mirg_lib.world.tasks import LOCATE_TASK

    data_cfg = stage_config(DataConfig, params, "data")
    bench = folder / "single_locate.json"
    if bench.is_file() and len(json.loads(bench.read_text())) == n:
        return bench
    records = []
    for i in range(n):
        s = generate(LOCATE_TASK, sample_seed(data_cfg.seed, "heldout", LOCATE_TASK, i), data_cfg.knobs())
        rel = f"images/{i:05d}.png"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        s.images[0].save(folder / rel)
        records.append(MigRecord(LOCATE_TASK, [rel], s.question, s.answer_rel(), need_format=False, index=i))
    write_mig_bench(records, bench)
    return bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (leave the rest to the training)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--locate", type=int, default=100, help="also score N held-out one-object items (single_locate, the curriculum task); 0: off")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.profile)
    stage = stage_dir(params.profile, "base_model")
    bench = stage_dir(params.profile, "data") / "test" / "single_refer.json"
    out = stage / "checkpoint_scores.jsonl"
    stamp = stage / "trainer" / "mirg.json"
    final = stage / "checkpoint"
    if not stamp.is_file() and (final / "mirg.json").is_file():
        stamp = final / "mirg.json"  # the run has finished: its work folder is gone, the final checkpoint stays
    digest = json.loads(stamp.read_text()).get("config_hash") if stamp.is_file() else None
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    done = {r["checkpoint"] for r in rows if r.get("config_hash") == digest}
    locate = locate_bench(params, stage / "locate_test", args.locate) if args.locate else None
    ckpts = {int(ck.name.split("-")[1]): ck for ck in (stage / "trainer").glob("checkpoint-*")}
    if (final / "mirg.json").is_file():
        ckpts[10**9] = final  # scored last, under the name "checkpoint"
    for step, ck in sorted(ckpts.items()):
        if ck.name in done or not (ck / "processor_config.json").is_file():
            continue
        cfg = EvalConfig(prompt="plain", max_new_tokens=args.max_new_tokens, batch_size=50)
        s = evaluate_checkpoint(ck, bench, cfg, stage / "checkpoint_eval" / ck.name)
        row = {
            "checkpoint": ck.name,
            "step": step if step < 10**9 else json.loads((final / "mirg.json").read_text()).get("config", {}).get("max_steps"),
            "config_hash": digest,
            "single_image_acc@0.5": s["avg"],
            "mean_iou": round(s["tasks"]["single_refer"]["mean_iou"], 4),
            "unparseable": s["unparseable"],
            "scored_at": time.strftime("%Y-%m-%d %H:%M"),
        }
        if locate is not None:
            loc = evaluate_checkpoint(ck, locate, cfg, stage / "checkpoint_eval" / ck.name / "locate")
            row["locate_acc@0.5"] = loc["avg"]
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
