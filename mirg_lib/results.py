"""Result files: what the evaluation and the ablations measured, with where and when, for the figures.

``runs/<profile>/results/<name>.json`` holds ``{"provenance": {...}, "rows": [...]}``. A row is one model
(or one ablation setting and seed): its label, the stage folder it was evaluated from, Acc@0.5 per MIG-Bench
task, in / out of domain, AVG, the unparseable count and the single-image score, and the paths (relative to
``runs/<profile>/``) of the files the figures read: the predictions and, for a GRPO model, its training log.
The figures (``mirg_lib.plots``, notebook 08) read only these files and what they point to.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .formats import MIG_TASKS
from .io import write_json
from .paths import ROOT, runs_dir

METRICS = ("avg", "in_domain", "out_of_domain", "single")


class ResultsError(ValueError):
    """A result file is missing or malformed; the message names the file and, where it can, the row and field."""


def results_dir(profile: str) -> Path:
    return runs_dir() / profile / "results"


COMMITTED_DIR = ROOT / "results"  # results/<profile>/: a run's result files, committed with the repository


def result_sources(profile: str) -> tuple[Path, Path]:
    """Where ``profile``'s result files are, and the folder the paths inside them start from: after a run,
    ``runs/<profile>/results/`` and ``runs/<profile>/``; without one (a fresh clone), the committed
    ``results/<profile>/`` for both, when it is there."""
    run = runs_dir() / profile
    committed = COMMITTED_DIR / profile
    if not (run / "results" / "scores.json").is_file() and (committed / "scores.json").is_file():
        return committed, committed
    return run / "results", run


def qualitative_indices(predictions: str | os.PathLike, n: int) -> list[int]:
    """The benchmark indices the qualitative figure shows: the first predicted item of each task, ``n`` of them."""
    from .scoring import load_predictions

    by_task: dict[str | None, int] = {}
    for index, p in load_predictions(predictions).items():
        by_task.setdefault(p.task, index)
    return list(by_task.values())[:n]


def commit_results(profile: str, dest: str | os.PathLike | None = None, n_examples: int = 3) -> list[Path]:
    """Copy ``profile``'s finished result files to ``dest`` (default ``results/<profile>/``, to commit) with
    what its figures read, at the same relative paths: each row's GRPO log, the last model's predictions
    and benchmark file, and the images of the items the qualitative figure shows. Written whole or not at
    all; returns the files copied."""
    import shutil

    from .formats import load_mig_bench
    from .io import atomic_dir

    base = runs_dir() / profile
    folder = base / "results"
    if not (folder / "scores.json").is_file():
        raise ResultsError(f"{folder}: no run of {profile!r} to commit (06_evaluation writes scores.json)")
    names = [n for n in ("scores.json", "ablations.json", "claims.json") if (folder / n).is_file()]
    rows = load_results(folder / "scores.json")["rows"]
    wanted = [r["train_log"] for r in rows if r.get("train_log")]
    shown = [r for r in rows if r.get("predictions") and r.get("bench")]
    if shown:
        last = shown[-1]
        wanted += [last["predictions"], last["bench"]]
        records = {r.index: r for r in load_mig_bench(base / last["bench"])}
        bench_dir = Path(last["bench"]).parent
        for i in qualitative_indices(base / last["predictions"], n_examples):
            wanted += [str(bench_dir / img) for img in records[i].images]
    dest = Path(dest) if dest is not None else COMMITTED_DIR / profile
    copied = []
    with atomic_dir(dest) as tmp:
        for name in names:
            shutil.copy2(folder / name, tmp / name)
            copied.append(dest / name)
        for rel in dict.fromkeys(wanted):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base / rel, tmp / rel)
            copied.append(dest / rel)
    return copied


def device_name() -> str:
    """``cuda:<GPU name>`` when a GPU is used, otherwise ``cpu`` (as the stages record it in ``mirg.json``)."""
    import torch

    return "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The repository's commit, with ``+dirty`` when tracked files differ from it; None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def report(result: dict[str, Any], out: str | Path | None = None) -> dict[str, Any]:
    """A benchmark's result: printed as JSON, written to ``out`` too where given; returned."""
    print(json.dumps(result, indent=1))
    if out:
        write_json(out, result)
    return result


def provenance(**extra: Any) -> dict[str, Any]:
    """When, where and from which commit a result was measured (``extra`` adds fields, e.g. the wall time)."""
    import torch

    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "device": device_name(),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        **extra,
    }


def model_row(label: str, stage: str, scores: dict[str, Any], single: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One model's row from ``scoring.score`` output on MIG-Bench (and on the single-image test)."""
    return {
        "model": label,
        "stage": stage,
        "tasks": {t: v["acc"] for t, v in scores["tasks"].items()},
        "avg": scores["avg"],
        "in_domain": scores["in_domain"],
        "out_of_domain": scores["out_of_domain"],
        "unparseable": scores["unparseable"],
        "n_records": scores["n_records"],
        "single": single["avg"] if single is not None else None,
        **extra,
    }


def _check_row(path: Path, i: int, row: Any) -> None:
    if not isinstance(row, dict):
        raise ResultsError(f"{path}: row {i} is {type(row).__name__}, not an object")
    if not isinstance(row.get("model"), str):
        raise ResultsError(f"{path}: row {i}: field 'model' must be a string (got {row.get('model')!r})")
    where = f"{path}: row {i} ({row['model']})"
    tasks = row.get("tasks")
    if not isinstance(tasks, dict):
        raise ResultsError(f"{where}: field 'tasks' must be an object of task -> accuracy")
    for t, v in tasks.items():
        if t not in MIG_TASKS:
            raise ResultsError(f"{where}: field 'tasks' names an unknown task {t!r}")
        if not _is_number(v):
            raise ResultsError(f"{where}: field 'tasks.{t}' must be a number (got {v!r})")
    for key in METRICS:
        v = row.get(key)
        if v is not None and not _is_number(v):
            raise ResultsError(f"{where}: field {key!r} must be a number or null (got {v!r})")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def write_results(profile: str, name: str, rows: list[dict[str, Any]], **meta: Any) -> Path:
    """Write ``results/<name>.json`` (atomically) with the provenance of this measurement."""
    path = results_dir(profile) / f"{name}.json"
    for i, row in enumerate(rows):
        _check_row(path, i, row)
    write_json(path, {"provenance": provenance(**meta), "rows": rows})
    return path


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a result file; a missing or malformed one raises :class:`ResultsError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such result file (run the notebook that writes it first: 06_evaluation or 07_ablations)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ResultsError(f"{path}: field 'rows' (a list) is missing")
    for i, row in enumerate(data["rows"]):
        _check_row(path, i, row)
    return data


def domain_means(row: dict[str, Any]) -> dict[str, float | None]:
    """In-domain, out-of-domain and AVG recomputed from a row's per-task numbers (``scoring.domain_means``)."""
    from .scoring import domain_means as from_tasks

    return from_tasks(row["tasks"])


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A trainer's JSONL log (``train_log.jsonl``); a missing file or a line that is not JSON raises
    :class:`ResultsError` naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such training log")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ResultsError(f"{path}: line {n} is not JSON ({e})") from e
    return rows


def seed_summary(values: list[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for one value) and count of one metric over seeds."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        raise ValueError("no values to summarise")
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def summarise(rows: list[dict[str, Any]], key: str = "model") -> list[dict[str, Any]]:
    """Rows grouped by ``key`` (rows of one setting differ only in their seed), each metric and each task as
    :func:`seed_summary`; groups keep the order they first appear in."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    out = []
    for label, members in groups.items():
        summary: dict[str, Any] = {key: label, "seeds": [m.get("seed") for m in members]}
        for metric in METRICS:
            vals = [m[metric] for m in members if m.get(metric) is not None]
            summary[metric] = seed_summary(vals) if vals else None
        summary["tasks"] = {t: seed_summary([m["tasks"][t] for m in members]) for t in members[0]["tasks"] if all(t in m["tasks"] for m in members)}
        out.append(summary)
    return out
