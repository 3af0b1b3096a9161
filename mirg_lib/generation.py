"""Batched generation for any Qwen2-VL / Qwen2.5-VL checkpoint: left padding, KV cache, greedy or sampled.

Replies are decoded *with* special tokens (Qwen's box and object-reference tokens are special tokens,
and the answers are made of them), then cut at the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

END_MARKERS = ("<|im_end|>", "<|endoftext|>")


def clean_reply(text: str) -> str:
    for marker in END_MARKERS:
        i = text.find(marker)
        if i >= 0:
            text = text[:i]
    return text


def seen_size(processor, image: Image.Image) -> tuple[int, int]:
    """(width, height) in pixels of ``image`` as the model sees it, after the processor's resize.

    This is the frame of Qwen2.5-VL's absolute-pixel boxes (``abs``): read from the processor's own
    patch grid, so it is right for any ``min_pixels`` / ``max_pixels`` the checkpoint was saved with.
    """
    ip = processor.image_processor
    grid = ip(images=[image], return_tensors="pt")["image_grid_thw"][0]
    return int(grid[2]) * int(ip.patch_size), int(grid[1]) * int(ip.patch_size)


def build_inputs(processor, messages: Sequence[list[dict[str, Any]]], images: Sequence[list[Image.Image]], reply_starts: Sequence[str] | None = None):
    """Left-padded model inputs; ``reply_starts``: text each reply is forced to begin with (after the generation prompt)."""
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    if reply_starts is not None:
        texts = [t + r for t, r in zip(texts, reply_starts, strict=True)]
    flat = [img for imgs in images for img in imgs]
    return processor(text=list(texts), images=flat or None, padding=True, padding_side="left", return_tensors="pt")


@torch.no_grad()
def generate_batch(
    model,
    processor,
    messages: Sequence[list[dict[str, Any]]],
    images: Sequence[list[Image.Image]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    do_sample: bool = False,
    batch_size: int = 16,
    top_p: float = 1.0,
    seed: int | None = None,
    reply_starts: Sequence[str] | None = None,
) -> list[str]:
    """One reply per (messages, images) pair, in order. With ``reply_starts``, each reply is forced to begin
    with its text, and what is returned is what the model wrote after it."""
    if len(messages) != len(images):
        raise ValueError(f"{len(messages)} prompts but {len(images)} image lists")
    was_training = model.training
    model.eval()
    tok = processor.tokenizer
    eos = [tok.convert_tokens_to_ids(t) for t in END_MARKERS if tok.convert_tokens_to_ids(t) is not None]
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(messages), batch_size):
        starts = None if reply_starts is None else reply_starts[start : start + batch_size]
        inputs = build_inputs(processor, messages[start : start + batch_size], images[start : start + batch_size], starts).to(device)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "eos_token_id": eos, "pad_token_id": tok.pad_token_id, "use_cache": True}
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        ids = model.generate(**inputs, **gen_kwargs)
        new = ids[:, inputs["input_ids"].shape[1] :]
        out.extend(clean_reply(t) for t in tok.batch_decode(new, skip_special_tokens=False))
    if was_training:
        model.train()
    return out
