"""Multi-process training stages: ``accelerate launch`` as a subprocess, its log streamed, its failure loud.

Section ``launch`` of the params. With ``num_processes: 1`` (the default) every stage runs in the
notebook's own process, as always. With more, the training stages named in ``stages`` (SFT and GRPO)
start ``accelerate launch`` on ``python -m mirg_lib launched <spec>`` (:func:`mirg_lib.pipeline.train_sft`,
``train_grpo``): the stage's typed config and inputs are written to a JSON spec beside its outputs, each
process reads it back and runs the very same stage function (the CLI dispatches it), which trl's /
transformers' trainer then runs under DDP or, with a DeepSpeed
accelerate config (``configs/accelerate/zero2.yaml``, ``zero3.yaml``), under ZeRO. The notebook's process
streams the processes' output line by line (and into ``launch.log`` beside the stage's outputs), and
raises, with the exit code and the log's last lines, when the launch fails. The processes save the LoRA
adapter (gathered from ZeRO-3's shards by the trainer); the notebook's process merges it into the stage's
start model once all of them have exited cleanly, so the checkpoint appears only then.

On a machine without a GPU the processes train on the CPU over gloo (the tests run SFT and GRPO so with two
processes, plain DDP and both DeepSpeed configs); the configs are in ``configs/accelerate/``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import ROOT

LAUNCHABLE = ("sft", "grpo", "cot", "rejection", "eval")  # training stages, and the stages that generate with the hf backend
# a process's own failure: mirg_lib's "error: ..." or the last line of a Python traceback
ERROR_LINE = re.compile(r"^(?:error: |(?:[A-Za-z_][\w.]*)?(?:Error|Exception): )")


@dataclass
class LaunchConfig:
    """Section ``launch`` of the params: how many processes the training stages run on."""

    num_processes: int = field(default=1, metadata={"help": "processes per training stage; >1 runs it under `accelerate launch`"})
    config_file: str = field(default="", metadata={"help": "an accelerate config (configs/accelerate/{ddp,zero2,zero3}.yaml, repository-relative); '': plain DDP"})
    stages: list[str] = field(default_factory=lambda: list(LAUNCHABLE), metadata={"help": "which stages go multi-process: training (sft, grpo) and, with generation.backend hf, generating (cot, rejection, eval)"})
    main_process_port: int = field(default=0, metadata={"help": "0: a free port"})
    extra_args: list[str] = field(default_factory=list, metadata={"help": "more `accelerate launch` arguments, passed as they are"})

    def __post_init__(self) -> None:
        if self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        bad = [s for s in self.stages if s not in LAUNCHABLE]
        if bad:
            raise ValueError(f"stages: {bad} cannot be launched on several processes; these can: {list(LAUNCHABLE)}")
        if self.config_file and not self.config_path().is_file():
            raise ValueError(f"config_file {self.config_file!r}: no such file ({self.config_path()})")

    def config_path(self) -> Path:
        p = Path(self.config_file)
        return p if p.is_absolute() else ROOT / p

    def world_size(self, stage: str) -> int:
        """The number of processes ``stage`` trains on."""
        return self.num_processes if stage in self.stages else 1


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(launch: LaunchConfig, spec_file: Path, num_processes: int, bf16: bool = False) -> list[str]:
    """The ``accelerate launch`` command line that runs ``spec_file`` on ``num_processes`` processes. The
    mixed precision is the stage's own ``bf16`` (over the config file's: DeepSpeed refuses a mismatch)."""
    import torch

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes), "--num_machines", "1"]
    if launch.config_file:
        cmd += ["--config_file", str(launch.config_path())]
    else:
        cmd += ["--multi_gpu", "--dynamo_backend", "no"]
    cmd += ["--mixed_precision", "bf16" if bf16 else "no"]
    if not torch.cuda.is_available():
        # torchrun's processes; the trainer's use_cpu then makes them a gloo group (accelerate's own --cpu
        # flag starts one process only)
        cmd += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // num_processes))]
    cmd += ["--main_process_port", str(launch.main_process_port or free_port()), *launch.extra_args]
    return cmd + ["-m", "mirg_lib", "launched", str(spec_file)]


def run_launched(stage: str, launch: LaunchConfig, spec: dict[str, Any], out_dir: Path) -> None:
    """Run ``stage`` with ``spec`` (the arguments of its stage function, JSON) under ``accelerate launch``
    on ``launch.world_size(stage)`` processes; stream its output; raise naming the stage when it fails."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file = out_dir / "launch_spec.json"
    spec_file.write_text(json.dumps({"stage": stage, **spec}, indent=1) + "\n")
    n = launch.world_size(stage)
    cmd = launch_command(launch, spec_file, n, bf16=bool(spec.get("cfg", {}).get("bf16", False)))
    log_path = out_dir / "launch.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    tail: deque[str] = deque(maxlen=30)
    errors: list[str] = []  # the processes' own error lines: torchrun's report that follows them names no cause
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        print(f"[launch] {stage} on {n} processes: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT), bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            tail.append(line.rstrip("\n"))
            if ERROR_LINE.match(line) and "ChildFailedError" not in line and len(errors) < 5:
                errors.append(line.strip())
            print(line, end="", flush=True)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(
            f"stage {stage!r} failed under accelerate launch on {n} processes (exit code {rc})"
            + (": " + " / ".join(dict.fromkeys(errors)) if errors else "")
            + f"; whole log: {log_path}\n"
            + "\n".join(f"  | {t}" for t in tail)
        )


def train_launched(stage: str, launch: LaunchConfig, spec: dict[str, Any], out_dir: Path, start: str | Path, final: Path, meta: dict[str, Any]) -> Path:
    """A training stage under ``accelerate launch`` (:func:`run_launched`), then its adapter merged into
    ``start`` as the full checkpoint ``final`` with ``meta`` (:func:`mirg_lib.trainers.merge_adapter`)."""
    import shutil

    from .trainers import merge_adapter

    shutil.rmtree(Path(out_dir) / "adapter", ignore_errors=True)  # an earlier run's must not be merged
    run_launched(stage, launch, spec, out_dir)
    return merge_adapter(start, Path(out_dir) / "adapter", final, meta, bool(spec["cfg"].get("bf16", False)))
