"""Does the fast rollout path sample the same tokens as trl's own? One GRPO step in the reference setting, its
rollouts drawn twice from the same seed: trl's path (peft's LoRA layers, a dynamic cache, no compilation) and
the fast one (merged LoRA weights at fixed addresses, a static cache, the compiled decoding step).

    python bench/rollout_check.py --size 7b --completion 256 --out bench/results/rollout_check_h100.json
    python bench/rollout_check.py --size tiny --completion 8 --image-size 56      # a CPU check of the script

The model, items and settings are bench/grpo_step.py's (random weights). Both paths run inside one trainer, on
the same batch, each after ``torch.manual_seed(seed)``, at the recipe's temperature; each step then trains on
the fast path's rollouts. Random weights earn no reward, so GRPO's updates are zero; instead, before each of the
``--steps`` steps (2) LoRA's B matrices are drawn anew (seeded by the step, scale ``--lora-scale``), so that every
step samples from other merged weights: a fast path that replayed stale ones (a CUDA graph over an old copy)
would part from trl's there. On a CPU in fp32 the two must
agree token for token (tests/test_speed.py). On a GPU in bf16 the static cache and the compiled kernels add and
round in other orders, so two draws may part after a while: the script reports, step by step, how many of the
16 rollouts are identical, and for the rest where they part.

Prints one JSON object: device, date, commit, the setting, and per step: the seconds of each path's generation
(the fast path's second call of the first step, after compiling), identical rollouts, the mean length of the
common start, the first differences; the totals.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def common_start(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="7b")
    ap.add_argument("--completion", type=int, default=256, help="tokens every rollout generates")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2, help="GRPO steps, each compared")
    ap.add_argument("--lora-scale", type=float, default=0.02, help="the standard deviation of LoRA's B, drawn anew before each step")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    from grpo_step import SIZES, build_model, items_and_processor

    from mirg_lib.grpo import GRPOStageConfig, make_trainer
    from mirg_lib.results import provenance, report
    from mirg_lib.speed import use_compiled_rollouts, use_merged_rollouts

    if args.size not in SIZES:
        ap.error(f"--size: one of {sorted(SIZES)}")
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    tmp = Path(tempfile.mkdtemp(prefix="mirg-rollout-check-"))
    items, processor, proc_dir = items_and_processor(tmp, args.image_size)
    model = build_model(args.size, processor.tokenizer, device, dtype)
    cfg = GRPOStageConfig(num_generations=8, prompts_per_step=2, gradient_accumulation_steps=1, max_completion_length=args.completion, max_steps=args.steps,
                          learning_rate=5e-5, beta=0.001, temperature=0.7, lora_r=64, lora_alpha=128, lora_dropout=0.0, bf16=cuda,
                          gradient_checkpointing=cuda, save_steps=10**9, merged_rollouts=False, compiled_rollouts=False)
    trainer = make_trainer(cfg, proc_dir, items, tmp / "grpo", model=model)
    trainer.generation_config.min_new_tokens = args.completion  # every rollout runs to the full length
    trainer.generation_kwargs["min_new_tokens"] = args.completion
    plain = (trainer._generate_single_turn, trainer.generation_config, trainer.generation_kwargs)
    off = use_compiled_rollouts(trainer) + use_merged_rollouts(trainer, fixed_addresses=True)
    if off:
        raise SystemExit(f"the fast path is off here: {off}")
    fast = (trainer._generate_single_turn, trainer.generation_config, trainer.generation_kwargs)
    calls: list[dict] = []

    def both(prompt_ids, *rest, **kw):
        out = {}
        for name, (gen, config, kwargs) in (("plain", plain), ("fast", fast)):
            for _ in range(2 if name == "fast" and not calls else 1):  # the first fast call compiles: time the second
                trainer.generation_config, trainer.generation_kwargs = config, kwargs
                torch.manual_seed(args.seed)
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                ids, _ = gen(prompt_ids, *rest, **kw)
                if cuda:
                    torch.cuda.synchronize()
                out[name] = ([list(map(int, c)) for c in ids], time.perf_counter() - t)
        calls.append(out)
        trainer.generation_config, trainer.generation_kwargs = fast[1], fast[2]
        return out["fast"][0], None

    trainer._generate_single_turn = both
    from transformers import TrainerCallback

    from mirg_lib.speed import lora_layers

    class NewLora(TrainerCallback):  # other LoRA weights at every step: stale merged weights would show
        def on_step_begin(self, a, state, control, **kw):
            g = torch.Generator().manual_seed(1000 + state.global_step)
            with torch.no_grad():
                for m in lora_layers(trainer.model):
                    for b in m.lora_B.values():
                        b.weight.copy_(torch.randn(b.weight.shape, generator=g) * args.lora_scale)

    trainer.add_callback(NewLora())
    trainer.train()
    steps = []
    for n, call in enumerate(calls, 1):
        (plain_ids, plain_s), (fast_ids, fast_s) = call["plain"], call["fast"]
        starts = [common_start(a, b) for a, b in zip(plain_ids, fast_ids, strict=True)]
        steps.append({
            "step": n,
            "generation_s": {"plain": round(plain_s, 3), "fast": round(fast_s, 3)},
            "identical_rollouts": sum(a == b for a, b in zip(plain_ids, fast_ids, strict=True)),
            "mean_common_start_tokens": round(sum(starts) / len(starts), 1),
            "first_differences": [{"rollout": i, "at_token": s, "plain": plain_ids[i][s : s + 5], "fast": fast_ids[i][s : s + 5]}
                                  for i, s in enumerate(starts) if plain_ids[i] != fast_ids[i]][:4],
        })
    result = {
        **provenance(),
        "setting": {"size": args.size, "rollouts": len(calls[0]["plain"][0]), "completion_tokens": args.completion, "image_size": args.image_size,
                    "bf16": cfg.bf16, "temperature": cfg.temperature, "seed": args.seed, "lora_b_scale": args.lora_scale},
        "steps": steps,
        "identical_rollouts": sum(s["identical_rollouts"] for s in steps),
        "rollouts_compared": sum(len(c["plain"][0]) for c in calls),
    }
    return report(result, args.out)


if __name__ == "__main__":
    main()
