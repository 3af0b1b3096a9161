"""Probe: does the grounding-attention loss (``base_model.grounding_attention_weight``) turn on the selection hop?
(docs/base_model.md: the selection hop)

    # from a checkpoint of the embedded base: 300 more steps on the stage's own mix, with and without the loss
    .venv/bin/python bench/probe_grounding.py --init runs/embedded/base_model/trainer/checkpoint-2000 --weight 0
    .venv/bin/python bench/probe_grounding.py --init runs/embedded/base_model/trainer/checkpoint-2000 --weight 1 --layers -1

Training goes through the stage's own pieces (``PrecomputedVL``, ``CompletionCollator``, ``grounding_trainer``:
transformers' plain ``Trainer`` for ``--weight 0``) on ``--n`` items of each of the profile's base-model training
tasks, batch 32, AdamW at a constant ``--lr`` after 20 warm-up steps. Every ``--eval-every`` steps it prints
greedy Acc@0.5 on the profile's single-image test (its first ``--n-test`` items) with the share of answers
that box *some* object of the scene, and on ``--n-test`` held-out training items of the same tasks' kind.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_selection import hit_rates  # noqa: E402

from mirg_lib.base_model import BaseModelConfig, CompletionCollator, PrecomputedVL, grounding_trainer  # noqa: E402
from mirg_lib.config import load_params, stage_config  # noqa: E402
from mirg_lib.items import load_bench_items, load_pool_items  # noqa: E402
from mirg_lib.models import load_model, load_processor  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--init", required=True, help="a base checkpoint folder (model and processor)")
    ap.add_argument("--weight", type=float, default=1.0, help="grounding-attention loss weight; 0: the plain Trainer")
    ap.add_argument("--layers", default="-1", help="comma-separated language-model layers whose head 0 is supervised")
    ap.add_argument("--expression-layers", default="", help="comma-separated layers whose head 0 also learns to look at the expression's words")
    ap.add_argument("--span", type=int, default=3, help="supervise the positions predicting the answer's first N tokens; 0: all")
    ap.add_argument("--n", type=int, default=2000, help="training items per base-model training task")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/probe_grounding")
    ap.add_argument("--save", default="", help="save the fine-tuned model and processor here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import TrainerCallback, TrainingArguments

    params = load_params(a.profile)
    cfg = stage_config(BaseModelConfig, params, "base_model")
    data = stage_dir(params.profile, "data")
    pool = load_pool_items(data / "train" / "mgrounding.json")
    train = [it for t in cfg.train_tasks for it in [i for i in pool if i.task == t][: a.n]]
    seen_refer = [i for i in pool if i.task == "single_refer"][a.n : a.n + a.n_test]  # training-pool items this probe does not train on
    test = load_bench_items(data / "test" / "single_refer.json")[: a.n_test]
    model, proc = load_model(a.init, dtype=torch.float32), load_processor(a.init)
    t = time.time()
    dataset = PrecomputedVL(train, proc, [it.reference or "" for it in train], grounding=a.weight > 0)
    print(f"encoded {len(train)} items in {time.time() - t:.0f} s", flush=True)

    class Report(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % a.eval_every == 0:
                report(state.global_step)

    def report(step: int) -> None:
        target, anyobj = hit_rates(model, proc, test)
        held, held_any = hit_rates(model, proc, seen_refer)
        print(f"step {step} single-image test Acc@0.5 {target:.1f} % (some object boxed {anyobj:.1f} %), held-out pool items {held:.1f} % ({held_any:.1f} %) {time.time() - t0:.0f} s", flush=True)

    args = TrainingArguments(
        output_dir=a.work, max_steps=a.steps, per_device_train_batch_size=32, learning_rate=a.lr, warmup_steps=20,
        lr_scheduler_type="constant_with_warmup", weight_decay=0.01, max_grad_norm=1.0, adam_beta2=0.98, logging_steps=25,
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), remove_unused_columns=False, disable_tqdm=True, seed=0,
    )
    parts = {"model": model, "args": args, "train_dataset": dataset, "data_collator": CompletionCollator(proc.tokenizer.pad_token_id, model.config.image_token_id), "callbacks": [Report()]}
    trainer = grounding_trainer(a.weight, [int(v) for v in a.layers.split(",")], a.span, [int(v) for v in a.expression_layers.split(",") if v], **parts)
    t0 = time.time()
    report(0)
    trainer.train()
    if a.save:
        model.save_pretrained(a.save)
        proc.save_pretrained(a.save)


if __name__ == "__main__":
    main()
