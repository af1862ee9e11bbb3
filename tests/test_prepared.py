"""The prepared data one node shares (trainers.prepared): what a trial trains on is what
trainers.data.prepare gives, written once, memory-mapped by every reader."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

import trainers.data as data
from trainers.config import trial_config
from trainers.data import prepare
from trainers.prepared import key, shared


def data_cfg(**data):
    return trial_config({"data": {"source": "digits", "seed": 0} | data}).data


@pytest.mark.parametrize("folds", [1, 3])
def test_shared_data_is_what_prepare_gives_and_is_memory_mapped(tmp_path, folds):
    cfg = data_cfg(folds=folds)
    got, want = shared(cfg, tmp_path), prepare(cfg)
    assert len(got) == len(want) == folds
    for g, w in zip(got, want, strict=True):
        assert (g.n_classes, g.name) == (w.n_classes, w.name)
        for split in ("train", "val", "test"):
            a, b = getattr(g, split), getattr(w, split)
            assert isinstance(a.X, np.memmap) and a.X.dtype == b.X.dtype == np.float32
            np.testing.assert_array_equal(a.X, b.X)
            np.testing.assert_array_equal(a.y, b.y)


def test_written_once_then_read_by_every_later_caller(tmp_path):
    cfg = data_cfg()
    shared(cfg, tmp_path)
    files = sorted((tmp_path / key(cfg)).iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    again = shared(cfg, tmp_path)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # not written again
    assert os.path.samefile(again[0].train.X.filename, tmp_path / key(cfg) / "fold0_train_X.npy")


def test_another_config_or_a_rewritten_file_gets_its_own_copy(tmp_path):
    assert key(data_cfg(seed=0)) != key(data_cfg(seed=1))
    path = tmp_path / "d.npz"
    X = np.random.default_rng(0).normal(size=(60, 3)).astype("float32")
    np.savez(path, X=X, y=np.arange(60) % 3)
    before = key(data_cfg(source="npz", path=str(path)))
    np.savez(path, X=X[::-1].copy(), y=np.arange(60) % 3)
    os.utime(path, ns=(1, 1))  # a different time of change, whatever the clock's resolution
    assert key(data_cfg(source="npz", path=str(path))) != before


def test_a_copy_left_half_written_is_written_again(tmp_path):
    cfg = data_cfg()
    (tmp_path / f"{key(cfg)}.tmp").mkdir()  # a process killed while writing left it
    (tmp_path / f"{key(cfg)}.tmp" / "junk").write_text("x")
    datasets = shared(cfg, tmp_path)
    assert len(datasets[0].train.y) > 0 and not (tmp_path / f"{key(cfg)}.tmp").exists()


@pytest.mark.parametrize("compressed", [False, True])
def test_preparing_holds_a_block_of_rows_not_a_copy(tmp_path, monkeypatch, compressed):
    """8 MB of features in an npz, standardized and written with 256 kB blocks: numpy's
    allocations (tracemalloc sees them) peak at a few blocks where np.savez's npz is mapped,
    and at the one copy read whole from savez_compressed's, where copying the splits out
    (prepare, what a trial did before) holds a copy more."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8192, 256)).astype(np.float32)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "big.npz", X=X, y=np.arange(8192) % 4)
    cfg = data_cfg(source="npz", path=str(tmp_path / "big.npz"))
    monkeypatch.setattr(data, "BLOCK_BYTES", 256 << 10)

    def peak(prepare_it) -> int:
        tracemalloc.start()
        try:
            prepare_it()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    written, copied = peak(lambda: shared(cfg, tmp_path / "data")), peak(lambda: prepare(cfg))
    read = X.nbytes if compressed else 0
    assert written < read + (2 << 20) and copied > read + X.nbytes, (written, copied)
    for got, want in zip(shared(cfg, tmp_path / "data"), prepare(cfg), strict=True):
        np.testing.assert_array_equal(got.train.X, want.train.X)
