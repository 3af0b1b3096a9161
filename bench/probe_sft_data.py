"""Probe: the answer-only SFT's data on the embedded profile: how answers are written, how many (docs/log.md).

    .venv/bin/python bench/probe_sft_data.py --answers named_multi --seed 1 --items-per-task 300 --epochs 8

The CoT stage (``cot.run_cot``: the scripted teacher, 4-of-4 filtering) on the first ``--items-per-task``
pool items of each CoT task, with ``--error-rate`` for every task, into ``runs/embedded/probe_cot_<n>_<e>``;
its kept items' reasoning (``--data zhang`` or ``mirg_bbox``) or answers, bare (the pool's own: ``<|box_start|>...<|box_end|>``) or ``named`` (a grounded
caption of the target before the same box, the base's habit); notebook 03's answer-only SFT of the shipped
base on them (the profile's settings but ``--lr``, ``--seed``, ``--epochs``), scored by the evaluation stage
on all 500 MIG-Bench items and the 200 single-image items (the data's prompt: plain for answers). Prints one JSON line. Needs
``make reproduce`` to have run notebook 01.

``--pool N`` draws a larger training pool first, into ``runs/embedded/probe_pool_<N>``: the profile's world
with ``N`` items of each CoT task (its first ones are the profile's own: every item's draw depends on its own
seed alone) and no curriculum items. The shipped base, its tokenizer read from the profile's pool, trains on
it as it is; the test sets are the profile's.

``--reasoning read_out`` has the scripted teacher read every image the question needs out in words before the
comparison (the base's curriculum form) instead of the CoT stage's two hops (``mirg_lib.teacher``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib import cot, pipeline  # noqa: E402
from mirg_lib.config import load_params, stage_config  # noqa: E402
from mirg_lib.cot import CotConfig, answer_only, run_cot  # noqa: E402
from mirg_lib.io import write_jsonl  # noqa: E402
from mirg_lib.items import load_pool_items  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.teacher import REASONINGS, object_words  # noqa: E402
from mirg_lib.world import DataConfig, run_data_synthesis  # noqa: E402
from mirg_lib.world.tasks import CURRICULUM_TASKS, SINGLE_TASK, object_ref  # noqa: E402


def larger_pool(params, tasks: list[str], n: int) -> Path:
    """The profile's world with ``n`` pool items of each of ``tasks``, none of the curriculum's and one test item per task."""
    cfg = dataclasses.replace(
        stage_config(DataConfig, params, "data"), train_tasks=[t for t in tasks if t != SINGLE_TASK], n_train_per_task=n, n_single_train=n,
        n_test_per_task=1, n_single_test=1, contact_sheet=False, **dict.fromkeys(CURRICULUM_TASKS.values(), 0),
    )
    return run_data_synthesis(cfg, stage_dir("embedded", f"probe_pool_{n}")).root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=["answer", "zhang", "mirg_bbox"], default="answer",
                    help="answer-only, or a recipe's reasoning (its prompt at training and scoring); zhang: in the profile's box notation")
    ap.add_argument("--answers", choices=["bare", "named", "named_multi"], default="bare", help="answer-only: the pool's bare boxes, or the target named before its box (named_multi: on multi-image items only)")
    ap.add_argument("--lr", type=float, default=None, help="SFT learning rate (default: the profile's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=None, help="SFT epochs (default: the profile's)")
    ap.add_argument("--items-per-task", type=int, default=None, help="teacher candidates per CoT task (0: the whole pool; default: the profile's)")
    ap.add_argument("--pool", type=int, default=0, help="draw a pool of this many items per CoT task first and take the items from it (0: the profile's pool)")
    ap.add_argument("--reasoning", choices=REASONINGS, default=cot.COT_REASONING, help="the scripted teacher's reasoning (default: the CoT stage's)")
    ap.add_argument("--error-rate", type=float, default=None, help="the scripted teacher's chance a sample is wrong, every task (default: the profile's)")
    args = ap.parse_args()

    params = load_params("embedded")
    cot_cfg = stage_config(CotConfig, params, "cot")
    ddir = larger_pool(params, cot_cfg.tasks, args.pool) if args.pool else pipeline.data_dir(params)
    if args.items_per_task is not None:
        cot_cfg.max_items_per_task = args.items_per_task
    if args.error_rate is not None:
        cot_cfg.error_rate, cot_cfg.error_rates = args.error_rate, {}
    pool_tag = f"_pool{args.pool}" if args.pool else ""
    if args.reasoning != cot.COT_REASONING:
        cot.COT_REASONING = args.reasoning  # make_teacher and the CoT stage's digest read it
        pool_tag += f"_{args.reasoning}"
    cot_dir = stage_dir("embedded", f"probe_cot_{cot_cfg.max_items_per_task}_{cot_cfg.error_rate:g}{pool_tag}")
    t0 = time.perf_counter()
    run_cot(cot_cfg, ddir, cot_dir)
    rows = [json.loads(line) for line in (cot_dir / f"sft_{args.data}.jsonl").read_text().splitlines()]
    if args.data == "answer":  # the pool's own answers, or named (cot.answer_only: on multi-image items)
        pool = {it.id: it for it in load_pool_items(ddir / "train" / "mgrounding.json")}
        named = {"bare": lambda it: it.reference, "named_multi": answer_only,
                 "named": lambda it: object_ref(object_words(it.scene["target"])) + it.reference}[args.answers]
        rows = [dict(r, completion=named(pool[r["id"]])) for r in rows]
    cfg = pipeline.sft_config(params, args.data)
    prompt, lr = cfg.prompt_recipe, args.lr if args.lr is not None else cfg.learning_rate
    cfg.learning_rate, cfg.seed = lr, args.seed
    if args.epochs:
        cfg.num_train_epochs = args.epochs
    what = args.answers if args.data == "answer" else args.data
    tag = f"{what}_{cot_dir.name.removeprefix('probe_cot_')}_n{len(rows)}_lr{lr:g}_s{args.seed}_e{cfg.num_train_epochs:g}"
    out = stage_dir("embedded", f"probe_sft_{tag}")
    sft_file = out.parent / f"probe_sft_{tag}.jsonl"
    write_jsonl(sft_file, rows)
    t1 = time.perf_counter()
    ck = pipeline.train_sft(cfg, pipeline.base_path(params), sft_file, ddir, out)
    trained = time.perf_counter() - t1
    m = pipeline.evaluate(params, ck, f"probe_sft_{tag}", prompt=prompt)
    s = pipeline.evaluate(params, ck, f"probe_sft_{tag}", single=True, prompt=prompt)
    print(json.dumps({
        "tag": tag, "items": len(rows), "by_task": {t: sum(r["task"] == t for r in rows) for t in sorted({r["task"] for r in rows})},
        "avg": m["avg"], "in": m["in_domain"], "single": s["avg"], "unparseable": m["unparseable"],
        "sft_s": round(trained, 1), "wall_s": round(time.perf_counter() - t0, 1), "tasks": {t: v["acc"] for t, v in m["tasks"].items()},
    }), flush=True)


if __name__ == "__main__":
    main()
