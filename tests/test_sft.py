"""LoRA SFT with trl's SFTTrainer: loss on the completion only, only the LLM's LoRA weights train, the
merged stage-1 checkpoint loads and differs from the base where LoRA was."""

import json

import pytest
import torch

from mirg_lib.items import load_pool_items
from mirg_lib.models import load_model, lora_modules
from mirg_lib.sft import SFTStageConfig, make_trainer, sft_rows
from mirg_lib.teacher import ScriptedTeacher, TeacherItem
from mirg_lib.trainers import save_merged


@pytest.fixture(scope="module")
def rows(smoke_world):
    items = load_pool_items(smoke_world.train_file)[:12]
    teacher = ScriptedTeacher(error_rate=0.0)
    replies = teacher.answer([TeacherItem(i.id, i.task, i.images, i.question, i.scene) for i in items], 1, "zhang")
    return sft_rows(items, [r[0] for r in replies], "zhang")


def test_completion_only_labels(rows, nano_checkpoint, tmp_path):
    cfg = SFTStageConfig(per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=1, lora_r=4, lora_alpha=8)
    trainer = make_trainer(cfg, nano_checkpoint, rows, tmp_path / "sft")
    batch = trainer.data_collator([dict(r) for r in rows[:4]])
    tok = trainer.processing_class.tokenizer
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = ids[labels != -100]
        text = tok.decode(kept)
        assert text.startswith("<think>") and "<|image_pad|>" not in text and "First output" not in text
        assert (ids == trainer.model.config.image_token_id).sum() > 0


def test_sft_trains_language_lora_and_merges(rows, nano_checkpoint, tmp_path):
    cfg = SFTStageConfig(per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=3, learning_rate=5e-3, lora_r=4, lora_alpha=8, logging_steps=1)
    trainer = make_trainer(cfg, nano_checkpoint, rows, tmp_path / "sft")
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and "visual" not in n for n in trainable)
    assert not any("visual" in m for m in lora_modules(trainer.model))
    trainer.train()
    losses = [json.loads(line).get("loss") for line in (tmp_path / "sft" / "train_log.jsonl").read_text().splitlines()]
    assert any(v is not None for v in losses)
    path = save_merged(trainer, tmp_path / "stage1", {"stage": "sft"})
    base, merged = load_model(nano_checkpoint), load_model(path)
    sb, sm = base.state_dict(), merged.state_dict()
    assert set(sb) == set(sm)
    differ = {k for k in sb if not torch.equal(sb[k], sm[k])}
    assert differ and all("language_model" in k and k.endswith("proj.weight") for k in differ)
    assert not any("visual" in k for k in differ)


def test_interrupted_lora_sft_resumes_with_its_adapter(rows, nano_checkpoint, tmp_path, monkeypatch, crash_before_step):
    """Crash after the step-2 checkpoint and resume: steps 3-4 and the merged weights match an unbroken run."""
    from mirg_lib.trainers import train_resuming

    cfg = SFTStageConfig(per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=4, learning_rate=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0, logging_steps=1, save_steps=2)

    def run(name):
        trainer = make_trainer(cfg, nano_checkpoint, rows, tmp_path / name / "trainer", log_path=tmp_path / name / "log.jsonl")
        train_resuming(trainer, tmp_path / name / "trainer", "digest")
        return save_merged(trainer, tmp_path / name / "merged", {})

    def losses(name):
        return {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines()) if "loss" in r}

    whole = run("whole")
    crash_before_step(type(make_trainer(cfg, nano_checkpoint, rows, tmp_path / "probe")), 2)
    with pytest.raises(KeyboardInterrupt):
        run("resumed")
    monkeypatch.undo()
    assert (tmp_path / "resumed" / "trainer" / "checkpoint-2").is_dir()
    resumed = run("resumed")
    want, got = losses("whole"), losses("resumed")
    assert sorted(got) == [1, 2, 3, 4]
    assert [got[s] for s in (3, 4)] == pytest.approx([want[s] for s in (3, 4)], rel=1e-4)
    sw, sr = load_model(whole).state_dict(), load_model(resumed).state_dict()
    assert all(torch.allclose(sw[k], sr[k], atol=1e-5) for k in sw)


def test_sft_lowers_the_loss_of_the_replies_it_trains_on(rows, nano_checkpoint, tmp_path):
    """The stage does what it is for on a tiny run: after 20 steps the merged model gives the teacher's
    replies (completion tokens only, as the trainer scores them) a lower loss than the base did (the nano
    model starts near chance, ~6.2 nats a token, and this run takes ~0.27 off; an unmerged adapter takes none)."""
    cfg = SFTStageConfig(per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=20, learning_rate=2e-2, lora_r=8, lora_alpha=16, lora_dropout=0.0)
    trainer = make_trainer(cfg, nano_checkpoint, rows, tmp_path / "sft")
    batch = trainer.data_collator([dict(r) for r in rows[:8]])

    def loss(model) -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}).loss)

    before = loss(load_model(nano_checkpoint))
    trainer.train()
    after = loss(load_model(save_merged(trainer, tmp_path / "stage1", {"stage": "sft"})))
    assert before - after > 0.15, (before, after)
