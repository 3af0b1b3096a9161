"""What the stages' trainers share: the common trainer arguments and a JSON-lines log of every log line."""

from __future__ import annotations

import json
import math
import re
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


def model_identity(path: str | Path) -> str:
    """What a later stage's digest records of the model it starts from, so that a new model at the same path
    reruns it: the checksum of one of this project's checkpoints (``mirg.json``: a base's ``sha256``, or a
    merged stage's ``config_hash``, which holds its own start's identity in turn); for a real checkpoint
    (no ``mirg.json``; hashing 15 GB of weights is not worth it) its path with its weight files' sizes and
    modification times."""
    from .config import digest

    path = Path(path)
    meta = path / "mirg.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("sha256"):
            return str(m["sha256"])[:16]
        if m.get("config_hash"):
            return digest({"config_hash": m["config_hash"]})
    files = sorted(p for p in path.glob("*") if p.suffix in (".safetensors", ".json") and p.is_file())
    return digest({"path": str(path.resolve()), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]})


CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def last_checkpoint(work: Path, digest: str) -> str | None:
    """The checkpoint :func:`train_resuming` resumes from: the last complete one in ``work`` if ``work`` was
    stamped with this config digest, else None.

    Complete: its ``trainer_state.json`` is there, which the Trainer writes after the weights, optimizer and
    RNG states; a checkpoint a kill cut short is passed over (the resumed run saves that step again)."""
    work = Path(work)
    if not (work.is_dir() and stamp_matches(work, digest)):
        return None
    done = [p for p in work.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name).group(1)))) if done else None


def train_resuming(trainer: Any, work: Path, digest: str) -> None:
    """Train, resuming from the last checkpoint an interrupted run *of the same config* left in ``work``.

    ``work`` is stamped with the config digest like a finished checkpoint (:func:`stamp_matches`);
    checkpoints of another config (a changed schedule, other data) are removed, and training starts over;
    a run that starts over also starts its :class:`JsonlLogCallback` logs over, and a resumed one cuts them
    back to its checkpoint's step (:func:`cut_log`), so that every step is logged once."""
    import shutil

    from .dist import barrier, is_main_process
    from .io import write_json

    work = Path(work)
    last = last_checkpoint(work, digest)
    barrier()  # every process has read the folder before the main one changes it
    if is_main_process():
        if work.is_dir() and not stamp_matches(work, digest):
            shutil.rmtree(work)
        if last is None:  # training starts over: so does its log (a finished run's work folder may be gone, its log not)
            for cb in trainer.callback_handler.callbacks:
                if getattr(cb, "log_path", None) is not None:
                    cb.log_path.unlink(missing_ok=True)
        write_json(work / "mirg.json", {"config_hash": digest})
    barrier()
    if last is None:
        trainer.train()
        return
    load_full_checkpoint(trainer.model, last)
    # Resumed from the last step (killed while saving the result), the Trainer would train one step past
    # max_steps whenever the steps do not end an epoch; the guard stops it before that step.
    guard = _stop_past_end()
    trainer.add_callback(guard)
    try:
        trainer.train(resume_from_checkpoint=last)
    except _TrainingComplete:
        trainer.is_in_train = False
    finally:
        trainer.remove_callback(guard)


class _TrainingComplete(Exception):
    """Raised before a step past ``max_steps`` (:func:`_stop_past_end`): nothing is left to train."""


def _stop_past_end() -> Any:
    """A callback that raises :class:`_TrainingComplete` when a step past ``max_steps`` is about to begin."""
    from transformers import TrainerCallback

    class StopPastEnd(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if 0 < state.max_steps <= state.global_step:
                raise _TrainingComplete

    return StopPastEnd()


def save_merged(trainer: Any, path: Path, extra: dict[str, Any]) -> Path:
    """The stage's result: in one process, the LoRA weights merged into the model and saved as a full
    checkpoint at ``path`` (written whole or not at all), ``extra`` its ``mirg.json``; returns ``path``.

    Under ``accelerate launch`` every process saves the adapter through the trainer instead (which gathers
    ZeRO-3's shards) to ``path``'s sibling ``adapter/`` and returns that: the process that started the launch
    merges it (:func:`merge_adapter`), outside the distributed run, once every process has finished."""
    from .dist import barrier, world_size
    from .io import atomic_dir
    from .models import save_checkpoint

    path = Path(path)
    if world_size() == 1:
        with atomic_dir(path) as tmp:
            save_checkpoint(trainer.model.merge_and_unload(), trainer.processing_class, tmp, extra)
        return path
    adapter = path.parent / "adapter"
    trainer.save_model(str(adapter))
    barrier()
    return adapter


def merge_adapter(start: str | Path, adapter: Path, path: Path, extra: dict[str, Any], bf16: bool) -> Path:
    """Merge the LoRA adapter a launched stage saved into ``start`` and save the full checkpoint at ``path``
    (whole or not at all) with ``extra`` as its ``mirg.json``."""
    import torch
    from peft import PeftModel

    from .io import atomic_dir
    from .models import load_model, load_processor, save_checkpoint

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise RuntimeError(f"the launched stage left no adapter at {adapter}")
    model = load_model(start, dtype=torch.bfloat16 if bf16 else torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with atomic_dir(path) as tmp:
        save_checkpoint(merged, load_processor(start), tmp, extra)
    return path


def load_full_checkpoint(model: Any, checkpoint: str | Path) -> None:
    """Put a Trainer checkpoint's weights into ``model``, every tensor or an error.

    The Trainer's own resume reads ``model.safetensors`` straight into ``load_state_dict(strict=False)``.
    ``save_pretrained`` writes Qwen2-VL under its original key names (``model.layers.*``) while the
    live model's are ``model.language_model.layers.*``, so that load restores the vision tower and
    silently leaves the language model at its initialisation (measured: loss 3.9 instead of 0.7 after
    resuming the embedded base; docs/log.md). ``from_pretrained`` maps the names; its weights are copied in
    strictly here, and the Trainer's own load that follows finds nothing new. Adapter checkpoints
    (LoRA: SFT, GRPO) are stored under the live names and are left to the Trainer."""
    from transformers import PreTrainedModel

    checkpoint = Path(checkpoint)
    if not isinstance(model, PreTrainedModel) or not (checkpoint / "config.json").is_file():
        return
    loaded, info = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise ValueError(f"{checkpoint}: does not match the model being resumed: {bad}")
    try:
        model.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as e:  # another architecture or size under the same class
        raise ValueError(f"{checkpoint}: does not match the model being resumed: {e}") from None


def cut_log(path: str | Path, step: int, finished: bool = False) -> bool:
    """Cut a :class:`JsonlLogCallback` log back to what a run resumed at ``step`` has already logged: the
    rows of steps after ``step`` go (the resumed run logs them again), and so does the end-of-training
    summary (``train_runtime``; the resumed run writes its own) unless the run was ``finished`` at ``step``
    (it trains no more, :func:`train_resuming`); at step 0 (training starts over) the whole log goes. Rows
    without a step stay; a last line a kill cut short goes. Rewritten whole or not at all. A line before
    the last that is not JSON raises ValueError naming it, and the log is left as it is. Returns whether an
    end-of-training summary was kept."""
    from .io import atomic_path

    path = Path(path)
    if not path.is_file():
        return False
    if step <= 0:
        path.unlink()
        return False
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with its newline; else what a kill left of the last line
    keep, changed, summary = [], False, False
    if torn:
        try:
            json.loads(torn)
            lines.append(torn)  # whole, only its newline missing
        except json.JSONDecodeError:
            pass
        changed = True
    for n, line in enumerate(lines, 1):
        if not line.strip():
            changed = True
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not JSON ({e}); the log was left as it is (fix or remove that line, then resume)") from e
        s = row.get("step") if isinstance(row, dict) else None
        if isinstance(s, int) and not isinstance(s, bool) and (s > step or ("train_runtime" in row and not finished)):
            changed = True
            continue
        keep.append(line)
        summary = summary or (isinstance(row, dict) and "train_runtime" in row)
    if changed:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    return summary


class JsonlLogCallback:
    """Appends every trainer log dict to a JSON-lines file, one row per log with its ``step``.

    When training begins the log is cut back to the step it begins at (:func:`cut_log`): a run resumed
    from checkpoint-N keeps the rows of steps up to N and logs the later ones again, once; a run that
    starts at step 0 starts its log over."""

    def __init__(self, path: Path):
        from transformers import TrainerCallback

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.summary_kept = False
        outer = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero:  # the one process that writes the log
                    outer.summary_kept = cut_log(outer.path, state.global_step, finished=0 < state.max_steps <= state.global_step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "train_runtime" in logs and outer.summary_kept:  # a finished run resumed: its summary is logged
                    return
                if logs and state.is_world_process_zero:  # one log line per step, not one per process
                    row = {"step": state.global_step, **{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in logs.items()}}
                    with open(outer.path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")

        self.callback = _CB()
        self.callback.log_path = self.path  # train_resuming removes it when the config changed; cut_log when resumed
