"""The papers' ablations (notebook 07): every row trained by the pipeline's own stage functions under
overrides, scored by the same evaluation, with seeds, and the papers' claims tested against the noise.

An :class:`Arm` is one row of the papers' tables: which stage function makes its model (the base, one SFT
variant, or GRPO from another arm's model with a recipe, rewards and with or without rejection sampling),
the prompt it is scored with, and the rows of the papers it stands for, with their numbers. Seed 0 of an arm
is the pipeline's own stage folder (``sft_zhang``, ``grpo``, ...), so notebook 07 reuses what 03-05 trained;
seed ``s > 0`` retrains the arm's last stage with ``<section>.seed = s`` into ``<stage>_seed<s>`` from the
seed-0 model it starts from, so the spread measured is the spread of that stage.

A :class:`Claim` is a contrast of arms on a metric (e.g. "RL beats SFT": GRPO's AVG minus CoT-SFT's). Its
noise is measured twice: a paired bootstrap over the benchmark's items (the same items resampled for every
arm, stratified by task, as AVG is a mean over tasks) and, where an arm has several seeds, the spread over
seeds. A claim *held* when the measured difference has the paper's sign and both its bootstrap interval
and two seed standard errors exclude zero; *reversed* when the same is true with the opposite sign; otherwise
it is *not shown* (within the noise).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Params, set_overrides, stage_config
from .paths import stage_dir

# --------------------------------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class Arm:
    """One row of the ablation tables and how its model is made."""

    label: str
    stage: str  # its folder under runs/<profile>/ for seed 0
    kind: str  # base | sft | grpo
    prompt: str  # the prompt it is scored with (the one it was trained on)
    variant: str = ""  # sft: the SFT data variant (zhang, answer, mirg_text, mirg_bbox)
    init: str = ""  # grpo: the arm (label) whose seed-0 model it starts from
    recipe: str = "zhang"  # grpo: prompt and default rewards
    rewards: dict[str, float] = field(default_factory=dict)  # grpo: empty = the recipe's
    use_rejection: bool = True  # grpo: the RL items rejection sampling kept (else the in-domain pool)
    paper: dict[str, float] = field(default_factory=dict)  # "<table>": the paper's MIG-Bench AVG for this row
    eval_name: str = ""  # its folder under eval/ (default: its stage): the base is scored under several prompts

    @property
    def seeded(self) -> bool:
        return self.kind != "base"


BASE = "base"
BASE_ZHANG = "base, Zhang et al.'s prompt"
BASE_MIRG = "base, MIRG-RL's prompt"
ANSWER_SFT = "answer-only SFT"
COT_SFT = "CoT-SFT"
COT_GRPO = "CoT-SFT + GRPO"
NO_COLD = "GRPO w/o cold start"
NO_REJECTION = "CoT-SFT + GRPO w/o rejection sampling"
MIRG_BASE_RL = "base + MIRG-RL GRPO"
MIRG_ANSWER_RL = "answer-only SFT + MIRG-RL GRPO"
MIRG_TEXT = "reasoning-only SFT"
MIRG_TEXT_RL = "reasoning-only SFT + GRPO"
MIRG_BBOX = "reasoning+grounding SFT"
MIRG_BBOX_RL = "reasoning+grounding SFT + GRPO"
MIRG_NO_IMAGE = "reasoning+grounding SFT + GRPO w/o image reward"

ARMS: tuple[Arm, ...] = (
    Arm(BASE, "base_model", "base", "plain", paper={"Zhang T2": 13.19, "MIRG-RL T3": 29.04}),
    Arm(BASE_ZHANG, "base_model", "base", "zhang", eval_name="base_model_zhang", paper={"Zhang T2": 13.19}),
    Arm(BASE_MIRG, "base_model", "base", "mirg", eval_name="base_model_mirg", paper={"MIRG-RL T3": 29.04}),
    Arm(ANSWER_SFT, "sft_answer", "sft", "plain", variant="answer", paper={"Zhang T2": 49.79, "MIRG-RL T3": 50.96}),
    Arm(COT_SFT, "sft_zhang", "sft", "zhang", variant="zhang", paper={"Zhang T2": 52.41, "Zhang T9": 52.41}),
    Arm(COT_GRPO, "grpo", "grpo", "zhang", init=COT_SFT, paper={"Zhang T2": 58.83, "Zhang T9": 58.47}),
    Arm(NO_COLD, "grpo_no_cold_start", "grpo", "zhang", init=BASE, use_rejection=False, paper={"Zhang T9": 17.79}),
    Arm(NO_REJECTION, "grpo_no_rejection", "grpo", "zhang", init=COT_SFT, use_rejection=False, paper={"Zhang T9": 55.20}),
    Arm(MIRG_BASE_RL, "grpo_mirg_base", "grpo", "mirg", init=BASE, recipe="mirg", use_rejection=False, paper={"MIRG-RL T3": 35.90}),
    Arm(MIRG_ANSWER_RL, "grpo_mirg_answer", "grpo", "mirg", init=ANSWER_SFT, recipe="mirg", use_rejection=False, paper={"MIRG-RL T3": 55.55}),
    Arm(MIRG_TEXT, "sft_mirg_text", "sft", "mirg", variant="mirg_text", paper={"MIRG-RL T3": 57.74}),
    Arm(MIRG_TEXT_RL, "grpo_mirg_text", "grpo", "mirg", init=MIRG_TEXT, recipe="mirg", use_rejection=False, paper={"MIRG-RL T3": 62.05}),
    Arm(MIRG_BBOX, "sft_mirg_bbox", "sft", "mirg", variant="mirg_bbox", paper={"MIRG-RL T3": 60.60}),
    Arm(MIRG_BBOX_RL, "grpo_mirg_bbox", "grpo", "mirg", init=MIRG_BBOX, recipe="mirg", use_rejection=False, paper={"MIRG-RL T3": 64.82}),
    Arm(
        MIRG_NO_IMAGE,
        "grpo_mirg_bbox_no_image",
        "grpo",
        "mirg",
        init=MIRG_BBOX,
        recipe="mirg",
        rewards={"mirg_format": 1.0, "mirg_object": 1.0},
        use_rejection=False,
        paper={"MIRG-RL T3": 64.82 - 4.31},  # the text: the image reward adds 4.31 points
    ),
)
ARMS_BY_LABEL = {a.label: a for a in ARMS}
TABLES = ("Zhang T2", "Zhang T9", "MIRG-RL T3")


@dataclass
class AblationsConfig:
    """Section ``ablations`` of the params (07_ablations)."""

    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seed 0 reuses notebooks 03-05's models; s > 0 retrains each arm's last stage"})
    arms: list[str] = field(default_factory=list, metadata={"help": "labels of the arms to run (empty: all; an arm's start is run too)"})
    bootstrap: int = field(default=2000, metadata={"help": "paired bootstrap resamples over the benchmark items"})
    confidence: float = field(default=0.95, metadata={"help": "the claims' interval level"})

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS_BY_LABEL]
        if unknown:
            raise ValueError(f"ablations.arms: unknown arm(s) {unknown}; known: {list(ARMS_BY_LABEL)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"ablations.seeds must be distinct non-negative integers, got {self.seeds}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError("ablations.confidence must lie in [0.5, 1)")


def selected_arms(cfg: AblationsConfig) -> list[Arm]:
    """The arms asked for, with the arm each starts from (never itself a GRPO arm, so one step), in the table order."""
    want = set(cfg.arms or ARMS_BY_LABEL)
    want |= {ARMS_BY_LABEL[label].init for label in want if ARMS_BY_LABEL[label].init}
    return [a for a in ARMS if a.label in want]


def sft_variants(params: Params) -> list[str]:
    """The SFT variants notebook 03 trains: Zhang et al.'s CoT-SFT (the stage-1 model 04 and 05 start from)
    and those the selected ablation rows need, in the table order."""
    cfg = stage_config(AblationsConfig, params, "ablations")
    need = {"zhang"} | {a.variant for a in selected_arms(cfg) if a.kind == "sft"}
    return [v for v in ("zhang", "answer", "mirg_text", "mirg_bbox") if v in need]


def arm_stage(arm: Arm, seed: int) -> str:
    """The folder (under ``runs/<profile>/``) of an arm's model for ``seed``."""
    return arm.stage if seed == 0 or not arm.seeded else f"{arm.stage}_seed{seed}"


def train_arm(params: Params, arm: Arm, seed: int = 0) -> Path:
    """Make (or reuse) ``arm``'s model for ``seed`` with the pipeline's stage functions; return its checkpoint."""
    from . import pipeline

    stage = arm_stage(arm, seed)
    if arm.kind == "base":
        return pipeline.base_path(params)
    if arm.kind == "sft":
        p = params if seed == 0 else _with(params, {"sft.seed": seed})
        return pipeline.sft(p, arm.variant, name=stage.removeprefix("sft_"))
    start = ARMS_BY_LABEL[arm.init]
    init = train_arm(params, start, 0)
    over: dict[str, Any] = {"grpo.recipe": arm.recipe, "grpo.rewards": dict(arm.rewards)}
    if seed:
        over["grpo.seed"] = seed
    return pipeline.grpo(_with(params, over), init=init, name=stage, use_rejection=arm.use_rejection)


def _with(params: Params, overrides: dict[str, Any]) -> Params:
    """``params`` with dotted-key overrides set on a copy (the same profile, so the same runs folder); a value
    replaces the setting whole (an arm's ``grpo.rewards`` is all its rewards)."""
    import copy

    return Params(params.profile, params.files, set_overrides(copy.deepcopy(params.data), overrides, merge=False))


def run_ablations(params: Params, results: str | None = "ablations") -> list[dict[str, Any]]:
    """Train and score every selected arm for every seed; write ``results/<results>.json`` (rows carry
    ``seed`` and, per paper table, the paper's number)."""
    from . import pipeline
    from .progress import note
    from .results import write_results

    cfg = stage_config(AblationsConfig, params, "ablations")
    t0 = time.perf_counter()
    rows = []
    for arm in selected_arms(cfg):
        for seed in cfg.seeds if arm.seeded else [0]:
            stage = arm_stage(arm, seed)
            t1 = time.perf_counter()
            path = train_arm(params, arm, seed)
            row = pipeline.scored_row(params, arm.label, stage, path, arm.prompt, arm.eval_name, seed=seed, paper=dict(arm.paper))
            rows.append(row)
            note(params.profile, f"ablation row {arm.label!r} seed {seed}: MIG-Bench AVG {row['avg']:.1f}, single-image {row['single']:.1f} ({time.perf_counter() - t1:.0f} s, total {time.perf_counter() - t0:.0f} s)")
    if results:
        write_results(params.profile, results, rows, wall_s=round(time.perf_counter() - t0, 1), seeds=list(cfg.seeds))
    return rows


def paper_table(rows: list[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    """The rows of one paper table (``"Zhang T2"``, ``"Zhang T9"``, ``"MIRG-RL T3"``): the paper's AVG beside
    this run's mean and spread over seeds."""
    from .results import summarise

    out = []
    for s in summarise([r for r in rows if table in (r.get("paper") or {})]):
        paper = next(r["paper"][table] for r in rows if r["model"] == s["model"])
        out.append(
            {
                "model": s["model"],
                "paper AVG": round(paper, 2),
                "AVG": _fmt(s["avg"]),
                "in-domain": _fmt(s["in_domain"]),
                "out-of-domain": _fmt(s["out_of_domain"]),
                "single-image": _fmt(s["single"]),
                "seeds": len(s["seeds"]),
            }
        )
    return out


def _fmt(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "-"
    return f"{summary['mean']:.1f}" + (f" ± {summary['std']:.1f}" if summary["n"] > 1 else "")


# ------------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """A claim of a paper as a contrast: sum of ``weight * metric(arm)`` over ``terms``, expected > 0."""

    paper: str
    text: str
    terms: tuple[tuple[str, str, float], ...]  # (arm label, metric: avg | in_domain | out_of_domain | single, weight)
    paper_value: float  # the paper's value of the same contrast (points)
    on_single: bool = True  # also measured on the single-image referring test (an in-domain task here)

    def on_single_image(self) -> Claim:
        """The same contrast on the single-image test (the papers report none: ``paper_value`` is NaN)."""
        return Claim(self.paper, self.text, tuple((a, "single", w) for a, _, w in self.terms), math.nan, False)


CLAIMS: tuple[Claim, ...] = (
    Claim("Zhang et al.", "CoT-SFT beats answer-only SFT (T2)", ((COT_SFT, "avg", 1), (ANSWER_SFT, "avg", -1)), 52.41 - 49.79),
    Claim("Zhang et al.", "RL beats SFT: CoT-SFT + GRPO over CoT-SFT (T2)", ((COT_GRPO, "avg", 1), (COT_SFT, "avg", -1)), 58.83 - 52.41),
    Claim(
        "Zhang et al.",
        "RL's gain over SFT is larger out of domain than in domain (T3: +12.76 vs +3.46)",
        ((COT_GRPO, "out_of_domain", 1), (ANSWER_SFT, "out_of_domain", -1), (COT_GRPO, "in_domain", -1), (ANSWER_SFT, "in_domain", 1)),
        (53.34 - 40.58) - (67.07 - 63.61),
        on_single=False,
    ),
    Claim("Zhang et al.", "cold start helps RL: full over GRPO w/o cold start (T9)", ((COT_GRPO, "avg", 1), (NO_COLD, "avg", -1)), 58.47 - 17.79),
    Claim("Zhang et al.", "rejection sampling helps: full over w/o rejection sampling (T9)", ((COT_GRPO, "avg", 1), (NO_REJECTION, "avg", -1)), 58.47 - 55.20),
    Claim("MIRG-RL", "RL on SFT beats SFT (T3)", ((MIRG_ANSWER_RL, "avg", 1), (ANSWER_SFT, "avg", -1)), 55.55 - 50.96),
    Claim("MIRG-RL", "RL directly on the base helps (T3; both scored with MIRG-RL's prompt)", ((MIRG_BASE_RL, "avg", 1), (BASE_MIRG, "avg", -1)), 35.90 - 29.04),
    Claim("MIRG-RL", "reasoning trajectories beat standard SFT (T3)", ((MIRG_TEXT, "avg", 1), (ANSWER_SFT, "avg", -1)), 57.74 - 50.96),
    Claim("MIRG-RL", "trajectories with image indices and boxes beat reasoning alone, SFT (T3)", ((MIRG_BBOX, "avg", 1), (MIRG_TEXT, "avg", -1)), 60.60 - 57.74),
    Claim("MIRG-RL", "trajectories with image indices and boxes beat reasoning alone, after RL (T3)", ((MIRG_BBOX_RL, "avg", 1), (MIRG_TEXT_RL, "avg", -1)), 64.82 - 62.05),
    Claim("MIRG-RL", "the image reward helps (text: +4.31)", ((MIRG_BBOX_RL, "avg", 1), (MIRG_NO_IMAGE, "avg", -1)), 4.31),
)


def item_correct(profile: str, row: dict[str, Any], single: bool = False) -> dict[int, tuple[str, float]]:
    """Each benchmark item a row was scored on -> (task, 1.0 if right at IoU 0.5 else 0.0), re-scored from
    the predictions file the row names (``single``: the single-image test)."""
    from .formats import load_mig_bench
    from .results import ResultsError
    from .scoring import load_predictions, score_item

    base = stage_dir(profile, "")
    key_p, key_b = ("single_predictions", "single_bench") if single else ("predictions", "bench")
    if not row.get(key_p) or not row.get(key_b):
        raise ResultsError(f"row {row.get('model')!r} (seed {row.get('seed')}) names no {key_p!r} / {key_b!r} file")
    preds = load_predictions(base / row[key_p])
    records = [r for r in load_mig_bench(base / row[key_b]) if r.index in preds]
    return {r.index: (r.task, float(score_item(r, preds[r.index]).correct)) for r in records}


def _metric(correct: dict[int, tuple[str, float]], idx: list[int], metric: str) -> float:
    from .scoring import domain_means

    by_task: dict[str, list[float]] = {}
    for i in idx:
        task, ok = correct[i]
        by_task.setdefault(task, []).append(ok)
    accs = {t: 100.0 * sum(v) / len(v) for t, v in by_task.items()}
    value = domain_means(accs)["avg" if metric == "single" else metric]
    if value is None:
        raise ValueError(f"metric {metric!r} has no task in these items")
    return value


def measure_claim(profile: str, rows: list[dict[str, Any]], claim: Claim, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, scored: dict[tuple[str, str], dict[int, tuple[str, float]]] | None = None) -> dict[str, Any]:
    """Measure ``claim`` on the ablation rows: the contrast (mean over seeds), its paired bootstrap interval
    over items, the seed standard error where seeds repeat, and the verdict (see the module's docstring).
    ``scored`` keeps each row's :func:`item_correct` (by predictions and benchmark file) across claims."""
    import random

    scored = {} if scored is None else scored

    def correct(row: dict[str, Any], single: bool) -> dict[int, tuple[str, float]]:
        key = (str(row.get("single_predictions" if single else "predictions")), str(row.get("single_bench" if single else "bench")))
        if key not in scored:
            scored[key] = item_correct(profile, row, single)
        return scored[key]

    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_arm.setdefault(r["model"], []).append(r)
    missing = [a for a, _, _ in claim.terms if a not in by_arm]
    single = all(m == "single" for _, m, _ in claim.terms)
    out: dict[str, Any] = {
        "paper": claim.paper,
        "claim": claim.text,
        "metric": "single-image" if single else "MIG-Bench",
        "paper_value": None if math.isnan(claim.paper_value) else round(claim.paper_value, 2),
        "measured": None,
        "ci": None,
        "confidence": confidence,
        "seed_se": None,
        "seeds": {},
        "items": 0,
    }  # every result has every field, measured or not
    if missing:
        return {**out, "verdict": f"not measured (no rows for {missing})"}
    # per arm: item -> (task, fraction of its seeds right)
    items: dict[str, dict[int, tuple[str, float]]] = {}
    for arm in {a for a, _, _ in claim.terms}:
        per_seed = [correct(r, single) for r in by_arm[arm]]
        common = set.intersection(*(set(c) for c in per_seed))
        items[arm] = {i: (per_seed[0][i][0], sum(c[i][1] for c in per_seed) / len(per_seed)) for i in common}
    shared = sorted(set.intersection(*(set(v) for v in items.values())))
    if not shared:
        return {**out, "verdict": "not measured (the arms share no scored item)"}

    def contrast(idx: list[int]) -> float:
        return sum(w * _metric(items[a], idx, m) for a, m, w in claim.terms)

    value = contrast(shared)
    rng = random.Random(seed)
    by_task: dict[str, list[int]] = {}
    for i in shared:
        by_task.setdefault(items[claim.terms[0][0]][i][0], []).append(i)
    boots = []
    for _ in range(n_boot):
        idx = [rng.choice(members) for members in by_task.values() for _ in members]
        boots.append(contrast(idx))
    boots.sort()
    lo = boots[int((1 - confidence) / 2 * n_boot)]
    hi = boots[min(n_boot - 1, int((1 + confidence) / 2 * n_boot))]
    # seed standard error of the contrast: each arm's part of it varies over that arm's seeds
    seed_var = 0.0
    for arm in {a for a, _, _ in claim.terms}:
        per_seed = [sum(w * r[m] for a, m, w in claim.terms if a == arm) for r in by_arm[arm]]
        if len(per_seed) > 1:
            mean = sum(per_seed) / len(per_seed)
            seed_var += sum((v - mean) ** 2 for v in per_seed) / (len(per_seed) - 1) / len(per_seed)
    seed_se = math.sqrt(seed_var)
    n_seeds = {a: len(by_arm[a]) for a, _, _ in claim.terms}
    beyond_seeds = abs(value) > 2 * seed_se
    if lo > 0 and beyond_seeds:
        verdict = "held"
    elif hi < 0 and beyond_seeds:
        verdict = "reversed"
    else:
        verdict = "not shown (within the noise)"
    return {
        **out,
        "measured": round(value, 2),
        "ci": [round(lo, 2), round(hi, 2)],
        "seed_se": round(seed_se, 2) if any(n > 1 for n in n_seeds.values()) else None,
        "seeds": n_seeds,
        "items": len(shared),
        "verdict": verdict,
    }


def measure_claims(params: Params, rows: list[dict[str, Any]] | None = None, results: str | None = "claims") -> list[dict[str, Any]]:
    """Every claim of :data:`CLAIMS` measured on MIG-Bench and (where it means something) on the single-image
    test, on ``rows`` (default: ``results/ablations.json``); written to
    ``results/<results>.json``."""
    from .io import write_json
    from .results import load_results, provenance, results_dir

    cfg = stage_config(AblationsConfig, params, "ablations")
    if rows is None:
        rows = load_results(results_dir(params.profile) / "ablations.json")["rows"]
    claims = [c for claim in CLAIMS for c in ([claim, claim.on_single_image()] if claim.on_single else [claim])]
    scored: dict[tuple[str, str], dict[int, tuple[str, float]]] = {}  # each row's items scored once, not once per claim
    out = [measure_claim(params.profile, rows, c, cfg.bootstrap, cfg.confidence, scored=scored) for c in claims]
    if results:
        write_json(results_dir(params.profile) / f"{results}.json", {"provenance": provenance(), "claims": out})
    return out


def _md(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("-" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    return lines


# Zhang et al.'s other benchmarks (Tables 4-7): Qwen2.5-VL-7B, + SFT (answer-only), Ours (CoT-SFT + GRPO), on the
# real benchmarks; the row a benchmark's headline is compared with
PAPER_OTHER = {
    "ref_l4": ("T4, Ref-L4 val, Acc@0.5", 58.57, 68.92, 74.78),
    "lisa": ("T4, LISA val, Acc@0.5", 56.63, 55.10, 62.76),
    "revos": ("T4, ReVOS, Acc@0.5", 30.07, 46.33, 49.16),
    "odinw": ("T5, ODinW five subsets, AVG", 46.91, 49.82, 54.15),
    "blink": ("T6, BLINK seven subsets, AVG", 58.07, 56.56, 61.18),
    "mmiu": ("T7, MMIU semantic relations, AVG", 56.8, 57.7, 59.4),
    "mmiu 2D spatial": ("T8, MMIU two-dimensional spatial, AVG", 37.8, 38.6, 40.4),
    "mc_bench": ("v2 abstract: + 6.37 over the base", None, None, None),
}


def other_benchmarks_table(scores: dict[str, Any]) -> list[str]:
    """Markdown lines: each of the papers' other benchmarks that notebook 06 scored (a ``benchmarks`` entry of
    ``scores.json``'s rows) beside Zhang et al.'s numbers on the real one; none scored, no lines."""
    rows = [{**r, "benchmarks": dict(r["benchmarks"])} for r in scores["rows"] if r.get("benchmarks")]
    for r in rows:  # MMIU's two-dimensional spatial type is Table 8's row of its own
        h = r["benchmarks"].get("mmiu") or {}
        spatial = h.get("types", {}).get("two-dimensional spatial")
        if spatial is not None:
            r["benchmarks"]["mmiu 2D spatial"] = {**h, "score": spatial, "semantic": None, "n": None}
    names = [b for b in PAPER_OTHER if any(b in r["benchmarks"] for r in rows)]
    if not names:
        return []
    prov = scores["provenance"]
    out = []
    for b in names:
        where, base, sft, ours = PAPER_OTHER[b]
        entry: dict[str, Any] = {"benchmark": b, "paper (real benchmark)": where, "paper: base / + SFT / ours": "-" if base is None else f"{base} / {sft} / {ours}"}
        first = next(r["benchmarks"][b] for r in rows if b in r["benchmarks"])
        semantic = first.get("semantic") is not None  # MMIU: the paper's AVG is over the semantic relation types' tasks
        entry["data"] = first.get("data", "analogue")
        entry["metric here"] = first["metric"] + (" (semantic types' tasks)" if semantic else "")
        for r in rows:
            h = r["benchmarks"].get(b)
            value = None if h is None else h.get("semantic") if semantic else h["score"]
            entry[r["model"]] = None if value is None else round(value, 1)
        entry["items"] = first["n"]
        entry["unreadable (last row)"] = rows[-1]["benchmarks"].get(b, {}).get("unreadable")
        out.append(entry)
    head = (f"**Zhang et al.'s other benchmarks** (Tables 4-7), scored by notebook 06 on {prov['date'][:10]} ({prov['device']}, "
            f"commit {prov['commit'][:7]}; notebook 06's wall time {prov.get('wall_s', 0):.0f} s, scores made before from the same model and "
            "files reused), seed 0. Where the data are the embedded world's analogues (`benchmarks.analogue_items`), only the direction "
            "of a change compares with the paper's; a local copy (`benchmarks.files`) is the real benchmark.")
    return ["", head, ""] + _md(out)


def report(profile: str, folder: str | Path | None = None) -> str:
    """The README's results: each paper table beside this run's numbers, and the claims with their verdicts,
    as Markdown, from ``ablations.json`` and ``claims.json`` (in ``folder``; default: the profile's
    ``runs/<profile>/results/`` or, with no run, the committed ``results/<profile>/``) with their provenance."""
    import json

    from .results import load_results, result_sources

    folder = Path(folder) if folder is not None else result_sources(profile)[0]
    data = load_results(folder / "ablations.json")
    prov = data["provenance"]
    lines = [
        f"Measured {prov['date'][:10]} on {prov['device']} ({prov['cpu']}), commit {prov['commit']}, "
        f"07_ablations wall time {prov.get('wall_s', 0) / 60:.1f} min, seeds {prov.get('seeds')}; Acc@0.5 (%), "
        "mean ± standard deviation over seeds.",
    ]
    for table in TABLES:
        rows = paper_table(data["rows"], table)
        if rows:
            lines += ["", f"**{table}**", ""] + _md(rows)
    scores_file = folder / "scores.json"
    if scores_file.is_file():
        lines += other_benchmarks_table(load_results(scores_file))
    claims_file = folder / "claims.json"
    if claims_file.is_file():
        claims = json.loads(claims_file.read_text())["claims"]
        lines += ["", "**Claims** (difference in points; interval: paired bootstrap over items)", ""]
        lines += _md(
            [
                {
                    "source": c["paper"],
                    "claim": c["claim"],
                    "metric": c["metric"],
                    "paper": c["paper_value"],
                    "measured": c["measured"],
                    f"{int(100 * c['confidence'])} % interval": None if c["ci"] is None else f"[{c['ci'][0]}, {c['ci'][1]}]",
                    "seed s.e.": c["seed_se"],
                    "verdict": c["verdict"],
                }
                for c in claims
            ]
        )
    return "\n".join(lines) + "\n"


README_BEGIN, README_END = "<!-- tables:begin -->", "<!-- tables:end -->"


def _readme_parts(readme: str | Path) -> tuple[str, str, str]:
    """The README's text before, between and after its table markers (each there once, or an error)."""
    text = Path(readme).read_text(encoding="utf-8")
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise ValueError(f"{readme}: expected one {README_BEGIN} and one {README_END} line")
    head, rest = text.split(README_BEGIN)
    body, tail = rest.split(README_END)
    return head, body, tail


def readme_tables(readme: str | Path) -> str:
    """The text between the README's table markers (what ``tables --readme`` wrote there)."""
    return _readme_parts(readme)[1].strip("\n") + "\n"


def write_readme_tables(readme: str | Path, tables: str) -> None:
    """Put ``tables`` (:func:`report`'s output) between the README's table markers."""
    from .io import atomic_path

    head, _, tail = _readme_parts(readme)
    with atomic_path(readme) as tmp:
        tmp.write_text(head + README_BEGIN + "\n" + tables.strip("\n") + "\n" + README_END + tail, encoding="utf-8")
