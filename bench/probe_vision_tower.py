"""Probe: can the small Qwen2-VL vision tower alone learn to name the shape of a lone object? (docs/base_model.md)

    .venv/bin/python bench/probe_vision_tower.py --steps 3000 --lr 1e-3

The tower of ``create_small_model(preset)`` (transformers' Qwen2-VL vision transformer with its patch merger),
max-pooled over its output tokens (``base_model.pooled_vision_tokens``, as the stage's vision warm-up), and a linear head trained with cross-entropy on the shape: the most direct
signal the tower can get. Same one-object images as ``probe_base_training.py --mode shape``; compare with the
convolutional control ``probe_shape_cnn.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probe_base_training import one_object_items  # noqa: E402

from mirg_lib.base_model import pooled_vision_tokens  # noqa: E402
from mirg_lib.models import create_small_model, pixel_stats  # noqa: E402


def add_shape_args(ap: argparse.ArgumentParser) -> None:
    """The one-object images and the loop's sizes, shared with ``probe_shape_cnn.py``."""
    ap.add_argument("--cue", type=float, default=150.0)
    ap.add_argument("--cue-kind", default="coord")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--object-scale", type=float, default=1.0)
    ap.add_argument("--train-items", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--grid", type=int, default=0, help="put each object's top-left corner on this pixel grid (14: the patch grid)")
    ap.add_argument("--snap-sides", action="store_true", help="with --grid: object sides are multiples of the grid too")


def shape_items(args: argparse.Namespace):
    """Training and test items (the same images as ``probe_base_training.py``'s) and the sorted shape names."""
    train, test = one_object_items(args, 300)
    return train, test, sorted({it.scene["shape"] for it in train})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    add_shape_args(ap)
    ap.add_argument("--save", default="", help="write the trained tower here (safetensors) with its pixel statistics beside it (.json), for probe_base_training.py --vision-init")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, test, classes = shape_items(args)
    mean, std = pixel_stats([it.images[0] for it in train])
    model, proc = create_small_model(args.preset, [it.question for it in train[:50]] + classes * 10, "qwen2_vl", image_mean=mean, image_std=std)
    visual = model.model.visual
    head = torch.nn.Linear(model.config.text_config.hidden_size, len(classes))
    params = list(visual.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def encode(items):
        out = proc.image_processor([Image.open(it.images[0]).convert("RGB") for it in items], return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def logits(pv, grid):
        return head(pooled_vision_tokens(visual, pv, grid))

    ytr = torch.tensor([classes.index(it.scene["shape"]) for it in train])
    yte = torch.tensor([classes.index(it.scene["shape"]) for it in test])
    pv_te, g_te = encode(test)
    top = Counter(yte.tolist()).most_common(1)[0][1]
    print(f"majority class: {100.0 * top / len(yte):.1f} % of the test items", flush=True)
    rng = random.Random(0)
    t = time.time()
    for step in range(1, args.steps + 1):
        idx = rng.sample(range(len(train)), args.batch)
        loss = torch.nn.functional.cross_entropy(logits(*encode([train[i] for i in idx])), ytr[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.eval_every == 0:
            with torch.no_grad():
                acc = (logits(pv_te, g_te).argmax(-1) == yte).float().mean().item()
            print(f"step {step} loss {loss.item():.3f} shape accuracy {100 * acc:.1f} % ({time.time() - t:.0f} s)", flush=True)
    if args.save:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in visual.state_dict().items()}, args.save)
        Path(args.save).with_suffix(".json").write_text(json.dumps({"image_mean": mean, "image_std": std, "preset": args.preset}))


if __name__ == "__main__":
    main()
