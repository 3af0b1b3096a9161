"""Command line: ``python -m mirg_lib <command>``.

* ``score --benchmark FILE.json --predictions FILE.jsonl [--protocol migician|lenient]``
  prints the scores as one JSON object (format in docs/scoring.md). ``--benchmark-kind`` (blink, mmiu,
  ref_l4, lisa, revos, odinw, mc_bench; default: told from the file's fields, MIG-Bench first) scores a local
  copy of another benchmark, a file or its published folder, by that benchmark's protocol (``mirg_lib.benchmarks``).
* ``gt-predictions --benchmark FILE.json --out FILE.jsonl [--shift 0.4]`` writes predictions that
  answer with the ground truth (optionally shifted right by a fraction of the box width): the
  scorer's self-check.
* ``data --profile smoke`` builds the embedded world of a profile (or, ``data.source: local``, reads its real files).
* ``reproduce --profile embedded`` runs every notebook in order through papermill.
* ``figures --profile embedded`` reruns only ``08_plots`` (every figure from the profile's result files).
* ``tables --profile embedded [--results results/embedded] [--readme README.md]`` prints the README's results
  (the papers' tables beside this run's numbers, the claims and their verdicts) from ``ablations.json`` and
  ``claims.json``, and writes them into the README between its table markers.
* ``commit-results --profile embedded`` copies a finished run's result files, with the GRPO logs, predictions
  and images its figures read, to ``results/<profile>/``; ``figures`` and ``tables`` read them on a fresh clone.
* ``ship-base --profile embedded --to checkpoints/embedded-base`` copies the base model the profile
  trained (notebook 00, scored to its end) to a folder to commit, with params, world, scores and checksum.
* ``defaults`` writes ``params/base.yaml``, every setting at its default, from the stage configs' dataclasses.
* ``kernel`` installs the project's Jupyter kernel for this interpreter.
* ``launched SPEC.json`` runs one training stage in a process that ``accelerate launch`` started (what
  :func:`mirg_lib.pipeline.train_sft` and ``train_grpo`` start when ``launch.num_processes`` is above 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .formats import RecordError


def run_launched_spec(spec_file: str) -> None:
    """Inside each process ``accelerate launch`` started: read the spec the pipeline wrote and run its stage
    function (:func:`mirg_lib.pipeline.train_sft`, ``train_grpo``), or its share of a generating stage's
    batches (:func:`mirg_lib.backends.generate`)."""
    from pathlib import Path

    from .config import from_dict

    spec = json.loads(Path(spec_file).read_text())
    if spec.get("stage") == "sft":
        from .sft import SFTStageConfig, run_sft

        run_sft(from_dict(SFTStageConfig, spec["cfg"], "sft"), spec["base_path"], spec["sft_file"], spec["data_dir"], spec["out_dir"])
    elif spec.get("stage") == "grpo":
        from .grpo import GRPOStageConfig, run_grpo
        from .items import pool_items

        items = pool_items(spec["data_dir"], spec["ids"], f"{spec_file} (GRPO items)")
        run_grpo(from_dict(GRPOStageConfig, spec["cfg"], "grpo"), spec["init_path"], items, spec["out_dir"])
    elif spec.get("stage") in ("cot", "rejection", "eval"):
        from .backends import run_launched_shard

        run_launched_shard(spec)
    else:
        raise ValueError(f"{spec_file}: unknown stage {spec.get('stage')!r}; launchable: sft, grpo, cot, rejection, eval")


def _benchmark_kind(path: str) -> str:
    """MIG-Bench when the file's first record has MIG-Bench's fields, else the benchmark its fields name."""
    from . import benchmarks
    from .benchmarks._rows import read_rows
    from .formats import MIG_FIELDS

    p = Path(path)
    if p.is_dir():  # a published folder holds files of its own besides the benchmark's: never guessed
        raise RecordError(p, None, None, f"is a directory, not a file (to score a benchmark's published folder, name it: --benchmark-kind {'|'.join(benchmarks.MODULES)})")
    if p.is_file() and p.suffix == ".json":
        rows = read_rows(p)
        if rows and isinstance(rows[0].value, dict) and set(MIG_FIELDS[:4]) <= set(rows[0].value):
            return "mig_bench"
    return benchmarks.detect(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mirg_lib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("score", help="score predictions against a MIG-Bench file")
    sp.add_argument("--benchmark", required=True)
    sp.add_argument("--predictions", required=True)
    sp.add_argument("--protocol", default="migician", choices=["migician", "lenient"])
    sp.add_argument("--threshold", type=float, default=0.5)
    sp.add_argument("--benchmark-kind", default=None, help="mig_bench, blink, mmiu, ref_l4, lisa, revos, odinw, mc_bench (default: told from the file)")
    sp.add_argument("--image-root", default=None, help="another benchmark's images' folder (default: beside its file)")
    sp.add_argument("--frame", default="auto", choices=["auto", "rel1", "rel1000", "abs"], help="a grounding benchmark's reply boxes' frame")
    sp.add_argument("--judge-url", default="", help="an OpenAI-compatible endpoint whose model reads the multiple-choice replies the rules cannot (default: none)")
    sp.add_argument("--judge-model", default="", help="the judge's model name")
    sp.add_argument("--judge-key-env", default="", help="the NAME of the environment variable holding the judge's API key")

    gp = sub.add_parser("gt-predictions", help="write ground-truth predictions (scorer self-check)")
    gp.add_argument("--benchmark", required=True)
    gp.add_argument("--out", required=True)
    gp.add_argument("--shift", type=float, default=0.0)

    dp = sub.add_parser("data", help="build the embedded world of a profile")
    dp.add_argument("--profile", default="embedded")
    dp.add_argument("--force", action="store_true")

    rp = sub.add_parser("reproduce", help="run every notebook in order under a profile")
    rp.add_argument("--profile", default="embedded")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override for every notebook (YAML value), e.g. ablations.seeds=[0,1,2]")
    rp.add_argument("--log-output", action="store_true", help="stream the notebooks' own output (each stage's progress lines)")
    fp = sub.add_parser("figures", help="redraw every figure of a profile from its result files (notebook 08 only)")
    fp.add_argument("--profile", default="embedded")

    tp = sub.add_parser("tables", help="print the README's results (paper tables beside this run's, the claims) from a profile's result files")
    tp.add_argument("--profile", default="embedded")
    tp.add_argument("--results", default=None, help="the folder of the result files (default: runs/<profile>/results, or with no run the committed results/<profile>)")
    tp.add_argument("--readme", default=None, metavar="README.md", help="also write them between that file's <!-- tables:begin/end --> markers")

    cp = sub.add_parser("commit-results", help="copy a profile's result files and what its figures read to results/<profile>/, to commit")
    cp.add_argument("--profile", default="embedded")

    bp = sub.add_parser("ship-base", help="copy a profile's trained and scored base model to a folder to commit")
    bp.add_argument("--profile", default="embedded")
    bp.add_argument("--to", required=True)

    sub.add_parser("defaults", help="write params/base.yaml (every setting at its default) from the stage configs")
    sub.add_parser("kernel", help="install the project's Jupyter kernel")

    lp = sub.add_parser("launched", help="(started by accelerate launch) run one training stage from its spec file")
    lp.add_argument("spec")

    args = ap.parse_args(argv)
    try:
        if args.cmd == "score":
            from . import benchmarks
            from .scoring import score_files

            kind = args.benchmark_kind or _benchmark_kind(args.benchmark)
            if kind == "mig_bench":
                print(json.dumps(score_files(args.benchmark, args.predictions, args.protocol, args.threshold), indent=1))
            else:
                from .benchmarks.judge import make_judge

                judge = make_judge(args.judge_url, args.judge_model, args.judge_key_env)
                res = benchmarks.score_files(args.benchmark, args.predictions, kind, args.image_root, args.frame, args.protocol, judge)
                for per_item in ("ious", "letters"):  # too long to print
                    res.pop(per_item, None)
                print(json.dumps(res, indent=1))
        elif args.cmd == "gt-predictions":
            from .formats import load_mig_bench
            from .io import write_jsonl
            from .scoring import ground_truth_predictions

            write_jsonl(args.out, ground_truth_predictions(load_mig_bench(args.benchmark), args.shift))
        elif args.cmd == "data":
            from . import pipeline
            from .config import load_params

            m = pipeline.data(load_params(args.profile), force=args.force)
            print(json.dumps({"root": str(m.root), "skipped": m.skipped, "seconds": round(m.seconds, 2), "counts": m.counts}, indent=1))
        elif args.cmd == "reproduce":
            from .config import parse_overrides
            from .notebooks import reproduce

            reproduce(args.profile, log_output=args.log_output, overrides=parse_overrides(args.set))
        elif args.cmd == "figures":
            from .notebooks import FIGURES_NOTEBOOK, reproduce

            reproduce(args.profile, [FIGURES_NOTEBOOK])
        elif args.cmd == "tables":
            from .ablations import report, write_readme_tables

            text = report(args.profile, args.results)
            print(text, end="")
            if args.readme:
                write_readme_tables(args.readme, text)
        elif args.cmd == "commit-results":
            from .results import commit_results

            print("\n".join(str(p) for p in commit_results(args.profile)))
        elif args.cmd == "ship-base":
            from .config import load_params
            from .pipeline import ship_base

            meta = ship_base(load_params(args.profile), args.to)
            print(json.dumps({"to": args.to, "sha256": meta["sha256"], "metrics": meta["metrics"]}, indent=1))
        elif args.cmd == "launched":
            run_launched_spec(args.spec)
        elif args.cmd == "defaults":
            from .sections import write_defaults

            print(write_defaults())
        elif args.cmd == "kernel":
            from .notebooks import ensure_kernel

            print(ensure_kernel())
    except (RecordError, FileNotFoundError, ValueError) as e:  # ResultsError and ConfigError are ValueErrors
        _error(e)
        return 2
    except RuntimeError as e:
        _error(e)
        return 1
    return 0


def _error(e: Exception) -> None:
    """``error: <e>`` and its newline in one write: the processes of an ``accelerate launch`` share one
    unbuffered stderr, and print's two writes let their lines run into each other ("...processeserror: ..."),
    which the launcher's error summary then reads as one line."""
    sys.stderr.write(f"error: {e}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
