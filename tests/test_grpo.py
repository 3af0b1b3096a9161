"""GRPO with trl's trainer on a nano model: a real step changes the LoRA weights, and the reward
pushes the policy the right way on a toy case."""

import json

import torch

from mirg_lib import rewards as rewards_mod
from mirg_lib.grpo import GRPOStageConfig, as_written, grpo_rows, make_trainer
from mirg_lib.items import load_pool_items
from mirg_lib.models import lora_modules


def _items(world, n=8):
    return load_pool_items(world.train_file)[:n]


def test_rows_are_multi_image_conversations(smoke_world):
    items = _items(smoke_world, 48)
    rows = grpo_rows(items, "zhang", "rel1000")
    for it, row in zip(items, rows, strict=True):
        content = row["prompt"][0]["content"]
        assert sum(c["type"] == "image" for c in content) == len(row["images"]) == len(it.images)
        assert row["target_image"] == it.target_image and len(row["answer"]) == 4
        assert "First output the thinking process" in content[-1]["text"]
        assert row["box_notation"] == "json" and "JSON format" in content[-1]["text"]
    assert max(len(r["images"]) for r in rows) >= 3
    tokens = grpo_rows(items[:2], "zhang", "rel1000", notation="tokens")
    assert all(r["box_notation"] == "tokens" and "<|box_start|>(x1,y1),(x2,y2)<|box_end|>" in r["prompt"][0]["content"][-1]["text"] for r in tokens)


def test_one_grpo_step_changes_only_language_lora_weights(smoke_world, nano_checkpoint, tmp_path, monkeypatch):
    # a dense toy reward so that a random policy's rollouts differ in reward
    def toy_length(completions, **kw):
        return [len(rewards_mod.completion_text(c)) / 100 for c in completions]

    monkeypatch.setitem(rewards_mod.REWARD_FUNCS, "toy_length", toy_length)
    cfg = GRPOStageConfig(rewards={"toy_length": 1.0, "zhang_accuracy": 1.0}, num_generations=4, prompts_per_step=2, gradient_accumulation_steps=1,
                          max_completion_length=8, max_steps=1, learning_rate=1e-2, lora_r=4, lora_alpha=8, save_steps=100)
    trainer = make_trainer(cfg, nano_checkpoint, _items(smoke_world), tmp_path / "grpo")
    assert lora_modules(trainer.model) and not any("visual" in m for m in lora_modules(trainer.model))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all(".lora_" in n for n in before)
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(before[n], p.detach())]
    assert any("lora_B" in n for n in changed)
    logs = [json.loads(line) for line in (tmp_path / "grpo" / "train_log.jsonl").read_text().splitlines()]
    assert any("rewards/toy_length/mean" in row and "kl" in row and "completions/mean_length" in row for row in logs)


def _even_mass(trainer, rows):
    """Probability the policy puts on even token ids for the first completion token, averaged over prompts."""
    from mirg_lib.generation import build_inputs

    model, proc = trainer.model, trainer.processing_class
    model.eval()
    with torch.no_grad():
        inputs = build_inputs(proc, [r["prompt"] for r in rows], [r["images"] for r in rows])
        probs = torch.softmax(model(**inputs).logits[:, -1, :].float(), -1)
    model.train()
    return probs[:, 0::2].sum(-1).mean().item()


def test_rewards_drive_the_update_the_right_way(smoke_world, nano_checkpoint, tmp_path, monkeypatch):
    """Reward the share of even token ids, then of odd ones: the policy's mass on even ids must move
    up in the first run and down in the second (the nano model's tiny logits keep the moves small,
    so the test is on their signs, which flip with the reward)."""

    def toy_even(completions, completion_ids=None, **kw):
        return [sum(1 for t in ids if t % 2 == 0) / max(1, len(ids)) for ids in completion_ids]

    def toy_odd(completions, completion_ids=None, **kw):
        return [1.0 - v for v in toy_even(completions, completion_ids)]

    monkeypatch.setitem(rewards_mod.REWARD_FUNCS, "toy_even", toy_even)
    monkeypatch.setitem(rewards_mod.REWARD_FUNCS, "toy_odd", toy_odd)
    items = _items(smoke_world)
    rows = grpo_rows(items, "zhang", "rel1000")
    moves = {}
    for name in ("toy_even", "toy_odd"):
        cfg = GRPOStageConfig(rewards={name: 1.0}, num_generations=8, prompts_per_step=4, gradient_accumulation_steps=1, temperature=1.0,
                              max_completion_length=8, max_steps=8, learning_rate=5e-2, beta=0.0, lora_r=8, lora_alpha=16, save_steps=100)
        trainer = make_trainer(cfg, nano_checkpoint, items, tmp_path / name)
        before = _even_mass(trainer, rows)
        trainer.train()
        moves[name] = _even_mass(trainer, rows) - before
    assert moves["toy_even"] > 0.002 and moves["toy_odd"] < -0.002, moves


def test_vllm_switch_names_the_install_when_vllm_is_missing(smoke_world, nano_checkpoint, tmp_path, monkeypatch):
    """use_vllm passes trl's vLLM arguments; without vLLM the stage stops before loading anything, saying how to
    install it."""
    import importlib.util

    import pytest

    from mirg_lib.config import config_hash
    from mirg_lib.grpo import vllm_args

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    cfg = GRPOStageConfig(use_vllm=True, num_generations=2, prompts_per_step=1)
    with pytest.raises(RuntimeError, match=r"vLLM is not installed.*pip install 'trl\[vllm\]'.*grpo.use_vllm: false"):
        make_trainer(cfg, nano_checkpoint, _items(smoke_world, 2), tmp_path / "grpo")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
    assert vllm_args(cfg) == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}
    server = GRPOStageConfig(use_vllm=True, vllm_mode="server", vllm_server_port=8123)
    assert vllm_args(server) == {"use_vllm": True, "vllm_mode": "server", "vllm_server_host": "0.0.0.0", "vllm_server_port": 8123}
    assert vllm_args(GRPOStageConfig()) == {}
    assert config_hash(GRPOStageConfig()) != config_hash(cfg)
    from trl import GRPOConfig

    args = GRPOConfig(output_dir=str(tmp_path / "a"), use_cpu=True, per_device_train_batch_size=2, num_generations=2, **vllm_args(server))
    assert args.use_vllm and args.vllm_mode == "server" and args.vllm_server_port == 8123


def test_the_rewards_read_rollouts_with_qwen2_vls_box_tokens_kept(nano_checkpoint, smoke_world, tmp_path):
    """trl decodes rollouts without special tokens, which strips Qwen2-VL's box and object tokens: the format
    reward of a box-token policy would be 0 on every rollout. The trainer's rewards read the token ids as the
    policy wrote them, cut at the end marker, as the evaluation does."""
    from mirg_lib.models import load_processor
    from mirg_lib.rewards import zhang_format

    tok = load_processor(nano_checkpoint).tokenizer
    reply = "<think>It is the x.</think><answer><|object_ref_start|>the x<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|></answer>"
    ids = [tok(reply + "<|im_end|>", add_special_tokens=False)["input_ids"], tok("no box<|im_end|>", add_special_tokens=False)["input_ids"]]
    trl_text = tok.batch_decode(ids, skip_special_tokens=True)
    assert "<|box_start|>" not in trl_text[0]
    kw = {"box_notation": ["tokens"] * 2}
    assert zhang_format(trl_text, **kw) == [0.0, 0.0]
    wrapped = as_written(zhang_format, tok)
    assert wrapped.__name__ == "zhang_format"  # trl logs rewards/<name>/mean
    assert wrapped(trl_text, completion_ids=ids, **kw) == [1.0, 0.0]
    assert wrapped([reply], **{"box_notation": ["tokens"]}) == [1.0]  # no ids: the completions as given
    cfg = GRPOStageConfig(num_generations=2, prompts_per_step=2, gradient_accumulation_steps=1, max_completion_length=4, max_steps=1, box_notation="tokens")
    trainer = make_trainer(cfg, nano_checkpoint, _items(smoke_world)[:2], tmp_path / "g")
    assert [f.__name__ for f in trainer.reward_funcs] == ["zhang_accuracy", "zhang_format"]
    assert trainer.reward_funcs[1](trl_text, completion_ids=ids, **kw) == [1.0, 0.0]


def test_vllm_rollouts_that_would_fail_inside_vllm_are_refused_first(smoke_world, nano_checkpoint, monkeypatch):
    """trl's known vLLM caveats for these prompts: one image per prompt on vLLM's V0 engine (< 0.8), and an image
    of more tokens than trl's colocated engine batches; each refusal says what to do, before a model loads."""
    import importlib.metadata

    import pytest

    from mirg_lib.grpo import grpo_rows, vllm_refusals
    from mirg_lib.models import load_processor

    processor = load_processor(nano_checkpoint)
    items = [it for it in load_pool_items(smoke_world.train_file) if len(it.images) > 1][:2]
    rows = grpo_rows(items, "zhang", "rel1000", processor)
    cfg = GRPOStageConfig(use_vllm=True, num_generations=2, prompts_per_step=1)
    assert vllm_refusals(GRPOStageConfig(), rows, processor) == []  # vLLM off: nothing to refuse
    versions = {"vllm": "0.7.3"}

    def version(name):
        if name in versions:
            return versions[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert any("one image per prompt" in w and ">= 0.8" in w for w in vllm_refusals(cfg, rows, processor))
    versions["vllm"] = "0.11.0"
    assert vllm_refusals(cfg, rows, processor) == []
    monkeypatch.setattr("mirg_lib.grpo.COLOCATE_BATCH_TOKENS", 3)  # the smoke world's images are a few tokens each
    refused = vllm_refusals(cfg, rows, processor)
    assert len(refused) == 1 and "max_pixels" in refused[0] and "vllm_mode: server" in refused[0]
    assert vllm_refusals(GRPOStageConfig(use_vllm=True, vllm_mode="server", num_generations=2, prompts_per_step=1), rows, processor) == []
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    with pytest.raises(ValueError, match="grpo.use_vllm cannot run these rollouts.*max_pixels"):
        make_trainer(cfg, nano_checkpoint, items, smoke_world.root / "never")
