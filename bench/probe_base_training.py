"""Probe: can the small base model learn to ground from scratch on this machine? (docs/base_model.md)

    # referring expressions from a world built by `make data` (or any data folder of the data stage)
    .venv/bin/python bench/probe_base_training.py --mode refer --data runs/embedded/data --steps 300 --lr 1e-3 --schedule cosine
    # plain localisation: one object per image, drawn here
    .venv/bin/python bench/probe_base_training.py --mode localise --cue 150 --cue-kind coord --normalise data --steps 750 --schedule constant
    # one-word diagnostics on the same one-object images: the object's colour or shape, or its centre's x tenth
    .venv/bin/python bench/probe_base_training.py --mode colour --steps 1500 --batch 16 --eval-every 100

A plain PyTorch loop over precomputed tensors (the same tensors and loss as ``mirg_lib.base_model``'s
Trainer: completion-only cross-entropy on the box tokens), printing the loss, seconds and, every
``--eval-every`` steps, greedy Acc@0.5 on held-out items (``colour`` / ``xbin``: the accuracy of the
first answer token, beside the majority-class rate).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib.base_model import CompletionCollator, PrecomputedVL  # noqa: E402
from mirg_lib.boxes import Box, Frame, format_box_tokens, iou_xyxy  # noqa: E402
from mirg_lib.items import Item, load_bench_items, load_pool_items  # noqa: E402
from mirg_lib.models import create_small_model, pixel_stats  # noqa: E402
from mirg_lib.parsing import parse_response  # noqa: E402


def apply_cue(img, clean, kind: str, amp: float):
    """A position cue over a rendered image: ``coord`` the background's red and blue set to 50 + amp * x and
    50 + amp * y (the world's ``position_cue_kind: coord``), ``image`` a linear red (x) / blue (y) ramp over every pixel,
    ``image-quadratic`` the same with a quadratic ramp (its local slope gives the position whatever the
    colour), ``object-quadratic`` that ramp on the object's pixels only (``clean``: the image without it)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(img, dtype=np.float32).copy()
    h, w = arr.shape[:2]
    xs = np.arange(w, dtype=np.float32) / max(1, w - 1)
    ys = np.arange(h, dtype=np.float32) / max(1, h - 1)
    if kind == "image":
        fx, fy = xs - 0.5, ys - 0.5
    else:
        fx, fy = xs**2 - 1 / 3, ys**2 - 1 / 3
    if kind == "coord":
        # CoordConv-style: the background's red and blue *are* the coordinates (fixed, full range), not a tint
        c = np.asarray(clean, dtype=np.float32)
        bg = (np.abs(arr - c).sum(-1) == 0).astype(np.float32)
        med = np.median(c.reshape(-1, 3), axis=0)
        arr[:, :, 0] += bg * (50 + amp * xs[None, :] - med[0])
        arr[:, :, 2] += bg * (50 + amp * ys[:, None] - med[2])
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    mask = 1.0
    if kind == "object-quadratic":
        mask = (np.abs(arr - np.asarray(clean, dtype=np.float32)).sum(-1) > 0).astype(np.float32)
    arr[:, :, 0] += mask * amp * fx[None, :]
    arr[:, :, 2] += mask * amp * fy[:, None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def localisation_items(n: int, size: int, cue: float, seed: int, folder: Path, cue_kind: str = "background", scale: float = 1.0, grid: int = 0, snap_sides: bool = False) -> list[Item]:
    from mirg_lib.world.objects import (
        BACKGROUNDS,
        COLOURS,
        PATTERNS,
        SHAPES,
        SIZES,
        Obj,
        object_side,
        place_box,
        render,
    )

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        s = rng.choice(SIZES)
        side = object_side(rng, s, size, scale)
        box = place_box(rng, side, side, size, size, [])
        if grid:  # the box's corner (with --snap-sides its sides too) on the vision tower's patch grid
            w = max(grid, grid * round(side / grid)) if snap_sides else box[2] - box[0]
            x, y = min(size - w, grid * round(box[0] / grid)), min(size - w, grid * round(box[1] / grid))
            box = (x, y, x + w, y + w)
        o = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(PATTERNS), s, box)
        p = folder / f"{seed}_{i}.png"
        bg, noise_seed = rng.choice(BACKGROUNDS), rng.randrange(2**31)
        if cue_kind == "background" or not cue:
            render(size, size, [o], bg, 6.0, noise_seed, cue=cue).save(p)
        else:
            apply_cue(render(size, size, [o], bg, 6.0, noise_seed), render(size, size, [], bg, 6.0, noise_seed), cue_kind, cue).save(p)
        rel = Box(*box, frame=Frame.ABS, size=(size, size)).to(Frame.REL1)
        items.append(Item(f"{seed}_{i}", "localise", [p], "Please provide the bounding box coordinate of the object.", list(rel.coords), 1,
                          scene=o.to_json(), reference=format_box_tokens(rel)))
    return items


def one_object_items(args: argparse.Namespace, n_test: int) -> tuple[list[Item], list[Item]]:
    """``--train-items`` training and ``n_test`` test items of one object each, drawn (once per setting) under /tmp
    from the ``--cue``, ``--cue-kind``, ``--size`` and ``--object-scale`` arguments."""
    grid, snap = getattr(args, "grid", 0), getattr(args, "snap_sides", False)
    folder = Path(f"/tmp/mirg-probe-localise-{args.cue_kind}-{args.cue:g}-{args.size}-{args.object_scale:g}" + (f"-grid{grid}" if grid else "") + ("-snap" if snap else ""))
    train = localisation_items(args.train_items, args.size, args.cue, 0, folder, args.cue_kind, args.object_scale, grid, snap)
    return train, localisation_items(n_test, args.size, args.cue, 1, folder, args.cue_kind, args.object_scale, grid, snap)


WORD_TARGETS = {
    "colour": lambda it: it.scene["colour"],
    "shape": lambda it: it.scene["shape"],
    "xbin": lambda it: str(min(9, int(5 * (it.answer[0] + it.answer[2])))),
}


@torch.no_grad()
def first_token_accuracy(model, collate, data: PrecomputedVL) -> float:
    model.eval()
    ok = n = 0
    for start in range(0, len(data), 50):
        b = collate([data[i] for i in range(start, min(start + 50, len(data)))])
        logits = model(**b).logits
        for j, row in enumerate(b["labels"]):
            pos = int((row != -100).nonzero()[0])
            ok += int(logits[j, pos - 1].argmax() == row[pos])
            n += 1
    model.train()
    return 100.0 * ok / n


@torch.no_grad()
def accuracy(model, collate, data: PrecomputedVL, items: list[Item], pad: int) -> float:
    model.eval()
    ok = 0
    for start in range(0, len(items), 25):
        exs = [data[i] for i in range(start, min(start + 25, len(items)))]
        L = max(len(e["prompt_ids"]) for e in exs)
        ids = torch.full((len(exs), L), pad)
        att = torch.zeros((len(exs), L), dtype=torch.long)
        for j, e in enumerate(exs):
            ids[j, L - len(e["prompt_ids"]) :] = e["prompt_ids"]
            att[j, L - len(e["prompt_ids"]) :] = 1
        out = model.generate(input_ids=ids, attention_mask=att, mm_token_type_ids=(ids == collate.image_token_id).long(),
                             pixel_values=torch.cat([e["pixel_values"] for e in exs]), image_grid_thw=torch.cat([e["image_grid_thw"] for e in exs]),
                             max_new_tokens=24, do_sample=False)
        for j, o in enumerate(out):
            p = parse_response(data.tokenizer.decode(o[L:]))
            if p.box is not None and iou_xyxy([v / 1000 for v in p.box.values], items[start + j].answer) >= 0.5:
                ok += 1
    model.train()
    return 100.0 * ok / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["refer", "localise", "colour", "shape", "xbin"], default="refer")
    ap.add_argument("--data", default="runs/embedded/data")
    ap.add_argument("--cue", type=float, default=0.0, help="position cue amplitude, grey levels")
    ap.add_argument("--cue-kind", choices=["background", "image", "image-quadratic", "object-quadratic", "coord"], default="background")
    ap.add_argument("--train-items", type=int, default=6000)
    ap.add_argument("--normalise", choices=["clip", "data"], default="clip", help="pixel normalisation: Qwen's CLIP constants or the training images' own")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--object-scale", type=float, default=1.0, help="the world's object_scale for the one-object items")
    ap.add_argument("--grid", type=int, default=0, help="one-object items: each object's corner on this pixel grid (14: the patch grid)")
    ap.add_argument("--snap-sides", action="store_true", help="with --grid: object sides are multiples of the grid too")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--init", default="", help="start from this checkpoint folder (model and processor) instead of a new model")
    ap.add_argument("--vision-init", default="", help="a new model whose vision tower is this one (probe_vision_tower.py --save), with its pixel statistics")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.mode == "refer":
        train = [it for it in load_pool_items(Path(args.data) / "train" / "mgrounding.json") if it.task == "single_refer"]
        test = load_bench_items(Path(args.data) / "test" / "single_refer.json")
    else:
        train, test = one_object_items(args, 300 if args.mode in WORD_TARGETS else 100)
    if args.mode in WORD_TARGETS:
        for it in train + test:
            it.reference = WORD_TARGETS[args.mode](it)
        top = Counter(it.reference for it in test).most_common(1)[0][1]
        print(f"majority class: {100.0 * top / len(test):.1f} % of the test items", flush=True)
    corpus = [it.question for it in train[:200]] + [it.reference or "" for it in train]
    mean = std = None
    if args.vision_init:
        stats = json.loads(Path(args.vision_init).with_suffix(".json").read_text())
        mean, std = stats["image_mean"], stats["image_std"]
    elif args.normalise == "data":
        mean, std = pixel_stats([it.images[0] for it in train])
        print(f"pixel normalisation from the training images: mean {mean} std {std}", flush=True)
    if args.init:
        from mirg_lib.models import load_model, load_processor

        model, processor = load_model(args.init, dtype=torch.float32), load_processor(args.init)
    else:
        model, processor = create_small_model(args.preset, corpus, "qwen2_vl", image_mean=mean, image_std=std)
        if args.vision_init:
            from safetensors.torch import load_file

            model.model.visual.load_state_dict(load_file(args.vision_init))
            print(f"vision tower from {args.vision_init}", flush=True)
    t = time.time()
    data = PrecomputedVL(train, processor, [it.reference or "" for it in train])
    tdata = PrecomputedVL(test, processor, [it.reference if args.mode in WORD_TARGETS else "" for it in test])
    tdata.tokenizer = processor.tokenizer
    print(f"encoded {len(train)} + {len(test)} items in {time.time() - t:.1f} s", flush=True)
    collate = CompletionCollator(processor.tokenizer.pad_token_id, model.config.image_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def factor(s: int) -> float:
        w = min(1.0, (s + 1) / args.warmup)
        return w * (0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)) if args.schedule == "cosine" else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rng = random.Random(0)
    model.train()
    t0 = time.time()
    for step in range(1, args.steps + 1):
        loss = model(**collate([data[i] for i in rng.sample(range(len(data)), args.batch)])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0 or step == 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            if args.mode in WORD_TARGETS:
                print(f"step {step} first-token accuracy {first_token_accuracy(model, collate, tdata):.1f} %", flush=True)
            else:
                print(f"step {step} Acc@0.5 {accuracy(model, collate, tdata, test, processor.tokenizer.pad_token_id):.1f} %", flush=True)


if __name__ == "__main__":
    main()
