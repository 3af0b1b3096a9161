"""Does a model still box the right object when text comes before its box? (docs/base_model.md)

    .venv/bin/python tools/box_after_text.py checkpoints/embedded-base --items 100

On the first ``--items`` single-image referring test items of a profile, the reply is *forced* to start
with a prefix and the model writes the rest (greedy, 30 new tokens); Acc@0.5 of the box it writes:

- ``none``: the plain prompt, nothing forced (the evaluation stage's setting);
- ``name``: the expression between object-reference tokens (the describe items' ``name then box`` form);
- ``words-K``: K words of a fixed sentence about the world, then ``<|box_start|>``;
- ``zhang`` / ``mirg_text`` / ``mirg_bbox``: the recipe's prompt and the error-free scripted teacher's own
  reply for the item, cut where the answer's box starts (the reasoning is right; only the box is the model's).

A base that grounds only from the answer's first positions scores well on ``none`` and falls with K.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib.base_model import LANGUAGE_STYLES, REASONING_STYLES  # noqa: E402
from mirg_lib.config import load_params  # noqa: E402
from mirg_lib.generation import generate_batch  # noqa: E402
from mirg_lib.items import load_bench_items  # noqa: E402
from mirg_lib.models import load_model, load_processor  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.prompts import user_turn, with_suffix  # noqa: E402
from mirg_lib.scoring import Prediction, score_item  # noqa: E402
from mirg_lib.teacher import ScriptedTeacher, TeacherItem  # noqa: E402

SENTENCE = "the shapes are drawn on a coloured background and each one has a colour and a texture".split()
BOX_MARK = {"zhang": '"bbox_2d": [', "mirg_text": "<|box_start|>", "mirg_bbox": "<|box_start|>"}


def forced_prefixes(items, records, words: list[int]) -> dict[str, list[tuple[str, str]]]:
    """For each variant, each item's (prompt recipe, forced reply start)."""
    exprs = [re.search(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", r.question).group(1) for r in records]
    out = {"none": [("plain", "")] * len(items), "name": [("plain", f"<|object_ref_start|>{e}<|object_ref_end|><|box_start|>") for e in exprs]}
    for k in words:
        out[f"words-{k}"] = [("plain", " ".join((SENTENCE * (k // len(SENTENCE) + 1))[:k]) + " <|box_start|>")] * len(items)
    teacher = ScriptedTeacher(error_rate=0.0, seed=0)
    for style in REASONING_STYLES:
        rows = []
        for it in items:
            reply = teacher.answer([TeacherItem(it.id, it.task, it.images, it.question, it.scene)], 1, style)[0][0]
            at = reply.rfind(BOX_MARK[style])  # the answer's box (MIRG-RL's <bbox_id> form also boxes inside its reasoning)
            rows.append((LANGUAGE_STYLES[style], reply[: at + len(BOX_MARK[style])]))
        out[style] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--words", default="5,10,20,40")
    ap.add_argument("--batch-size", type=int, default=50)
    a = ap.parse_args()
    bench = stage_dir(load_params(a.profile).profile, "data") / "test" / "single_refer.json"
    items = load_bench_items(bench)[: a.items]
    from mirg_lib.formats import load_mig_bench

    records = load_mig_bench(bench)[: a.items]
    model, proc = load_model(a.checkpoint, dtype=torch.float32), load_processor(a.checkpoint)
    images = [[Image.open(it.images[0]).convert("RGB")] for it in items]
    print(f"{a.checkpoint}: {len(items)} single-image referring items of {bench}")
    for name, rows in forced_prefixes(items, records, [int(k) for k in a.words.split(",")]).items():
        t0, right, unparseable = time.perf_counter(), 0, 0
        msgs = [user_turn(1, with_suffix(r.question, recipe)) for r, (recipe, _) in zip(records, rows, strict=True)]
        starts = [start for _, start in rows]
        written = generate_batch(model, proc, msgs, images, max_new_tokens=30, batch_size=a.batch_size, reply_starts=starts)
        for r, start, reply in zip(records, starts, written, strict=True):
            scored = score_item(r, Prediction(index=r.index, response=start + reply))
            right += scored.correct
            unparseable += scored.status == "unparseable"
        print(f"{name:10s} Acc@0.5 {100 * right / len(items):5.1f} %  unparseable {unparseable:3d}  ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
