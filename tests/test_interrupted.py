"""A killed run leaves nothing the next one trips over: no hidden half-written folders pile up, a data
folder cut short since it was written is built again, and a resumed training logs each step once."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mirg_lib.io import atomic_dir, atomic_path, remove_stale_asides, sha256_file
from mirg_lib.trainers import JsonlLogCallback, cut_log, last_checkpoint, train_resuming
from mirg_lib.world import DataConfig, run_data_synthesis

TINY = DataConfig(n_test_per_task=1, n_train_per_task=1, n_single_test=1, n_single_train=1, image_size=56, contact_sheet=False,
                  test_tasks=["diff", "refer_grounding"], train_tasks=["diff", "refer_grounding"])


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _killed_writer(dest, kind="dir"):
    """A process that starts writing ``dest`` (atomic_dir / atomic_path) and is killed (SIGKILL) inside the
    block, so that no cleanup of its own runs."""
    code = textwrap.dedent(f"""
        import os, signal
        from mirg_lib.io import atomic_dir, atomic_path
        if {kind!r} == "dir":
            with atomic_dir({str(dest)!r}) as tmp:
                (tmp / "half.json").write_text("[1, 2")
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            with atomic_path({str(dest)!r}) as tmp:
                tmp.write_text("[1, 2")
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr


# --- 1. atomic_dir: leftovers of killed writers go --------------------------------------------------

def test_killed_atomic_dir_leftover_is_removed_by_the_next_run(tmp_path):
    dest = tmp_path / "data"
    _killed_writer(dest)
    first = _hidden(tmp_path)
    assert len(first) == 1 and first[0].startswith(".data.") and first[0].endswith(".partial"), first
    assert not dest.exists()
    _killed_writer(dest)  # the next writer removes the first's leftover before it is killed in turn
    second = _hidden(tmp_path)
    assert len(second) == 1 and second != first
    # an exception inside the block (the interrupted-in-Python case) leaves nothing of its own
    with pytest.raises(KeyboardInterrupt), atomic_dir(dest) as tmp:
        (tmp / "x").write_text("x")
        raise KeyboardInterrupt
    assert _hidden(tmp_path) == [] and not dest.exists()  # the killed one's leftover went when this one started
    # a leftover of the old naming (no owner), of the swap, of another destination, of a live process
    (tmp_path / ".data.0a1b2c3d.partial").mkdir()
    (tmp_path / ".data.old").mkdir()
    (tmp_path / ".other.0a1b2c3d.partial").mkdir()
    from mirg_lib.io import _host

    live = tmp_path / f".data.{os.getppid()}@{_host()}.0a1b2c3d.partial"  # the parent process: running
    elsewhere = tmp_path / ".data.1@another-machine.0a1b2c3d.partial"  # cannot be told dead from here
    live.mkdir()
    elsewhere.mkdir()
    with atomic_dir(dest) as tmp:
        (tmp / "f.json").write_text("[]")
    assert json.loads((dest / "f.json").read_text()) == []
    assert _hidden(tmp_path) == sorted([".other.0a1b2c3d.partial", live.name, elsewhere.name])
    # replacing a finished folder parks the old one aside and leaves no aside either
    with atomic_dir(dest) as tmp:
        (tmp / "g.json").write_text("{}")
    assert sorted(p.name for p in dest.iterdir()) == ["g.json"]
    assert _hidden(tmp_path) == sorted([".other.0a1b2c3d.partial", live.name, elsewhere.name])


def test_killed_atomic_path_leftover_is_removed(tmp_path):
    dest = tmp_path / "scores.json"
    _killed_writer(dest, kind="file")
    assert len(_hidden(tmp_path)) == 1 and _hidden(tmp_path)[0].endswith(".tmp")
    with atomic_path(dest) as tmp:
        tmp.write_text("{}")
    assert _hidden(tmp_path) == [] and dest.read_text() == "{}"


def test_a_running_writers_aside_is_left_alone(tmp_path):
    """Another process of the run writing the same destination right now: its folder is not removed."""
    dest = tmp_path / "out"
    with atomic_dir(dest) as mine:
        assert remove_stale_asides(dest) == [] and mine.is_dir()  # this process is alive
        (mine / "a").write_text("a")
    assert (dest / "a").read_text() == "a"


# --- 2. a data folder cut short since it was written is not reused -------------------------------------

def test_truncated_world_file_is_rebuilt(tmp_path):
    out = tmp_path / "data"
    first = run_data_synthesis(TINY, out, progress=False)
    train = out / "train" / "mgrounding.json"
    want = sha256_file(train)
    manifest = json.loads((out / "manifest.json").read_text())
    from mirg_lib.world.build import data_checksums

    assert data_checksums(out) == manifest["files"]  # the helper computes what the manifest records
    assert run_data_synthesis(TINY, out, progress=False).skipped  # intact: reused, no warning
    size = train.stat().st_size
    with open(train, "r+b") as f:
        f.truncate(size // 2)
    with pytest.warns(UserWarning, match=r"train/mgrounding\.json"):
        again = run_data_synthesis(TINY, out, progress=False)
    assert not again.skipped and again.counts == first.counts
    assert train.stat().st_size == size and sha256_file(train) == want
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert run_data_synthesis(TINY, out, progress=False).skipped
    assert _hidden(tmp_path) == []


def test_damaged_image_is_rebuilt(tmp_path):
    out = tmp_path / "data"
    run_data_synthesis(TINY, out, progress=False)
    png = sorted((out / "test" / "images").rglob("*.png"))[0]
    want = png.read_bytes()
    png.write_bytes(want[:100])
    with pytest.warns(UserWarning, match=r"test/images"):
        assert not run_data_synthesis(TINY, out, progress=False).skipped
    assert png.read_bytes() == want


def test_manifest_without_checksums_still_catches_a_cut_file(tmp_path):
    """A manifest that records no checksums (the real files' copy): a data file cut short is still caught."""
    from mirg_lib.world.build import reused_manifest

    out = tmp_path / "data"
    built = run_data_synthesis(TINY, out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"], manifest["images_sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert reused_manifest(out, built.config_hash) is not None
    bench = out / "test" / "mig_bench.json"
    bench.write_bytes(bench.read_bytes()[:-40])
    with pytest.warns(UserWarning, match=r"test/mig_bench\.json"):
        assert reused_manifest(out, built.config_hash) is None
    bench.unlink()
    with pytest.warns(UserWarning, match="missing"):
        assert reused_manifest(out, built.config_hash) is None


# --- 3. a resumed training logs each step once --------------------------------------------------------

class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": ((self.w(x).squeeze(-1) - y) ** 2).mean()}


def _trainer(work, log, max_steps=6):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    data = [{"x": torch.tensor([float(i), 1.0]), "y": torch.tensor(float(i % 3))} for i in range(64)]
    args = TrainingArguments(output_dir=str(work), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=0.05, save_steps=2,
                             save_strategy="steps", logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    return Trainer(model=_Tiny(), args=args, train_dataset=data, callbacks=[JsonlLogCallback(log).callback])


def _rows(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_resumed_training_logs_each_step_once(tmp_path, monkeypatch, crash_before_step):
    from transformers import Trainer

    work, log = tmp_path / "trainer", tmp_path / "train_log.jsonl"
    unbroken = _trainer(tmp_path / "whole", tmp_path / "whole.jsonl")
    train_resuming(unbroken, tmp_path / "whole", "d")
    crash_before_step(Trainer, 3)  # checkpoint-2 saved, step 3 trained and logged, killed before step 4
    with pytest.raises(KeyboardInterrupt):
        train_resuming(_trainer(work, log), work, "d")
    monkeypatch.undo()
    assert [r["step"] for r in _rows(log) if "loss" in r] == [1, 2, 3]
    assert last_checkpoint(work, "d").endswith("checkpoint-2")
    with open(log, "a") as f:  # and the kill cut a line short
        f.write('{"step": 3, "lo')
    train_resuming(_trainer(work, log), work, "d")
    rows = _rows(log)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "train_runtime" in r] == [6] and "train_runtime" in rows[-1]
    whole = {r["step"]: r["loss"] for r in _rows(tmp_path / "whole.jsonl") if "loss" in r}
    assert {r["step"]: r["loss"] for r in rows if "loss" in r} == pytest.approx(whole, rel=1e-5)  # step 3 is the resumed run's
    # resumed at the end (killed while saving the result): no step past max_steps (the Trainer would train
    # step 7, mid-epoch), the weights are the unbroken run's, and the summary is not doubled
    assert last_checkpoint(work, "d").endswith("checkpoint-6")
    at_end = _trainer(work, log)
    train_resuming(at_end, work, "d")
    assert _rows(log) == rows and at_end.state.global_step == 6
    assert torch.allclose(at_end.model.w.weight, unbroken.model.w.weight, atol=1e-6)


def test_resumed_at_an_epochs_end_the_summary_is_not_doubled(tmp_path):
    """64 items in batches of 4: step 16 ends the epoch, and a run resumed there finishes again at once,
    writing the Trainer's summary a second time unless the log already holds it."""
    work, log = tmp_path / "trainer", tmp_path / "train_log.jsonl"
    train_resuming(_trainer(work, log, max_steps=16), work, "d")
    rows = _rows(log)
    assert [r["step"] for r in rows if "train_runtime" in r] == [16]
    again = _trainer(work, log, max_steps=16)
    train_resuming(again, work, "d")
    assert _rows(log) == rows and again.state.global_step == 16


def test_a_fresh_start_starts_the_log_over(tmp_path):
    """A trainer trained from step 0 again (no checkpoint, as the vision warm-up reruns) logs its steps once."""
    log = tmp_path / "log.jsonl"
    for _ in range(2):
        trainer = _trainer(tmp_path / "w", log, max_steps=2)
        trainer.args.save_strategy = "no"
        trainer.train()
    assert [r["step"] for r in _rows(log) if "loss" in r] == [1, 2]


def test_a_checkpoint_cut_short_is_not_resumed(tmp_path):
    work = tmp_path / "trainer"
    for step in (2, 4, 6):
        (work / f"checkpoint-{step}").mkdir(parents=True)
    for step in (2, 4):
        (work / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (work / "mirg.json").write_text(json.dumps({"config_hash": "d"}))
    assert last_checkpoint(work, "d") == str(work / "checkpoint-4")  # checkpoint-6 has no trainer state: killed mid-save
    assert last_checkpoint(work, "other") is None


def test_cut_log_keeps_what_it_cannot_read_and_says_so(tmp_path):
    log = tmp_path / "log.jsonl"
    text = '{"step": 1, "loss": 1.0}\nnot json\n{"step": 3, "loss": 0.5}\n'
    log.write_text(text)
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        cut_log(log, 2)
    assert log.read_text() == text  # nothing lost
    log.write_text('{"note": "no step"}\n{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.7}\n{"step": 3, "loss": 0.5}\n')
    cut_log(log, 2)
    assert _rows(log) == [{"note": "no step"}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.7}]
    cut_log(log, 0)
    assert not log.exists()


@pytest.mark.slow
def test_resumed_sft_logs_each_step_once(nano_checkpoint, smoke_world, tmp_path, monkeypatch, crash_before_step):
    """The SFT stage's own trainer (trl, LoRA on the nano model): killed before step 4 after the step-2
    checkpoint, resumed: steps 1-4 logged once each."""
    from mirg_lib.items import load_pool_items
    from mirg_lib.sft import SFTStageConfig, make_trainer, sft_rows
    from mirg_lib.teacher import ScriptedTeacher, TeacherItem

    items = load_pool_items(smoke_world.train_file)[:8]
    replies = ScriptedTeacher(error_rate=0.0).answer([TeacherItem(i.id, i.task, i.images, i.question, i.scene) for i in items], 1, "zhang")
    rows = sft_rows(items, [r[0] for r in replies], "zhang")
    cfg = SFTStageConfig(per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=4, learning_rate=5e-3, lora_r=4, lora_alpha=8,
                         lora_dropout=0.0, logging_steps=1, save_steps=2)
    work, log = tmp_path / "trainer", tmp_path / "train_log.jsonl"
    crash_before_step(type(make_trainer(cfg, nano_checkpoint, rows, tmp_path / "probe")), 3)
    with pytest.raises(KeyboardInterrupt):
        train_resuming(make_trainer(cfg, nano_checkpoint, rows, work, log_path=log), work, "digest")
    monkeypatch.undo()
    assert [r["step"] for r in _rows(log) if "loss" in r] == [1, 2, 3]
    train_resuming(make_trainer(cfg, nano_checkpoint, rows, work, log_path=log), work, "digest")
    assert [r["step"] for r in _rows(log) if "loss" in r] == [1, 2, 3, 4]
