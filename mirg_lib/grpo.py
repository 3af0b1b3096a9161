"""GRPO stage: trl's GRPOTrainer with multi-image conversational prompts and the recipes' rewards.

Zhang et al.: IoU 1.0 + format 0.5, beta (KL) 0.001, 8 rollouts, temperature 0.7, lr 5e-5.
MIRG-RL: format + image + object, 1.0 each. LoRA on the language model only (see
:data:`mirg_lib.models.LANGUAGE_LORA_TARGETS`); the result is merged into a full checkpoint so the next
stage loads it like any other.

Every log line of the trainer (reward components, KL, completion length, ...) goes to
``train_log.jsonl`` beside the checkpoint, which the plots read later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from .items import Item
from .prompts import user_turn, with_suffix
from .rewards import RECIPE_REWARDS, get_rewards
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
class GRPOStageConfig:
    """Section ``grpo`` of the params (defaults: Zhang et al.'s RL settings)."""

    recipe: Literal["zhang", "mirg"] = "zhang"
    rewards: dict[str, float] = field(default_factory=dict, metadata={"help": "reward name -> weight; empty: the recipe's"})
    learning_rate: float = 5e-5
    num_generations: int = 8
    prompts_per_step: int = 2
    gradient_accumulation_steps: int = 4
    beta: float = 0.001
    temperature: float = 0.7
    max_completion_length: int = 1024
    max_steps: int = 100
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    box_frame: Literal["rel1000", "abs", "rel1", "auto"] = "rel1000"
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 50
    seed: int = 0
    use_vllm: bool = field(default=False, metadata={"help": "rollouts by vLLM through trl (pip install 'trl[vllm]'; a CUDA GPU); false: transformers' generate", "digest_when_set": True})
    vllm_mode: Literal["colocate", "server"] = field(default="colocate", metadata={"help": "colocate: vLLM in the training processes; server: a `trl vllm-serve` started beforehand", "digest_when_set": True})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"digest_when_set": True})
    vllm_server_port: int = field(default=8000, metadata={"digest_when_set": True})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "colocate: the share of the GPU's memory vLLM may take", "digest_when_set": True})
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "recipe (zhang, mirg) -> settings that differ for it (MIRG-RL: lr 5e-6)", "digest_when_set": True})
    merged_rollouts: bool = field(
        default=True,
        metadata={"help": "sample the rollouts from the LoRA merged into a copy of the weights (speed.merged_lora; bench/NOTES.md): the same policy, one product per layer instead of three; "
                  "only where that gives the same rollouts (no LoRA dropout, no ZeRO-3/FSDP, no vLLM), else trl's own path. "
                  "On the 2-core CPU the embedded GRPO's logs (loss, rewards, KL) were bit-identical either way, so the default keeps the digests of earlier runs",
                  "digest_when_set": True},
    )

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


def grpo_rows(items: list[Item], recipe: str, box_frame: str, processor=None) -> list[dict[str, Any]]:
    """Dataset rows: a conversational prompt with one image entry per image, the images, the ground truth.

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
            "prompt": user_turn(len(images), with_suffix(it.question, recipe)),
            "images": images,
            "answer": list(it.answer),
            "target_image": it.target_image,
            "box_frame": box_frame,
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


def make_trainer(cfg: GRPOStageConfig, model_path: str | Path, items: list[Item], output_dir: Path, use_cpu: bool | None = None, log_path: Path | None = None, model=None):
    """A ready trl ``GRPOTrainer`` (LoRA on the LLM) for ``items``; ``model``: an already loaded model (the
    processor is still read from ``model_path``), e.g. bench/grpo_step.py's randomly initialised 7B."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from .launch import world_size
    from .models import load_model, load_processor, lora_config

    funcs, weights = get_rewards(cfg.rewards)
    vllm = vllm_args(cfg)
    processor = load_processor(model_path)
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
        train_dataset=Dataset.from_list(grpo_rows(items, cfg.recipe, cfg.box_frame, processor)),
        processing_class=processor,
        peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout),
        callbacks=[log.callback],
    )
    if cfg.merged_rollouts:
        from .speed import use_merged_rollouts

        trainer.mirg_merged_rollouts_off = use_merged_rollouts(trainer)  # the reasons it is off; empty: on
    return trainer


def run_grpo(cfg: GRPOStageConfig, init_path: str | Path, items: list[Item], out_dir: str | Path, launch: LaunchConfig | None = None, data_dir: str | Path | None = None) -> Path:
    """GRPO from ``init_path`` on ``items``; merged result in ``out_dir/checkpoint``.

    Skipped when done for the same config, start and items; resumes an interrupted run. With ``launch``
    asking for several processes the training runs under ``accelerate launch`` (:mod:`mirg_lib.launch`;
    the processes read ``items`` back from the pool in ``data_dir`` by id). ``prompts_per_step`` stays
    the prompts of one micro-step (x gradient_accumulation_steps an optimiser step) over all processes; the number of processes is in the digest
    (each samples its own rollouts)."""
    import dataclasses
    import hashlib

    from .config import config_hash
    from .launch import digest_tag, needs_launch, processes, train_launched

    out_dir = Path(out_dir)
    ids = hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest()[:16]
    world = processes(launch, "grpo")
    digest = config_hash(cfg) + ":" + ids + ":" + model_identity(init_path) + digest_tag(world)
    final = out_dir / "checkpoint"
    if stamp_matches(final, digest):
        return final
    if not items:
        raise ValueError("GRPO has no items to train on (did rejection sampling keep nothing?)")
    meta = {"stage": "grpo", "config": dataclasses.asdict(cfg), "config_hash": digest, "init": str(init_path), "items": len(items), "processes": world}
    if needs_launch(launch, "grpo"):
        assert launch is not None
        if data_dir is None:
            raise ValueError("run_grpo on several processes needs data_dir, where the processes read the items back")
        spec = {"cfg": meta["config"], "init_path": str(init_path), "ids": [it.id for it in items], "data_dir": str(data_dir), "out_dir": str(out_dir)}
        return train_launched("grpo", launch, spec, out_dir, init_path, final, meta)
    work = out_dir / "trainer"
    trainer = make_trainer(cfg, init_path, items, work, log_path=out_dir / "train_log.jsonl")
    train_resuming(trainer, work, digest)
    save_merged(trainer, final, meta)
    return final
