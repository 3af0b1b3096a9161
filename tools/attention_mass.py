"""Where does each attention head of a base look from the answer's first tokens? (docs/base_model.md)

    .venv/bin/python tools/attention_mass.py runs/embedded/base_model/trainer/checkpoint-500

For 64 training referring items, 64 training description items and 64 test referring items of the profile,
teacher-forced, it prints per layer and head the geometric mean (over items and the positions that predict
the answer's first ``--span`` tokens) of the attention mass on the image token holding the target and on
the referring expression's words: ``exp(-grounding_attention_loss)`` for every head, the quantity the
grounding-attention loss raises for the heads it supervises. About 1 / (objects in the image) on the
target is a head that looks at the objects without choosing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib import grounding as gr  # noqa: E402
from mirg_lib.boxes import Box, Frame, format_box_tokens  # noqa: E402
from mirg_lib.config import load_params  # noqa: E402
from mirg_lib.items import load_bench_items, load_pool_items  # noqa: E402
from mirg_lib.models import load_model, load_processor  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--span", type=int, default=3)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, proc = load_model(a.checkpoint, dtype=torch.float32), load_processor(a.checkpoint)
    model.set_attn_implementation({"text_config": "eager"})
    model.eval()
    data = stage_dir(load_params(a.profile).profile, "data")
    pool = load_pool_items(data / "train" / "mgrounding.json")
    sets = {
        "train refer": [i for i in pool if i.task == "single_refer"][: a.n],
        "train describe": [i for i in pool if i.task == "single_describe"][: a.n],
        "test refer": load_bench_items(data / "test" / "single_refer.json")[: a.n],
    }
    col = gr.CompletionCollator(proc.tokenizer.pad_token_id, model.config.image_token_id, a.span)
    depth = len(model.model.language_model.layers)
    for name, items in sets.items():
        answers = [it.reference or format_box_tokens(Box(*it.answer, frame=Frame.REL1)) for it in items]
        ds = gr.PrecomputedVL(items, proc, answers, grounding=True)
        batch = col([ds[i] for i in range(len(ds))])
        with torch.no_grad(), gr.captured_attention(model, list(range(depth))) as seen:
            model(**{k: v for k, v in batch.items() if k not in gr.GROUNDING_KEYS})
        for what in ("target", "expression"):
            cells = []
            for i in sorted(seen):
                for head in range(seen[i].shape[1]):
                    key_mask = None if what == "target" else batch["expression_mask"]
                    loss = gr.grounding_attention_loss([seen[i][:, head : head + 1]], batch["query_target"], key_mask)
                    cells.append(f"L{i}h{head} {'-' if loss is None else f'{math.exp(-loss.item()):.2f}'}")
            print(f"{name:15s} on {what:10s} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
