"""Control for the shape probe: does a small convolutional network, trained the same number of steps on the
same one-object images, learn to name the shape? (docs/base_model.md)

    .venv/bin/python bench/probe_shape_cnn.py --cue 150 --cue-kind coord --steps 600

If it does and the small Qwen2-VL does not, the images carry the shape and the from-scratch vision tower is
what fails to pick it up in the steps a CPU affords.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_vision_tower import add_shape_args, shape_items  # noqa: E402


def tensors(items, classes):
    x = np.stack([np.asarray(Image.open(it.images[0]).convert("RGB"), dtype=np.float32) / 255.0 for it in items])
    x = torch.from_numpy(x).permute(0, 3, 1, 2)
    y = torch.tensor([classes.index(it.scene["shape"]) for it in items])
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    args = ap.parse_args()
    torch.manual_seed(0)
    train, test, classes = shape_items(args)
    xtr, ytr = tensors(train, classes)
    xte, yte = tensors(test, classes)
    mean, std = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    top = Counter(yte.tolist()).most_common(1)[0][1]
    print(f"majority class: {100.0 * top / len(yte):.1f} % of the test items", flush=True)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(64, len(classes)),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    rng = random.Random(0)
    t = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.tensor(rng.sample(range(len(ytr)), args.batch))
        loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0:
            with torch.no_grad():
                acc = (net(xte).argmax(-1) == yte).float().mean().item()
            print(f"step {step} loss {loss.item():.3f} shape accuracy {100 * acc:.1f} % ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
