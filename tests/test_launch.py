"""The training stages under ``accelerate launch``: SFT and a GRPO step on two CPU processes (gloo DDP), whose
merged checkpoints equal the one-process run's in shape, and a failing launch that says what failed."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from mirg_lib.config import ConfigError, from_dict
from mirg_lib.grpo import GRPOStageConfig
from mirg_lib.items import load_pool_items
from mirg_lib.launch import LaunchConfig, launch_command
from mirg_lib.paths import ROOT
from mirg_lib.pipeline import train_grpo, train_sft
from mirg_lib.sft import SFTStageConfig
from mirg_lib.teacher import ScriptedTeacher, TeacherItem


def _shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            out.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    return out


def _log_steps(path: Path, key: str) -> list[int]:
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if key in r]


@pytest.fixture(scope="module")
def sft_file(smoke_world, tmp_path_factory):
    items = load_pool_items(smoke_world.train_file)[:8]
    replies = ScriptedTeacher(error_rate=0.0).answer([TeacherItem(i.id, i.task, i.images, i.question, i.scene) for i in items], 1, "zhang")
    path = tmp_path_factory.mktemp("launch") / "sft_zhang.jsonl"
    path.write_text("".join(json.dumps({"id": it.id, "completion": r[0]}) + "\n" for it, r in zip(items, replies, strict=True)))
    return path


def test_launch_config_is_checked_and_every_shipped_accelerate_config_parses():
    with pytest.raises(ConfigError, match="cannot be launched"):
        from_dict(LaunchConfig, {"stages": ["sft", "data"]}, "launch")
    with pytest.raises(ConfigError, match="no such file"):
        from_dict(LaunchConfig, {"config_file": "configs/accelerate/nope.yaml"}, "launch")
    assert LaunchConfig().world_size("sft") == 1 and LaunchConfig(num_processes=2).world_size("sft") == 2
    assert LaunchConfig(num_processes=2, stages=["grpo"]).world_size("sft") == 1
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"ddp", "zero2", "zero3"}
    for c in configs:
        loaded = load_config_from_file(str(c))
        cmd = launch_command(from_dict(LaunchConfig, {"num_processes": 4, "config_file": str(c.relative_to(ROOT))}, "launch"), Path("spec.json"), 4)
        assert cmd[cmd.index("--config_file") + 1] == str(c) and cmd[-4:] == ["-m", "mirg_lib", "launched", "spec.json"]
        if c.stem.startswith("zero"):
            assert loaded.distributed_type == "DEEPSPEED" and loaded.deepspeed_config["zero_stage"] == int(c.stem[-1])


@pytest.mark.slow
def test_sft_on_two_processes_matches_one_process_in_shape(sft_file, smoke_world, nano_checkpoint, tmp_path):
    cfg = SFTStageConfig(per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2, learning_rate=5e-3, lora_r=4, lora_alpha=8, logging_steps=1, save_steps=100)
    one = train_sft(cfg, nano_checkpoint, sft_file, smoke_world.root, tmp_path / "one")
    two = train_sft(cfg, nano_checkpoint, sft_file, smoke_world.root, tmp_path / "two", LaunchConfig(num_processes=2))
    assert _shapes(two) == _shapes(one) and _shapes(one)
    meta = json.loads((two / "mirg.json").read_text())
    assert meta["processes"] == 2 and meta["config_hash"].endswith(":world2")
    assert _log_steps(tmp_path / "two" / "train_log.jsonl", "loss") == [1, 2]  # one line per step, from the main process
    log = (tmp_path / "two" / "launch.log").read_text()
    assert "accelerate.commands.launch --num_processes 2" in log
    # done for this config: a second call neither launches nor retrains; one process is another run
    (tmp_path / "two" / "launch.log").unlink()
    assert train_sft(cfg, nano_checkpoint, sft_file, smoke_world.root, tmp_path / "two", LaunchConfig(num_processes=2)) == two
    assert not (tmp_path / "two" / "launch.log").exists()
    assert json.loads((one / "mirg.json").read_text())["config_hash"] != meta["config_hash"]


@pytest.mark.slow
def test_grpo_step_on_two_processes_and_a_failing_launch(smoke_world, nano_checkpoint, tmp_path):
    items = load_pool_items(smoke_world.train_file)[:4]
    cfg = GRPOStageConfig(num_generations=2, prompts_per_step=2, gradient_accumulation_steps=1, max_completion_length=8, max_steps=1, lora_r=4, lora_alpha=8, save_steps=100)
    one = train_grpo(cfg, nano_checkpoint, items, smoke_world.root, tmp_path / "one")
    two = train_grpo(cfg, nano_checkpoint, items, smoke_world.root, tmp_path / "two", LaunchConfig(num_processes=2))
    assert _shapes(two) == _shapes(one) == _shapes(Path(nano_checkpoint))
    assert json.loads((two / "mirg.json").read_text())["processes"] == 2
    logs = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "kl" in r] == [1] and "rewards/zhang_accuracy/mean" in logs[0]
    # 3 completions per step cannot split over 2 processes: the processes fail, the stage says so and leaves no checkpoint
    bad = GRPOStageConfig(num_generations=3, prompts_per_step=1, gradient_accumulation_steps=1, max_completion_length=8, max_steps=1, lora_r=4, lora_alpha=8)
    with pytest.raises(RuntimeError, match=r"(?s)stage 'grpo' failed under accelerate launch on 2 processes \(exit code [1-9]\d*\): error: grpo: prompts_per_step x num_generations = 3 completions per step do not split over 2 processes; whole log"):
        train_grpo(bad, nano_checkpoint, items, smoke_world.root, tmp_path / "bad", LaunchConfig(num_processes=2))
    assert not (tmp_path / "bad" / "checkpoint").exists() and (tmp_path / "bad" / "launch.log").is_file()


def _differs(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    ta = {k: v for f in sorted(a.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    tb = {k: v for f in sorted(b.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    return any(not (ta[k] == tb[k]).all() for k in ta)


@pytest.mark.slow
def test_deepspeed_zero2_sft_and_zero3_grpo_on_two_processes(sft_file, smoke_world, nano_checkpoint, tmp_path):
    """The shipped DeepSpeed configs run the stages on the CPU (DeepSpeed's CPU accelerator): SFT under ZeRO-2,
    a GRPO step under ZeRO-3 (parameters sharded: the adapter is saved gathered, then merged outside the run)."""
    import deepspeed  # noqa: F401  (a dev dependency: its absence is a failure, not a skip)
    sft = SFTStageConfig(per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2, learning_rate=5e-3, lora_r=4, lora_alpha=8, logging_steps=1, save_steps=100)
    z2 = train_sft(sft, nano_checkpoint, sft_file, smoke_world.root, tmp_path / "z2", LaunchConfig(num_processes=2, config_file="configs/accelerate/zero2.yaml"))
    assert _shapes(z2) == _shapes(Path(nano_checkpoint)) and _differs(z2, Path(nano_checkpoint))
    assert "--config_file" in (tmp_path / "z2" / "launch.log").read_text() and json.loads((z2 / "mirg.json").read_text())["processes"] == 2
    items = load_pool_items(smoke_world.train_file)[:4]
    grpo = GRPOStageConfig(num_generations=2, prompts_per_step=2, gradient_accumulation_steps=1, max_completion_length=8, max_steps=1, learning_rate=1e-2, lora_r=4, lora_alpha=8, save_steps=100)
    z3 = train_grpo(grpo, nano_checkpoint, items, smoke_world.root, tmp_path / "z3", LaunchConfig(num_processes=2, config_file="configs/accelerate/zero3.yaml"))
    assert _shapes(z3) == _shapes(Path(nano_checkpoint))
    assert [r["step"] for r in map(json.loads, (tmp_path / "z3" / "train_log.jsonl").read_text().splitlines()) if "kl" in r] == [1]
