"""``make lab`` / ``python -m mirg_lib.lab``: the command line it builds, and the real JupyterLab it starts."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mirg_lib import lab
from mirg_lib.notebooks import KERNEL_DISPLAY, KERNEL_NAME, list_notebooks
from mirg_lib.paths import NOTEBOOKS_DIR, ROOT


@pytest.mark.parametrize("euid", [0, 1000])
def test_lab_argv_allows_root_only_as_root_and_listens_on_loopback(monkeypatch, euid):
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    argv = lab.lab_argv()
    assert argv[0] == str(Path(sys.executable).parent / "jupyter") and argv[1] == "lab"
    assert f"--notebook-dir={ROOT / 'notebooks'}" in argv and "--ip=127.0.0.1" in argv
    assert ("--allow-root" in argv) == (euid == 0)
    assert not any(a.startswith(("--port", "--IdentityProvider.token", "--no-browser")) for a in argv)
    argv = lab.lab_argv(ip="0.0.0.0", port=9123, token="t0k", open_browser=False, extra=["--ServerApp.x=1"])
    tail = ["--ip=0.0.0.0", *(["--allow-root"] if euid == 0 else []), "--port=9123", "--IdentityProvider.token=t0k", "--no-browser", "--ServerApp.x=1"]
    assert argv[-len(tail):] == tail
    assert "--ip=127.0.0.1" not in argv


def test_main_passes_unknown_options_through_and_serves_the_repositorys_notebooks(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.chdir(tmp_path)  # the notebook dir does not depend on the working directory
    assert lab.main(["--print-only", "--port", "9001", "--no-browser", "--ServerApp.shutdown_no_activity_timeout=5"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith("--allow-root --port=9001 --no-browser --ServerApp.shutdown_no_activity_timeout=5")
    assert f"--notebook-dir={NOTEBOOKS_DIR}" in line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _isolated_env(tmp: Path) -> dict[str, str]:
    """Jupyter's config, data, runtime and settings folders in ``tmp``: nothing of the user's is read or written.
    Kernel specs are still found in ``sys.prefix`` (where :func:`mirg_lib.notebooks.ensure_kernel` puts the project's)."""
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(var, None)
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"), ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"), ("IPYTHONDIR", "ipython")]:
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp / sub)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    return env


def _get(url: str, timeout: float = 5) -> tuple[int, dict]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


@pytest.mark.slow
def test_jupyterlab_starts_and_serves_the_notebooks_and_the_project_kernel(tmp_path):
    """The real server from :func:`mirg_lib.lab.lab_argv` on loopback (this machine runs as root, so it also
    shows that the root case starts): the contents API lists notebooks 00-08, the kernelspecs API the
    ``mirg`` kernel on this interpreter; it stops on SIGTERM. It would stop by itself after 120 s idle."""
    from mirg_lib.notebooks import ensure_kernel

    assert ensure_kernel() == KERNEL_NAME  # what make venv / python -m mirg_lib.lab do; a no-op when installed
    env = _isolated_env(tmp_path)
    port, token = _free_port(), secrets.token_hex(16)
    idle = ["--ServerApp.shutdown_no_activity_timeout=120"]
    argv = lab.lab_argv(port=port, token=token, open_browser=False, extra=idle)
    log = tmp_path / "lab.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                status, _ = _get(f"{base}/api/status?token={token}", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        assert _get(f"{base}/api/contents")[0] == 403  # the token is required
        status, contents = _get(f"{base}/api/contents?token={token}")
        assert status == 200
        names = sorted(c["name"] for c in contents["content"] if c["type"] == "notebook")
        expected = [p.name for p in list_notebooks(NOTEBOOKS_DIR)]
        assert len(expected) == 9 and [n[:3] for n in expected] == [f"{i:02d}_" for i in range(9)]
        assert [n for n in names if n[:2].isdigit()] == expected
        status, specs = _get(f"{base}/api/kernelspecs?token={token}")
        assert status == 200 and KERNEL_NAME in specs["kernelspecs"], sorted(specs["kernelspecs"])
        spec = specs["kernelspecs"][KERNEL_NAME]["spec"]
        assert spec["display_name"] == KERNEL_DISPLAY
        assert Path(spec["argv"][0]).resolve() == Path(sys.executable).resolve()
        # its runtime files went to the temporary JUPYTER_RUNTIME_DIR, not the user's
        assert list((tmp_path / "runtime").glob("jpserver-*.json"))
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise
    assert rc is not None and proc.poll() is not None
    with pytest.raises(OSError):  # it is really gone
        _get(f"{base}/api/status?token={token}", timeout=2)


@pytest.mark.slow
@pytest.mark.skipif(not lab.is_root(), reason="only as root does Jupyter refuse to start without --allow-root")
def test_as_root_jupyter_refuses_without_allow_root(tmp_path):
    """The case the lab module fixes: the same command line less ``--allow-root`` exits with Jupyter's message."""
    argv = [a for a in lab.lab_argv(port=_free_port(), token="x", open_browser=False) if a != "--allow-root"]
    done = subprocess.run(argv, env=_isolated_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Running as root is not recommended" in done.stdout + done.stderr
