"""Score the base model's intermediate checkpoints while ``00_base_model`` trains (docs/base_model.md).

    .venv/bin/python tools/score_base_checkpoints.py --profile embedded [--threads 1]

Every ``runs/<profile>/base_model/trainer/checkpoint-N`` (a complete folder: weights and processor) is
scored greedily on the profile's single-image referring test with the evaluation stage's own code (and how
many of its answers box *some* object of the scene, ``any_object@0.5``: boxing without choosing); each
result (and, for each curriculum task in the base's mix, Acc@0.5 on held-out items; for
``single_describe`` also the exact descriptions and each attribute named right; for ``multi_describe`` the
objects read out right, ``scoring.caption_scores``; the multi-image tasks only on the multi-image phase's
checkpoints, ``--trainer runs/<profile>/base_model/multi_trainer``, and the final one) is printed and appended
to ``runs/<profile>/base_model/checkpoint_scores.jsonl`` with the config digest the work folder is stamped with (a checkpoint already scored there *for the same config* is skipped;
rows of another config's run stay in the file, told apart by that digest).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib.config import load_params  # noqa: E402
from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402


def curriculum_bench(params, task: str, folder: Path, n: int) -> tuple[Path, list[str]]:
    """``n`` held-out items of a curriculum task (``single_describe``, ``multi_refer``, ``multi_describe``) of the
    profile's world, with their expected descriptions (:func:`mirg_lib.world.build.heldout_bench`)."""
    from mirg_lib.config import stage_config
    from mirg_lib.world import DataConfig
    from mirg_lib.world.build import heldout_bench

    return heldout_bench(stage_config(DataConfig, params, "data"), task, folder, n)


def description_scores(predictions: Path, expressions: list[str]) -> dict[str, float]:
    """Exact full descriptions, and each attribute named right (size, colour, pattern, shape: the words of
    "the <size> <colour> <pattern> <shape>"), among the answers' ``<|object_ref_start|>`` texts."""
    import re

    said = {}
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        m = re.search(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", p.get("response", ""))
        said[p["index"]] = m.group(1).split() if m else []
    want = [e.split() for e in expressions]
    n = max(1, len(want))
    out = {"describe_exact": round(100.0 * sum(said.get(i) == w for i, w in enumerate(want)) / n, 1)}
    for k, attr in enumerate(("size", "colour", "pattern", "shape"), start=1):
        right = sum(len(said.get(i, [])) == 5 and said[i][k] == w[k] for i, w in enumerate(want))
        out[f"describe_{attr}"] = round(100.0 * right / n, 1)
    return out


def boxed_object(found, item) -> dict | None:
    """The object of the item's target image (its scene entry) that a parsed answer box
    (``parse_response(...).box``, 0-1000 as the small models write it; None: none) lands on: the one it
    overlaps most, if that IoU is >= 0.5; else None."""
    from mirg_lib.boxes import Box, Frame, iou

    if found is None:
        return None
    image = item.scene["images"][item.target_image - 1]
    box, size = Box(*found.values, frame=Frame.REL1000), tuple(image["size"])
    overlap, obj = max(((iou(box, Box(*o["box"], frame=Frame.ABS, size=size)), o) for o in image["objects"]), key=lambda t: t[0], default=(0.0, None))
    return obj if overlap >= 0.5 else None


def on_some_object(found, item) -> bool:
    """Whether a parsed answer box lands on *some* object of the item's target image (:func:`boxed_object`)."""
    return boxed_object(found, item) is not None


def object_hits(predictions: Path, bench: Path) -> float:
    """% of the answers to ``bench`` whose box lands on *some* object of the item's scene: far above Acc@0.5,
    the base boxes objects but does not choose the described one."""
    from mirg_lib.items import load_bench_items
    from mirg_lib.parsing import parse_response

    items = {it.scene["record_index"]: it for it in load_bench_items(bench) if it.scene is not None}
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    hits = sum(p["index"] in items and on_some_object(parse_response(p.get("response", "")).box, items[p["index"]]) for p in rows)
    return round(100.0 * hits / max(1, len(rows)), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (leave the rest to the training)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--curriculum", type=int, default=100, help="also score N held-out items of each curriculum task the base trains on; 0: off")
    ap.add_argument("--trainer", default="", help="a kept run's trainer folder (its checkpoints and stamp) instead of the stage's; its predictions go beside it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.profile)
    stage = stage_dir(params.profile, "base_model")
    bench = stage_dir(params.profile, "data") / "test" / "single_refer.json"
    out = stage / "checkpoint_scores.jsonl"
    trainer = Path(args.trainer) if args.trainer else stage / "trainer"
    evals = trainer.with_name(trainer.name + "_checkpoint_eval") if args.trainer else stage / "checkpoint_eval"
    final = stage / "checkpoint"  # a kept run (--trainer) has none
    final_meta = json.loads((final / "mirg.json").read_text()) if not args.trainer and (final / "mirg.json").is_file() else {}
    stamp = trainer / "mirg.json"
    # the run being trained, else (its work folder gone when it finished) the final checkpoint's
    digest = json.loads(stamp.read_text()).get("config_hash") if stamp.is_file() else final_meta.get("config_hash")
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    done = {r["checkpoint"] for r in rows if r.get("config_hash") == digest}
    from mirg_lib.base_model import BaseModelConfig
    from mirg_lib.config import stage_config
    from mirg_lib.items import load_bench_items
    from mirg_lib.scoring import caption_scores
    from mirg_lib.world.tasks import CURRICULUM_TASKS, DESCRIBE_TASK, MULTI_DESCRIBE_TASK

    bcfg = stage_config(BaseModelConfig, params, "base_model")
    tasks = [t for t in CURRICULUM_TASKS if t in bcfg.train_tasks or (bcfg.multi_phase_steps and t in bcfg.multi_phase_tasks)]
    curricula = {t: curriculum_bench(params, t, stage / f"{t}_test", args.curriculum) for t in tasks} if args.curriculum else {}
    ckpts = sorted((int(ck.name.split("-")[1]), ck) for ck in trainer.glob("checkpoint-*"))
    if final_meta and final_meta.get("config_hash") == digest:  # scored last, under the name "checkpoint" (not another config's final model)
        ckpts.append((final_meta.get("config", {}).get("max_steps"), final))
    cfg = EvalConfig(prompt="plain", max_new_tokens=args.max_new_tokens, batch_size=50)
    ccfg = dataclasses.replace(cfg, max_new_tokens=max(cfg.max_new_tokens, 56))  # a description, then the box
    dcfg = dataclasses.replace(cfg, max_new_tokens=max(cfg.max_new_tokens, 300))  # every object of an image read out (~33 tokens a boxed caption)
    multi_phase = trainer.name == "multi_trainer"
    for step, ck in ckpts:
        if ck.name in done or not (ck / "processor_config.json").is_file():
            continue
        s = evaluate_checkpoint(ck, bench, cfg, evals / ck.name)
        row = {
            "checkpoint": ck.name,
            "step": step,
            "config_hash": digest,
            "single_image_acc@0.5": s["avg"],
            "mean_iou": round(s["tasks"]["single_refer"]["mean_iou"], 4),
            "any_object@0.5": object_hits(evals / ck.name / "predictions.jsonl", bench),
            "unparseable": s["unparseable"],
            "scored_at": time.strftime("%Y-%m-%d %H:%M"),
        }
        for task, (cbench, expressions) in curricula.items():
            if task not in bcfg.train_tasks and not (multi_phase or ck == final):
                continue  # a multi-image task, on a checkpoint of a phase before the one that trains it
            sc = evaluate_checkpoint(ck, cbench, dcfg if task == MULTI_DESCRIBE_TASK else ccfg, evals / ck.name / task)
            if task == MULTI_DESCRIBE_TASK:  # objects read out right, not a box
                replies = [json.loads(line)["response"] for line in (evals / ck.name / task / "predictions.jsonl").read_text().splitlines()]
                row.update({f"multi_describe_{k}": v for k, v in caption_scores(load_bench_items(cbench), replies).items()})
                continue
            row[f"{task.removeprefix('single_')}_acc@0.5"] = sc["avg"]
            if task == DESCRIBE_TASK:
                row.update(description_scores(evals / ck.name / task / "predictions.jsonl", expressions))
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
