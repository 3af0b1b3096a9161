"""JupyterLab on the repository's notebooks and the project's own kernel: ``python -m mirg_lib.lab``.

``make lab`` runs this. The server listens on 127.0.0.1 unless ``--ip`` says otherwise (on a remote GPU
machine: an SSH tunnel, ``ssh -L 8888:127.0.0.1:8888 host``, rather than ``--ip=0.0.0.0``), serves
``notebooks/`` of the repository whatever the working directory, and adds ``--allow-root`` when it runs
as root (containers and cloud GPU machines usually do; Jupyter refuses to start as root without it).
Every argument this module does not know goes to ``jupyter lab`` as it is (``--port=9999``,
``--ServerApp.token=...``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .paths import NOTEBOOKS_DIR


def jupyter_command() -> list[str]:
    """The interpreter's own ``jupyter`` (``.venv/bin/jupyter`` when run with ``.venv/bin/python``), else
    ``python -m jupyter``: never one found first on ``PATH``."""
    exe = Path(sys.executable).parent / ("jupyter.exe" if os.name == "nt" else "jupyter")  # no resolve(): a venv's python is a symlink
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "jupyter"]


def is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)  # not on Windows
    return geteuid is not None and geteuid() == 0


def lab_argv(
    ip: str = "127.0.0.1",
    port: int | None = None,
    token: str | None = None,
    open_browser: bool = True,
    notebook_dir: str | Path = NOTEBOOKS_DIR,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line that starts JupyterLab: the venv's ``jupyter lab`` on ``notebook_dir``, listening on
    ``ip`` (loopback by default), ``--allow-root`` only when the effective user is root; ``port``/``token``
    as given (None: Jupyter's own choice, a free port from 8888 and a random token), then ``extra``."""
    argv = [*jupyter_command(), "lab", f"--notebook-dir={Path(notebook_dir)}", f"--ip={ip}"]
    if is_root():
        argv.append("--allow-root")
    if port is not None:
        argv.append(f"--port={int(port)}")
    if token is not None:
        argv.append(f"--IdentityProvider.token={token}")
    if not open_browser:
        argv.append("--no-browser")
    return argv + list(extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mirg_lib.lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: loopback only)")
    ap.add_argument("--port", type=int, default=None, help="port (default: Jupyter's, 8888 or the next free one)")
    ap.add_argument("--no-browser", action="store_true", help="do not open a browser")
    ap.add_argument("--print-only", action="store_true", help="print the command line instead of running it")
    args, extra = ap.parse_known_args(argv)
    cmd = lab_argv(ip=args.ip, port=args.port, open_browser=not args.no_browser, extra=extra)
    if args.print_only:
        print(subprocess.list2cmdline(cmd) if os.name == "nt" else shlex.join(cmd))
        return 0
    from .notebooks import ensure_kernel

    ensure_kernel()  # the notebooks name the ``mirg`` kernel; a rebuilt venv may lack it
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":
        return subprocess.call(cmd)
    os.execv(cmd[0], cmd)  # Jupyter takes this process over: Ctrl-C and signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
