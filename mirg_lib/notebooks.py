"""Running the notebooks headless with papermill, on the project's own kernel.

Executed notebooks go to ``runs/<profile>/executed/``; the sources in ``notebooks/`` are never
written. A failing notebook stops the run, is named with its failing cell, and its executed copy is
kept for inspection.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .paths import NOTEBOOKS_DIR, runs_dir
from .progress import Follow

KERNEL_NAME = "mirg"
KERNEL_DISPLAY = "mirg (.venv)"
FIGURES_NOTEBOOK = NOTEBOOKS_DIR / "08_plots.ipynb"


def ensure_kernel() -> str:
    """Install the ``mirg`` kernel spec for this interpreter (into ``sys.prefix``) if it is missing."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY, prefix=sys.prefix)
    return KERNEL_NAME


def list_notebooks(directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The pipeline's notebooks, in order (``NN_name.ipynb``)."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


class NotebookFailed(RuntimeError):
    pass


def execute(notebook: Path, output: Path, parameters: dict[str, Any], cwd: Path | None = None, log_output: bool = False) -> Path:
    """Run one notebook with papermill; raise :class:`NotebookFailed` naming it and the failing cell."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    kernel = ensure_kernel()
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            kernel_name=kernel,
            cwd=str(cwd or notebook.parent),
            progress_bar=False,
            log_output=log_output,
        )
    except PapermillExecutionError as e:
        raise NotebookFailed(
            f"{notebook.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); the executed notebook is kept at {output}"
        ) from e
    return output


def declared_parameters(notebook: Path) -> set[str]:
    """The names the notebook's ``parameters`` cell declares (papermill's own reading of it)."""
    import papermill as pm

    return set(pm.inspect_notebook(str(notebook)))


def reproduce(profile: str = "embedded", notebooks: list[Path] | None = None, log_output: bool = False, overrides: dict[str, Any] | None = None) -> list[Path]:
    """Run every pipeline notebook in order under ``profile`` (and ``overrides``, dotted params keys, given to
    each notebook that declares an ``overrides`` parameter). For the whole pipeline (``notebooks`` None), every
    section of the params is checked before the first notebook starts. Stages skip work already done for the
    same config, so a rerun continues where a failed one stopped."""
    from .config import load_params
    from .sections import check_params

    if notebooks is None:  # the figures alone need no stage's settings (nor a paper profile's ${VAR} paths)
        check_params(load_params(profile, overrides))
    out_dir = runs_dir() / profile / "executed"
    done = []
    t_start = time.perf_counter()
    for nb in notebooks or list_notebooks():
        t0 = time.perf_counter()
        print(f"[reproduce:{profile}] {nb.name} ...", flush=True)
        parameters: dict[str, Any] = {"profile": profile}
        if overrides and "overrides" in declared_parameters(nb):
            parameters["overrides"] = overrides
        with Follow(profile, f"[reproduce:{profile}]   {nb.stem}:"):
            done.append(execute(nb, out_dir / nb.name, parameters, log_output=log_output))
        print(f"[reproduce:{profile}] {nb.name} done in {time.perf_counter() - t0:.1f} s (total {time.perf_counter() - t_start:.1f} s)", flush=True)
    return done
