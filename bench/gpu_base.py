"""Train a profile's base model from its params on one GPU, score it, and write the checkpoint and its scores.

    bash bench/gpu_base.sh OUTDIR                       # the gpu profile's `small` base (params/gpu.yaml)
    .venv/bin/python bench/gpu_base.py OUTDIR --profile embedded --set base_model.max_steps=20000

What notebook 00 does with ``base_model.shipped: ''`` (the profile's world drawn, the base trained by the
project's curriculum, then scored greedily with the plain prompt on the whole single-image test and every
MIG-Bench item of the profile), then ``ship-base`` into ``OUTDIR/checkpoint``. ``OUTDIR/gpu_base.json``
holds the device, versions, date, commit, each phase's wall time, the scores beside the issue's capability
targets for a base (single-image >= 70 %, MIG-Bench AVG >= 10 %) and the shipped embedded base's scores: a
base is shipped only when it beats that one. Runs on the CPU too (the tests run it on the smoke profile);
it installs nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib import pipeline  # noqa: E402
from mirg_lib.config import load_params, parse_overrides  # noqa: E402
from mirg_lib.paths import ROOT  # noqa: E402
from mirg_lib.results import model_row  # noqa: E402

TARGETS = {"single": 70.0, "avg": 10.0}  # the capability targets for a base (docs/log.md)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None  # a copy without git history


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"


def _shipped_scores() -> dict[str, float] | None:
    """The committed embedded base's scores, as its ``mirg.json`` records them."""
    meta = ROOT / "checkpoints" / "embedded-base" / "mirg.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text()).get("metrics", {})
    return {"single": m.get("single_image_acc@0.5"), "avg": m.get("mig_bench_avg_acc@0.5")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="where the checkpoint and gpu_base.json go")
    ap.add_argument("--profile", default="gpu", help="params/<profile>.yaml (default: gpu)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a params override (YAML value); repeatable")
    args = ap.parse_args()

    import torch
    import transformers

    overrides = {**parse_overrides(args.sets), "base_model.shipped": ""}  # trained here, from the profile's params
    params = load_params(args.profile, overrides)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    pipeline.data(params)
    seconds["data"] = time.perf_counter() - t
    t = time.perf_counter()
    base = pipeline.base_model(params)
    seconds["base_model"] = time.perf_counter() - t
    t = time.perf_counter()
    single = pipeline.evaluate(params, base.path, "base", single=True, prompt="plain")
    multi = pipeline.evaluate(params, base.path, "base", prompt="plain")
    seconds["evaluation"] = time.perf_counter() - t
    meta = pipeline.ship_base(params, args.out / "checkpoint")
    row = model_row("base", "base_model", multi, single)
    scores = {k: row[k] for k in ("avg", "in_domain", "out_of_domain", "single", "unparseable", "n_records", "tasks")}
    report = {
        "profile": args.profile,
        "overrides": overrides,
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "device": _device(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "base": {"reused": base.skipped, "preset": params.section("base_model").get("preset"), "sha256": meta["sha256"]},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "scores": scores,
        "targets": {k: {"target": v, "met": scores[k] >= v} for k, v in TARGETS.items()},
        "shipped_embedded_base": _shipped_scores(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_base.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
