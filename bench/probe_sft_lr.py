"""Probe: the answer-only SFT's learning rate on the embedded profile (docs/log.md).

    .venv/bin/python bench/probe_sft_lr.py 2e-3 5e-4 2e-4

For each learning rate, notebook 03's answer-only SFT (``pipeline.sft``: the 4-of-4-kept items with the
data's own answers, the profile's other SFT settings) into ``runs/embedded/sft_answer_lr<lr>``, scored
by the evaluation stage on all 500 MIG-Bench items and the 200 single-image items (plain prompt). One JSON
line per learning rate. Needs ``make reproduce`` to have run to notebook 02.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib import pipeline  # noqa: E402
from mirg_lib.config import load_params  # noqa: E402
from mirg_lib.formats import IN_DOMAIN  # noqa: E402


def main() -> None:
    for lr in sys.argv[1:] or ["2e-3", "5e-4", "2e-4"]:
        params = load_params("embedded", {"sft.learning_rate": float(lr)})
        name = f"answer_lr{lr}"
        t0 = time.perf_counter()
        ck = pipeline.sft(params, "answer", name=name)
        trained = time.perf_counter() - t0
        m = pipeline.evaluate(params, ck, f"sft_{name}", prompt="plain")
        s = pipeline.evaluate(params, ck, f"sft_{name}", single=True, prompt="plain")
        tasks = {t: v["acc"] for t, v in m["tasks"].items()}
        print(json.dumps({"lr": float(lr), "avg": m["avg"], "in": round(sum(tasks[t] for t in IN_DOMAIN) / 4, 2), "single": s["avg"], "unparseable": m["unparseable"], "sft_s": round(trained, 1), "tasks": tasks}), flush=True)


if __name__ == "__main__":
    main()
