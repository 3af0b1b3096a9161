"""Evaluation throughput and GRPO seconds per step for a model size: numbers for later work to beat.

    .venv/bin/python bench/bench_speed.py --preset tiny --arch qwen2_vl
    .venv/bin/python bench/bench_speed.py --checkpoint /path/to/Qwen2.5-VL-7B-Instruct --images 2 --image-size 448

A randomly initialised model of the preset's size (or a checkpoint) answers benchmark-like multi-image
questions. Generation lengths are fixed (``min_new_tokens = max_new_tokens``) so random weights cost
what a real model costs. Prints one JSON object: device, samples/s and generated tokens/s for batched
and one-at-a-time greedy generation, and GRPO seconds per step (trl's GRPOTrainer, LoRA on the LLM).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib.generation import build_inputs  # noqa: E402
from mirg_lib.world import WorldKnobs, generate  # noqa: E402

TASKS = ("common_object", "group_grounding", "refer_grounding", "diff")


def _prompts(n: int, image_size: int, images: int | None):
    knobs = WorldKnobs(image_size=image_size)
    out = []
    for i in range(n):
        s = generate(TASKS[i % len(TASKS)], i, knobs)
        imgs = s.images[:images] if images else s.images
        msgs = [{"role": "user", "content": [{"type": "image"} for _ in imgs] + [{"type": "text", "text": s.question}]}]
        out.append((msgs, imgs, s))
    return out


@torch.no_grad()
def _generate(model, processor, prompts, batch_size: int, new_tokens: int) -> float:
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        inputs = build_inputs(processor, [m for m, _, _ in chunk], [i for _, i, _ in chunk]).to(device)
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--arch", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl"])
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=140)
    ap.add_argument("--images", type=int, default=0, help="images per prompt (0: as the task draws them)")
    ap.add_argument("--grpo-steps", type=int, default=3)
    ap.add_argument("--grpo-completion", type=int, default=32)
    ap.add_argument("--skip-single", action="store_true", help="skip the one-at-a-time baseline")
    args = ap.parse_args()

    from mirg_lib.models import create_small_model, load_model, load_processor, save_checkpoint

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tmp = Path(tempfile.mkdtemp(prefix="mirg-bench-"))
    prompts = _prompts(args.samples, args.image_size, args.images or None)
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        corpus = [s.question for _, _, s in prompts] + [s.answer_text() for _, _, s in prompts]
        model, processor = create_small_model(args.preset, corpus, args.arch, image_max_pixels=28 * 28 * 1280)
        ckpt = save_checkpoint(model, processor, tmp / "model")
    model = load_model(ckpt, dtype=dtype, device=device)
    processor = load_processor(ckpt)
    n_params = sum(p.numel() for p in model.parameters())

    _generate(model, processor, prompts[: min(4, len(prompts))], 4, 4)  # warm-up
    batched = _generate(model, processor, prompts, args.batch_size, args.new_tokens)
    result = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "date": time.strftime("%Y-%m-%d"),
        "model": str(args.checkpoint or f"{args.arch}/{args.preset}"),
        "parameters": n_params,
        "samples": len(prompts),
        "new_tokens": args.new_tokens,
        "batched": {"batch_size": args.batch_size, "seconds": round(batched, 3), "samples_per_s": round(len(prompts) / batched, 3),
                    "tokens_per_s": round(len(prompts) * args.new_tokens / batched, 1)},
    }
    if not args.skip_single:
        single = _generate(model, processor, prompts, 1, args.new_tokens)
        result["one_at_a_time"] = {"seconds": round(single, 3), "samples_per_s": round(len(prompts) / single, 3),
                                   "tokens_per_s": round(len(prompts) * args.new_tokens / single, 1)}
        result["batched_speedup"] = round(single / batched, 2)

    if args.grpo_steps > 0:
        from mirg_lib.grpo import GRPOStageConfig, make_trainer
        from mirg_lib.items import Item

        img_dir = tmp / "images"
        img_dir.mkdir()
        items = []
        for i, (_, imgs, s) in enumerate(prompts[:8]):
            paths = []
            for j, im in enumerate(imgs):
                p = img_dir / f"{i}_{j}.png"
                im.save(p)
                paths.append(p)
            items.append(Item(str(i), s.task, paths, s.question, s.answer_rel(), min(s.target_image, len(paths))))
        cfg = GRPOStageConfig(num_generations=8, prompts_per_step=2, gradient_accumulation_steps=1, max_completion_length=args.grpo_completion,
                              max_steps=args.grpo_steps + 1, lora_r=64, lora_alpha=128, bf16=device == "cuda", save_steps=10**6, logging_steps=1)
        del model
        trainer = make_trainer(cfg, ckpt, items, tmp / "grpo")
        trainer.train()
        steps = [row["step_time"] for row in trainer.state.log_history if "step_time" in row]
        result["grpo"] = {"prompts_x_rollouts": "2 x 8", "completion_tokens_max": args.grpo_completion,
                          "seconds_per_step_after_warmup": round(sum(steps[1:]) / max(1, len(steps[1:])), 3) if len(steps) > 1 else None,
                          "first_step_seconds": round(steps[0], 3) if steps else None}
        if device == "cuda":
            result["grpo"]["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
