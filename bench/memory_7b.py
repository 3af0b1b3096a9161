"""GPU memory of the papers' settings on one 80 GB GPU, ESTIMATED (no GPU has been at hand in this project).

    python bench/memory_7b.py            # the memory table of docs/real_data.md
    python bench/memory_7b.py --json     # the same as JSON

What is counted, in bytes the way ``torch.cuda.max_memory_allocated`` counts them (no CUDA context, no
allocator slack), for the Qwen2.5-VL-7B / Qwen2-VL-7B language model (hidden 3584, 28 layers, MLP 18944,
4 key-value heads of 128, vocabulary 152,064; 8.29 B parameters with the vision tower):

* weights in bf16; the vision tower frozen and its activations not kept (no gradient flows into it);
* LoRA r=64 on q, k, v, o, gate, up, down of every LLM layer: fp32 weights, gradients, Adam's two moments;
* activations kept for the backward pass per token and layer: the two RMSNorms' fp32 inputs and bf16
  outputs, q, k, v, the attention output (flash / SDPA: no score matrix), gate, up, SiLU(gate) and the
  product (16 h + 4 kv + 8 I bytes); with LoRA dropout each adapted module's input is copied with its mask;
  with gradient checkpointing one bf16 input per layer plus one layer's activations during its recompute;
* logits: SFT's loss over every position (bf16 logits, the fp32 copy, its gradient: 10 bytes a value);
  GRPO's over the completion positions only (trl's ``logits_to_keep``; bf16 logits and their gradient);
* GRPO generation: the KV cache of every completion generated at once (trl generates
  ``per_device_train_batch_size x steps_per_generation`` completions, by default x gradient accumulation).

The model of the activations is checked against the one measurement there is
(the GRPO speed reference of docs/speed.md: trl's GRPOTrainer, 2 prompts x 8 rollouts of 1024 tokens, two 448 px images, LoRA
r=64 without dropout, gradient checkpointing, one H100: 36.6 GB peak): the same setting is the first row.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

GiB = 2**30


@dataclass(frozen=True)
class Arch:
    hidden: int = 3584
    mlp: int = 18944
    layers: int = 28
    kv: int = 4 * 128
    vocab: int = 152064
    params: float = 8.29e9


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # sft | grpo
    sequences: int  # per micro-batch on the GPU
    prompt_tokens: int  # image tokens included
    completion_tokens: int
    checkpointing: bool
    lora_dropout: bool
    generated_at_once: int = 0  # grpo: completions generated together
    lora_r: int = 64


def lora_params(a: Arch, r: int) -> int:
    per_layer = r * ((a.hidden + a.hidden) * 2 + (a.hidden + a.kv) * 2 + (a.hidden + a.mlp) * 3)  # q, o; k, v; gate, up, down
    return per_layer * a.layers


def estimate(s: Setting, a: Arch = Arch()) -> dict[str, float]:
    """GiB by component and in all (the peak of the generation and the training phase)."""
    seq = s.prompt_tokens + s.completion_tokens
    tokens = s.sequences * seq
    per_token_layer = 16 * a.hidden + 4 * a.kv + 8 * a.mlp
    if s.lora_dropout:
        per_token_layer += 3 * (6 * a.hidden + a.mlp)  # a dropped copy (bf16) and its mask (bool) of each adapted input
    if s.checkpointing:
        activations = tokens * a.layers * 2 * a.hidden + tokens * per_token_layer
    else:
        activations = tokens * a.layers * per_token_layer
    if s.kind == "sft":
        logits = tokens * a.vocab * 10
    else:
        logits = s.sequences * s.completion_tokens * a.vocab * 4
    out = {
        "weights": a.params * 2,
        "lora_and_adam": lora_params(a, s.lora_r) * 16,
        "activations": activations,
        "logits": logits,
    }
    train = sum(out.values())
    out["kv_cache_generation"] = s.generated_at_once * seq * a.layers * 2 * a.kv * 2 if s.kind == "grpo" else 0
    gen = out["weights"] + out["lora_and_adam"] + out["kv_cache_generation"]
    res = {k: v / GiB for k, v in out.items()}
    res["peak"] = max(train, gen) / GiB
    return res


PROMPT = 512 + 320  # two 448 px images (256 merged tokens each) and the question with the recipe's suffix
SETTINGS = [
    Setting("GRPO, the measured reference (16 completions, no LoRA dropout, checkpointing)", "grpo", 16, PROMPT, 1024, True, False, generated_at_once=16),
    Setting("Zhang SFT: 4 x 1024 tokens a micro-batch, LoRA dropout 0.05, checkpointing", "sft", 4, 512, 512, True, True),
    Setting("Zhang SFT: the same without checkpointing", "sft", 4, 512, 512, False, True),
    Setting("Zhang GRPO: 2 prompts x 8, 1024 tokens, accumulation 4 (64 generated at once), dropout, checkpointing", "grpo", 16, PROMPT, 1024, True, True, generated_at_once=64),
    Setting("Zhang GRPO: the same without checkpointing", "grpo", 16, PROMPT, 1024, False, True, generated_at_once=64),
]


def table() -> str:
    lines = ["| setting (one GPU, bf16, LoRA r=64) | weights | LoRA + Adam | activations | logits | generation KV cache | peak (GiB) |", "|---|---|---|---|---|---|---|"]
    for s in SETTINGS:
        e = estimate(s)
        fits = "" if e["peak"] <= 80 * 1e9 / GiB else " (over 80 GB)"
        lines.append(f"| {s.name} | {e['weights']:.1f} | {e['lora_and_adam']:.1f} | {e['activations']:.1f} | {e['logits']:.1f} | {e['kv_cache_generation']:.1f} | **{e['peak']:.1f}**{fits} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.json:
        print(json.dumps([{"setting": asdict(s), "estimate_gib": estimate(s)} for s in SETTINGS], indent=1))
    else:
        print(table())


if __name__ == "__main__":
    main()
