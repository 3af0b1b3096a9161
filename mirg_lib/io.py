"""Files that appear only when complete: write aside, then rename.

An interrupted stage must never leave a half-written file where the next stage would read it, so
every output goes through these helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def _host() -> str:
    """This machine's name as it goes into an aside name (letters, digits and dashes)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _aside(path: Path, suffix: str, create: Callable[[Path], Any]) -> Path:
    """A new hidden name beside ``path``, made by ``create`` (``os.open`` / ``os.mkdir``, which apply the
    umask: an output gets the modes an ordinary file or folder gets, where tempfile's are 0600 / 0700).

    The name, ``.<name>.<pid>@<host>.<random><suffix>``, says which process owns it, so that a later run can
    tell the leftover of a killed one from the work of one still running (:func:`remove_stale_asides`)."""
    owner = f"{os.getpid()}@{_host()}"
    while True:
        tmp = path.with_name(f".{path.name}.{owner}.{secrets.token_hex(4)}{suffix}")
        try:
            create(tmp)
            return tmp
        except FileExistsError:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_asides(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it, and return it: their ``.partial`` folders,
    ``.tmp`` files and ``.old`` folders (the previous output, parked for the swap).

    A leftover is stale when its owner (in its name, :func:`_aside`) is a process of this machine that is no
    longer running; the asides of a running process (another of a multi-process run, or this one) and of
    another machine (a shared file system) are left alone. Names without an owner (written before owners
    were recorded) are stale: no running writer makes them."""
    path = Path(path)
    parent = path.parent
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)@([A-Za-z0-9-]+)\.)?[0-9a-f]{{8}}\.(?:partial|tmp|old)")
    host, removed = _host(), []
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None and name != f".{path.name}.old":
            continue
        if m is not None and m.group(1) is not None and (m.group(2) != host or _alive(int(m.group(1)))):
            continue
        leftover = parent / name
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        removed.append(leftover)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_asides(path)
    tmp_path = _aside(path, ".tmp", lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` (replacing it) only on success.

    What killed earlier writers of ``path`` left beside it (a ``.partial`` folder: a kill skips the cleanup
    below) is removed first (:func:`remove_stale_asides`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_asides(path)
    tmp = _aside(path, ".partial", lambda p: os.mkdir(p, 0o777))
    try:
        yield tmp
        if path.exists():
            old = tmp.with_name(tmp.name.removesuffix(".partial") + ".old")  # owned like tmp: a kill here leaves a stale aside
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | os.PathLike, exclude: frozenset[str] = frozenset()) -> str:
    """One digest over every file below ``root`` (relative names and contents, in sorted order),
    leaving out files named in ``exclude``."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.name not in exclude):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()
