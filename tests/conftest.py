"""Shared fixtures. Runs go to a temporary folder, never into the repository's runs/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirg_lib.paths import MIG_BENCH_ANNOTATIONS


@pytest.fixture(autouse=True, scope="session")
def _runs_in_tmp(tmp_path_factory):
    old = os.environ.get("MIRG_RUNS_DIR")
    os.environ["MIRG_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))
    yield
    if old is None:
        os.environ.pop("MIRG_RUNS_DIR", None)
    else:
        os.environ["MIRG_RUNS_DIR"] = old


@pytest.fixture(scope="session")
def real_mig_file() -> Path:
    """The real MIG-Bench annotations, committed under tests/data/mig-bench (MIT)."""
    assert MIG_BENCH_ANNOTATIONS.is_file(), f"real MIG-Bench annotations missing: {MIG_BENCH_ANNOTATIONS}"
    return MIG_BENCH_ANNOTATIONS


@pytest.fixture(scope="session")
def real_mig(real_mig_file):
    from mirg_lib.formats import load_mig_bench

    return load_mig_bench(real_mig_file)


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """The smoke profile's world, built once per session."""
    from mirg_lib.config import load_params, stage_config
    from mirg_lib.world import DataConfig, run_data_synthesis

    cfg = stage_config(DataConfig, load_params("smoke"), "data")
    return run_data_synthesis(cfg, tmp_path_factory.mktemp("smoke") / "data", progress=False)


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory, smoke_world):
    """A freshly initialised nano Qwen2-VL with a tokenizer trained on the smoke world's texts."""
    from mirg_lib.formats import load_mgrounding
    from mirg_lib.models import create_small_model, save_checkpoint

    pool = load_mgrounding(smoke_world.train_file)
    corpus = [t["value"] for r in pool for t in r.conversations]
    model, processor = create_small_model("nano", corpus, "qwen2_vl", seed=0)
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("nano") / "ckpt")


@pytest.fixture
def crash_before_step(monkeypatch):
    """``crash_before_step(cls, n)``: a trainer of class ``cls`` raises KeyboardInterrupt when about to train
    step ``n + 1`` (after the step-``n`` checkpoint), as a killed run would; the vision warm-up's trainer
    (a model with attribute ``heads``) is spared. ``monkeypatch.undo()`` disarms it."""

    def arm(cls, n: int) -> None:
        original = cls.training_step

        def crash(self, *a, **k):
            if self.state.global_step == n and not hasattr(self.model, "heads"):
                raise KeyboardInterrupt
            return original(self, *a, **k)

        monkeypatch.setattr(cls, "training_step", crash)

    return arm
