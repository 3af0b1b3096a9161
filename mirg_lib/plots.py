"""The papers' figures, drawn from result files only (``mirg_lib.results``); nothing here trains or generates.

Every function returns a matplotlib ``Figure``; :func:`make_figures` draws all of them for a profile from
``runs/<profile>/results/`` (or, with no run, the committed ``results/<profile>/``) and writes them
(atomically) to ``runs/<profile>/figures/``.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: papermill, CI; a notebook still shows the returned figures inline

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .formats import IN_DOMAIN, MIG_TASKS, OUT_OF_DOMAIN  # noqa: E402
from .io import atomic_path  # noqa: E402
from .results import ResultsError, load_results, read_log, summarise  # noqa: E402

GRPO_CURVES = (  # (title, the trl log keys whose names contain this, y label)
    ("reward components", "rewards/", "mean reward"),
    ("KL to the start model", "kl", "KL"),
    ("completion length", "completions/mean_length", "tokens"),
)


def _bars(ax, groups: list[str], series: list[tuple[str, list[float], list[float] | None]], ylabel: str) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (label, values, error bars)."""
    n = max(len(series), 1)
    width = 0.8 / n
    for k, (label, values, errors) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        ax.bar(xs, values, width, label=label, yerr=errors, capsize=2 if errors else 0)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    tops = [v + (errors[i] if errors else 0.0) for _, values, errors in series for i, v in enumerate(values)]
    ax.set_ylim(0, max([100.0, *tops]))
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)


def task_bars(rows: list[dict[str, Any]], title: str = "MIG-Bench Acc@0.5 per task") -> Figure:
    """Per-task bars for every model (Zhang et al. Table 2 as a figure); in-domain tasks first."""
    tasks = [t for t in (*IN_DOMAIN, *OUT_OF_DOMAIN) if any(t in r["tasks"] for r in rows)] or list(MIG_TASKS)
    fig, ax = plt.subplots(figsize=(max(8, len(tasks) * 0.9), 4))
    _bars(ax, tasks, [(r["model"], [r["tasks"].get(t, 0.0) for t in tasks], None) for r in rows], "Acc@0.5 (%)")
    n_in = sum(t in IN_DOMAIN for t in tasks)
    if 0 < n_in < len(tasks):
        ax.axvline(n_in - 0.5, color="grey", ls="--", lw=1)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def domain_bars(rows: list[dict[str, Any]], title: str = "In-domain vs out-of-domain") -> Figure:
    """In-domain, out-of-domain, AVG (and the single-image test where measured) per model (Zhang et al. Table 3)."""
    metrics = [("in_domain", "in-domain"), ("out_of_domain", "out-of-domain"), ("avg", "AVG")]
    if any(r.get("single") is not None for r in rows):
        metrics.append(("single", "single-image"))
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, [label for _, label in metrics], [(r["model"], [r.get(k) or 0.0 for k, _ in metrics], None) for r in rows], "Acc@0.5 (%)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def ablation_bars(rows: list[dict[str, Any]], metric: str = "avg", title: str | None = None) -> Figure:
    """One bar per ablation setting: the mean over its seeds, with the sample standard deviation as error bar
    (settings run once have none), the number of seeds under each label."""
    summary = summarise(rows)
    labels = [f"{s['model']}\n(n={len(s['seeds'])})" for s in summary]
    means = [s[metric]["mean"] if s[metric] else 0.0 for s in summary]
    stds = [s[metric]["std"] if s[metric] else 0.0 for s in summary]
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 1.2), 4))
    _bars(ax, labels, [(metric, means, stds)], f"{metric} Acc@0.5 (%)")
    ax.set_title(title or f"Ablations: {metric}, mean and spread over seeds")
    fig.tight_layout()
    return fig


def grpo_curves(logs: dict[str, str | os.PathLike]) -> Figure:
    """Reward components, KL and completion length per step for each GRPO run (label -> its ``train_log.jsonl``)."""
    fig, axes = plt.subplots(1, len(GRPO_CURVES), figsize=(5 * len(GRPO_CURVES), 3.5))
    for label, path in logs.items():
        steps = [r for r in read_log(path) if "reward" in r and "step" in r]
        for ax, (title, key, ylabel) in zip(axes, GRPO_CURVES, strict=True):
            keys = sorted({k for r in steps for k in r if k.startswith(key) and (key != "rewards/" or k.endswith("/mean"))})
            for k in keys:
                pts = [(r["step"], r[k]) for r in steps if isinstance(r.get(k), int | float)]
                if pts:
                    name = k.removeprefix("rewards/").removesuffix("/mean") if key == "rewards/" else label
                    ax.plot(*zip(*pts, strict=True), label=f"{label}: {name}" if key == "rewards/" and len(logs) > 1 else name)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def qualitative(bench_file: str | os.PathLike, predictions_file: str | os.PathLike, indices: list[int], label: str = "") -> Figure:
    """The papers' Figure 1 for a few items: each item's images in a row, the ground truth in green on its target
    image, the predicted box in red on the image the answer names (else the target), the question and the
    reply's text below."""
    from PIL import Image

    from .formats import load_mig_bench
    from .items import item_from_mig
    from .parsing import answer_region, image_index_from_text
    from .scoring import load_predictions, predicted_box

    bench_file = Path(bench_file)
    records = {r.index: r for r in load_mig_bench(bench_file)}
    preds = load_predictions(predictions_file)
    missing = [i for i in indices if i not in records]
    if missing:
        raise ResultsError(f"{bench_file}: no record with index {missing[0]}")
    n_cols = max(len(records[i].images) for i in indices)
    fig, axes = plt.subplots(len(indices), n_cols, figsize=(2.6 * n_cols, 3.4 * len(indices)), squeeze=False)
    for row, i in enumerate(indices):
        rec = records[i]
        item = item_from_mig(rec, bench_file.parent)
        pred = preds.get(i)
        box = predicted_box(pred) if pred is not None else None
        named = image_index_from_text(answer_region(pred.response)[1]) if pred is not None else None
        pred_image = named if named and 1 <= named <= len(item.images) else item.target_image
        for col in range(n_cols):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(item.images):
                continue
            with Image.open(item.images[col]) as im:
                w, h = im.size
                ax.imshow(im.convert("RGB"))
            ax.set_title(f"image {col + 1}", fontsize=8)
            for b, colour, k in ((rec.answer, "lime", item.target_image), (box, "red", pred_image)):
                if b is not None and k == col + 1:
                    x1, y1, x2, y2 = b
                    ax.add_patch(plt.Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False, ec=colour, lw=2))
        reply = pred.response if pred is not None else "(no prediction)"
        reply = "".join(ch if ch.isprintable() or ch == "\n" else "?" for ch in reply)  # a broken reply still draws
        text = f"[{rec.task}] {rec.question.strip()}\n{label + ': ' if label else ''}{reply}"
        axes[row][0].text(0, -0.08, "\n".join(textwrap.wrap(text, width=32 * n_cols)[:8]), transform=axes[row][0].transAxes, va="top", fontsize=7, family="monospace")
    whose = f"{label}'s" if label else "the predicted"
    fig.suptitle(f"green: the ground truth; red: {whose} box", fontsize=9)
    fig.subplots_adjust(hspace=1.1, wspace=0.08, top=0.93)
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG (atomically) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def make_figures(profile: str, out_dir: str | os.PathLike | None = None, n_examples: int = 3) -> list[Path]:
    """Every figure of ``profile`` from its result files (:func:`mirg_lib.results.result_sources`: a run's, or
    on a fresh clone the committed ``results/<profile>/``): per-task and domain bars (``scores.json``),
    ablation bars (``ablations.json``, when 07 has run), the GRPO curves and the qualitative figure of the
    last model that has them. Returns the written files (default folder: ``runs/<profile>/figures/``)."""
    from .paths import runs_dir
    from .results import qualitative_indices, result_sources

    folder, base = result_sources(profile)
    out = Path(out_dir) if out_dir else runs_dir() / profile / "figures"
    rows = load_results(folder / "scores.json")["rows"]
    written = [save(task_bars(rows), out / "tasks.png"), save(domain_bars(rows), out / "domains.png")]
    ablations = folder / "ablations.json"
    if ablations.is_file():
        arows = load_results(ablations)["rows"]
        written += [save(ablation_bars(arows, m), out / f"ablations_{m}.png") for m in ("avg", "single") if any(r.get(m) is not None for r in arows)]
    logs = {r["model"]: base / r["train_log"] for r in rows if r.get("train_log")}
    if logs:
        written.append(save(grpo_curves(logs), out / "grpo_curves.png"))
    with_preds = [r for r in rows if r.get("predictions") and r.get("bench")]
    if with_preds:
        last = with_preds[-1]
        bench, preds = base / last["bench"], base / last["predictions"]
        written.append(save(qualitative(bench, preds, qualitative_indices(preds, n_examples), label=last["model"]), out / "qualitative.png"))
    return written
