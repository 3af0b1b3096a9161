"""Which object does a base box when it boxes the wrong one? (docs/base_model.md: the selection hop)

    .venv/bin/python tools/wrong_picks.py runs/embedded/base_model/checkpoint_eval/checkpoint-2000/predictions.jsonl

For the single-image referring test of a profile (the embedded world's scenes say where every object is) it
sorts each answer: on the target, on another object (IoU >= 0.5 with it), on none, or unparseable. For the
answers on another object it prints the share of the expression's attributes (those its words name) that the
boxed object shares with the target, beside the same share for the average distractor of the scene: equal
shares mean the base picks among the objects without reading the expression at all (no partial match).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_base_checkpoints import boxed_object  # noqa: E402

from mirg_lib.base_model import ATTRIBUTES  # noqa: E402
from mirg_lib.config import load_params  # noqa: E402
from mirg_lib.items import load_bench_items  # noqa: E402
from mirg_lib.parsing import parse_response  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.world.objects import SIZE_WORDS  # noqa: E402


def named(target: dict, expression: str) -> list[str]:
    """The attributes of ``target`` that the expression's words name."""
    words = expression.split()
    return [a for a in ATTRIBUTES if (SIZE_WORDS[target[a]] if a == "size" else target[a]) in words]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", help="predictions.jsonl of the single-image referring test")
    ap.add_argument("--profile", default="embedded")
    a = ap.parse_args()
    items = {it.scene["record_index"]: it for it in load_bench_items(stage_dir(load_params(a.profile).profile, "data") / "test" / "single_refer.json") if it.scene}
    kinds, picked, chance = Counter(), [], []
    for line in Path(a.predictions).read_text().splitlines():
        p = json.loads(line)
        it = items[p["index"]]
        found = parse_response(p.get("response", "")).box
        if found is None:
            kinds["unparseable"] += 1
            continue
        image, target = it.scene["images"][it.target_image - 1], it.scene["target"]
        obj = boxed_object(found, it)
        if obj is None:
            kinds["no object"] += 1
            continue
        if obj["oid"] == target["oid"]:
            kinds["target"] += 1
            continue
        kinds["another object"] += 1
        attrs = named(target, it.scene["meta"]["expression"]) or list(ATTRIBUTES)
        others = [o for o in image["objects"] if o["oid"] != target["oid"]]
        picked.append(sum(obj[x] == target[x] for x in attrs) / len(attrs))
        chance.append(sum(sum(o[x] == target[x] for x in attrs) / len(attrs) for o in others) / len(others))
    print(dict(kinds))
    if picked:
        print(f"expression attributes shared with the target: boxed wrong object {100 * sum(picked) / len(picked):.1f} %, average distractor {100 * sum(chance) / len(chance):.1f} %")


if __name__ == "__main__":
    main()
