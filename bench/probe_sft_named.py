"""Probe: answer-only SFT whose answers name the object before its box (docs/log.md).

    .venv/bin/python bench/probe_sft_named.py

The 4-of-4-kept answer-only items of ``runs/embedded/cot/sft_answer.jsonl``, each answer rewritten as a
grounded caption of the target (``<|object_ref_start|>the <size> <colour> <pattern> <shape><|object_ref_end|>``
before the same box), trained by notebook 03's answer-only SFT (the profile's settings) into
``runs/embedded/sft_answer_named`` and scored on all 500 MIG-Bench and 200 single-image items (plain prompt).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib import pipeline  # noqa: E402
from mirg_lib.config import load_params, stage_config  # noqa: E402
from mirg_lib.formats import IN_DOMAIN  # noqa: E402
from mirg_lib.io import write_jsonl  # noqa: E402
from mirg_lib.items import load_pool_items  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.sft import SFTStageConfig  # noqa: E402
from mirg_lib.teacher import _desc  # noqa: E402


def main() -> None:
    params = load_params("embedded")
    cot = stage_dir("embedded", "cot")
    pool = {it.id: it for it in load_pool_items(pipeline.data_dir(params) / "train" / "mgrounding.json")}
    rows = [json.loads(line) for line in (cot / "sft_answer.jsonl").read_text().splitlines()]
    named = []
    for r in rows:
        target = pool[r["id"]].scene["target"]
        named.append(dict(r, completion=f"<|object_ref_start|>the {_desc(target)}<|object_ref_end|>{r['completion']}"))
    out = stage_dir("embedded", "sft_answer_named")
    sft_file = out.parent / "sft_answer_named.jsonl"
    write_jsonl(sft_file, named)
    print(named[0]["completion"], flush=True)
    cfg = stage_config(SFTStageConfig, params, "sft").for_variant("answer")
    cfg.prompt_recipe = "plain"
    ck = pipeline.train_sft(cfg, pipeline.base_path(params), sft_file, pipeline.data_dir(params), out)
    m = pipeline.evaluate(params, ck, "sft_answer_named", prompt="plain")
    s = pipeline.evaluate(params, ck, "sft_answer_named", single=True, prompt="plain")
    tasks = {t: v["acc"] for t, v in m["tasks"].items()}
    print(json.dumps({"avg": m["avg"], "in": round(sum(tasks[t] for t in IN_DOMAIN) / 4, 2), "single": s["avg"], "unparseable": m["unparseable"], "tasks": tasks}), flush=True)


if __name__ == "__main__":
    main()
