"""Probe: can the small base learn generic multi-image skills? (docs/log.md)

    .venv/bin/python bench/probe_multi_image.py --out runs/probe/mi1 --steps 1000 \
        --mix multi_refer=3000,multi_describe=3000,single_refer=3000,single_describe=1500

Draws the embedded profile's world with the multi-image curriculum tasks added (``runs/probe/data``), then
trains a start checkpoint (default: the shipped base) for ``--steps`` on the mix with the grounding-attention
loss, saving every ``--save`` steps, and scores each checkpoint greedily on held-out items: multi_refer
(Acc@0.5), multi_describe (objects named and boxed), the single-image test and the first ``--mig`` items per
task of the embedded MIG-Bench (plain prompt). One JSON line per checkpoint on stdout and in
``<out>/scores.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib import base_model as bm  # noqa: E402
from mirg_lib.config import load_params, stage_config  # noqa: E402
from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint  # noqa: E402
from mirg_lib.grounding import PrecomputedVL  # noqa: E402
from mirg_lib.items import load_bench_items, load_pool_items  # noqa: E402
from mirg_lib.models import load_model, load_processor  # noqa: E402
from mirg_lib.paths import ROOT  # noqa: E402
from mirg_lib.scoring import caption_scores  # noqa: E402
from mirg_lib.world import DataConfig  # noqa: E402
from mirg_lib.world.build import heldout_bench, run_data_synthesis  # noqa: E402


def score(ck: Path, data: Path, held: dict[str, Path], out: Path, n_mig: int) -> dict:
    cfg = EvalConfig(prompt="plain", max_new_tokens=48, batch_size=50)
    row: dict = {"checkpoint": ck.name}
    model, proc = load_model(ck, dtype=torch.float32), load_processor(ck)
    s = evaluate_checkpoint(ck, data / "test" / "single_refer.json", cfg, out / "single", model=model, processor=proc)
    row["single"] = s["avg"]
    s = evaluate_checkpoint(ck, held["multi_refer"], cfg, out / "multi_refer", model=model, processor=proc)
    row["multi_refer"] = s["avg"]
    dcfg = dataclasses.replace(cfg, max_new_tokens=150)
    evaluate_checkpoint(ck, held["multi_describe"], dcfg, out / "multi_describe", model=model, processor=proc)
    items = load_bench_items(held["multi_describe"])
    preds = [json.loads(line) for line in (out / "multi_describe" / "predictions.jsonl").read_text().splitlines()]
    row.update({f"describe_{k}": v for k, v in caption_scores(items, [p["response"] for p in preds]).items()})
    mcfg = dataclasses.replace(cfg, max_new_tokens=40, max_items_per_task=n_mig)
    s = evaluate_checkpoint(ck, data / "test" / "mig_bench.json", mcfg, out / "mig", model=model, processor=proc)
    row["mig_avg"] = s["avg"]
    row["mig_tasks"] = {t: v["acc"] for t, v in s["tasks"].items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--start", default="checkpoints/embedded-base")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--save", type=int, default=250)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--mix", default="multi_refer=3000,multi_describe=3000,single_refer=3000,single_describe=1500")
    ap.add_argument("--span", type=int, default=3)
    ap.add_argument("--expression-layers", default="1")
    ap.add_argument("--mig", type=int, default=20)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--language", action="store_true", help="train by the base stage's own language phase (base_model._language_phase, the embedded profile's settings) from --start, with --mix's multi-image tasks added")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a base_model override for --language")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    mix = {k: int(v) for k, v in (p.split("=") for p in a.mix.split(","))}
    params = load_params("embedded")
    dcfg = dataclasses.replace(stage_config(DataConfig, params, "data"), n_multi_refer_train=6000, n_multi_describe_train=6000, contact_sheet=False)
    data = ROOT / "runs" / "probe" / "data"
    t0 = time.perf_counter()
    run_data_synthesis(dcfg, data, progress=False)
    print(f"world {time.perf_counter() - t0:.1f} s", flush=True)
    held = {t: heldout_bench(dcfg, t, ROOT / "runs" / "probe" / f"heldout_{t}", a.heldout)[0] for t in ("multi_refer", "multi_describe")}
    start = ROOT / a.start
    scores = out / "scores.jsonl"
    if a.language and not a.score_only:
        from mirg_lib.config import parse_overrides

        over = {k.removeprefix("base_model."): v for k, v in parse_overrides(a.set).items()}
        cfg = dataclasses.replace(
            stage_config(bm.BaseModelConfig, params, "base_model"), shipped="", language_phase_steps=a.steps, language_phase_lr=a.lr, save_steps=a.save,
            language_phase_tasks=[t for t in mix if t.startswith("multi")], keep_checkpoints=20, **over,
        )
        import types

        bm.shutil = types.SimpleNamespace(rmtree=lambda *_a, **_k: None, copy2=bm.shutil.copy2)  # keep the intermediate checkpoints to score
        t1 = time.perf_counter()
        bm._language_phase(cfg, data, out, start, out / "checkpoint", True)
        print(f"language phase {a.steps} steps in {time.perf_counter() - t1:.1f} s", flush=True)
    elif not a.score_only:
        pool = load_pool_items(data / "train" / "mgrounding.json")
        rng = random.Random(0)
        train = []
        for task, n in mix.items():
            items = [it for it in pool if it.task == task]
            train += rng.sample(items, min(n, len(items)))
        processor, model = load_processor(start), load_model(start, dtype=torch.float32)
        cfg = bm.BaseModelConfig(
            preset="tiny", train_tasks=list(mix), batch_size=32, grounding_attention_weight=1.0, grounding_attention_span=a.span,
            expression_attention_layers=[int(x) for x in a.expression_layers.split(",") if x], save_steps=a.save, keep_checkpoints=20, logging_steps=25,
        )
        t1 = time.perf_counter()
        dataset = PrecomputedVL(train, processor, [it.reference or "" for it in train], grounding=True)
        print(f"dataset {len(dataset)} examples, {time.perf_counter() - t1:.1f} s", flush=True)
        args = bm._training_args(cfg, out / "trainer", True, max_steps=a.steps, learning_rate=a.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=50)
        t1 = time.perf_counter()
        bm._train(cfg, model, processor, dataset, args, out / "train_log.jsonl", "probe", grouped=False)
        print(f"trained {a.steps} steps in {time.perf_counter() - t1:.1f} s", flush=True)
    work = out / ("language_trainer" if a.language else "trainer")
    ckpts = [start] + sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) + ([out / "checkpoint"] if (out / "checkpoint").is_dir() else [])
    done = {json.loads(line)["checkpoint"] for line in scores.read_text().splitlines()} if scores.is_file() else set()
    torch.set_num_threads(2)
    for ck in ckpts:
        name = "start" if ck == start else ck.name
        if name in done:
            continue
        t1 = time.perf_counter()
        row = {**score(ck, data, held, out / "eval" / name, a.mig), "checkpoint": name, "score_s": round(time.perf_counter() - t1, 1)}
        print(json.dumps(row), flush=True)
        with open(scores, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
