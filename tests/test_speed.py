"""Speed work (mirg_lib/speed.py, bench/grpo_step.py, bench/eval_speed.py): merged-LoRA rollouts give the same
model and the same rollouts and put the weights back bit for bit; the phase split adds up; the floor
reproduces the reference's arithmetic; both benchmarks run end to end on a CPU."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from mirg_lib.grpo import GRPOStageConfig, make_trainer
from mirg_lib.items import load_pool_items
from mirg_lib.speed import (
    GRPOPhases,
    Rates,
    device_rates,
    grpo_work,
    lora_layers,
    merge_blockers,
    merged_lora,
)

ROOT = Path(__file__).resolve().parent.parent


def _peft_nano(nano_checkpoint, dropout=0.0):
    from peft import get_peft_model

    from mirg_lib.models import load_model, lora_config

    model = get_peft_model(load_model(nano_checkpoint, dtype=torch.float32), lora_config(8, 16, dropout))
    torch.manual_seed(1)
    with torch.no_grad():
        for m in lora_layers(model):  # B starts at zero: give the adapter a real effect
            for b in m.lora_B.values():
                b.weight.normal_(0, 0.2)
    return model


def _inputs(smoke_world, nano_checkpoint, n=3):
    from PIL import Image

    from mirg_lib.generation import build_inputs
    from mirg_lib.models import load_processor
    from mirg_lib.prompts import user_turn

    items = load_pool_items(smoke_world.train_file)[:n]
    proc = load_processor(nano_checkpoint)
    msgs = [user_turn(len(it.images), it.question) for it in items]
    imgs = [[Image.open(p).convert("RGB") for p in it.images] for it in items]
    return build_inputs(proc, msgs, imgs)


def test_merged_lora_is_the_same_model_and_restores_the_weights_exactly(smoke_world, nano_checkpoint):
    model = _peft_nano(nano_checkpoint).eval()
    inputs = _inputs(smoke_world, nano_checkpoint)
    layers = lora_layers(model)
    assert layers
    before = {id(m): (m.base_layer.weight.data_ptr(), m.base_layer.weight.detach().clone()) for m in layers}
    with torch.no_grad():
        plain = model(**inputs).logits
        with torch.no_grad(), model.disable_adapter():
            no_lora = model(**inputs).logits
        with merged_lora(model):
            assert not torch.equal(layers[0].base_layer.weight, before[id(layers[0])][1])  # merged inside
            merged = model(**inputs).logits
    assert (plain - no_lora).abs().max() > 1e-3  # the adapter matters ...
    assert torch.allclose(merged, plain, atol=1e-4, rtol=1e-4), (merged - plain).abs().max()  # ... and merging keeps it
    for m in layers:
        ptr, w = before[id(m)]
        assert m.base_layer.weight.data_ptr() == ptr and torch.equal(m.base_layer.weight, w)
    assert not any(m.disable_adapters for m in layers)  # adapters on again
    with pytest.raises(RuntimeError, match="boom"), merged_lora(model):
        raise RuntimeError("boom")
    for m in layers:
        assert torch.equal(m.base_layer.weight, before[id(m)][1])


def test_merge_is_refused_where_it_would_change_the_rollouts(nano_checkpoint):
    assert merge_blockers(_peft_nano(nano_checkpoint, dropout=0.0)) == []
    assert any("dropout" in why for why in merge_blockers(_peft_nano(nano_checkpoint, dropout=0.1)))
    from mirg_lib.models import load_model

    assert merge_blockers(load_model(nano_checkpoint)) == ["no LoRA layers"]


def _run(smoke_world, nano_checkpoint, tmp_path, monkeypatch, name, merged, dropout=0.0, steps=2, compiled=False, compile_on_cpu=False):
    from mirg_lib import rewards as rewards_mod

    seen = []

    def toy_even(completions, completion_ids=None, **kw):  # the share of even ids: differs between rollouts
        seen.append([list(c) for c in completion_ids])
        return [sum(t % 2 == 0 for t in c) / max(1, len(c)) for c in completion_ids]

    monkeypatch.setitem(rewards_mod.REWARD_FUNCS, "toy_even_seen", toy_even)
    cfg = GRPOStageConfig(rewards={"toy_even_seen": 1.0}, num_generations=4, prompts_per_step=2, gradient_accumulation_steps=1, temperature=1.0,
                          max_completion_length=12, max_steps=steps, learning_rate=5e-2, lora_r=8, lora_alpha=16, lora_dropout=dropout,
                          save_steps=100, merged_rollouts=merged, compiled_rollouts=compiled)
    trainer = make_trainer(cfg, nano_checkpoint, load_pool_items(smoke_world.train_file)[:8], tmp_path / name)
    if compile_on_cpu:
        trainer.generation_config.compile_config._compile_all_devices = True
    phases = GRPOPhases(trainer)
    trainer.train()
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    return trainer, seen, lora, phases


def test_merged_rollouts_sample_the_same_rollouts_and_train_the_same(smoke_world, nano_checkpoint, tmp_path, monkeypatch):
    """Two steps (the second samples from the updated policy) with and without merging: the same token ids,
    and the same LoRA weights after the updates (fp32 on a CPU; within 1e-6)."""
    on, seen_on, lora_on, phases = _run(smoke_world, nano_checkpoint, tmp_path, monkeypatch, "on", True)
    off, seen_off, lora_off, _ = _run(smoke_world, nano_checkpoint, tmp_path, monkeypatch, "off", False)
    assert on.mirg_merged_rollouts_off == [] and not hasattr(off, "mirg_merged_rollouts_off")
    assert len(seen_on) == 2 and seen_on == seen_off
    assert any(len(c) > 1 for c in seen_on[0])
    assert all(torch.allclose(lora_on[n], lora_off[n], atol=1e-6) for n in lora_on)
    assert any(lora_on[n].abs().sum() > 0 for n in lora_on if "lora_B" in n)  # B starts at zero: the steps trained
    # the phase split: every step has all four, and they add up to the step
    assert len(phases.steps) == 2
    for s in phases.steps:
        assert s["generation_s"] > 0 and s["training_s"] > 0 and s["logprobs_s"] >= 0 and s["scoring_s"] >= 0
        assert math.isclose(s["generation_s"] + s["scoring_s"] + s["logprobs_s"] + s["training_s"], s["step_s"], rel_tol=0.02, abs_tol=0.02)
        assert s["completion_tokens"] == sum(len(c) for c in seen_on[phases.steps.index(s)])
    summary = phases.summary(warmup=1)
    assert summary["steps_measured"] == 1 and summary["step_s"] == phases.steps[1]["step_s"]
    with_dropout, _, _, _ = _run(smoke_world, nano_checkpoint, tmp_path, monkeypatch, "dropout", True, dropout=0.1, steps=1)
    assert any("dropout" in why for why in with_dropout.mirg_merged_rollouts_off)


def test_floor_reproduces_the_reference_arithmetic():
    """The H100 speed reference (docs/speed.md): decoding reads ~16 GB per token step at 3.0 TB/s for 1024 steps, the
    passes are ~1.6 PFLOP at 793 TFLOP/s; about 7.6 s in all. The 7B language model: 7.07 B matrix
    parameters (bf16) plus LoRA r=64 in fp32; 16 rollouts of ~600 prompt and 1024 completion tokens."""
    h100 = Rates("H100", "bfloat16", 3.0e12, 793e12)
    work = grpo_work(7.07e9, 7.07e9 * 2 + 161e6 * 4, 28, 512, 3584, 16, 600, 1024, beta=0.001, gradient_checkpointing=True, vision_flops=5.5e12)
    floor = work.floor(h100)
    assert work.passes == 4  # forward, reference, recompute, input gradients
    assert 1.4e15 < work.flops < 1.8e15 and 14e9 < work.decode_bytes < 17e9
    assert 6.8 < floor["floor_s"] < 8.2 and math.isclose(floor["floor_s"], floor["decode_s"] + floor["passes_s"])
    no_kl = grpo_work(7.07e9, 14.8e9, 28, 512, 3584, 16, 600, 1024, beta=0.0, gradient_checkpointing=False)
    assert no_kl.passes == 2 and no_kl.flops < work.flops / 1.8


def test_device_rates_measures_this_cpu():
    r = device_rates("cpu", torch.float32, copy_bytes=16 << 20, n=256, repeats=2)
    assert r.device == "cpu" and 1e8 < r.copy_bytes_per_s < 1e13 and 1e8 < r.matmul_flop_per_s < 1e14


def test_compiled_rollouts_sample_the_same_rollouts_and_train_the_same(smoke_world, nano_checkpoint, tmp_path, monkeypatch):
    """The static KV cache (sized to a bucket, kept across steps) with merged weights written to fixed tensors:
    the same token ids over two steps and the same LoRA weights as trl's own path (on a CPU transformers
    does not compile; the slow test below compiles)."""
    from transformers import StaticCache

    from mirg_lib.speed import CACHE_BUCKET

    made = []
    init = StaticCache.__init__

    def counted(self, *a, **kw):
        made.append(kw.get("max_cache_len"))
        init(self, *a, **kw)

    monkeypatch.setattr(StaticCache, "__init__", counted)
    fast, seen_fast, lora_fast, _ = _run(smoke_world, nano_checkpoint, tmp_path, monkeypatch, "fast", True, compiled=True)
    assert made and all(n % CACHE_BUCKET == 0 for n in made)  # the rollouts ran over a static cache of a bucket's length
    made.clear()
    plain, seen_plain, lora_plain, _ = _run(smoke_world, nano_checkpoint, tmp_path, monkeypatch, "plain", False)
    assert fast.mirg_compiled_rollouts_off == [] and fast.mirg_merged_rollouts_off == []
    assert fast.generation_config.cache_implementation == "static" and not fast.generation_config.disable_compile
    assert plain.generation_config.cache_implementation is None and plain.generation_config.disable_compile
    assert made == []  # trl's own path: no static cache
    assert len(seen_fast) == 2 and seen_fast == seen_plain
    assert all(torch.allclose(lora_fast[n], lora_plain[n], atol=1e-6) for n in lora_fast)


@pytest.mark.slow
def test_compiled_rollouts_compiled_on_a_cpu_sample_the_same_rollouts(smoke_world, nano_checkpoint, tmp_path, monkeypatch):
    """torch.compile of the decoding step, forced on the CPU: the same token ids as trl's own path."""
    from torch._dynamo.utils import counters

    counters.clear()
    _, seen_fast, _, _ = _run(smoke_world, nano_checkpoint, tmp_path, monkeypatch, "fast", True, compiled=True, compile_on_cpu=True)
    assert counters["stats"]["unique_graphs"] > 0  # it compiled
    _, seen_plain, _, _ = _run(smoke_world, nano_checkpoint, tmp_path, monkeypatch, "plain", False)
    assert seen_fast == seen_plain


def _bench(name):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_grpo_step_benchmark_runs_on_a_cpu(tmp_path):
    out = tmp_path / "step.json"
    res = _bench("grpo_step").main(["--size", "tiny", "--completion", "6", "--image-size", "56", "--steps", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert res["setting"]["prompts_x_rollouts"] == "2 x 8" and res["setting"]["completion_tokens"] == 6
    assert res["setting"]["prompt_tokens"] > 2 * (56 // 28) ** 2  # two images' tokens and the question
    assert res["steps_measured"] == 1 and res["seconds_per_step"] > 0
    assert math.isclose(sum(res["phases_s"].values()), res["seconds_per_step"], rel_tol=0.03, abs_tol=0.01)
    assert res["floor_s"]["floor_s"] > 0 and math.isclose(res["ratio_to_floor"], res["seconds_per_step"] / res["floor_s"]["floor_s"], rel_tol=0.05)
    assert res["commit"] and res["date"] and res["device"] == "cpu"


def test_eval_speed_benchmark_compares_batched_and_single(smoke_world, nano_checkpoint, tmp_path):
    res = _bench("eval_speed").main(["--profile", "smoke", "--checkpoint", str(nano_checkpoint), "--bench", str(smoke_world.test_file),
                                     "--items-per-task", "1", "--batch-size", "8", "--max-new-tokens", "8", "--out", str(tmp_path / "e.json")])
    assert res["items"] >= 8 and res["batched"]["batch_size"] == 8 and res["one_at_a_time"]["batch_size"] == 1
    assert res["identical_predictions"] == res["items"], res["first_differences"]
    assert res["speedup"] > 0 and json.loads((tmp_path / "e.json").read_text())["speedup"] == res["speedup"]


@pytest.mark.slow
def test_gpu_check_script_runs_every_step_at_cpu_size(tmp_path):
    """bench/gpu_check.sh (the one GPU run of the fast generation work) at a CPU size: every step finishes and
    writes its JSON; the fast rollouts equal trl's on the CPU; the evaluation's two passes agree."""
    import os
    import subprocess

    script = ROOT / "bench" / "gpu_check.sh"
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    env = {**os.environ, "MIRG_RUNS_DIR": str(tmp_path / "runs"), "GPU_CHECK_SIZE": "tiny", "GPU_CHECK_COMPLETION": "16", "GPU_CHECK_IMAGE": "56",
           "GPU_CHECK_EVAL_ITEMS": "1"}
    run = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert all(v.startswith("exit 0") for v in report["steps"].values()), report
    check = json.loads((tmp_path / "out" / "rollout_check.json").read_text())
    assert check["identical_rollouts"] == check["rollouts_compared"] == 32 and len(check["steps"]) == 2 and check["setting"]["completion_tokens"] == 2
    step = json.loads((tmp_path / "out" / "grpo_step_fast.json").read_text())
    assert step["setting"]["overrides"] == {"compiled_rollouts": True} and step["seconds_per_step"] > 0
    speed = json.loads((tmp_path / "out" / "eval_speed.json").read_text())
    assert speed["identical_predictions"] == speed["items"] > 0


@pytest.mark.slow
def test_backend_speed_benchmark_compares_hf_and_a_served_model(tmp_path):
    """bench/backend_speed.py on the CPU: hf, then openai on transformers serve, the same greedy replies (but for
    the end spaces the server strips), and rejection sampling's rate."""
    if not (Path(sys.executable).parent / "transformers").exists():
        pytest.skip("transformers CLI not installed")
    out = tmp_path / "speed.json"
    res = _bench("backend_speed").main(["--items-per-task", "1", "--max-new-tokens", "12", "--k", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == res and res["questions"] == 10
    for c in (1, 4):
        run = res[f"openai_c{c}"]
        assert run["concurrency"] == c and run["same_as_hf_but_end_spaces"] == 10 and run["questions_per_s"] > 0
    assert res["rejection_sampling_hf"]["samples_per_s"] == pytest.approx(2 * res["rejection_sampling_hf"]["questions_per_s"], rel=0.01)
