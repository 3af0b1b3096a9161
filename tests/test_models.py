"""The model factory: transformers' own Qwen2-VL / Qwen2.5-VL classes at a small size, saved and loaded
as ordinary checkpoint folders; batched generation equals one-at-a-time generation."""

import json

import pytest
import torch
from PIL import Image

from mirg_lib.generation import generate_batch
from mirg_lib.models import PRESETS, create_small_model, load_model, load_processor, save_checkpoint

CORPUS = ["Please find the bounding box of the red striped star.", "<|box_start|>(316,58),(764,999)<|box_end|>", "It's in the third image."] * 5


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_build_save_load_round_trip(arch, tmp_path):
    model, proc = create_small_model("nano", CORPUS, arch, seed=0)
    assert type(model).__name__ == {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}[arch]
    path = save_checkpoint(model, proc, tmp_path / "ckpt", extra={"preset": "nano"})
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    assert json.loads((path / "config.json").read_text())["model_type"] == arch
    m2, p2 = load_model(path), load_processor(path)
    for (n1, a), (n2, b) in zip(model.state_dict().items(), m2.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b)
    img = Image.new("RGB", (112, 84), (120, 130, 140))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Where is it?"}]}]
    text = p2.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2 and text.endswith("<|im_start|>assistant\n")
    inputs = p2(text=[text], images=[img, img], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8], [1, 6, 8]]
    out = m2(**inputs)
    assert out.logits.shape[-1] == len(p2.tokenizer) and torch.isfinite(out.logits).all()


def test_tokenizer_splits_digits_and_keeps_qwen_tokens():
    _, proc = create_small_model("nano", CORPUS, "qwen2_vl")
    tok = proc.tokenizer
    pieces = tok.tokenize("<|box_start|>(316,58),(764,999)<|box_end|>")
    assert pieces[0] == "<|box_start|>" and pieces[-1] == "<|box_end|>"
    assert [p for p in pieces if p.isdigit()] == list("31658764999")
    for t in ("<|vision_start|>", "<|image_pad|>", "<|object_ref_start|>", "<|im_end|>", "<think>", "</answer>", "<bbox_id>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id and len(tok.tokenize(t)) == 1
    assert tok.decode(tok("<think>a (1,2)</think>")["input_ids"]) == "<think>a (1,2)</think>"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nope")


def test_presets_are_consistent():
    for name, p in PRESETS.items():
        assert p.hidden_size % p.num_attention_heads == 0, name
        assert sum(p.mrope_section()) == p.head_dim // 2, name


def test_batched_greedy_generation_matches_one_at_a_time(nano_checkpoint, smoke_world):
    from mirg_lib.items import load_bench_items

    model, proc = load_model(nano_checkpoint), load_processor(nano_checkpoint)
    items = load_bench_items(smoke_world.test_file)[::5][:6]  # 2-6 images each, different lengths
    msgs = [[{"role": "user", "content": [{"type": "image"} for _ in it.images] + [{"type": "text", "text": it.question}]}] for it in items]
    imgs = [[Image.open(p).convert("RGB") for p in it.images] for it in items]
    batched = generate_batch(model, proc, msgs, imgs, max_new_tokens=10, batch_size=6)
    single = [generate_batch(model, proc, [m], [i], max_new_tokens=10, batch_size=1)[0] for m, i in zip(msgs, imgs, strict=True)]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)
    # a forced reply start: the model goes on from it, and only what it wrote is returned
    assert generate_batch(model, proc, msgs, imgs, max_new_tokens=10, batch_size=6, reply_starts=[""] * 6) == batched
    starts = ["the red", "<|box_start|>(", "", "a", "image 2", "("]
    forced = generate_batch(model, proc, msgs, imgs, max_new_tokens=10, batch_size=4, reply_starts=starts)
    from mirg_lib.generation import build_inputs

    ids = build_inputs(proc, msgs[:1], imgs[:1], starts[1:2])["input_ids"][0].tolist()
    assert ids[-2:] == proc.tokenizer.convert_tokens_to_ids(["<|box_start|>", "("]) and len(forced) == 6
    with pytest.raises(ValueError):
        build_inputs(proc, msgs[:2], imgs[:2], starts[:1])


def test_pixel_stats_and_a_data_normalised_processor_round_trip(tmp_path):
    from mirg_lib.models import pixel_stats

    paths = []
    for i, colour in enumerate([(255, 0, 51), (0, 0, 153)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 10), colour).save(p)
        paths.append(p)
    mean, std = pixel_stats(paths)
    assert mean == pytest.approx([0.5, 0.0, 0.4], abs=1e-4)
    assert std == pytest.approx([0.5, 0.001, 0.2], abs=1e-4)  # a constant channel gets a floor, not 0
    assert pixel_stats(paths, limit=1)[0] == pytest.approx([1.0, 0.0, 0.2], abs=1e-4)
    with pytest.raises(ValueError, match="no images"):
        pixel_stats([])
    model, proc = create_small_model("nano", CORPUS, "qwen2_vl", image_mean=mean, image_std=std)
    p2 = load_processor(save_checkpoint(model, proc, tmp_path / "ckpt"))
    assert list(p2.image_processor.image_mean) == mean and list(p2.image_processor.image_std) == std
    # the processor applies them: red 1.0 with mean 0.5, std 0.5 becomes 1.0 (CLIP constants would give 1.93)
    px = p2.image_processor(images=[Image.open(paths[0])], return_tensors="pt")["pixel_values"]
    assert px.view(-1, 3, 2, 14, 14)[:, 0].mean().item() == pytest.approx(1.0, abs=1e-3)


def test_memory_estimate_counts_what_peft_trains_and_meets_the_measured_reference(nano_checkpoint):
    """bench/memory_7b.py (the memory table of docs/real_data.md, estimated): its LoRA count is peft's own on a real model,
    and its model of a GRPO step lands within 10 % of the one measurement there is (36.6 GiB, the GRPO speed reference)."""
    import importlib.util

    from peft import get_peft_model

    from mirg_lib.models import lora_config
    from mirg_lib.paths import ROOT

    spec = importlib.util.spec_from_file_location("memory_7b", ROOT / "bench" / "memory_7b.py")
    mem = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["memory_7b"] = mem  # its dataclasses look their module up
    spec.loader.exec_module(mem)
    model = load_model(nano_checkpoint)
    t = model.config.text_config
    arch = mem.Arch(hidden=t.hidden_size, mlp=t.intermediate_size, layers=t.num_hidden_layers,
                    kv=t.num_key_value_heads * (t.hidden_size // t.num_attention_heads), vocab=t.vocab_size)
    peft_model = get_peft_model(model, lora_config(8, 16, 0.0))
    assert mem.lora_params(arch, 8) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    measured = mem.estimate(mem.SETTINGS[0])["peak"]
    assert abs(measured - 36.6) / 36.6 < 0.10
    no_gc, gc = mem.estimate(mem.SETTINGS[2]), mem.estimate(mem.SETTINGS[1])
    assert no_gc["activations"] > 10 * gc["activations"] and no_gc["weights"] == gc["weights"]
