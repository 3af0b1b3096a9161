"""Probe: GRPO from the embedded profile's CoT-SFT model at other lengths and rates (docs/log.md).

    .venv/bin/python bench/probe_grpo.py --steps 64 --lr 2e-4 --seed 0

Notebook 05's GRPO (``pipeline.grpo``: Zhang et al.'s recipe, its rewards, on the RL items rejection sampling
kept) from ``runs/embedded/sft_zhang``, with ``--steps``, ``--lr``, ``--seed``, ``--generations``,
``--prompts`` and ``--temperature`` over the profile's settings, into ``runs/embedded/probe_grpo_<tag>``; then the evaluation stage on all 500 MIG-Bench
items and the 200 single-image items. Prints one JSON line with the start's scores beside the trained
model's. Needs ``make reproduce`` to have run notebooks 01-04.

``--hits`` then samples the trained model as notebook 04 does (8 rollouts of each of the 200 items rejection
sampling looked at, the RL items among them) and prints each task's share of right rollouts beside the start's:
whether GRPO learnt the items it trained on. With ``--held-out DIR`` (a larger pool's data folder, as for
``--rl-data``) it samples both models on 40 items per task beyond the profile's pool, which neither SFT nor GRPO
saw: whether what GRPO learnt carries over. ``--tasks`` keeps the RL items of those tasks only.

``--rl-items K --rl-data DIR`` takes the RL items from a larger pool instead (a data folder of
``bench/probe_sft_data.py --pool N``, whose first items are the profile's own): notebook 04's rejection sampling
from the same CoT-SFT model over the first ``K`` items of each RL task that CoT SFT did not see, into
``runs/embedded/probe_rejection_<pool folder>_<K>``, then GRPO on the items it kept.
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
from mirg_lib.config import load_params, stage_config  # noqa: E402
from mirg_lib.grpo import GRPOStageConfig  # noqa: E402
from mirg_lib.items import load_pool_items, pool_items  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.progress import stage  # noqa: E402
from mirg_lib.rejection import RejectionConfig, run_rejection_sampling  # noqa: E402


def _summary(row: dict) -> dict:
    """The figures a probe prints of a ``pipeline.scored_row``."""
    return {k: row[k] for k in ("avg", "in_domain", "single", "unparseable")}


def _right_shares(rej, k: int) -> dict[str, float]:
    """Each task's share of right rollouts (of ``k`` per item) in a rejection-sampling run, from its table and
    the hit counts of the items it kept (an item all right counts ``k``, all wrong 0)."""
    kept = [json.loads(line) for line in (rej.root / "rl_items.jsonl").read_text().splitlines() if line.strip()]
    shares = {}
    for row in rej.table:
        right = row["all right"] * k + sum(x["hits"] for x in kept if x["task"] == row["task"])
        shares[row["task"]] = round(right / (k * row["items"]), 3)
    return shares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="GRPO optimiser steps (default: the profile's)")
    ap.add_argument("--lr", type=float, default=None, help="GRPO learning rate (default: the profile's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generations", type=int, default=None, help="rollouts per prompt (default: the profile's)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (default: the profile's)")
    ap.add_argument("--temperature", type=float, default=None, help="rollout sampling temperature (default: the profile's)")
    ap.add_argument("--rl-items", type=int, default=0, help="rejection-sample this many RL items per task of --rl-data first (0: the profile's kept items)")
    ap.add_argument("--rl-data", type=Path, default=None, help="the larger pool's data folder (runs/embedded/probe_pool_<N>)")
    ap.add_argument("--hits", action="store_true", help="sample the trained model on the RL pool as rejection sampling does and print each task's share of right rollouts")
    ap.add_argument("--held-out", type=Path, default=None, help="with --hits: a larger pool's data folder whose items beyond the profile's pool are sampled too")
    ap.add_argument("--tasks", nargs="+", default=None, help="train on the RL items of these tasks only (default: all)")
    args = ap.parse_args()
    if bool(args.rl_items) != bool(args.rl_data):
        ap.error("--rl-items and --rl-data go together")
    if args.held_out and not args.hits:
        ap.error("--held-out goes with --hits")

    over = {"grpo.seed": args.seed}
    for key, value in (("grpo.max_steps", args.steps), ("grpo.learning_rate", args.lr), ("grpo.num_generations", args.generations), ("grpo.prompts_per_step", args.prompts), ("grpo.temperature", args.temperature)):
        if value is not None:
            over[key] = value
    params = load_params("embedded", over)
    g = stage_config(GRPOStageConfig, params, "grpo").for_recipe()  # what notebook 05 trains with
    pool = f"_{args.rl_data.name}" if args.rl_data else ""
    only = "_" + "-".join(args.tasks) if args.tasks else ""
    tag = f"s{g.max_steps}_lr{g.learning_rate:g}_g{g.num_generations}_p{g.prompts_per_step}_t{g.temperature:g}_rl{args.rl_items}{pool}{only}_seed{args.seed}"
    t0 = time.perf_counter()
    start = pipeline.model_path(params, "sft_zhang")
    before = _summary(pipeline.scored_row(params, "sft_zhang", "sft_zhang", start))
    name = f"probe_grpo_{tag}"
    kept = None
    if args.rl_items:
        rcfg = dataclasses.replace(stage_config(RejectionConfig, params, "rejection"), max_items_per_task=args.rl_items)
        rej = run_rejection_sampling(rcfg, start, args.rl_data, stage_dir("embedded", f"probe_rejection_{args.rl_data.name}_{args.rl_items}"), exclude_ids=pipeline._sft_ids(params))
        kept = {"kept": len(rej.kept_ids), "rejection_s": round(rej.seconds, 1), "rows": rej.table}
        data, ids, source = args.rl_data, rej.kept_ids, "the probe's rejection sampling"
    else:
        rl = stage_dir("embedded", "rejection") / "rl_items.jsonl"
        data, ids, source = pipeline.data_dir(params), [json.loads(line)["id"] for line in rl.read_text().splitlines() if line.strip()], str(rl)
    items = [it for it in pool_items(data, ids, source) if not args.tasks or it.task in args.tasks]
    with stage(params.profile, name):
        ck = pipeline.train_grpo(g, start, items, data, stage_dir("embedded", name))
    trained = time.perf_counter() - t0
    after = _summary(pipeline.scored_row(params, name, name, ck))
    log = stage_dir("embedded", name) / "train_log.jsonl"
    rewards = [r["reward"] for r in map(json.loads, log.read_text().splitlines()) if "reward" in r] if log.is_file() else []
    hits = None
    if args.hits:
        rcfg = stage_config(RejectionConfig, params, "rejection")
        before_dir, after_dir = stage_dir("embedded", "rejection"), stage_dir("embedded", f"probe_hits_{name}")  # the start: notebook 04's own run
        hits = {
            label: _right_shares(run_rejection_sampling(rcfg, model, pipeline.data_dir(params), out, exclude_ids=pipeline._sft_ids(params)), rcfg.k)
            for label, model, out in (("start", start, before_dir), ("grpo", ck, after_dir))
        }
        if args.held_out:
            profile_pool = params.section("data")["n_train_per_task"]
            pool = load_pool_items(args.held_out / "train" / "mgrounding.json")
            seen = {it.id for it in pool if int(it.id.rsplit("-", 1)[1]) < profile_pool}  # ids end in the item's index in its task
            hits["held_out"] = {
                label: _right_shares(run_rejection_sampling(rcfg, model, args.held_out, stage_dir("embedded", f"probe_heldout_{run}"), exclude_ids=seen), rcfg.k)
                for label, model, run in (("start", start, "sft_zhang"), ("grpo", ck, name))
            }
    print(json.dumps({
        "tag": tag, "rl": kept, "rl_items": len(items), "right_rollouts": hits, "start": before, "grpo": after, "delta_avg": round(after["avg"] - before["avg"], 2),
        "reward_first_last": [rewards[0], rewards[-1]] if rewards else None, "grpo_s": round(trained, 1), "wall_s": round(time.perf_counter() - t0, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
