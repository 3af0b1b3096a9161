"""GRPO stage: trl's GRPOTrainer with multi-image conversational prompts and the recipes' rewards.

Zhang et al.: IoU 1.0 + format 0.5, beta (KL) 0.001, 8 rollouts, temperature 0.7, lr 5e-5.
MIRG-RL: format + image + object, 1.0 each. LoRA on the language model only (see
:data:`mirg_lib.models.LANGUAGE_LORA_TARGETS`); the result is merged into a full checkpoint so the next
stage loads it like any other.

The rewards read each rollout as the evaluation reads a reply (:func:`as_written`): its token ids decoded
with the special tokens kept, where trl hands them a decoding that drops Qwen2-VL's box and object tokens.

Every log line of the trainer (reward components, KL, completion length, ...) goes to
``train_log.jsonl`` beside the checkpoint, which the plots read later.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .items import Item
from .prompts import user_turn, with_suffix
from .rewards import RECIPE_REWARDS, RewardFunc, get_rewards
from .trainers import (
    JsonlLogCallback,
    common_args,
    model_identity,
    save_merged,
    stamp_matches,
    train_resuming,
)


@dataclass
class GRPOStageConfig:
    """Section ``grpo`` of the params (defaults: Zhang et al.'s RL settings)."""

    recipe: Literal["zhang", "mirg"] = field(default="zhang", metadata={"help": "the recipe's prompt, reply form and rewards"})
    rewards: dict[str, float] = field(default_factory=dict, metadata={"help": "reward name -> weight; empty: the recipe's"})
    learning_rate: float = field(default=5e-5, metadata={"help": "trl GRPOConfig's learning_rate"})
    num_generations: int = field(default=8, metadata={"help": "rollouts per prompt"})
    prompts_per_step: int = field(default=2, metadata={"help": "prompts per micro-step over all processes"})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "micro-steps per optimiser step"})
    beta: float = field(default=0.001, metadata={"help": "KL coefficient"})
    temperature: float = field(default=0.7, metadata={"help": "rollout sampling temperature"})
    max_completion_length: int = field(default=1024, metadata={"help": "tokens per rollout"})
    max_steps: int = field(default=100, metadata={"help": "optimiser steps"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank (on the language model's projections)"})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    box_frame: Literal["rel1000", "abs", "rel1", "auto"] = field(default="rel1000", metadata={"help": "how rollouts' boxes are read; abs: Qwen2.5-VL's pixel boxes"})
    box_notation: Literal["json", "tokens"] = field(default="json", metadata={"help": "Zhang et al.'s boxes the prompt asks for and the format reward wants: json (the paper's) or tokens (Qwen2-VL's)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass"})
    logging_steps: int = field(default=1, metadata={"help": "steps between log lines"})
    save_steps: int = field(default=50, metadata={"help": "steps between trainer checkpoints (an interrupted run resumes from the last)"})
    seed: int = field(default=0, metadata={"help": "trainer seed"})
    use_vllm: bool = field(default=False, metadata={"help": "rollouts by vLLM through trl (pip install 'trl[vllm]'; a CUDA GPU); never run here"})
    vllm_mode: Literal["colocate", "server"] = field(default="colocate", metadata={"help": "colocate: vLLM in the training processes; server: a `trl vllm-serve` started beforehand"})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "server: its host"})
    vllm_server_port: int = field(default=8000, metadata={"help": "server: its port"})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "colocate: the share of the GPU's memory vLLM may take"})
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "recipe (zhang, mirg) -> settings that differ for it"})
    merged_rollouts: bool = field(default=True, metadata={"help": "sample rollouts from the LoRA merged into the weights, where that gives the same rollouts"})
    compiled_rollouts: bool = field(default=False, metadata={"help": "rollouts over a static KV cache, compiled decoding (CUDA graphs); same sampling; unmeasured on a GPU (bench/gpu_check.sh)"})

    def for_recipe(self) -> GRPOStageConfig:
        """The settings this config's recipe trains with: ``recipes[recipe]`` over it (:func:`config.overlay`)."""
        from .config import ConfigError, overlay

        if "recipe" in self.recipes.get(self.recipe, {}):
            raise ConfigError(f"grpo.recipes.{self.recipe}: cannot set the recipe itself")
        return overlay(self, "recipes", self.recipe, f"grpo.recipes.{self.recipe}")

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError("GRPO needs at least 2 generations per prompt")
        if not self.rewards:
            self.rewards = dict(RECIPE_REWARDS[self.recipe])
        get_rewards(self.rewards)  # validates names and weights


def grpo_rows(items: list[Item], recipe: str, box_frame: str, processor=None, notation: str = "json") -> list[dict[str, Any]]:
    """Dataset rows: a conversational prompt with one image entry per image, the images, the ground truth,
    and ``box_notation`` (the boxes the prompt asks for, which ``rewards.zhang_format`` wants).

    With ``box_frame: abs`` (Qwen2.5-VL writes boxes in pixels of the image it sees, after the
    processor's resize) each row also carries ``image_size``, the target image's size as the model sees
    it, which the rewards need to read those boxes; ``processor`` is then required.
    """
    from .generation import seen_size

    if box_frame == "abs" and processor is None:
        raise ValueError("box_frame 'abs' needs the processor, to know the size each image is seen at")
    rows = []
    for it in items:
        images = [Image.open(p).convert("RGB") for p in it.images]
        row = {
            "prompt": user_turn(len(images), with_suffix(it.question, recipe, notation)),
            "images": images,
            "answer": list(it.answer),
            "target_image": it.target_image,
            "box_frame": box_frame,
            "box_notation": notation,
            "task": it.task,
        }
        if box_frame == "abs":
            row["image_size"] = list(seen_size(processor, images[it.target_image - 1]))
        rows.append(row)
    return rows


def vllm_args(cfg: GRPOStageConfig) -> dict[str, Any]:
    """trl's vLLM arguments for ``cfg`` (none when ``use_vllm`` is off); with it on and vLLM missing, an error
    that says how to install it, before any model is loaded."""
    if not cfg.use_vllm:
        return {}
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            "grpo.use_vllm is true but vLLM is not installed in this environment. Install it with "
            "`pip install 'trl[vllm]'` (vLLM needs a CUDA GPU and pins its own torch: a separate environment is safest), "
            "or set grpo.use_vllm: false to generate with transformers."
        )
    args: dict[str, Any] = {"use_vllm": True, "vllm_mode": cfg.vllm_mode}
    if cfg.vllm_mode == "server":
        args.update(vllm_server_host=cfg.vllm_server_host, vllm_server_port=cfg.vllm_server_port)
    else:
        args["vllm_gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
    return args


COLOCATE_BATCH_TOKENS = 4096  # trl's colocated vLLM engine: max_num_batched_tokens (an image is never split over two batches)


def vllm_refusals(cfg: GRPOStageConfig, rows: list[dict[str, Any]], processor) -> list[str]:
    """What stops trl's vLLM rollouts from working on these rows, each with what to do (empty: nothing known).

    * vLLM before 0.8 (its V0 engine) takes one image per prompt unless told otherwise, and trl does not tell it.
    * trl's colocated engine batches at most :data:`COLOCATE_BATCH_TOKENS` tokens and cannot split one image's
      tokens, so a larger image fails inside vLLM."""
    if not cfg.use_vllm:
        return []
    import importlib.metadata

    why = []
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    most = max((len(r["images"]) for r in rows), default=0)
    major_minor = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    if most > 1 and major_minor and major_minor < (0, 8):
        why.append(f"vLLM {version} (its V0 engine) accepts one image per prompt and trl does not raise the limit; prompts here have up to {most}: install vLLM >= 0.8")
    if cfg.vllm_mode == "colocate" and most:
        ip = processor.image_processor
        merge = int(getattr(ip, "merge_size", 2)) ** 2
        biggest = max((im for r in rows for im in r["images"]), key=lambda im: im.size[0] * im.size[1])  # the most pixels, the most tokens
        largest = int(ip(images=[biggest], return_tensors="pt")["image_grid_thw"][0].prod()) // merge
        if largest > COLOCATE_BATCH_TOKENS:
            why.append(f"an image takes {largest} tokens, more than the {COLOCATE_BATCH_TOKENS} trl's colocated vLLM batches at once: lower the processor's "
                       "max_pixels, or use vllm_mode: server")
    return why


def as_written(func: RewardFunc, tokenizer) -> RewardFunc:
    """``func`` reading each completion as the policy wrote it: trl decodes rollouts with
    ``skip_special_tokens=True``, which turns Qwen2-VL's ``<|object_ref_start|>the x<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>``
    into ``the x(1,2),(3,4)``; this decodes trl's ``completion_ids`` with the special tokens kept and cut at
    the end marker, as :func:`generation.generate_batch` gives the evaluation and rejection sampling their
    replies. Without ``completion_ids`` the completions are passed as they are."""
    from .generation import clean_reply

    @functools.wraps(func)
    def reward(completions: Sequence, completion_ids: Sequence[Sequence[int]] | None = None, **kwargs):
        if completion_ids is not None:
            completions = [clean_reply(t) for t in tokenizer.batch_decode(completion_ids, skip_special_tokens=False)]
        return func(completions, completion_ids=completion_ids, **kwargs)

    return reward


def make_trainer(cfg: GRPOStageConfig, model_path: str | Path, items: list[Item], output_dir: Path, use_cpu: bool | None = None, log_path: Path | None = None, model=None):
    """A ready trl ``GRPOTrainer`` (LoRA on the LLM) for ``items``; ``model``: an already loaded model (the
    processor is still read from ``model_path``), e.g. bench/grpo_step.py's randomly initialised 7B."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from .dist import world_size
    from .models import load_model, load_processor, lora_config

    funcs, weights = get_rewards(cfg.rewards)
    vllm = vllm_args(cfg)
    processor = load_processor(model_path)
    funcs = [as_written(f, processor.tokenizer) for f in funcs]
    rows = grpo_rows(items, cfg.recipe, cfg.box_frame, processor, cfg.box_notation)
    refused = vllm_refusals(cfg, rows, processor)
    if refused:  # before any model is loaded
        raise ValueError("grpo.use_vllm cannot run these rollouts: " + "; ".join(refused))
    if model is None:
        model = load_model(model_path, dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    batch, world = cfg.prompts_per_step * cfg.num_generations, world_size()
    if batch % world:  # prompts_per_step counts the prompts of one micro-step over all processes, as in one process
        raise ValueError(f"grpo: prompts_per_step x num_generations = {batch} completions per step do not split over {world} processes")
    args = GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch // world,
        num_generations=cfg.num_generations,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_completion_length=cfg.max_completion_length,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        temperature=cfg.temperature,
        reward_weights=weights,
        disable_tqdm=False,
        **vllm,
        **common_args(cfg, use_cpu),
    )
    log = JsonlLogCallback(log_path or output_dir / "train_log.jsonl")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout),
        callbacks=[log.callback],
    )
    if cfg.compiled_rollouts:  # inside the merge: the compiled step runs over the merged weights
        from .speed import use_compiled_rollouts

        trainer.mirg_compiled_rollouts_off = use_compiled_rollouts(trainer)  # the reasons it is off; empty: on
    if cfg.merged_rollouts:
        from .speed import use_merged_rollouts

        # compiled: the merged weights keep their addresses from step to step, which CUDA graphs need
        trainer.mirg_merged_rollouts_off = use_merged_rollouts(trainer, fixed_addresses=cfg.compiled_rollouts)
    return trainer


def grpo_stamp(cfg: GRPOStageConfig, init_path: str | Path, items: list[Item], processes: int) -> tuple[str, dict[str, Any]]:
    """The digest a GRPO checkpoint carries (config, items, start model, and the number of processes: each
    samples its own rollouts) and its ``mirg.json``; no items is an error."""
    import dataclasses
    import hashlib

    from .config import config_hash
    from .dist import world_tag

    if not items:
        raise ValueError("GRPO has no items to train on (did rejection sampling keep nothing?)")
    ids = hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest()[:16]
    digest = config_hash(cfg) + ":" + ids + ":" + model_identity(init_path) + world_tag(processes)
    meta = {"stage": "grpo", "config": dataclasses.asdict(cfg), "config_hash": digest, "init": str(init_path), "items": len(items), "processes": processes}
    return digest, meta


def run_grpo(cfg: GRPOStageConfig, init_path: str | Path, items: list[Item], out_dir: str | Path) -> Path:
    """GRPO from ``init_path`` on ``items`` in this process; merged result in ``out_dir/checkpoint``. Under
    ``accelerate launch`` every process runs this (``prompts_per_step`` stays the prompts of one micro-step
    over all processes) and the adapter is saved instead; :func:`mirg_lib.pipeline.train_grpo` decides where
    it runs.

    Skipped when done for the same config, start and items; resumes an interrupted run."""
    from .dist import world_size

    out_dir = Path(out_dir)
    digest, meta = grpo_stamp(cfg, init_path, items, world_size())
    final = out_dir / "checkpoint"
    if stamp_matches(final, digest):
        return final
    work = out_dir / "trainer"
    trainer = make_trainer(cfg, init_path, items, work, log_path=out_dir / "train_log.jsonl")
    train_resuming(trainer, work, digest)
    save_merged(trainer, final, meta)
    return final
