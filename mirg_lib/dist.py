"""Where this process stands in a distributed run: ``accelerate launch`` / torchrun set ``WORLD_SIZE`` and
``RANK``; outside one, a run of one process. Imports nothing of the project."""

from __future__ import annotations

import os


def world_size() -> int:
    """Processes of the run this process belongs to (1 outside ``accelerate launch`` / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's place in its run (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_tag(processes: int) -> str:
    """What the number of processes adds to a training stage's digest (it changes the batch): nothing for one."""
    return f":world{processes}" if processes > 1 else ""


def barrier() -> None:
    """Wait for every process of a launched run (nothing outside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
