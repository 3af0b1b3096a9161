"""Every path the project uses, rooted at the repository (never at the working directory)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = ROOT / "params"
NOTEBOOKS_DIR = ROOT / "notebooks"
# the real MIG-Bench annotations (MIT, licence beside them), committed so that a fresh clone tests against them
MIG_BENCH_ANNOTATIONS = ROOT / "tests" / "data" / "mig-bench" / "MIG_data.json"


def runs_dir() -> Path:
    """``runs/`` under the repository; ``MIRG_RUNS_DIR`` moves it (the tests use a temporary folder)."""
    return Path(os.environ.get("MIRG_RUNS_DIR", ROOT / "runs"))


def stage_dir(profile: str, stage: str) -> Path:
    return runs_dir() / profile / stage
