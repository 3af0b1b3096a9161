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
from typing import Any, Literal

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


@dataclass
class SFTStageConfig:
    """Section ``sft`` of the params (defaults: Zhang et al.'s CoT SFT)."""

    learning_rate: float = field(default=1e-4, metadata={"help": "trl SFTConfig's learning_rate"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers' scheduler name"})
    warmup: float = field(default=0.03, metadata={"help": "a number < 1 is a fraction of the steps, else a number of steps"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "sequences per process per micro-step"})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "micro-steps per optimiser step"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs over the kept examples"})
    max_steps: int = field(default=-1, metadata={"help": "optimiser steps; -1: num_train_epochs decides"})
    max_length: int | None = field(default=None, metadata={"help": "truncation length; None: none (trl's truncation can cut image tokens)"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank (on the language model's projections)"})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    prompt_recipe: Literal["zhang", "mirg", "plain"] = field(default="zhang", metadata={"help": "the recipe's prompt the examples are asked with"})
    box_notation: Literal["json", "tokens"] = field(default="json", metadata={"help": "the boxes Zhang et al.'s prompt asks for: json (the paper's) or tokens (Qwen2-VL's); as cot.box_notation"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass"})
    logging_steps: int = field(default=5, metadata={"help": "steps between log lines"})
    save_steps: int = field(default=200, metadata={"help": "steps between trainer checkpoints (an interrupted run resumes from the last)"})
    seed: int = field(default=0, metadata={"help": "trainer seed"})
    variants: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "SFT data variant (zhang, answer, mirg_text, mirg_bbox) -> settings that differ for it"})

    def for_variant(self, variant: str) -> SFTStageConfig:
        """The settings one variant trains with: ``variants[variant]`` over this config (:func:`config.overlay`)."""
        from .config import overlay

        return overlay(self, "variants", variant, f"sft.variants.{variant}")


def sft_rows(items: list[Item], completions: list[str], recipe: str, notation: str = "json") -> list[dict[str, Any]]:
    """Conversational prompt/completion rows with the images (``notation``: the boxes Zhang et al.'s prompt asks for)."""
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    rows = []
    for it, completion in zip(items, completions, strict=True):
        rows.append(
            {
                "prompt": user_turn(len(it.images), with_suffix(it.question, recipe, notation)),
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


def sft_stamp(cfg: SFTStageConfig, base_path: str | Path, sft_file: str | Path, processes: int) -> tuple[str, dict[str, Any]]:
    """The digest an SFT checkpoint carries (config, examples, start model, and the number of processes, which
    multiplies the batch) and its ``mirg.json``; an empty ``sft_file`` is an error."""
    from .config import config_hash
    from .dist import world_tag
    from .io import sha256_file

    sft_file = Path(sft_file)
    examples = sum(1 for line in sft_file.read_text().splitlines() if line.strip())
    if not examples:
        raise ValueError(f"{sft_file}: no SFT examples (did the CoT filter keep nothing?)")
    digest = config_hash(cfg) + ":" + sha256_file(sft_file)[:16] + ":" + model_identity(base_path) + world_tag(processes)
    meta = {"stage": "sft", "config": dataclasses.asdict(cfg), "config_hash": digest, "base": str(base_path), "examples": examples, "processes": processes}
    return digest, meta


def run_sft(cfg: SFTStageConfig, base_path: str | Path, sft_file: str | Path, data_dir: str | Path, out_dir: str | Path) -> Path:
    """Train LoRA on ``sft_file`` (id, completion) over the pool's items in this process, merge, save
    ``out_dir/checkpoint``. Under ``accelerate launch`` every process runs this and the adapter is saved
    instead (:func:`mirg_lib.trainers.save_merged`); :func:`mirg_lib.pipeline.train_sft` decides where it runs.

    Skipped when the checkpoint exists for the same config and inputs; resumes from the last trainer
    checkpoint of an interrupted run."""
    import json

    from .dist import world_size
    from .items import pool_items

    out_dir, sft_file = Path(out_dir), Path(sft_file)
    digest, meta = sft_stamp(cfg, base_path, sft_file, world_size())
    final = out_dir / "checkpoint"
    if stamp_matches(final, digest):
        return final
    wanted = [json.loads(line) for line in sft_file.read_text().splitlines() if line.strip()]
    items = pool_items(data_dir, [w["id"] for w in wanted], str(sft_file))
    trainer = make_trainer(cfg, base_path, sft_rows(items, [w["completion"] for w in wanted], cfg.prompt_recipe, cfg.box_notation), out_dir / "trainer", log_path=out_dir / "train_log.jsonl")
    train_resuming(trainer, out_dir / "trainer", digest)
    save_merged(trainer, final, meta)
    return final
