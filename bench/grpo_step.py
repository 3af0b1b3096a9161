"""Seconds per GRPO step in the speed reference's setting, split into phases, against the hardware's floor.

    python bench/grpo_step.py --size 7b --out bench/results/grpo_step_h100.json     # one GPU, the reference setting
    python bench/grpo_step.py --size 7b --set merged_rollouts=false                 # trl's own rollout path
    python bench/grpo_step.py --size tiny --completion 16 --image-size 56           # a CPU check of the script

The setting of the GRPO speed reference (docs/speed.md): the Qwen2.5-VL-7B architecture (8.29 B
parameters, vocabulary 152,064) with random weights, Zhang et al.'s RL settings (2 prompts x 8 rollouts,
temperature 0.7, KL 0.001, LoRA r=64 / alpha 128 on the LLM without dropout, bf16, gradient checkpointing)
and two 448 x 448 images per prompt. Every completion runs to ``--completion`` tokens (1024;
``min_new_tokens``), so the work per step is fixed. The step is this project's GRPO stage
(``mirg_lib.grpo.make_trainer``: trl's GRPOTrainer, the recipe's rewards), so ``--set`` reaches any field of
``GRPOStageConfig``.

Prints one JSON object: the device, date and commit; seconds per step after ``--warmup`` steps, split into
generation, scoring, log-probs and training (``mirg_lib.speed.GRPOPhases``); the copy bandwidth and matrix
rate measured on the card; the floor they give for the step's work (``mirg_lib.speed.grpo_work``) and the
ratio of the measured step to it; the peak GPU memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {
    # text: hidden, MLP, layers, heads, key-value heads; vision: depth, width, MLP, heads, full-attention blocks
    "7b": {"text": (3584, 18944, 28, 28, 4), "vision": (32, 1280, 3420, 16, [7, 15, 23, 31])},
    "3b": {"text": (2048, 11008, 36, 16, 2), "vision": (32, 1280, 3420, 16, [7, 15, 23, 31])},
    "tiny": {"text": (64, 128, 2, 4, 2), "vision": (2, 64, 128, 4, [1]), "vocab": 0},  # 0: the tokenizer's own (a quick CPU check)
}
VOCAB = 152064  # Qwen2.5-VL's


def build_model(size: str, tokenizer, device: str, dtype: torch.dtype):
    """Qwen2.5-VL of ``size`` with random weights (seed 0) and Qwen's vocabulary size (tiny: the tokenizer's)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mirg_lib.models import SPECIAL_TOKENS, mrope_section

    (hidden, mlp, layers, heads, kv), (depth, width, vmlp, vheads, full) = SIZES[size]["text"], SIZES[size]["vision"]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {
        "vocab_size": SIZES[size].get("vocab", VOCAB) or len(tokenizer), "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section(hidden // heads)},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "tie_word_embeddings": False,
    }
    vision = {"depth": depth, "hidden_size": width, "intermediate_size": vmlp, "num_heads": vheads, "out_hidden_size": hidden,
              "fullatt_block_indexes": full, "window_size": 112}
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def items_and_processor(tmp: Path, image_size: int, n: int = 16):
    """``n`` two-image common-object questions of the embedded world at ``image_size`` (saved as files), and a
    processor that sees each image at exactly that size."""
    from mirg_lib.items import Item
    from mirg_lib.models import build_processor, train_tokenizer
    from mirg_lib.world import WorldKnobs, generate

    knobs = WorldKnobs(image_size=image_size)
    samples = [generate("common_object", i, knobs) for i in range(n)]
    tokenizer = train_tokenizer([s.question for s in samples] + [s.answer_text() for s in samples], 1024)
    processor = build_processor(tokenizer, min_pixels=image_size * image_size, max_pixels=image_size * image_size)
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i, s in enumerate(samples):
        paths = []
        for j, im in enumerate(s.images[:2]):
            p = tmp / "images" / f"{i}_{j}.png"
            im.save(p)
            paths.append(p)
        items.append(Item(f"bench{i}", s.task, paths, s.question, s.answer_rel(), min(s.target_image, 2)))
    processor.save_pretrained(tmp / "processor")
    return items, processor, tmp / "processor"


def llm_work_counts(model) -> tuple[float, float, int, int, int]:
    """(matrix parameters of the language model and its output head, bytes decoding reads of them per step
    (LoRA's included), layers, key-value width, hidden size)."""
    import torch.nn as nn

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = bytes_ = 0.0
    for name, mod in base.named_modules():
        if isinstance(mod, nn.Linear) and "visual" not in name:
            n = mod.weight.numel()
            bytes_ += n * mod.weight.element_size()
            if ".lora_" not in name:
                params += n
    text = base.config.text_config
    kv = text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    return params, bytes_, text.num_hidden_layers, kv, text.hidden_size


def vision_flops(model, patches: int) -> float:
    """Forward FLOPs of the vision tower over ``patches`` patches (2 x its parameters each)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return 2.0 * sum(p.numel() for n, p in base.named_parameters() if "visual" in n) * patches


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="7b", choices=sorted(SIZES))
    ap.add_argument("--completion", type=int, default=1024, help="tokens every completion generates")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--steps", type=int, default=3, help="steps measured after the warm-up")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a GRPOStageConfig field (YAML value)")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args(argv)

    import dataclasses

    from mirg_lib.config import parse_overrides
    from mirg_lib.grpo import GRPOStageConfig, make_trainer
    from mirg_lib.results import provenance, report
    from mirg_lib.speed import GRPOPhases, device_rates, grpo_work, rates_dict

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    tmp = Path(tempfile.mkdtemp(prefix="mirg-grpo-step-"))
    items, processor, proc_dir = items_and_processor(tmp, args.image_size)
    t0 = time.perf_counter()
    model = build_model(args.size, processor.tokenizer, device, dtype)
    init_s = time.perf_counter() - t0
    overrides = parse_overrides(args.set)
    cfg = GRPOStageConfig(num_generations=8, prompts_per_step=2, gradient_accumulation_steps=1, max_completion_length=args.completion,
                          max_steps=args.warmup + args.steps, learning_rate=5e-5, beta=0.001, temperature=0.7, lora_r=64, lora_alpha=128,
                          lora_dropout=0.0, bf16=cuda, gradient_checkpointing=cuda, save_steps=10**9, logging_steps=1)
    cfg = dataclasses.replace(cfg, **overrides)
    trainer = make_trainer(cfg, proc_dir, items, tmp / "grpo", model=model)
    trainer.generation_config.min_new_tokens = args.completion  # every completion runs to the full length: a fixed workload
    trainer.generation_kwargs["min_new_tokens"] = args.completion
    phases = GRPOPhases(trainer, sync=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    step = phases.summary(warmup=args.warmup)
    sequences = cfg.prompts_per_step * cfg.num_generations
    prompt_len = round(step["prompt_tokens"] / sequences)
    completion_len = round(step["completion_tokens"] / sequences)
    params, weight_bytes, layers, kv, hidden = llm_work_counts(trainer.model)
    patches_per_image = (args.image_size // 14) ** 2
    work = grpo_work(params, weight_bytes, layers, kv, hidden, sequences, prompt_len, completion_len, cfg.beta, cfg.gradient_checkpointing,
                     cache_bytes=2 if cuda else 4, vision_flops=vision_flops(trainer.model, cfg.prompts_per_step * 2 * patches_per_image))
    del trainer, model
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
        rates = device_rates("cuda", torch.bfloat16)
    else:
        peak = None
        rates = device_rates("cpu", torch.float32, copy_bytes=256 << 20, n=1024, repeats=3)
    floor = work.floor(rates)
    result = {
        **provenance(),
        "setting": {"size": args.size, "prompts_x_rollouts": f"{cfg.prompts_per_step} x {cfg.num_generations}", "completion_tokens": args.completion,
                    "images_per_prompt": 2, "image_size": args.image_size, "prompt_tokens": prompt_len, "lora_r": cfg.lora_r, "bf16": cfg.bf16,
                    "gradient_checkpointing": cfg.gradient_checkpointing, "overrides": overrides},
        "model_init_s": round(init_s, 1),
        "first_step_s": round(step["first_step_s"], 3),
        "steps_measured": step["steps_measured"],
        "seconds_per_step": round(step["step_s"], 3),
        "phases_s": {k: round(step[f"{k}_s"], 3) for k in ("generation", "scoring", "logprobs", "training")},
        "rates": rates_dict(rates),
        "work": {"decode_GB_per_token_step": round(work.decode_bytes / 1e9, 2), "passes": work.passes, "PFLOP": round(work.flops / 1e15, 4)},
        "floor_s": {k: round(v, 3) for k, v in floor.items()},
        "ratio_to_floor": round(step["step_s"] / floor["floor_s"], 2),
        "peak_gib": round(peak, 2) if peak is not None else None,
    }
    return report(result, args.out)


if __name__ == "__main__":
    main()
