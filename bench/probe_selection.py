"""Probe: can a base checkpoint that names and boxes a lone object learn to *pick* the described one among a few?
(docs/base_model.md: the selection hop)

    # fine-tune on referring items with 2 objects (objects_per_image 1,1; single_refer adds one)
    .venv/bin/python bench/probe_selection.py --init runs/embedded/base_model/trainer/checkpoint-2250 --objs 1,1
    # ... half of each batch a grounded listing of every object (2-3 per image), in random order
    .venv/bin/python bench/probe_selection.py --init ... --objs 1,1 --list-frac 0.5 --list-objs 1,2
    # ... half of each batch a one-word question about the object another attribute singles out
    #     ("What colour is the star?"): selection with the simplest read-out
    .venv/bin/python bench/probe_selection.py --init ... --objs 1,1 --query-frac 0.5 --query-objs 1,3

Items are drawn here from the profile's world (its knobs, objects per image changed) with seeds the data
stage never uses. A plain PyTorch loop (AdamW, linear warm-up over 50 steps then constant, batch 32) over
``mirg_lib.base_model``'s tensors and loss; every ``--eval-every`` steps it prints greedy Acc@0.5 on 100
held-out few-object referring items and on the profile's single-image test, with how many answers of each box
*some* object of the scene (in brackets; IoU >= 0.5: boxing works, choosing does not when this is far above
the target's rate), and for ``--query-frac`` the first answer token's accuracy on 200 held-out questions.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_base_training import first_token_accuracy  # noqa: E402
from score_base_checkpoints import on_some_object  # noqa: E402

from mirg_lib.base_model import CompletionCollator, PrecomputedVL  # noqa: E402
from mirg_lib.boxes import iou_xyxy  # noqa: E402
from mirg_lib.config import load_params, stage_config  # noqa: E402
from mirg_lib.items import Item, load_bench_items  # noqa: E402
from mirg_lib.models import load_model, load_processor  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.world import DataConfig, generate  # noqa: E402
from mirg_lib.world.build import scene_row  # noqa: E402
from mirg_lib.world.objects import SIZE_WORDS  # noqa: E402
from mirg_lib.world.tasks import grounded_caption  # noqa: E402

LIST_QUESTION = "List every object in the image with its bounding box."


def _objs(spec: str) -> tuple[int, int]:
    lo, hi = (int(v) for v in spec.split(","))
    return lo, hi


def _drawn(s, folder: Path, name: str, task: str, question: str, reference: str) -> Item:
    """An item of sample ``s`` (its image saved as ``name``.png, its scene attached) with its own question and answer."""
    f = folder / f"{name}.png"
    s.images[0].save(f)
    return Item(name, task, [f], question, s.answer_rel(), 1, scene=scene_row(name, "probe", 0, s), reference=reference)


def refer_items(knobs, n: int, seed0: int, folder: Path, tag: str) -> list[Item]:
    """``n`` single_refer items."""
    out = []
    for i in range(n):
        s = generate("single_refer", seed0 + i, knobs)
        out.append(_drawn(s, folder, f"{tag}{i:05d}", "single_refer", s.question, s.answer_text()))
    return out


def list_items(knobs, n: int, rng: random.Random, folder: Path, order: str) -> list[Item]:
    """Every object named in full and boxed, Qwen-VL's grounded-caption form, in random or reading order."""
    out = []
    for i in range(n):
        s = generate("single_refer", 20_000_000 + i, knobs)
        objs = list(s.scenes[0])
        if order == "random":
            rng.shuffle(objs)
        else:
            objs.sort(key=lambda o: (o.box[1], o.box[0]))
        size = (s.images[0].width, s.images[0].height)
        out.append(_drawn(s, folder, f"li{i:05d}", "list", LIST_QUESTION, "".join(grounded_caption(o, size) for o in objs)))
    return out


def query_items(knobs, n: int, seed0: int, rng: random.Random, folder: Path, tag: str) -> list[Item]:
    """One-word questions about an object that another attribute singles out (its shape or its colour)."""
    out, i = [], 0
    while len(out) < n:
        i += 1
        s = generate("single_refer", seed0 + i, knobs)
        objs = s.scenes[0]
        t = rng.choice(objs)
        others = [o for o in objs if o is not t]
        qs = []
        if all(o.shape != t.shape for o in others):
            qs += [(f"What colour is the {t.shape}?", t.colour), (f"What pattern does the {t.shape} have?", t.pattern), (f"What size is the {t.shape}?", SIZE_WORDS[t.size])]
        if all(o.colour != t.colour for o in others):
            qs += [(f"What shape is the {t.colour} object?", t.shape)]
        if not qs:
            continue
        q, ans = rng.choice(qs)
        out.append(_drawn(s, folder, f"{tag}{len(out):05d}", "query", q, ans))
    return out


@torch.no_grad()
def hit_rates(model, processor, items: list[Item]) -> tuple[float, float]:
    """% of greedy answers on the target (IoU >= 0.5), and on *some* object of the item's scene."""
    from PIL import Image

    from mirg_lib.generation import generate_batch
    from mirg_lib.parsing import parse_response
    from mirg_lib.prompts import user_turn

    model.eval()
    replies = generate_batch(model, processor, [user_turn(1, it.question) for it in items], [[Image.open(it.images[0]).convert("RGB")] for it in items], max_new_tokens=24, batch_size=50)
    model.train()
    found = [parse_response(r).box for r in replies]
    target = sum(f is not None and iou_xyxy([v / 1000 for v in f.values], it.answer) >= 0.5 for f, it in zip(found, items, strict=True))
    anyobj = sum(on_some_object(f, it) for f, it in zip(found, items, strict=True))
    return 100.0 * target / len(items), 100.0 * anyobj / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--init", required=True, help="a base checkpoint folder (model and processor)")
    ap.add_argument("--objs", default="1,1", help="objects_per_image of the referring items (single_refer adds one)")
    ap.add_argument("--n", type=int, default=3000, help="training referring items")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--list-frac", type=float, default=0.0, help="share of each batch that is grounded listing")
    ap.add_argument("--list-objs", default="1,3")
    ap.add_argument("--order", choices=["random", "reading"], default="random")
    ap.add_argument("--query-frac", type=float, default=0.0, help="share of each batch that is one-word attribute questions")
    ap.add_argument("--query-objs", default="1,3")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/probe_selection", help="where the drawn images go")
    ap.add_argument("--save", default="", help="save the fine-tuned model and processor here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    params = load_params(a.profile)
    knobs = stage_config(DataConfig, params, "data").knobs()
    folder = Path(a.work)
    folder.mkdir(parents=True, exist_ok=True)
    t = time.time()
    rknobs = dataclasses.replace(knobs, objects_per_image=_objs(a.objs))
    train, test = refer_items(rknobs, a.n, 10_000_000, folder, "tr"), refer_items(rknobs, 100, 15_000_000, folder, "te")
    rng_items = random.Random(1)
    litems = list_items(dataclasses.replace(knobs, objects_per_image=_objs(a.list_objs)), 3000, rng_items, folder, a.order) if a.list_frac else []
    qknobs = dataclasses.replace(knobs, objects_per_image=_objs(a.query_objs))
    qitems = query_items(qknobs, 3000, 50_000_000, rng_items, folder, "qu") if a.query_frac else []
    qtest = query_items(qknobs, 200, 60_000_000, rng_items, folder, "qt") if a.query_frac else []
    real_test = load_bench_items(stage_dir(params.profile, "data") / "test" / "single_refer.json")
    model, proc = load_model(a.init, dtype=torch.float32), load_processor(a.init)
    data = PrecomputedVL(train, proc, [it.reference for it in train])
    ldata = PrecomputedVL(litems, proc, [it.reference for it in litems]) if litems else None
    qdata = PrecomputedVL(qitems, proc, [it.reference for it in qitems]) if qitems else None
    qtdata = PrecomputedVL(qtest, proc, [it.reference for it in qtest]) if qitems else None
    print(f"drew and encoded the items in {time.time() - t:.0f} s", flush=True)
    col = CompletionCollator(proc.tokenizer.pad_token_id, model.config.image_token_id)

    def report(step: int) -> None:
        if qtdata is not None:
            print(f"step {step} query first-token accuracy {first_token_accuracy(model, col, qtdata):.1f} %", flush=True)
        target, anyobj = hit_rates(model, proc, test)
        real, real_any = hit_rates(model, proc, real_test)
        print(f"step {step} few-object Acc@0.5 {target:.1f} % (some object boxed {anyobj:.1f} %), single-image test {real:.1f} % ({real_any:.1f} %)", flush=True)

    report(0)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    rng = random.Random(0)
    t0 = time.time()
    model.train()
    for step in range(1, a.steps + 1):
        nl, nq = int(32 * a.list_frac), int(32 * a.query_frac)
        ex = [data[i] for i in rng.sample(range(len(data)), 32)]
        ex = ex[: len(ex) - nl] + ([ldata[i] for i in rng.sample(range(len(ldata)), nl)] if nl else [])
        ex = ex[: len(ex) - nq] + ([qdata[i] for i in rng.sample(range(len(qdata)), nq)] if nq else [])
        loss = model(**col(ex)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
        if step % a.eval_every == 0:
            report(step)
    if a.save:
        model.save_pretrained(a.save)
        proc.save_pretrained(a.save)


if __name__ == "__main__":
    main()
