"""LoRA SFT stage: trl's SFTTrainer with peft LoRA on the language model only, loss on the completion
only, merged into a stage-1 checkpoint.

The data are prompt/completion pairs with images (trl's vision collator tokenizes and processes the
images per batch; VLM SFT in trl does not support ``assistant_only_loss``, so completion-only loss
comes from the prompt/completion form). The vision tower and the merger are frozen because LoRA is
placed on the LLM's projections only (:data:`mirg_lib.models.LANGUAGE_LORA_TARGETS`), which also keeps
Qwen2.5-VL's vision MLP (same layer names) untouched. ``max_length`` is left unset by default: trl's
truncation can cut image tokens ("Image features and image tokens do not match").

Zhang et al.: lr 1e-4 cosine, batch 32, length 1024 (CoT SFT); the answer-only baseline lr 2e-6, batch 64.
MIRG-RL: lr 2e-5, global batch 128.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from .items import Item
from .prompts import user_turn, with_suffix
from .trainers import (
    JsonlLogCallback,
    common_args,
    model_identity,
    save_merged,
    stamp_matches,
    train_resuming,
)

if TYPE_CHECKING:
    from .launch import LaunchConfig


@dataclass
class SFTStageConfig:
    """Section ``sft`` of the params (defaults: Zhang et al.'s CoT SFT)."""

    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup: float = 0.03  # a float < 1 is a fraction of the steps, else a number of steps
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    max_length: int | None = None
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    prompt_recipe: Literal["zhang", "mirg", "plain"] = "zhang"
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 5
    save_steps: int = 200
    seed: int = 0
    variants: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "SFT data variant (zhang, answer, mirg_text, mirg_bbox) -> settings that differ for it (Zhang et al.'s answer-only baseline: lr 2e-6, batch 64)", "digest_when_set": True})

    def for_variant(self, variant: str) -> SFTStageConfig:
        """The settings one variant trains with: ``variants[variant]`` over this config (:func:`config.overlay`)."""
        from .config import overlay

        return overlay(self, "variants", variant, f"sft.variants.{variant}")


def sft_rows(items: list[Item], completions: list[str], recipe: str) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows with the images."""
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    rows = []
    for it, completion in zip(items, completions, strict=True):
        rows.append(
            {
                "prompt": user_turn(len(it.images), with_suffix(it.question, recipe)),
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": completion}]}],
                "images": [Image.open(p).convert("RGB") for p in it.images],
            }
        )
    return rows


def make_trainer(cfg: SFTStageConfig, model_path: str | Path, rows: list[dict[str, Any]], output_dir: Path, use_cpu: bool | None = None, log_path: Path | None = None):
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from .models import load_model, load_processor, lora_config

    processor = load_processor(model_path)
    model = load_model(model_path, dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    args = SFTConfig(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup if cfg.warmup < 1 else int(cfg.warmup),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        max_length=cfg.max_length,
        completion_only_loss=True,
        dataset_kwargs={"skip_prepare_dataset": True},
        **common_args(cfg, use_cpu),
    )
    log = JsonlLogCallback(log_path or output_dir / "train_log.jsonl")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout),
        callbacks=[log.callback],
    )


def run_sft(cfg: SFTStageConfig, base_path: str | Path, sft_file: str | Path, data_dir: str | Path, out_dir: str | Path, launch: LaunchConfig | None = None) -> Path:
    """Train LoRA on ``sft_file`` (id, completion) over the pool's items, merge, save ``out_dir/checkpoint``.

    Skipped when the checkpoint exists for the same config and inputs; resumes from the last trainer
    checkpoint of an interrupted run. With ``launch`` asking for several processes, the training runs
    under ``accelerate launch`` (:mod:`mirg_lib.launch`); the number of processes is part of the digest,
    since it multiplies the batch."""
    import json

    from .config import config_hash
    from .io import sha256_file
    from .items import pool_items
    from .launch import digest_tag, needs_launch, processes, train_launched

    out_dir, sft_file = Path(out_dir), Path(sft_file)
    world = processes(launch, "sft")
    digest = config_hash(cfg) + ":" + sha256_file(sft_file)[:16] + ":" + model_identity(base_path) + digest_tag(world)
    final = out_dir / "checkpoint"
    if stamp_matches(final, digest):
        return final
    wanted = [json.loads(line) for line in sft_file.read_text().splitlines() if line.strip()]
    if not wanted:
        raise ValueError(f"{sft_file}: no SFT examples (did the CoT filter keep nothing?)")
    items = pool_items(data_dir, [w["id"] for w in wanted], str(sft_file))
    meta = {"stage": "sft", "config": dataclasses.asdict(cfg), "config_hash": digest, "base": str(base_path), "examples": len(wanted), "processes": world}
    if needs_launch(launch, "sft"):
        assert launch is not None
        spec = {"cfg": meta["config"], "base_path": str(base_path), "sft_file": str(sft_file), "data_dir": str(data_dir), "out_dir": str(out_dir)}
        return train_launched("sft", launch, spec, out_dir, base_path, final, meta)
    trainer = make_trainer(cfg, base_path, sft_rows(items, [w["completion"] for w in wanted], cfg.prompt_recipe), out_dir / "trainer", log_path=out_dir / "train_log.jsonl")
    train_resuming(trainer, out_dir / "trainer", digest)
    save_merged(trainer, final, meta)
    return final
