"""Probe: does an untrained small model use its images at all? Memorise the colours of 16 one-object images.

    .venv/bin/python bench/probe_memorise.py --normalise clip   # Qwen's CLIP constants: a plateau
    .venv/bin/python bench/probe_memorise.py --normalise data   # the images' own statistics

Prints the training loss and the loss with the images shuffled across the batch (when the model uses
its images, the second rises while the first falls). docs/base_model.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_base_training import localisation_items  # noqa: E402

from mirg_lib.base_model import CompletionCollator, PrecomputedVL  # noqa: E402
from mirg_lib.models import create_small_model, pixel_stats  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--normalise", choices=["clip", "data"], default="data")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    torch.manual_seed(0)
    items = localisation_items(16, args.size, 0.0, 0, Path("/tmp/mirg-probe-memorise"))
    answers = [it.scene["colour"] for it in items]
    mean = std = None
    if args.normalise == "data":
        mean, std = pixel_stats(it.images[0] for it in items)
    model, proc = create_small_model(args.preset, [it.question for it in items] + answers * 20, "qwen2_vl", image_mean=mean, image_std=std)
    batch = CompletionCollator(proc.tokenizer.pad_token_id, model.config.image_token_id)([*PrecomputedVL(items, proc, answers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(args.steps + 1):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % 25 == 0:
            with torch.no_grad():
                px = batch["pixel_values"].view(len(items), -1, batch["pixel_values"].shape[-1])  # one image each, same size
                shuffled = dict(batch, pixel_values=px[torch.roll(torch.arange(len(items)), 1)].reshape(batch["pixel_values"].shape))
                print(f"step {step} loss {loss.item():.3f} with shuffled images {model(**shuffled).loss.item():.3f}", flush=True)


if __name__ == "__main__":
    main()
