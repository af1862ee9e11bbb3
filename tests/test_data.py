"""Data loading, splitting and standardization, on real files written into tmp_path."""

import os
import pickle
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import trainers.data as data
from trainers.config import ConfigError, DataConfig
from trainers.data import (
    Dataset,
    Pool,
    Selection,
    Split,
    copy_out,
    cross_validation_folds,
    load_dataset,
    prepare,
    select,
)


def _splits(ds: Dataset) -> list[Split]:
    return [ds.train, ds.val, ds.test]


def _indexed_npz(path: Path, n: int = 300, classes: int = 3) -> Path:
    """Feature 0 is the example's index, so splits can be checked for disjointness exactly."""
    rng = np.random.default_rng(0)
    X = np.column_stack([np.arange(n), rng.normal(size=(n, 2))])
    np.savez(path, X=X, y=np.arange(n) % classes)
    return path


def _ids(*splits: Split) -> list[int]:
    return [int(i) for s in splits for i in s.X[:, 0]]


# ---------------------------------------------------------------- digits and splitting
def test_digits_shapes_and_split_sizes():
    ds = load_dataset(DataConfig())
    assert ds.name == "digits" and ds.n_classes == 10
    for s in _splits(ds):
        assert s.X.dtype == np.float32 and s.y.dtype == np.int64 and s.X.shape[1] == 64
        assert set(np.unique(s.y)) == set(range(10))
    n = 1797
    assert sum(len(s.y) for s in _splits(ds)) == n
    assert abs(len(ds.val.y) - 0.2 * n) <= 1 and abs(len(ds.test.y) - 0.2 * n) <= 1


def test_splits_are_stratified():
    ds = load_dataset(DataConfig(val_fraction=0.15, test_fraction=0.25))
    overall = np.bincount(load_digits().target) / 1797
    for s in _splits(ds):
        assert np.abs(np.bincount(s.y) / len(s.y) - overall).max() < 0.01


def test_splits_partition_the_data():
    ds = load_dataset(DataConfig())
    X, y = load_digits(return_X_y=True)

    def rows(X, y):
        return Counter(r.tobytes() for r in np.column_stack([X, y]).astype(np.float32))

    assert sum((rows(s.X, s.y) for s in _splits(ds)), Counter()) == rows(X, y)


def test_splits_are_disjoint_by_index(tmp_path):
    ds = load_dataset(DataConfig(source="npz", path=str(_indexed_npz(tmp_path / "i.npz"))))
    ids = _ids(*_splits(ds))
    assert len(ids) == len(set(ids)) and set(ids) == set(range(300))


def test_same_seed_same_split_other_seed_different():
    a, b, c = (load_dataset(DataConfig(seed=s)) for s in (3, 3, 4))
    for sa, sb in zip(_splits(a), _splits(b), strict=True):
        np.testing.assert_array_equal(sa.X, sb.X)
        np.testing.assert_array_equal(sa.y, sb.y)
    assert not np.array_equal(a.test.X, c.test.X)


# ---------------------------------------------------------------- standardization
def test_standardize_uses_train_statistics_only():
    rng = np.random.default_rng(1)
    train_X = np.column_stack([rng.normal(5, 2, 500), np.full(500, 7.0)]).astype(np.float32)
    test_X = np.column_stack([rng.normal(50, 10, 200), np.full(200, 9.0)]).astype(np.float32)
    y = np.arange(500) % 2
    out = copy_out(given_splits(train_X, test_X[:100], test_X[100:], y), standardize=True)
    assert out.train.X.dtype == np.float32
    np.testing.assert_allclose(out.train.X[:, 0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(out.train.X[:, 0].std(), 1, atol=1e-4)
    mean, std = train_X[:, 0].mean(), train_X[:, 0].std()
    np.testing.assert_allclose(out.test.X[:, 0], (test_X[100:, 0] - mean) / std, rtol=1e-4)
    np.testing.assert_allclose(out.val.X[:, 1], 2.0)  # std 0: shifted by the train mean, scale 1
    assert out.train.X is not train_X and train_X[0, 1] == 7.0  # the input is not modified


def given_splits(train_X: np.ndarray, val_X: np.ndarray, test_X: np.ndarray, y: np.ndarray):
    """A Selection of three given splits, labelled from ``y``."""
    pool = Pool([Split(X, y[: len(X)]) for X in (train_X, val_X, test_X)])
    rows = [np.arange(a, b) for a, b in zip(pool.starts, pool.starts[1:], strict=False)]
    return Selection(pool, *rows, n_classes=2, name="t")


def test_statistics_read_a_block_at_a_time_are_the_whole_splits(monkeypatch):
    """train_scaler reads the training rows in blocks, in file order: what it finds is what
    StandardScaler finds on the whole split, to float32 precision."""
    rng = np.random.default_rng(2)
    X = (rng.normal(3, 5, size=(1000, 6)) * [1, 10, 100, 1e3, 1e4, 0]).astype(np.float32)
    y = np.arange(1000) % 2
    monkeypatch.setattr(data, "BLOCK_BYTES", 7 * 6 * 4)  # 7 rows a block: 143 blocks
    sel = given_splits(X, X[:10], X[:10], y)
    sel.train = rng.permutation(1000)  # any order: the statistics do not depend on it
    assert sel.pool.block == 7
    got, want = data.train_scaler(sel), StandardScaler().fit(X)
    np.testing.assert_allclose(got.mean_, want.mean_, rtol=1e-6)
    np.testing.assert_allclose(got.scale_, want.scale_, rtol=1e-6)
    assert got.n_samples_seen_ == 1000


def test_prepare_folds_and_standardizes():
    folds = prepare(DataConfig(folds=3))
    assert len(folds) == 3
    for ds in folds:
        np.testing.assert_allclose(ds.train.X.mean(axis=0), 0, atol=1e-5)
    raw = prepare(DataConfig(standardize=False))
    assert len(raw) == 1 and raw[0].train.X.max() == 16


# ---------------------------------------------------------------- file sources
def test_npz_with_X_y_is_split(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.random.default_rng(0).normal(size=(100, 4)), y=np.arange(100) % 4)
    ds = load_dataset(DataConfig(source="npz", path=str(path), val_fraction=0.1))
    assert ds.name == "d.npz" and ds.n_classes == 4
    assert [len(s.y) for s in _splits(ds)] == [70, 10, 20]


def test_npz_with_given_splits_is_used_as_given(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", 30), ("val", 7), ("test", 9)):
        arrays[f"X_{part}"] = rng.normal(size=(n, 5))
        arrays[f"y_{part}"] = np.arange(n) % 3
    path = tmp_path / "s.npz"
    np.savez(path, **arrays)
    ds = load_dataset(DataConfig(source="npz", path=str(path)))
    for part, s in zip(("train", "val", "test"), _splits(ds), strict=True):
        np.testing.assert_array_equal(s.X, arrays[f"X_{part}"].astype(np.float32))
        np.testing.assert_array_equal(s.y, arrays[f"y_{part}"])
    arrays["y_train"] = np.arange(30) % 2  # class 2 only in val and test: never trained on
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=r"s\.npz: class 2 has no example in the given train"):
        load_dataset(DataConfig(source="npz", path=str(path)))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_with_label_column(tmp_path, fmt):
    n = 60
    df = pd.DataFrame({"a": np.arange(n), "target": np.arange(n) % 3, "b": np.arange(n) * 0.5})
    path = tmp_path / f"t.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    ds = load_dataset(DataConfig(source=fmt, path=str(path), label_column="target"))
    assert ds.name == path.name and ds.n_classes == 3
    X = np.concatenate([s.X for s in _splits(ds)])
    y = np.concatenate([s.y for s in _splits(ds)])
    assert X.shape == (n, 2)
    np.testing.assert_array_equal(X[:, 1], X[:, 0] * 0.5)  # columns a, b in order
    np.testing.assert_array_equal(y, X[:, 0].astype(int) % 3)


def test_parquet_embedding_column_is_as_many_features_as_its_length(tmp_path):
    """A linear probe's usual file: a label and a list column of embeddings (and maybe more
    numeric columns); the list becomes that many features, after the numeric ones before it."""
    n, rng = 60, np.random.default_rng(0)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    df = pd.DataFrame({"extra": np.arange(n) * 1.0, "label": np.arange(n) % 3})
    df["embedding"] = list(emb)
    path = tmp_path / "probe.parquet"
    df.to_parquet(path)
    ds = load_dataset(DataConfig(source="parquet", path=str(path), standardize=False))
    X = np.concatenate([s.X for s in _splits(ds)])
    assert X.shape == (n, 9) and ds.n_classes == 3
    order = np.argsort(X[:, 0])  # the splits shuffle: put the rows back by "extra"
    np.testing.assert_allclose(X[order, 1:], emb, rtol=1e-6)


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        ([[1.0, 2.0], [3.0]] * 30, r"column 'embedding' holds lists of 1 to 2 numbers"),
        ([["a", "b"]] * 60, r"column 'embedding' holds lists of something other than numbers"),
    ],
)
def test_a_bad_embedding_column_is_refused_in_one_line(tmp_path, embeddings, message):
    df = pd.DataFrame({"label": np.arange(60) % 3, "embedding": embeddings})
    path = tmp_path / "bad.parquet"
    df.to_parquet(path)
    with pytest.raises(ConfigError, match=message):
        load_dataset(DataConfig(source="parquet", path=str(path)))


# ---------------------------------------------------------------- CIFAR-10
def _cifar_batch(path: Path, n: int, seed: int, protocol: int | str) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"batch",
        b"labels": [int(i) for i in np.arange(n) % 10],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    data = pickle.dumps(batch, protocol=2 if protocol == "numpy1" else protocol)
    if protocol == "numpy1":  # the module name in the real files, written by numpy 1
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)
    return batch


def _cifar_folder(root: Path, protocol: int | str = 2) -> dict:
    root.mkdir()
    for i in range(1, 6):
        _cifar_batch(root / f"data_batch_{i}", 20, i, protocol)
    return _cifar_batch(root / "test_batch", 20, 0, protocol)


@pytest.mark.parametrize("protocol", [2, 4, "numpy1"])
def test_cifar10_folder(tmp_path, protocol):
    test = _cifar_folder(tmp_path / "cifar-10-batches-py", protocol)
    ds = load_dataset(DataConfig(source="cifar10", path=str(tmp_path / "cifar-10-batches-py")))
    assert ds.name == "cifar-10-batches-py" and ds.n_classes == 10
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (80, 20, 20)
    assert ds.train.X.shape[1] == 3072 and ds.train.X.dtype == np.float32
    assert ds.train.X.min() >= 0 and ds.train.X.max() <= 1
    np.testing.assert_allclose(ds.test.X, test[b"data"] / 255, rtol=1e-6)
    np.testing.assert_array_equal(ds.test.y, test[b"labels"])


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar"
    _cifar_folder(folder)
    marker = tmp_path / "MARKER"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": []}, f, protocol=2)
    with pytest.raises(ConfigError, match=r"refusing to unpickle \w+\.system from .*data_batch_1"):
        load_dataset(DataConfig(source="cifar10", path=str(folder)))
    assert not marker.exists()
    with open(folder / "data_batch_1", "rb") as f:  # control: a plain unpickler runs it
        pickle.load(f)
    assert marker.exists()


# ---------------------------------------------------------------- folds and synthetic
def test_cross_validation_folds(tmp_path):
    sel = select(DataConfig(source="npz", path=str(_indexed_npz(tmp_path / "i.npz"))))
    assert cross_validation_folds(sel, 1, 0) == [sel]
    ds = copy_out(sel, standardize=False)
    folds = [copy_out(f, standardize=False) for f in cross_validation_folds(sel, 4, seed=0)]
    assert len(folds) == 4
    pool = set(_ids(ds.train, ds.val))
    vals = [_ids(f.val) for f in folds]
    assert sum(len(v) for v in vals) == len(pool) and set().union(*vals) == pool
    for f, v in zip(folds, vals, strict=True):
        assert set(_ids(f.train)) == pool - set(v)
        assert _ids(f.test) == _ids(ds.test) and np.bincount(f.val.y).min() >= 10


def test_synthetic_is_deterministic_and_learnable():
    cfg = DataConfig(source="synthetic", n_samples=1000, n_features=8, n_classes=4, seed=2)
    a, b = load_dataset(cfg), load_dataset(cfg)
    np.testing.assert_array_equal(a.train.X, b.train.X)
    assert a.n_classes == 4 and a.train.X.shape[1] == 8
    assert sum(len(s.y) for s in _splits(a)) == 1000
    other = load_dataset(DataConfig(source="synthetic", n_features=8, n_classes=4, seed=3))
    assert not np.array_equal(a.train.X[:10], other.train.X[:10])
    acc = LogisticRegression(max_iter=1000).fit(a.train.X, a.train.y).score(a.test.X, a.test.y)
    assert 0.6 < acc < 0.99


# ---------------------------------------------------------------- bad inputs
def _npz(**arrays):
    return lambda p: np.savez(p, **arrays)


def _text(text: str):
    return lambda p: p.write_text(text)


GOOD_X, GOOD_Y = np.ones((40, 3)), np.arange(40) % 2


def _bad_cifar(p: Path) -> None:
    _cifar_folder(p)
    with open(p / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((5, 10), np.uint8), b"labels": [0] * 5}, f, protocol=2)


BAD = [
    ("missing", "npz", None, {}, r"data\.path: no such file: .*f\.npz"),
    ("not-npz", "npz", _text("hello"), {}, r"data\.path: .*f\.npz is not an npz file"),
    ("npz-keys", "npz", _npz(X=GOOD_X), {}, r"f\.npz must hold X, y or X_train, .*; found X$"),
    ("X-1d", "npz", _npz(X=np.ones(40), y=GOOD_Y), {}, r"f\.npz: X must be 2-D"),
    ("lengths", "npz", _npz(X=GOOD_X, y=GOOD_Y[:30]), {}, r"f\.npz: X has 40 rows but y has 30"),
    (
        "nan",
        "npz",
        _npz(X=np.where(np.eye(40, 3) > 0, np.nan, 1.0), y=GOOD_Y),
        {},
        r"f\.npz: X has 3 NaN or infinite .* column\(s\) 0, 1, 2;",
    ),
    (
        "fractional",
        "npz",
        _npz(X=GOOD_X, y=GOOD_Y + 0.5),
        {},
        r"f\.npz: y must be labels 0..C-1; 40 are not, e\.g\. 0\.5",
    ),
    (
        "negative",
        "npz",
        _npz(X=GOOD_X, y=GOOD_Y - 1),
        {},
        r"f\.npz: y must be labels 0..C-1; 20 are not, e\.g\. -1",
    ),
    (
        "strings",
        "npz",
        _npz(X=GOOD_X, y=np.array(["a", "b"] * 20)),
        {},
        r"f\.npz: y must be labels 0..C-1; 40 are not, e\.g\. 'a'",
    ),
    (
        "gap",
        "npz",
        _npz(X=GOOD_X, y=GOOD_Y * 2),
        {},
        r"f\.npz: labels must be 0..C-1 with no gaps; class\(es\) 1 absent",
    ),
    ("one-class", "npz", _npz(X=GOOD_X, y=GOOD_Y * 0), {}, r"f\.npz: needs at least 2 classes"),
    (
        "small-class",
        "npz",
        _npz(X=GOOD_X, y=np.r_[np.zeros(37), 1, 1, 2]),
        {},
        r"f\.npz: class 2 has only 1 examples.*data\.val_fraction",
    ),
    ("folds", "npz", _npz(X=GOOD_X, y=GOOD_Y), {"folds": 30}, r"f\.npz: class \d has only .*folds"),
    ("no-label", "csv", _text("a,b\n1,2\n"), {}, r"no column 'label' in .*f\.csv; columns: a, b"),
    ("str-feat", "csv", _text("a,label\nx,0\ny,1\n"), {}, r"f\.csv: feature column 'a'.*'x'"),
    (
        "str-after-num",  # the example quoted is the first value that is not a number
        "csv",
        _text("a,b,label\n1,2,0\n3,x,1\n"),
        {},
        r"f\.csv: feature column 'b' is not numeric \(e\.g\. 'x'\)",
    ),
    (
        "nan-col",
        "csv",
        _text("a,b,label\n1,,0\n2,3,1\n"),
        {},
        r"f\.csv: X has 1 NaN or infinite .*column\(s\) b;",
    ),
    (
        "str-label",
        "csv",
        _text("a,label\n1,cat\n2,dog\n"),
        {},
        r"f\.csv: column 'label' must be labels .*'cat'",
    ),
    ("parquet", "parquet", _text("not parquet"), {}, r"cannot read .*f\.parquet as parquet"),
    ("cifar-none", "cifar10", None, {}, r"data\.path: no such folder: .*f\.cifar10"),
    ("cifar-file", "cifar10", _text("x"), {}, r"f\.cifar10 is not a folder"),
    ("cifar-shape", "cifar10", _bad_cifar, {}, r"data_batch_3: not a CIFAR-10 batch"),
    (
        "cifar-miss",
        "cifar10",
        lambda p: (_cifar_folder(p), (p / "test_batch").unlink()),
        {},
        r"folder .*f\.cifar10 has no file test_batch",
    ),
]


@pytest.mark.parametrize(
    ("source", "write", "extra", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input_raises_one_line_config_error(tmp_path, source, write, extra, match):
    path = tmp_path / f"f.{source}"
    if write:
        write(path)
    with pytest.raises(ConfigError, match=match) as err:
        prepare(DataConfig(source=source, path=str(path), **extra))
    assert "\n" not in str(err.value)


def test_synthetic_with_too_few_features():
    with pytest.raises(ConfigError, match=r"data\.n_features must be >= 3 for 5 synthetic classes"):
        load_dataset(DataConfig(source="synthetic", n_features=2, n_classes=5))


# ---------------------------------------------------------------- what a data file may be
def test_labels_beyond_any_class_number_are_one_line(tmp_path):
    (tmp_path / "t.csv").write_text("a,label\n" + "1,0\n2,1\n" * 5 + "3,1e300\n")
    with pytest.raises(ConfigError, match=r"labels 0..C-1; 1 are not, e.g. 1e\+300$"):
        load_dataset(DataConfig(source="csv", path=str(tmp_path / "t.csv")))


@pytest.mark.parametrize(
    ("source", "path", "message"),
    [
        ("csv", "/dev/zero", "data.path: /dev/zero is not a regular file; give a data file"),
        ("npz", "{tmp}/fifo", "fifo is not a regular file; give a data file"),
        ("parquet", "{tmp}", "is a folder; give a data file"),
        ("cifar10", "{tmp}/fifo", "fifo is not a folder; cifar10 reads a folder"),
        ("cifar10", "{tmp}/c", "c/data_batch_1 is not a regular file; give a data file"),
    ],
)
def test_data_path_must_be_a_regular_file_or_a_folder(tmp_path, source, path, message):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "c").mkdir()
    os.mkfifo(tmp_path / "c" / "data_batch_1")
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(source=source, path=path.format(tmp=tmp_path)))
    assert message in str(err.value)


def test_what_a_trial_reads_is_bounded(tmp_path, monkeypatch):

    monkeypatch.setattr(data, "MAX_BYTES", 1 << 20)
    (tmp_path / "big.csv").write_text("a,label\n" + "1.0,0\n2.0,1\n" * 100_000)
    with pytest.raises(ConfigError, match=r"big.csv holds 1.\d MiB, more than the 1.0 MiB a"):
        load_dataset(DataConfig(source="csv", path=str(tmp_path / "big.csv")))
    np.savez_compressed(tmp_path / "zeros.npz", X=np.zeros((2 << 20, 1)), y=np.zeros(2))
    assert (tmp_path / "zeros.npz").stat().st_size < 1 << 20  # small, but unpacks to 16 MiB
    with pytest.raises(ConfigError, match=r"zeros.npz unpacks to 16.0 MiB, more than the 1.0"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "zeros.npz")))
    X = np.arange(2 << 18, dtype=np.float32).reshape(-1, 2)  # 2 MiB, as np.savez stores it:
    np.savez(tmp_path / "mapped.npz", X=X, y=np.arange(len(X)) % 2)  # memory-mapped, not read
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "mapped.npz")))
    assert sum(len(s.y) for s in (ds.train, ds.val, ds.test)) == len(X)


# ---------------------------------------------------------------- npy folders (large data)
def test_npy_folder_is_memory_mapped_and_split_as_an_npz_would_be(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 4)).astype(np.float32), np.arange(100) % 4
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "same.npz", X=X, y=y)
    got = load_dataset(DataConfig(source="npy", path=str(tmp_path)))
    want = load_dataset(DataConfig(source="npz", path=str(tmp_path / "same.npz")))
    assert got.name == tmp_path.name and got.n_classes == 4
    for a, b in zip(_splits(got), _splits(want), strict=True):
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, b.y)


def test_an_npz_member_stored_is_mapped_in_place_and_a_compressed_one_read(tmp_path):
    """np.savez stores its members as they are: each is mapped where it lies in the zip (any
    dtype and order, converted to float32 only as rows are copied out); savez_compressed's
    are read whole. Both give the same splits."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(90, 4)), np.arange(90) % 3  # float64
    np.savez(tmp_path / "stored.npz", X=np.asfortranarray(X), y=y)
    np.savez_compressed(tmp_path / "packed.npz", X=X, y=y)
    stored, packed = (
        select(DataConfig(source="npz", path=str(tmp_path / f"{n}.npz")))
        for n in ("stored", "packed")
    )
    assert isinstance(stored.pool.parts[0].base, np.memmap)
    assert packed.pool.parts[0].dtype == np.float32 and packed.pool.parts[0].flags.owndata
    a, b = copy_out(stored, standardize=True), copy_out(packed, standardize=True)
    for sa, sb in zip(_splits(a), _splits(b), strict=True):
        np.testing.assert_array_equal(sa.X, sb.X)
        np.testing.assert_array_equal(sa.y, sb.y)
    raw = copy_out(stored, standardize=False)
    np.testing.assert_array_equal(raw.test.X, X.astype(np.float32)[stored.test])


def test_npy_folder_with_given_splits(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 30), ("val", 7), ("test", 9)):
        np.save(tmp_path / f"X_{part}.npy", rng.normal(size=(n, 5)).astype(np.float32))
        np.save(tmp_path / f"y_{part}.npy", np.arange(n) % 3)
    ds = load_dataset(DataConfig(source="npy", path=str(tmp_path)))
    assert [len(s.y) for s in _splits(ds)] == [30, 7, 9]
    np.testing.assert_array_equal(ds.test.X, np.load(tmp_path / "X_test.npy"))


def test_npy_refusals_name_the_folder_and_what_it_lacks(tmp_path):
    np.save(tmp_path / "X.npy", GOOD_X)
    with pytest.raises(
        ConfigError, match=r"must hold X\.npy, y\.npy or X_train\.npy, .*found X\.npy$"
    ):
        load_dataset(DataConfig(source="npy", path=str(tmp_path)))
    np.save(tmp_path / "y.npy", np.array([{"a": 1}] * 40, dtype=object))
    with pytest.raises(ConfigError, match=r"cannot read .*y\.npy as \.npy"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"data\.path: .*X\.npy is not a folder"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path / "X.npy")))


def test_data_larger_than_the_free_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """An X.npy of 10^7 x 10^5 float32 (4 TB, a sparse file: nothing is written but its
    header) is refused from its header, with its size and the memory free."""
    rows, cols = 10**7, 10**5
    with open(tmp_path / "X.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (rows, cols)}
        )
        f.truncate(f.tell() + rows * cols * 4)
    np.save(tmp_path / "y.npy", np.arange(rows, dtype=np.int8) % 2)
    with pytest.raises(ConfigError) as e:
        load_dataset(DataConfig(source="npy", path=str(tmp_path)))
    assert re.fullmatch(
        rf"{tmp_path}: the data take 3725\.3 GiB as float32, more than the [0-9.]+ [GM]iB of "
        r"memory free here; use fewer examples or features .*",
        str(e.value),
    )
    huge = zipfile.ZipFile(tmp_path / "huge.npz", "w", zipfile.ZIP_DEFLATED)
    with huge, huge.open("X.npy", "w") as member:  # packed: it would be read whole
        np.lib.format.write_array_header_1_0(
            member, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10)}
        )
        member.write(bytes(10**6 * 10 * 4))
    monkeypatch.setattr(data, "MAX_BYTES", 1 << 40)  # past the cap on what is read whole
    monkeypatch.setattr(data, "free_memory", lambda: 10 << 20)
    monkeypatch.setattr(data, "_npz_arrays", lambda path: pytest.fail(f"{path} read first"))
    with pytest.raises(ConfigError, match=r"huge\.npz: the data take 38\.1 MiB as float32, more"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "huge.npz")))
