"""Where a GRPO step's time goes, and how far it is from what the hardware allows.

:class:`GRPOPhases` splits each step of a trl ``GRPOTrainer`` into generation (prompt processing, the
rollouts, their decoding), scoring (the reward functions), log-probs (the reference and old-policy passes
and the advantages, without gradients) and training (forward, backward, optimiser). It wraps the
trainer's own methods; with ``sync`` it waits for the GPU at every boundary, so a phase's time is its own.

:func:`device_rates` measures a device's copy bandwidth and matrix rate; :func:`grpo_floor` turns them and a
step's work (the parameters read per decoding step, the FLOPs of the passes over every token) into a lower
bound for the step: the time it would take if decoding were bound by reading memory and the passes by the
matrix units, nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

PHASES = ("generation", "scoring", "logprobs", "training")


def _sync(device: torch.device | str | None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


class GRPOPhases:
    """Attach to a ``GRPOTrainer`` before ``train()``; ``steps`` then holds one dict per optimiser step:
    ``step_s`` and ``<phase>_s`` for each of :data:`PHASES` (they add up to ``step_s``), plus the tokens
    the step generated (``completion_tokens``) and its prompts' length (``prompt_tokens``, padded)."""

    def __init__(self, trainer: Any, sync: bool = True) -> None:
        from transformers import TrainerCallback

        self.sync = sync
        self.steps: list[dict[str, float]] = []
        self._cur: dict[str, float] = {}
        self._t0 = 0.0
        phases = self

        def timed(fn, key):
            def wrapper(*args, **kwargs):
                phases._wait()
                t = time.perf_counter()
                out = fn(*args, **kwargs)
                phases._wait()
                phases._add(key, time.perf_counter() - t)
                return out

            return wrapper

        timed_prepare = timed(trainer._generate_and_score_completions, "prepare")

        def prepare(*args, **kwargs):  # generation, scoring, log-probs: the batch the step trains on
            batch = timed_prepare(*args, **kwargs)
            mask, ids = batch.get("completion_mask"), batch.get("prompt_ids")
            phases._add("completion_tokens", float(mask.sum()) if mask is not None else 0.0)
            phases._add("prompt_tokens", float(ids.numel()) if ids is not None else 0.0)  # padded
            return batch

        trainer._generate = timed(trainer._generate, "generation")
        trainer._calculate_rewards = timed(trainer._calculate_rewards, "scoring")
        trainer._generate_and_score_completions = prepare

        class _Steps(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                phases._wait()
                phases._cur, phases._t0 = {}, time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                phases._wait()
                phases._close(time.perf_counter() - phases._t0)

        trainer.add_callback(_Steps())

    def _wait(self) -> None:
        if self.sync:
            _sync(None)

    def _add(self, key: str, value: float) -> None:
        self._cur[key] = self._cur.get(key, 0.0) + value

    def _close(self, step_s: float) -> None:
        c = self._cur
        gen, score, prep = c.get("generation", 0.0), c.get("scoring", 0.0), c.get("prepare", 0.0)
        row = {
            "step_s": step_s,
            "generation_s": gen,
            "scoring_s": score,
            "logprobs_s": max(0.0, prep - gen - score),
            "training_s": max(0.0, step_s - prep),
            "completion_tokens": c.get("completion_tokens", 0.0),
            "prompt_tokens": c.get("prompt_tokens", 0.0),
        }
        self.steps.append(row)

    def summary(self, warmup: int = 1) -> dict[str, Any]:
        """Mean of each field over the steps after the first ``warmup`` (all of them if there are no more),
        with the first step's time apart."""
        rest = self.steps[warmup:] or self.steps
        if not rest:
            return {}
        out = {k: sum(s[k] for s in rest) / len(rest) for k in rest[0]}
        out["steps_measured"] = len(rest)
        out["first_step_s"] = self.steps[0]["step_s"]
        return out


# ------------------------------------------------------------------------------------ merged-LoRA rollouts


def lora_layers(model: Any) -> list[Any]:
    """peft's LoRA layers of ``model`` that carry an adapter."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and any(a in m.lora_A for a in m.active_adapters)]


def merge_blockers(model: Any, trainer: Any = None) -> list[str]:
    """Why the rollouts of ``model`` cannot come from merged weights with the same result (empty: they can).

    With LoRA dropout the unmerged model samples through dropout masks (trl generates in training mode), so
    merging would change the rollouts; under DeepSpeed ZeRO-3 or FSDP the weights are partitioned."""
    import torch.nn as nn
    from peft.tuners.lora.layer import Linear as LoraLinear

    why = []
    layers = lora_layers(model)
    if not layers:
        why.append("no LoRA layers")
    if any(not isinstance(d, nn.Identity) for m in layers for d in m.lora_dropout.values()):
        why.append("LoRA dropout is on (trl samples the rollouts through its masks)")
    if any(not isinstance(m, LoraLinear) or m.fan_in_fan_out for m in layers):  # quantised or Conv1D layouts: not swapped
        why.append("a LoRA layer that is not a plain Linear")
    if trainer is not None:
        if getattr(trainer, "is_fsdp_enabled", False):
            why.append("FSDP")
        ds = getattr(getattr(trainer, "accelerator", None), "state", None)
        plugin = getattr(ds, "deepspeed_plugin", None)
        if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
            why.append("DeepSpeed ZeRO-3")
        if getattr(trainer, "use_vllm", False):
            why.append("vLLM generates (it merges by itself)")
    return why


@contextmanager
def merged_lora(model: Any, buffers: dict[int, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, each LoRA layer's base weight is ``W + scale * B @ A`` (a new tensor) and the adapters
    are off: one matrix product per layer instead of three and their glue. The original tensors are put back
    afterwards, untouched (no subtraction, so no drift), even when the block raises. Only for inference:
    the merged tensors get no gradient.

    With ``buffers`` (kept by the caller from one call to the next) each merged weight is written into the same
    tensor every time, so that its address never changes: a CUDA graph recorded over the merged model stays
    valid (:func:`use_compiled_rollouts`). The buffers then hold a merged copy of the adapted weights for the
    whole run (~13 GB in bf16 at 7B), where without them the copy lives only while rollouts are drawn."""
    layers = lora_layers(model)
    saved = []
    try:
        with torch.no_grad():
            for m in layers:
                w = m.base_layer.weight
                delta = sum(m.get_delta_weight(a) for a in m.active_adapters if a in m.lora_A)
                saved.append((w, w.data))
                merged = (w.data.to(delta.dtype) + delta).to(w.dtype)
                if buffers is not None:
                    buf = buffers.get(id(w))
                    if buf is None or buf.shape != merged.shape or buf.dtype != merged.dtype or buf.device != merged.device:
                        buf = buffers[id(w)] = torch.empty_like(merged)
                    merged = buf.copy_(merged)
                w.data = merged
        with model.disable_adapter():
            yield
    finally:
        for w, data in saved:
            w.data = data


def use_merged_rollouts(trainer: Any, fixed_addresses: bool = False) -> list[str]:
    """Make ``trainer`` (trl's GRPOTrainer, LoRA) sample its rollouts from merged weights (:func:`merged_lora`)
    where that gives the same rollouts; returns the reasons it does not (empty: it does). ``fixed_addresses``:
    the merged weights go into the same tensors at every step (for CUDA graphs, :func:`use_compiled_rollouts`)."""
    why = merge_blockers(trainer.model, trainer)
    if why:
        return why
    generate = trainer._generate_single_turn
    buffers: dict[int, torch.Tensor] | None = {} if fixed_addresses else None

    def merged_generate(*args: Any, **kwargs: Any):
        with merged_lora(trainer.model, buffers):
            return generate(*args, **kwargs)

    trainer._generate_single_turn = merged_generate
    return []


CACHE_BUCKET = 256  # the static cache's length is rounded up to a multiple of it: few shapes, few recompilations


def use_compiled_rollouts(trainer: Any) -> list[str]:
    """Make ``trainer`` (trl's GRPOTrainer) decode its rollouts with a static KV cache and transformers' compiled
    decoding step (``torch.compile``, mode ``reduce-overhead``: CUDA graphs), which trl turns off
    (``disable_compile=True``, a dynamic cache). The sampling is unchanged: the same logits processors and
    temperature; in fp32 on a CPU the same draws (tests/test_speed.py), in bf16 on a GPU the kernels add in
    other orders and two draws may part (bench/rollout_check.py measures where). The cache is sized for the
    step's longest prompt plus ``max_completion_length``, rounded up to :data:`CACHE_BUCKET` tokens and never
    shrunk (transformers keeps the largest), so the decoding step compiles for few shapes. transformers compiles only on a GPU (on a CPU the static cache runs uncompiled,
    unless ``trainer.generation_config.compile_config._compile_all_devices`` is set, as a test does). Returns
    the reasons it is off (empty: on)."""
    import copy

    from transformers import CompileConfig

    why = []
    if getattr(trainer, "use_vllm", False):
        why.append("vLLM generates")
    if getattr(trainer, "use_transformers_continuous_batching", False):
        why.append("transformers' continuous batching generates")
    if why:
        return why
    config = copy.deepcopy(trainer.generation_config)
    config.cache_implementation = "static"
    config.disable_compile = False
    config.compile_config = CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead")
    trainer.generation_config = config
    trainer.generation_kwargs = {**trainer.generation_kwargs, "cache_implementation": "static"}
    longest = trainer.max_completion_length
    generate = trainer._generate_single_turn

    def sized_generate(prompt_ids, *args: Any, **kwargs: Any):
        need = max((len(p) for p in prompt_ids), default=0) + longest
        config.max_cache_len = -(-need // CACHE_BUCKET) * CACHE_BUCKET
        return generate(prompt_ids, *args, **kwargs)

    trainer._generate_single_turn = sized_generate
    return []


# ----------------------------------------------------------------------------------------------- the floor


@dataclass(frozen=True)
class Rates:
    """What a device sustains: bytes per second of a large copy (read + write counted) and FLOP/s of a large
    matrix product in ``dtype``."""

    device: str
    dtype: str
    copy_bytes_per_s: float
    matmul_flop_per_s: float


def device_rates(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, copy_bytes: int = 2 << 30, n: int = 8192, repeats: int = 10) -> Rates:
    """Measure a device's copy bandwidth (``dst.copy_(src)`` of ``copy_bytes``) and matrix rate (an ``n`` x ``n``
    product in ``dtype``), the best of ``repeats`` after a warm-up."""
    dev = torch.device(device)

    def best(fn) -> float:
        fn()
        _sync(dev)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            _sync(dev)
            times.append(time.perf_counter() - t)
        return min(times)

    def copy_time() -> float:
        src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=dev).fill_(1.0)
        dst = torch.empty_like(src)
        return best(lambda: dst.copy_(src))

    def matmul_time() -> float:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        return best(lambda: a @ b)

    t_copy = copy_time()  # the copy's buffers are freed before the product's are made
    t_mm = matmul_time()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return Rates(name, str(dtype).replace("torch.", ""), 2 * copy_bytes / t_copy, 2 * n**3 / t_mm)


@dataclass(frozen=True)
class StepWork:
    """The work of one GRPO step, counted from the model and the step's shapes.

    ``decode_bytes``: bytes read per decoding step (the language model's weights once, plus the KV cache at
    its mean length); ``decode_steps``: the tokens each completion generates; ``flops``: the matrix FLOPs of
    every pass over the step's tokens (2 x parameters x tokens each, attention's score and value products
    added): the prompt's prefill, the reference pass, the training forward, the recompute under gradient
    checkpointing and the backward's input gradients (the frozen base gives no weight gradients)."""

    decode_bytes: float
    decode_steps: int
    flops: float
    passes: float

    def floor(self, rates: Rates) -> dict[str, float]:
        decode = self.decode_bytes * self.decode_steps / rates.copy_bytes_per_s
        train = self.flops / rates.matmul_flop_per_s
        return {"decode_s": decode, "passes_s": train, "floor_s": decode + train}


def grpo_work(
    llm_params: float,
    weight_bytes: float,
    layers: int,
    kv_dim: int,
    hidden: int,
    sequences: int,
    prompt_tokens: int,
    completion_tokens: int,
    beta: float,
    gradient_checkpointing: bool,
    cache_bytes: int = 2,
    vision_flops: float = 0.0,
) -> StepWork:
    """:class:`StepWork` of a step of ``sequences`` rollouts, each ``prompt_tokens`` + ``completion_tokens`` long.

    ``llm_params``: the language model's matrix parameters (embedding lookups excluded, the output head
    included); ``weight_bytes``: what decoding reads of them per step; ``kv_dim``: key-value heads x head size;
    ``vision_flops``: the vision tower's forward over the step's images, counted once per pass that runs it."""
    seq = prompt_tokens + completion_tokens
    mean_len = prompt_tokens + completion_tokens / 2
    kv = 2 * layers * kv_dim * cache_bytes * mean_len * sequences
    per_pass = 2 * llm_params * sequences * seq + 4 * layers * hidden * seq * seq * sequences / 2 + vision_flops  # causal: half the scores
    passes = 1.0 + (1.0 if beta else 0.0) + (1.0 if gradient_checkpointing else 0.0) + 1.0  # forward, reference, recompute, input gradients
    prefill = 2 * llm_params * sequences * prompt_tokens + vision_flops
    return StepWork(decode_bytes=weight_bytes + kv, decode_steps=completion_tokens, flops=per_pass * passes + prefill, passes=passes)


def rates_dict(rates: Rates) -> dict[str, Any]:
    d = asdict(rates)
    d["copy_TB_per_s"] = round(rates.copy_bytes_per_s / 1e12, 3)
    d["matmul_TFLOP_per_s"] = round(rates.matmul_flop_per_s / 1e12, 1)
    return d
