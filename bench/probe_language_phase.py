"""Probe: a second, short phase of the base's training that reads the world's language, from grounded weights.

    .venv/bin/python bench/probe_language_phase.py --profile embedded --texts 4000 --steps 500 --lr 3e-4

Mixing ``language_texts`` into the base's training from the start held its grounding back (README, "The
base model"). Here the texts come after: from the profile's base (the shipped one), ``--steps`` more steps
of transformers' Trainer over the base's own image items *and* ``--texts`` language texts (batches grouped
by length, constant lr after 20 warm-up steps, no grounding-attention term), then the single-image
referring test again, the share of the CoT's tokens the model has now read, and one LoRA SFT of the Zhang
CoT data on it (``sft`` overrides as ``bench/probe_sft.py`` takes them), scored on MIG-Bench with Zhang's
prompt. Writes under ``runs/<profile>/probe_language_phase/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_sft import report_sft  # noqa: E402

from mirg_lib import base_model as bm  # noqa: E402
from mirg_lib.config import load_params, parse_overrides, stage_config  # noqa: E402
from mirg_lib.evaluation import EvalConfig, evaluate_checkpoint  # noqa: E402
from mirg_lib.items import load_pool_items  # noqa: E402
from mirg_lib.models import load_model, load_processor, save_checkpoint  # noqa: E402
from mirg_lib.paths import stage_dir  # noqa: E402
from mirg_lib.pipeline import base_path  # noqa: E402
from mirg_lib.sft import SFTStageConfig, run_sft  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--set", action="append", default=["sft.learning_rate=0.002", "sft.gradient_accumulation_steps=1", "sft.num_train_epochs=10"], metavar="KEY=VALUE")
    ap.add_argument("--eval-items-per-task", type=int, default=10)
    args = ap.parse_args()
    from transformers import Trainer, TrainingArguments

    params = load_params(args.profile, parse_overrides(args.set))
    cfg = stage_config(bm.BaseModelConfig, params, "base_model")
    data_dir, out = stage_dir(params.profile, "data"), stage_dir(params.profile, "probe_language_phase")
    base = base_path(params)
    processor, model = load_processor(base), load_model(base, dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    train = [it for it in load_pool_items(data_dir / "train" / "mgrounding.json") if it.task in cfg.train_tasks]
    texts = bm.language_texts(data_dir, args.texts, cfg.seed)
    dataset = bm.PrecomputedVL(train, processor, [it.reference or "" for it in train], texts=texts)
    targs = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=args.lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=20, weight_decay=cfg.weight_decay, max_grad_norm=1.0, adam_beta2=0.98,
        logging_steps=25, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), seed=cfg.seed, remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=bm.CompletionCollator(processor.tokenizer.pad_token_id, model.config.image_token_id))
    bm.length_grouped(trainer, dataset)
    trainer.train()
    ckpt = save_checkpoint(trainer.model, processor, out / "checkpoint")
    t1 = time.perf_counter()
    single = evaluate_checkpoint(ckpt, data_dir / "test" / "single_refer.json", EvalConfig(prompt="plain", max_new_tokens=40, batch_size=50), out / "eval_single")
    print(f"language phase: {args.steps} steps, {len(texts)} texts + {len(train)} image items, {t1 - t0:.0f} s; single-image referring Acc@0.5 {single['avg']} % (base {base})", flush=True)
    for row in trainer.state.log_history:
        if "loss" in row and row["step"] % 100 == 0:
            print(f"  step {row['step']}: loss {row['loss']:.3f}")
    sft_cfg = stage_config(SFTStageConfig, params, "sft")
    sft = run_sft(sft_cfg, ckpt, stage_dir(params.profile, "cot") / "sft_zhang.jsonl", data_dir, out / "sft_zhang")
    ecfg = dataclasses.replace(stage_config(EvalConfig, params, "eval"), prompt="zhang", max_items_per_task=args.eval_items_per_task)
    s = evaluate_checkpoint(sft, data_dir / "test" / "mig_bench.json", ecfg, out / "eval_sft_zhang")
    print(f"SFT (zhang, {parse_overrides(args.set)}): {time.perf_counter() - t1:.0f} s")
    report_sft(out / "sft_zhang" / "train_log.jsonl", s, out / "eval_sft_zhang" / "predictions.jsonl", every=100)

if __name__ == "__main__":
    main()
