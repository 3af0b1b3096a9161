"""How much of the later stages' text a base never saw in its own training (README, "The base model").

    .venv/bin/python bench/unseen_vocabulary.py --profile embedded [--base checkpoints/embedded-base]

A real Qwen2-VL has read every word the CoT uses; the embedded base learnt from its ``train_tasks``
only. For each SFT file of the CoT stage (``runs/<profile>/cot/sft_*.jsonl``) and for the questions of the
multi-image tasks, prints the share of tokens (and the distinct tokens) that never occur in the base's
training sequences (question and answer of every item of its ``train_tasks``, and its ``language_items``
texts), with the commonest ones:
their embedding rows (tied to the output layer) are still at their random start.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirg_lib.base_model import BaseModelConfig, language_texts  # noqa: E402
from mirg_lib.config import load_params, stage_config  # noqa: E402
from mirg_lib.items import load_pool_items  # noqa: E402
from mirg_lib.models import load_processor  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.pipeline import base_path  # noqa: E402


def unseen(counts: Counter, seen: set[int]) -> tuple[float, int, list[int]]:
    miss = {t: c for t, c in counts.items() if t not in seen}
    share = 100.0 * sum(miss.values()) / max(1, sum(counts.values()))
    return share, len(miss), [t for t, _ in Counter(miss).most_common(20)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--base", default="", help="the base checkpoint (default: the profile's)")
    args = ap.parse_args()
    params = load_params(args.profile)
    cfg = stage_config(BaseModelConfig, params, "base_model")
    tok = load_processor(args.base or base_path(params)).tokenizer
    pool = load_pool_items(stage_dir(params.profile, "data") / "train" / "mgrounding.json")
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    seen = {t for it in pool if it.task in cfg.train_tasks for t in ids(it.question) + ids(it.reference or "")}
    seen |= {t for prompt, reply in language_texts(stage_dir(params.profile, "data"), cfg.language_items, cfg.seed) for t in ids(prompt) + ids(reply)}
    rows = {}
    for f in sorted((stage_dir(params.profile, "cot")).glob("sft_*.jsonl")):
        rows[f.stem] = Counter(t for line in f.read_text().splitlines() if line.strip() for t in ids(json.loads(line)["completion"]))
    rows["multi-image questions"] = Counter(t for it in pool if len(it.images) > 1 for t in ids(it.question))
    print(f"base trained on {cfg.train_tasks} and {cfg.language_items} language texts: {len(seen)} of {len(tok)} token ids seen")
    for name, counts in rows.items():
        share, n, top = unseen(counts, seen)
        print(f"{name}: {share:.1f} % of tokens unseen ({n} of {len(counts)} distinct), commonest: {[tok.decode([t]) for t in top]}")


if __name__ == "__main__":
    main()
