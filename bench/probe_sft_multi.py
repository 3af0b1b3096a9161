"""Probe: what LoRA SFT on the in-domain tasks does to a base that has the multi-image curriculum (docs/log.md).

    .venv/bin/python bench/probe_sft_multi.py --base runs/probe/mi1/trainer/checkpoint-1000 --out runs/probe/sft_a \
        --style answer --per-task 300 --epochs 3

Trains notebook 03's stage (``sft.run_sft``: trl SFTTrainer, peft LoRA, merged) on the first ``--per-task`` pool
items of each of diff, common_object, region, refer_grounding and single_refer of the probe world
(``runs/probe/data``, drawn by ``bench/probe_multi_image.py``), answered by the error-free scripted teacher in
``--style``, then scores the base and the SFT model greedily on every MIG-Bench item (the base with the plain
prompt, the SFT model with the style's) and the single-image test. One JSON line per model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint  # noqa: E402
from mirg_lib.formats import IN_DOMAIN  # noqa: E402
from mirg_lib.io import write_jsonl  # noqa: E402
from mirg_lib.items import first_per_task, load_pool_items  # noqa: E402
from mirg_lib.paths import ROOT  # noqa: E402
from mirg_lib.sft import SFTStageConfig, run_sft  # noqa: E402
from mirg_lib.teacher import ScriptedTeacher, TeacherItem  # noqa: E402

PROMPTS = {"answer": "plain", "zhang": "zhang", "mirg_text": "mirg", "mirg_bbox": "mirg"}


def score(ck: Path, data: Path, prompt: str, out: Path, tokens: int) -> dict:
    cfg = EvalConfig(prompt=prompt, max_new_tokens=tokens, batch_size=64)
    t0 = time.perf_counter()
    m = evaluate_checkpoint(ck, data / "test" / "mig_bench.json", cfg, out / "mig")
    s = evaluate_checkpoint(ck, data / "test" / "single_refer.json", cfg, out / "single")
    tasks = {t: v["acc"] for t, v in m["tasks"].items()}
    return {"model": str(ck), "prompt": prompt, "avg": m["avg"], "in": round(sum(tasks[t] for t in IN_DOMAIN) / 4, 1), "single": s["avg"], "unparseable": m["unparseable"], "tasks": tasks, "eval_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--style", default="answer", choices=list(PROMPTS))
    ap.add_argument("--per-task", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tokens", type=int, default=0, help="eval tokens (0: 32 for answer, else 300)")
    ap.add_argument("--skip-base", action="store_true")
    a = ap.parse_args()
    out, data, base = Path(a.out), ROOT / "runs" / "probe" / "data", Path(a.base)
    out.mkdir(parents=True, exist_ok=True)
    tokens = a.tokens or (32 if a.style == "answer" else 300)
    pool = load_pool_items(data / "train" / "mgrounding.json")
    items = first_per_task(pool, [*IN_DOMAIN, "single_refer"], a.per_task)
    if a.style == "answer":
        completions = [it.reference for it in items]
    else:
        teacher = ScriptedTeacher(error_rate=0.0)
        completions = [r[0] for r in teacher.answer([TeacherItem(i.id, i.task, i.images, i.question, i.scene) for i in items], 1, a.style)]
    sft_file = out / "sft.jsonl"
    write_jsonl(sft_file, [{"id": it.id, "task": it.task, "completion": c} for it, c in zip(items, completions, strict=True)])
    lengths = [len(c) for c in completions]
    print(f"{len(items)} examples, completion chars mean {sum(lengths) / len(lengths):.0f} max {max(lengths)}", flush=True)
    if not a.skip_base:
        print(json.dumps(score(base, data, "plain", out / "eval_base", 32)), flush=True)
    cfg = dataclasses.replace(SFTStageConfig(), learning_rate=a.lr, gradient_accumulation_steps=1, num_train_epochs=a.epochs, lora_dropout=0.0, prompt_recipe=PROMPTS[a.style], save_steps=100000)
    t0 = time.perf_counter()
    ck = run_sft(cfg, base, sft_file, data, out / "sft")
    print(f"sft {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [json.loads(line) for line in (out / "sft" / "train_log.jsonl").read_text().splitlines()]
    losses = [r for r in rows if r.get("loss") is not None]
    print("loss", [round(r["loss"], 3) for r in losses[:: max(1, len(losses) // 8)]], "token acc", losses[-1].get("mean_token_accuracy"), flush=True)
    print(json.dumps(score(ck, data, PROMPTS[a.style], out / "eval_sft", tokens)), flush=True)


if __name__ == "__main__":
    main()
