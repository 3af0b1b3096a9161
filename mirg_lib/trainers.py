"""What the stages' trainers share: the common trainer arguments and a JSON-lines log of every log line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def common_args(cfg: Any, use_cpu: bool | None) -> dict[str, Any]:
    """Arguments every stage passes to transformers' / trl's trainer config in the same way."""
    import torch

    return {
        "logging_steps": cfg.logging_steps,
        "save_steps": cfg.save_steps,
        "save_strategy": "steps",
        "report_to": [],
        "use_cpu": (not torch.cuda.is_available()) if use_cpu is None else use_cpu,
        "bf16": cfg.bf16,
        "gradient_checkpointing": getattr(cfg, "gradient_checkpointing", False),
        "seed": cfg.seed,
        "remove_unused_columns": False,
    }


def stamp_matches(checkpoint: Path, digest: str) -> bool:
    """Whether a finished stage's checkpoint was made with this config digest (then the stage is skipped)."""
    f = Path(checkpoint) / "mirg.json"
    return f.is_file() and json.loads(f.read_text()).get("config_hash") == digest


def train_resuming(trainer: Any, work: Path) -> None:
    """Train, resuming from the last checkpoint an interrupted run left in ``work``."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(work)) if Path(work).is_dir() else None
    trainer.train(resume_from_checkpoint=last)


class JsonlLogCallback:
    """Appends every trainer log dict to a JSON-lines file."""

    def __init__(self, path: Path):
        from transformers import TrainerCallback

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        outer = self

        class _CB(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    row = {"step": state.global_step, **{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in logs.items()}}
                    with open(outer.path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")

        self.callback = _CB()
