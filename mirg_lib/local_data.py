"""The data stage on real files: MIG-Bench and MGrounding-630k from local folders (``data.source: local``).

The stage reads the files with the same readers as everything else (:mod:`mirg_lib.formats`: a malformed
record names its file, index and field), checks that every image exists, and writes them to
``runs/<profile>/data/`` in the layout the embedded world has, with every image path made absolute, so that
every later stage reads real data exactly as it reads the embedded world:

* ``test/mig_bench.json``: MIG-Bench (``data.mig_bench``, images under ``data.mig_bench_images``);
* ``test/single_refer.json``: an optional single-image grounding test (``data.single_test``), else empty;
* ``train/mgrounding.json``: the MGrounding-630k files (``data.mgrounding``), types renamed by
  ``data.task_map``, at most ``data.max_train_per_task`` per task. A record whose answer holds no box
  (nothing to ground, so no reward and no score) is not kept: every one is counted and named in
  ``manifest.json`` (``dropped``), never lost silently.

Skipped when ``manifest.json`` was written for the same config and the same source files (path, size,
modification time); written whole or not at all (:func:`mirg_lib.io.atomic_dir`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from .config import config_hash, digest
from .formats import (
    RecordError,
    check_images,
    load_mgrounding,
    load_mig_bench,
    resolve_image,
    write_mgrounding,
    write_mig_bench,
)
from .io import atomic_dir, write_json
from .items import item_from_mgrounding
from .world.build import DataConfig, WorldManifest, data_checksums, reused_manifest

DROPPED_NAMED = 50  # dropped records named one by one in the manifest (all are counted)


def _source_files(cfg: DataConfig) -> list[Path]:
    return [Path(p) for p in [cfg.mig_bench, cfg.single_test, *cfg.mgrounding] if p]


def _identity(cfg: DataConfig) -> str:
    files = []
    for p in _source_files(cfg):
        if not p.is_file():
            raise FileNotFoundError(f"data ({cfg.source}): {p} does not exist (docs/real_data.md says where to get it and how to lay it out)")
        st = p.stat()
        files.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return digest({"config": config_hash(cfg), "files": files})


def _absolute(records: list[Any], root: Path) -> None:
    for r in records:
        r.images = [str(resolve_image(root, p).resolve()) for p in r.images]


def _bench(path: str, images: str) -> list[Any]:
    file = Path(path)
    root = Path(images) if images else file.parent
    records = load_mig_bench(file)
    check_images(records, file, root)
    _absolute(records, root)
    return records


def run_local_data(cfg: DataConfig, out_dir: str | Path, force: bool = False) -> WorldManifest:
    """Read, check and lay out the real files of ``cfg`` in ``out_dir`` (see the module's doc)."""
    out_dir = Path(out_dir)
    ident = _identity(cfg)
    reused = None if force else reused_manifest(out_dir, ident)
    if reused is not None:
        return reused
    t0 = time.perf_counter()
    bench = _bench(cfg.mig_bench, cfg.mig_bench_images)
    single = _bench(cfg.single_test, cfg.single_test_images) if cfg.single_test else []
    pool, dropped, n_dropped, seen, capped = [], [], 0, {}, 0
    ids: dict[str, tuple[Path, int]] = {}  # the later stages find pool items by id: two alike would lose one
    for f in cfg.mgrounding:
        file = Path(f)
        root = Path(cfg.mgrounding_images) if cfg.mgrounding_images else file.parent
        for rec in load_mgrounding(file):
            rec.type = cfg.task_map.get(rec.type, rec.type)
            if cfg.max_train_per_task and seen.get(rec.type, 0) >= cfg.max_train_per_task:
                capped += 1
                continue
            if rec.id in ids:
                raise RecordError(file, rec.index, "id", f"{rec.id!r} is also the id of {ids[rec.id][0]} index {ids[rec.id][1]}; the pool's ids must be unique")
            ids[rec.id] = (file, rec.index)
            check_images([rec], file, root)
            try:
                item_from_mgrounding(rec, root)
            except ValueError as e:  # no box in the answer: nothing to ground
                n_dropped += 1
                if len(dropped) < DROPPED_NAMED:
                    dropped.append({"file": str(file), "index": rec.index, "id": rec.id, "type": rec.type, "why": str(e)})
                continue
            _absolute([rec], root)
            pool.append(rec)
            seen[rec.type] = seen.get(rec.type, 0) + 1
    if not pool and cfg.mgrounding:
        raise ValueError(f"data (local): no record of {cfg.mgrounding} holds a box to ground ({n_dropped} dropped; first: {dropped[:1]})")
    counts = {"test": _count(bench), "single_test": _count(single), "train": dict(seen)}
    with atomic_dir(out_dir) as tmp:
        write_mig_bench(bench, tmp / "test" / "mig_bench.json")
        write_mig_bench(single, tmp / "test" / "single_refer.json")
        write_mgrounding(pool, tmp / "train" / "mgrounding.json")
        write_json(
            tmp / "manifest.json",
            {
                "source": "local",
                "config": dataclasses.asdict(cfg),
                "config_hash": ident,
                "counts": counts,
                "dropped": {"count": n_dropped, "first": dropped},
                "over_max_train_per_task": capped,
                "files": data_checksums(tmp),
            },
        )
        write_json(tmp / "timing.json", {"seconds": round(time.perf_counter() - t0, 2)})  # as the drawn world keeps it
    return WorldManifest(out_dir, ident, counts, time.perf_counter() - t0)


def _count(records: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.task] = out.get(r.task, 0) + 1
    return out
