"""Stage progress for headless runs: each pipeline stage appends a line to ``runs/<profile>/progress.log``
when it starts and ends (with its wall time), and ``make reproduce`` echoes those lines as they come, so a
long notebook shows which stage it is in without streaming every progress bar."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .paths import runs_dir


def log_file(profile: str) -> Path:
    return runs_dir() / profile / "progress.log"


def note(profile: str, message: str) -> None:
    """Append one timestamped line to the profile's progress log (and print it, for interactive use)."""
    line = f"{time.strftime('%H:%M:%S')} {message}"
    path = log_file(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    print(line, flush=True)


@contextmanager
def stage(profile: str, name: str) -> Iterator[None]:
    """``with stage(profile, "sft zhang"):`` notes the start, then the end with its wall time (or the failure)."""
    t0 = time.perf_counter()
    note(profile, f"{name} ...")
    try:
        yield
    except BaseException as e:
        note(profile, f"{name} FAILED after {time.perf_counter() - t0:.1f} s ({type(e).__name__})")
        raise
    note(profile, f"{name} done in {time.perf_counter() - t0:.1f} s")


class Follow:
    """Echo the lines appended to a progress log while it is open (a background thread)."""

    def __init__(self, profile: str, prefix: str, interval: float = 1.0) -> None:
        self.path, self.prefix, self.interval = log_file(profile), prefix, interval
        self._stop = threading.Event()
        self._pos = self.path.stat().st_size if self.path.is_file() else 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _echo(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as f:
            f.seek(self._pos)
            chunk = f.read()
        done = chunk.rfind("\n") + 1  # whole lines only
        for line in chunk[:done].splitlines():
            print(f"{self.prefix} {line}", flush=True)
        self._pos += len(chunk[:done].encode("utf-8"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._echo()

    def __enter__(self) -> Follow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._echo()
