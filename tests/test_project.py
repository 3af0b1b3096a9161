"""The project's shape: pins, clean notebooks, papermill execution of the notebooks at smoke size."""

import json
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from mirg_lib.notebooks import execute, list_notebooks
from mirg_lib.paths import ROOT, runs_dir

PINS = {
    "torch": "2.14.1", "torchvision": "0.29.1", "transformers": "5.23.0", "trl": "1.16.0", "peft": "0.21.2",
    "accelerate": "1.15.0", "datasets": "5.2.0", "papermill": "2.7.0", "jupyterlab": "4.6.6", "nbstripout": "0.9.1",
}


def test_pins_live_in_pyproject_and_conda_uses_them():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = dict(d.split("==") for d in deps if "==" in d)
    for name, version in PINS.items():
        assert pinned.get(name) == version, name
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_part = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_part == ['-e ".[dev]"'] or pip_part == ["-e .[dev]"]  # the same single list of pins
    assert "python=3.11" in env["dependencies"]


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, v in PINS.items():
        assert version(name).split("+")[0] == v, name


def _tracked_notebooks():
    out = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=ROOT, capture_output=True, text=True)
    files = [ROOT / f for f in out.stdout.split()] if out.returncode == 0 else []
    return files or list_notebooks()


def test_notebooks_carry_no_outputs_and_define_nothing():
    nbs = _tracked_notebooks()
    assert nbs
    for nb_path in nbs:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        for c in code:
            assert not c.get("outputs") and c.get("execution_count") is None, f"{nb_path.name} carries outputs: run nbstripout"
            src = "".join(c["source"])
            assert not re.search(r"^\s*(def|class)\s", src, re.M), f"{nb_path.name} defines a function or class"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name} needs exactly one 'parameters' cell"
        assert re.search(r"^profile\s*=", "".join(tagged[0]["source"]), re.M)
        assert nb["metadata"]["kernelspec"]["name"] == "mirg"


@pytest.mark.slow
def test_every_notebook_runs_headless_in_order_with_smoke_params(tmp_path):
    """`make reproduce PROFILE=smoke`: every notebook, in order, through papermill, on the project's kernel (07
    with one of its rows and the one it starts from, two seeds each, to keep the suite fast; CI runs every row: `.ci/run`)."""
    from mirg_lib import ablations
    from mirg_lib.notebooks import reproduce

    done = reproduce("smoke", overrides={"ablations.arms": [ablations.MIRG_NO_IMAGE]})
    assert [p.name for p in done] == [p.name for p in list_notebooks()]
    assert [p.name for p in list_notebooks()][:7] == [
        "00_base_model.ipynb", "01_data_synthesis.ipynb", "02_cot_filtering.ipynb", "03_lora_sft.ipynb",
        "04_rejection_sampling.ipynb", "05_grpo.ipynb", "06_evaluation.ipynb",
    ]
    assert list_notebooks()[-1].name == "08_plots.ipynb"
    for out in done:
        executed = json.loads(out.read_text())
        errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, out.name
        assert out.parent == runs_dir() / "smoke" / "executed"
    # the sources were not written
    for nb in list_notebooks():
        src = json.loads(nb.read_text())
        assert all(not c.get("outputs") for c in src["cells"] if c["cell_type"] == "code")
    results = json.loads((runs_dir() / "smoke" / "results" / "scores.json").read_text())
    assert [r["model"] for r in results["rows"]] == ["base", "CoT-SFT", "CoT-SFT + GRPO"]
    for row in results["rows"]:  # the papers' other benchmarks, the embedded analogues of smoke.yaml
        assert set(row["benchmarks"]) == {"blink", "ref_l4", "lisa", "revos", "odinw", "mmiu"} and row["benchmarks"]["blink"]["n"] == 6, row["model"]
    assert results["rows"][2]["train_log"] == "grpo/train_log.jsonl" and results["provenance"]["wall_s"] > 0
    figures = runs_dir() / "smoke" / "figures"
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "ablations_avg.png", "ablations_single.png", "domains.png", "grpo_curves.png", "qualitative.png", "tasks.png"]
    abl = json.loads((runs_dir() / "smoke" / "results" / "ablations.json").read_text())
    assert [(r["model"], r["seed"], r["stage"]) for r in abl["rows"]] == [
        (ablations.MIRG_BBOX, 0, "sft_mirg_bbox"), (ablations.MIRG_BBOX, 1, "sft_mirg_bbox_seed1"),
        (ablations.MIRG_NO_IMAGE, 0, "grpo_mirg_bbox_no_image"), (ablations.MIRG_NO_IMAGE, 1, "grpo_mirg_bbox_no_image_seed1")]
    no_image = json.loads((runs_dir() / "smoke" / "grpo_mirg_bbox_no_image_seed1" / "checkpoint" / "mirg.json").read_text())
    assert no_image["config"]["rewards"] == {"mirg_format": 1.0, "mirg_object": 1.0} and no_image["config"]["seed"] == 1
    assert no_image["config"]["recipe"] == "mirg" and no_image["init"].endswith("sft_mirg_bbox/checkpoint")
    claims = json.loads((runs_dir() / "smoke" / "results" / "claims.json").read_text())["claims"]
    assert claims and all(c["measured"] is None and c["verdict"].startswith("not measured (no rows for") for c in claims)  # one row ran
    out = subprocess.run([sys.executable, "-m", "mirg_lib", "tables", "--profile", "smoke"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "**MIRG-RL T3**" in out and ablations.MIRG_NO_IMAGE in out and "**Claims**" in out
    progress = (runs_dir() / "smoke" / "progress.log").read_text()
    for name in ("data", "sft_zhang", "rejection sampling", "grpo", "grpo_mirg_bbox_no_image_seed1", "evaluate grpo_single"):
        assert f" {name} done in " in progress, name
    scores = json.loads((runs_dir() / "smoke" / "eval" / "grpo" / "scores.json").read_text())
    assert set(scores["tasks"]) == {"diff", "view_diff", "common_object", "object_tracking", "multi_view", "region",
                                    "refer_grounding", "group_grounding", "reasoning", "correspondence"}


def test_make_help_lists_the_targets():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for target in ("reproduce", "figures", "test", "test-all", "defaults", "lab", "setup", "help"):
        assert f"make {target}" in out


@pytest.mark.slow
def test_a_failing_notebook_is_named_with_its_cell_and_kept(tmp_path):
    from mirg_lib.notebooks import NotebookFailed

    nb = list_notebooks()[0]
    with pytest.raises(NotebookFailed, match=rf"{nb.name} failed in cell \d+ \(ConfigError: no params profile 'no-such-profile'") as e:
        execute(nb, tmp_path / nb.name, {"profile": "no-such-profile"})
    assert (tmp_path / nb.name).is_file() and str(tmp_path / nb.name) in str(e.value)


def test_stage_progress_is_logged_and_followed(tmp_path, monkeypatch, capsys):
    from mirg_lib.progress import Follow, log_file, stage

    monkeypatch.setenv("MIRG_RUNS_DIR", str(tmp_path))
    with Follow("p", "[r]", interval=0.05):
        with stage("p", "sft_zhang"):
            pass
        with pytest.raises(KeyError), stage("p", "grpo"):
            raise KeyError("x")
    lines = log_file("p").read_text().splitlines()
    assert lines[0].endswith("sft_zhang ...") and "sft_zhang done in" in lines[1] and lines[2].endswith("grpo ...")
    assert "grpo FAILED after" in lines[3] and lines[3].endswith("(KeyError)")
    echoed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[r] ")]
    assert [x.removeprefix("[r] ") for x in echoed] == lines  # every line, once, in order


def _import_graph() -> dict[str, set[str]]:
    """mirg_lib's modules and the project modules each imports (at the top or inside a function)."""
    import ast

    mods = {}
    for f in (ROOT / "mirg_lib").rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - max(0, node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(sorted([v, *comp]))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_library_imports_in_no_cycle_and_dist_imports_nothing_of_it():
    graph = _import_graph()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check finds one
    assert _cycles(graph) == []
    assert graph["mirg_lib.dist"] == set()
    # a stage trains in this process only: the pipeline decides on several processes, the CLI dispatches them
    assert "mirg_lib.launch" not in graph["mirg_lib.sft"] | graph["mirg_lib.grpo"] | graph["mirg_lib.trainers"]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.relative_to(ROOT).as_posix() for d in ("bench", "tools") for p in (ROOT / d).glob("*.py")))
def test_every_bench_and_tool_script_starts(script):
    """Each benchmark and diagnostic imports what it uses and parses its arguments (``--help``)."""
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]


def test_no_work_log_numbers_in_the_repository():
    """The research record is dated (docs/log.md); nothing names a session or an issue by number."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"\b(?:session|issue)s? #?\d+", re.I)
    bad = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".ipynb", ".toml", ".cfg", ".txt"} or path.name in {"Makefile", "run"}:
            if path.is_file() and pattern.search(path.read_text(encoding="utf-8", errors="replace")):
                bad.append(name)
    assert bad == [], bad
