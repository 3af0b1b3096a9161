"""The stages wired to ``runs/<profile>/<stage>/``: what each notebook calls.

Each function reads its section of the params into the stage's typed config, finds its inputs in the
earlier stages' folders (which exist only when complete), and runs the stage (skipped when already
done for the same config). Notebooks call these and show tables and plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import Params, config_hash, stage_config
from .paths import stage_dir
from .progress import stage


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: run the earlier notebook first (make reproduce runs them in order)")
    return path


def data(params: Params, force: bool = False):
    """The data stage: the embedded world drawn, or (``data.source: local``) the real files read, checked and
    written in the same layout (:mod:`mirg_lib.local_data`)."""
    from .world import DataConfig, run_data_synthesis

    cfg = stage_config(DataConfig, params, "data")
    with stage(params.profile, "data"):
        if cfg.source == "local":
            from .local_data import run_local_data

            return run_local_data(cfg, stage_dir(params.profile, "data"), force=force)
        return run_data_synthesis(cfg, stage_dir(params.profile, "data"), force=force)


def data_dir(params: Params) -> Path:
    return _need(stage_dir(params.profile, "data") / "manifest.json", "the embedded world (01_data_synthesis)").parent


def base_model(params: Params):
    from .base_model import BaseModelConfig, run_base_model

    cfg = stage_config(BaseModelConfig, params, "base_model")
    ddir = data_dir(params) if not (cfg.model_name_or_path or cfg.shipped) else stage_dir(params.profile, "data")
    with stage(params.profile, "base model"):
        return run_base_model(cfg, ddir, stage_dir(params.profile, "base_model"))


def base_path(params: Params) -> Path:
    from .base_model import BaseModelConfig
    from .paths import ROOT

    cfg = stage_config(BaseModelConfig, params, "base_model")
    if cfg.model_name_or_path:
        return Path(cfg.model_name_or_path)
    if cfg.shipped:
        return (ROOT / cfg.shipped).resolve()
    return _need(stage_dir(params.profile, "base_model") / "checkpoint" / "mirg.json", "the base model (00_base_model)").parent


def ship_base(params: Params, dest: str | Path) -> dict[str, Any]:
    """Copy the base this profile trained, with the scores notebook 00 measured, to ``dest`` (then set
    ``base_model.shipped: <dest>`` in the profile's params)."""
    from .base_model import ship_checkpoint

    src = _need(stage_dir(params.profile, "base_model") / "checkpoint" / "mirg.json", "the trained base model (00_base_model)").parent
    single = json.loads(_need(eval_dir(params, "base", single=True) / "scores.json", "the base's single-image scores (run notebook 00 to the end)").read_text())
    multi = json.loads(_need(eval_dir(params, "base") / "scores.json", "the base's MIG-Bench scores (run notebook 00 to the end)").read_text())
    metrics = {
        "single_image_acc@0.5": single["avg"],
        "mig_bench_avg_acc@0.5": multi["avg"],
        "mig_bench_tasks": {t: v["acc"] for t, v in multi["tasks"].items()},
        "protocol": multi["protocol"],
    }
    return ship_checkpoint(src, dest, metrics, data_dir(params))


def cot(params: Params):
    from .cot import CotConfig, run_cot

    with stage(params.profile, "cot filtering"):
        return run_cot(stage_config(CotConfig, params, "cot"), data_dir(params), stage_dir(params.profile, "cot"), generation=generation_config(params), launch=launch_config(params))


def generation_config(params: Params, stage_name: str | None = None):
    """Section ``generation``: the backend the teacher, rejection sampling and the evaluation generate with
    (:mod:`mirg_lib.backends`); with ``stage_name``, that stage's settings (its ``stages`` entry over the section)."""
    from .backends import GenerationConfig

    cfg = stage_config(GenerationConfig, params, "generation")
    return cfg.for_stage(stage_name) if stage_name else cfg


def sft_config(params: Params, variant: str = "zhang"):
    """Section ``sft`` as one data variant trains with: its ``variants`` entry, and the prompt its examples are
    asked with (the plain question for the answer-only data, MIRG-RL's for MIRG-RL's trajectories)."""
    from .sft import SFTStageConfig

    cfg = stage_config(SFTStageConfig, params, "sft").for_variant(variant)
    if variant == "answer":
        cfg.prompt_recipe = "plain"
    elif variant.startswith("mirg"):
        cfg.prompt_recipe = "mirg"
    return cfg


def sft(params: Params, variant: str = "zhang", name: str | None = None) -> Path:
    """LoRA SFT of the base on ``sft_<variant>.jsonl`` (zhang, answer, mirg_text, mirg_bbox, mirg_reassembled)."""
    cfg = sft_config(params, variant)
    sft_file = _need(stage_dir(params.profile, "cot") / f"sft_{variant}.jsonl", f"the {variant} SFT data (02_cot_filtering)")
    with stage(params.profile, f"sft_{name or variant}"):
        return train_sft(cfg, base_path(params), sft_file, data_dir(params), stage_dir(params.profile, f"sft_{name or variant}"), launch_config(params))


def launch_config(params: Params):
    """Section ``launch``: how many processes the training stages run on (:mod:`mirg_lib.launch`)."""
    from .launch import LaunchConfig

    return stage_config(LaunchConfig, params, "launch")


def train_sft(cfg, base: str | Path, sft_file: str | Path, data: str | Path, out_dir: str | Path, launch=None) -> Path:
    """:func:`mirg_lib.sft.run_sft` in this process, or on ``launch``'s processes under ``accelerate launch``
    (skipped there too when the checkpoint is up to date); returns the merged checkpoint."""
    from .sft import run_sft, sft_stamp

    n = launch.world_size("sft") if launch else 1
    if n == 1:
        return run_sft(cfg, base, sft_file, data, out_dir)
    digest, meta = sft_stamp(cfg, base, sft_file, n)
    spec = {"cfg": meta["config"], "base_path": str(base), "sft_file": str(sft_file), "data_dir": str(data), "out_dir": str(out_dir)}
    return _launched("sft", launch, spec, Path(out_dir), base, digest, meta)


def train_grpo(cfg, init: str | Path, items: list, data: str | Path, out_dir: str | Path, launch=None) -> Path:
    """:func:`mirg_lib.grpo.run_grpo` in this process, or on ``launch``'s processes under ``accelerate launch``
    (which read ``items`` back from the pool in ``data`` by id); returns the merged checkpoint."""
    from .grpo import grpo_stamp, run_grpo

    n = launch.world_size("grpo") if launch else 1
    if n == 1:
        return run_grpo(cfg, init, items, out_dir)
    digest, meta = grpo_stamp(cfg, init, items, n)
    spec = {"cfg": meta["config"], "init_path": str(init), "ids": [it.id for it in items], "data_dir": str(data), "out_dir": str(out_dir)}
    return _launched("grpo", launch, spec, Path(out_dir), init, digest, meta)


def _launched(stage_name: str, launch, spec: dict[str, Any], out_dir: Path, start: str | Path, digest: str, meta: dict[str, Any]) -> Path:
    from .launch import train_launched
    from .trainers import stamp_matches

    final = out_dir / "checkpoint"
    if stamp_matches(final, digest):
        return final
    return train_launched(stage_name, launch, spec, out_dir, start, final, meta)


def rejection(params: Params, model_path: Path | None = None):
    from .rejection import RejectionConfig, run_rejection_sampling

    cfg = stage_config(RejectionConfig, params, "rejection")
    cot_ids = _sft_ids(params)
    model_path = model_path or _need(stage_dir(params.profile, "sft_zhang") / "checkpoint", "the stage-1 model (03_lora_sft)")
    with stage(params.profile, "rejection sampling"):
        return run_rejection_sampling(cfg, model_path, data_dir(params), stage_dir(params.profile, "rejection"), exclude_ids=cot_ids,
                                      generation=generation_config(params, "rejection"), launch=launch_config(params))


def _sft_ids(params: Params) -> set[str]:
    samples = stage_dir(params.profile, "cot") / "samples_zhang.jsonl"
    if not samples.is_file():
        return set()
    return {json.loads(line)["id"] for line in samples.read_text().splitlines() if line.strip()}


def grpo(params: Params, init: Path | None = None, name: str = "grpo", use_rejection: bool = True) -> Path:
    """GRPO from ``init`` (default: the Zhang CoT-SFT model) into ``runs/<profile>/<name>/`` on the RL items
    rejection sampling kept, or (``use_rejection=False``) on every item it would have looked at: the first
    ``rejection.max_items_per_task`` pool items of each of ``rejection.tasks`` not used for CoT SFT."""
    from .grpo import GRPOStageConfig
    from .items import first_per_task, load_pool_items, pool_items

    cfg = stage_config(GRPOStageConfig, params, "grpo").for_recipe()
    init = init or _need(stage_dir(params.profile, "sft_zhang") / "checkpoint", "the stage-1 model (03_lora_sft)")
    if use_rejection:
        rl = _need(stage_dir(params.profile, "rejection") / "rl_items.jsonl", "the RL items (04_rejection_sampling)")
        items = pool_items(data_dir(params), [json.loads(line)["id"] for line in rl.read_text().splitlines() if line.strip()], str(rl))
    else:
        from .rejection import RejectionConfig

        rcfg = stage_config(RejectionConfig, params, "rejection")
        cot_ids = _sft_ids(params)
        pool = load_pool_items(data_dir(params) / "train" / "mgrounding.json")
        items = first_per_task([it for it in pool if it.id not in cot_ids], rcfg.tasks, rcfg.max_items_per_task)  # what rejection sampling would look at, none dropped
    with stage(params.profile, name):
        return train_grpo(cfg, init, items, data_dir(params), stage_dir(params.profile, name), launch_config(params))


def evaluate(params: Params, model_path: Path, name: str, single: bool = False, prompt: str | None = None) -> dict[str, Any]:
    """Score a model into ``eval/<name>`` (``single``: the single-image test). Reuses the scores already there
    when they were made from the same model, eval config and benchmark file."""
    from .config import digest
    from .evaluation import EvalConfig, evaluate_checkpoint
    from .trainers import model_identity

    cfg = stage_config(EvalConfig, params, "eval")
    if prompt is not None:
        cfg.prompt = prompt  # type: ignore[assignment]
    if single:  # eval.max_items_per_task samples MIG-Bench; the single-image test is scored whole
        cfg.max_items_per_task = 0
    bench = bench_file(params, single)
    out = eval_dir(params, name, single)
    gen = generation_config(params, "eval")
    stamp = digest({"model": model_identity(model_path), "eval": config_hash(cfg), "bench": bench.stat().st_mtime_ns, **_tag(gen)})
    with stage(params.profile, f"evaluate {out.name}"):
        return evaluate_checkpoint(model_path, bench, cfg, out, stamp=stamp, generation=gen, launch=launch_config(params))


def _tag(gen) -> dict[str, str]:
    """What the generation backend adds to an evaluation's stamp: nothing for ``hf`` (:func:`mirg_lib.backends.generation_tag`)."""
    from .backends import generation_tag

    tag = generation_tag(gen)
    return {"generation": tag} if tag else {}


def bench_file(params: Params, single: bool = False) -> Path:
    """The embedded MIG-Bench file (``single``: the single-image referring test)."""
    return data_dir(params) / "test" / ("single_refer.json" if single else "mig_bench.json")


def eval_dir(params: Params, name: str, single: bool = False) -> Path:
    """Where :func:`evaluate` writes a model's predictions and scores."""
    return stage_dir(params.profile, "eval") / (name + ("_single" if single else ""))


def model_path(params: Params, stage: str) -> Path:
    """The checkpoint a stage produced (``base_model``: the base this profile uses)."""
    if stage == "base_model":
        return base_path(params)
    return _need(stage_dir(params.profile, stage) / "checkpoint", f"the {stage} model")


def stage_prompt(stage: str) -> str | None:
    """The prompt a stage's model is scored with: the plain question for the base and the answer-only SFT,
    MIRG-RL's for its SFTs, otherwise the params' ``eval.prompt`` (None)."""
    if stage in ("base_model", "sft_answer"):
        return "plain"
    if stage.startswith("sft_mirg"):
        return "mirg"
    return None


def rel_path(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` where it lies inside it (result files name their inputs so), else absolute."""
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def scored_row(params: Params, label: str, stage: str, path: Path, prompt: str | None = None, eval_name: str | None = None, **extra: Any) -> dict[str, Any]:
    """Score the model at ``path`` on MIG-Bench and the single-image test (into ``eval/<eval_name or stage>``)
    and return its result row, naming its predictions, the benchmark files and (for a GRPO stage) its training log relative to
    ``runs/<profile>/``, for the figures and the claims."""
    from .evaluation import EvalConfig
    from .results import model_row

    base = stage_dir(params.profile, "")
    name = eval_name or stage
    s = evaluate(params, path, name, prompt=prompt)
    single = evaluate(params, path, name, single=True, prompt=prompt)
    files: dict[str, Any] = {
        "checkpoint": str(path),
        "prompt": prompt or stage_config(EvalConfig, params, "eval").prompt,
        "predictions": rel_path(eval_dir(params, name) / "predictions.jsonl", base),
        "bench": rel_path(bench_file(params), base),
        "single_predictions": rel_path(eval_dir(params, name, single=True) / "predictions.jsonl", base),
        "single_bench": rel_path(bench_file(params, single=True), base),
    }
    log = stage_dir(params.profile, stage) / "train_log.jsonl"
    if stage.startswith("grpo") and log.is_file():
        files["train_log"] = rel_path(log, base)
    return model_row(label, stage, s, single, **files, **extra)


def benchmark_sets(params: Params) -> dict[str, tuple[Path, Path | None]]:
    """The papers' other benchmarks this profile scores (section ``benchmarks``): name -> (its file or folder,
    its image folder or None). The embedded analogues are drawn first into ``runs/<profile>/benchmarks/``
    (reused when drawn from the same world and size); a local copy in ``benchmarks.files`` takes the place
    of the analogue of its name."""
    from .benchmarks import BenchmarksConfig
    from .io import atomic_dir
    from .world import DataConfig
    from .world.analogues import ANALOGUES, VERSION, write_analogues

    cfg = stage_config(BenchmarksConfig, params, "benchmarks")
    sets: dict[str, tuple[Path, Path | None]] = {}
    if cfg.analogue_items:
        data = stage_config(DataConfig, params, "data")
        out = stage_dir(params.profile, "benchmarks")
        stamp = {"items": cfg.analogue_items, "seed": data.seed, "world": config_hash(data.knobs()), "analogues": [*ANALOGUES], "version": VERSION}
        manifest = out / "manifest.json"
        if not (manifest.is_file() and json.loads(manifest.read_text()).get("stamp") == stamp):
            with stage(params.profile, "benchmark analogues"), atomic_dir(out) as tmp:
                paths = write_analogues(tmp, cfg.analogue_items, data.seed, data.knobs())
                (tmp / "manifest.json").write_text(json.dumps({"stamp": stamp, "paths": {k: str(v.relative_to(tmp)) for k, v in paths.items()}}, indent=1))
        rel = json.loads(manifest.read_text())["paths"]
        sets.update({name: (out / p, None) for name, p in rel.items()})
    for name, path in cfg.files.items():
        root = cfg.image_roots.get(name)
        sets[name] = (Path(path), Path(root) if root else None)
    return sets


def evaluate_benchmarks(params: Params, path: Path, name: str, prompt: str | None = None) -> dict[str, Any]:
    """Score the model at ``path`` on every benchmark of :func:`benchmark_sets` into ``eval/<name>_<benchmark>``
    (reused when made from the same model, eval config and benchmark files); benchmark -> its headline
    (:func:`mirg_lib.benchmarks.headline`)."""
    from .benchmarks import KINDS, SCORING_VERSION, BenchmarksConfig, headline
    from .benchmarks.judge import make_judge
    from .config import digest
    from .evaluation import EvalConfig, evaluate_benchmark
    from .trainers import model_identity

    cfg = stage_config(EvalConfig, params, "eval")
    bcfg = stage_config(BenchmarksConfig, params, "benchmarks")
    judge = make_judge(bcfg.judge_base_url, bcfg.judge_model, bcfg.judge_api_key_env)
    gen = generation_config(params, "eval")
    if prompt is not None:
        cfg.prompt = prompt  # type: ignore[assignment]
    drawn = stage_dir(params.profile, "benchmarks")
    out = {}
    for bench, (file, root) in benchmark_sets(params).items():
        stamp = digest({
            "model": model_identity(path), "eval": config_hash(cfg), "scoring": SCORING_VERSION,
            "bench": files_stamp(file), "images": str(root) if root else None,
            "judge": judge.name if judge is not None and KINDS[bench] == "choice" else None,  # only a choice benchmark's scores depend on it
            **_tag(gen),
        })
        with stage(params.profile, f"evaluate {name} on {bench}"):
            scores = evaluate_benchmark(path, file, cfg, stage_dir(params.profile, "eval") / f"{name}_{bench}", name=bench, image_root=root, stamp=stamp, judge=judge,
                                        generation=gen, launch=launch_config(params))
        out[bench] = {**headline(scores), "data": "analogue" if file.resolve().is_relative_to(drawn.resolve()) else "local copy"}
    return out


def files_stamp(path: Path) -> list[tuple[str, int, int]]:
    """What a benchmark's cached scores are made from: every file of ``path`` (a file, or a folder's files
    below it) with its size and modification time, so an edited or replaced file anywhere makes new scores."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(f.relative_to(path) if path.is_dir() else f.name), (st := f.stat()).st_size, st.st_mtime_ns) for f in files]


def evaluation_models(sft_variants: list[str]) -> dict[str, str]:
    """Notebook 06's models, label -> stage: the base, the answer-only SFT where notebook 03 trained it
    (``sft_variants``: :func:`mirg_lib.ablations.sft_variants`; the papers' "+ SFT" rows), the CoT-SFT and the
    CoT-SFT + GRPO model."""
    answer = {"answer-only SFT": "sft_answer"} if "answer" in sft_variants else {}
    return {"base": "base_model", **answer, "CoT-SFT": "sft_zhang", "CoT-SFT + GRPO": "grpo"}


def evaluate_models(params: Params, models: dict[str, str], results: str | None = "scores", benchmarks: bool = False) -> list[dict[str, Any]]:
    """Score each model (label -> stage folder) with :func:`scored_row` and write the rows to
    ``runs/<profile>/results/<results>.json`` (None: write nothing); with ``benchmarks`` each row also carries
    its scores on the papers' other benchmarks (:func:`evaluate_benchmarks`)."""
    import time

    from .results import write_results

    t0 = time.perf_counter()
    rows = [scored_row(params, label, stage, model_path(params, stage), stage_prompt(stage)) for label, stage in models.items()]
    if benchmarks:
        for row, stage_name in zip(rows, models.values(), strict=True):
            row["benchmarks"] = evaluate_benchmarks(params, model_path(params, stage_name), stage_name, stage_prompt(stage_name))
    if results:
        write_results(params.profile, results, rows, wall_s=round(time.perf_counter() - t0, 1))
    return rows
