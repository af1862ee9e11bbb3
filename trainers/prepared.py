"""Prepared data shared by every process of a node: each fold's splits, standardized, written
once as .npy files and memory-mapped by every trial that trains on them.

Were each trial to prepare its own data (trainers.data.prepare: load, split, standardize), each
would hold a copy: 8 trials of 10 GB of embeddings would need 80 GB on the node. Instead the
first process to need a data config prepares it, under a file lock, into
``folder/<key>/``; every process then maps those files (copy-on-write, never written), so the
trials on a node share one copy in the kernel's page cache. The folder is derived data: delete
it and the next trial writes it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trainers.config import DataConfig
from trainers.data import (
    SPLITS,
    Dataset,
    Selection,
    Split,
    fold_selections,
    refit_selection,
    train_scaler,
)
from trainers.rules import expanded

META = "meta.json"


def key(cfg: DataConfig, refit: bool = False) -> str:
    """The data config's name on disk, and the data file's size and time of change: what it
    would prepare differs (a file rewritten between a run and its resume), so does the key."""
    path = expanded(cfg.path, "data.path") if cfg.path else None
    stat = path.stat() if path is not None and path.exists() else None
    seen = [stat.st_size, stat.st_mtime_ns] if stat is not None else None
    prepared = {k: v for k, v in asdict(cfg).items() if k != "dtype"}  # cast on the device
    text = json.dumps([prepared, seen, *(["refit"] if refit else [])], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shared(cfg: DataConfig, folder: str | Path, refit: bool = False) -> list[Dataset]:
    """``trainers.data.prepare(cfg)``, one Dataset per fold (``refit``: ``[refit_dataset(cfg)]``),
    memory-mapped from ``folder``; prepared and written there first if no process has yet."""
    target = Path(folder) / key(cfg, refit)
    if not target.is_dir():
        Path(folder).mkdir(parents=True, exist_ok=True)
        with _locked(target.with_suffix(".lock")):
            if not target.is_dir():  # another process may have written it while we waited
                folds = [refit_selection(cfg)] if refit else fold_selections(cfg)
                _write(folds, target, cfg.standardize)
    return _read(target)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(folds: list[Selection], target: Path, standardize: bool) -> None:
    """Into a temporary folder, then renamed: ``target`` exists only whole. Each split's rows
    are copied out and standardized a block at a time, and written with file writes, not
    through a map: the writer holds a block, and the written pages are the page cache's, which
    every trial then maps."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a process killed while writing left it
    tmp.mkdir()
    for i, sel in enumerate(folds):
        scaler, pool = train_scaler(sel) if standardize else None, sel.pool
        for name in SPLITS:
            rows = getattr(sel, name)
            with (tmp / f"fold{i}_{name}_X.npy").open("wb") as f:
                header = {
                    "descr": "<f4",
                    "fortran_order": False,
                    "shape": (len(rows), pool.features),
                }
                np.lib.format.write_array_header_1_0(f, header)
                for block in pool.blocks(rows):
                    (block if scaler is None else scaler.transform(block, copy=False)).tofile(f)
            np.save(tmp / f"fold{i}_{name}_y.npy", pool.y[rows])
    meta = {"folds": len(folds), "n_classes": folds[0].n_classes, "name": folds[0].name}
    (tmp / META).write_text(json.dumps(meta))
    os.replace(tmp, target)


def _read(target: Path) -> list[Dataset]:
    meta = json.loads((target / META).read_text())

    def split(i: int, name: str) -> Split:
        # "c": copy-on-write, so that torch gets a writable array and shares its pages
        X, y = (np.load(target / f"fold{i}_{name}_{a}.npy", mmap_mode="c") for a in "Xy")
        return Split(X, y)

    return [
        Dataset(*(split(i, s) for s in SPLITS), n_classes=meta["n_classes"], name=meta["name"])
        for i in range(meta["folds"])
    ]
