"""Data for a trial: read a source, validate it, split it, standardize it.

Every user mistake in an input file becomes a one-line ConfigError that names the file or key
and the fix, so a sweep of hundreds of trials fails early with a readable reason.

Splitting chooses rows, it copies nothing (a Selection); rows are copied out as float32 only
when a split is made (copy_out) or written (trainers.prepared, a block at a time), from sources
memory-mapped where the file allows (.npy, an npz's stored members). Preparing 10 GB of
embeddings thus never holds a second copy of them beside the first.
"""

from __future__ import annotations

import codecs
import math
import numbers
import pickle
import struct
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits, make_classification
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler

from trainers.config import ConfigError, DataConfig
from trainers.rules import expanded

MAX_BYTES = 8 << 30  # the most a trial reads whole: a csv or parquet file, an npz's packed arrays
MAX_LABEL = 2**31 - 1
BLOCK_BYTES = 16 << 20  # float32 rows read at a time: NaN checks, statistics, prepared files
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    X: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64, values 0..C-1


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    n_classes: int
    name: str  # e.g. "digits", or the file name


class Pool:
    """Every example of a source, as its loader found them: one array, or one per given split
    (any numeric dtype, memory-mapped where the file allows), numbered 0..N-1 across them."""

    def __init__(self, parts: list[Split]) -> None:
        self.parts = [p.X for p in parts]
        self.y = np.concatenate([p.y for p in parts])
        self.starts = np.cumsum([0, *(len(p.y) for p in parts)])
        self.features = parts[0].X.shape[1]
        self.block = block_rows(self.features)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The features of ``rows``, in that order, as a new float32 array."""
        out = np.empty((len(rows), self.features), np.float32)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for p in np.unique(part):
            at = part == p
            out[at] = self.parts[p][rows[at] - self.starts[p]]
        return out

    def blocks(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """``take(rows)`` a block of rows at a time."""
        for start in range(0, len(rows), self.block):
            yield self.take(rows[start : start + self.block])


def block_rows(features: int) -> int:
    """How many rows of ``features`` float32 values a block of BLOCK_BYTES holds."""
    return max(1, BLOCK_BYTES // (4 * features))


@dataclass
class Selection:
    """A Dataset before its rows are copied: which rows of ``pool`` each split holds."""

    pool: Pool
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    n_classes: int
    name: str


def select(cfg: DataConfig) -> Selection:
    """Read the source, validate, split (stratified, seeded by cfg.seed) unless the file gives
    its splits. NOT standardized, so that folds can be standardized on their own train part."""
    if cfg.source not in _LOADERS:
        raise ConfigError(f"data.source must be one of {', '.join(_LOADERS)}; got {cfg.source!r}")
    name, parts = _LOADERS[cfg.source](cfg)
    where, pool = cfg.path or cfg.source, Pool(parts)
    n_classes = _count_classes(pool.y, where)
    v, t = cfg.val_fraction, cfg.test_fraction
    if len(parts) == 1:  # one pool: train, val and test are fractions of the whole
        splits = _split(pool.y, [1 - v - t, v, t], cfg.seed, where)
    elif len(parts) == 2:  # train+val pool and a given test split (CIFAR-10)
        first, rest = pool.starts[1:]
        splits = [*_split(pool.y[:first], [1 - v, v], cfg.seed, where), np.arange(first, rest)]
    else:  # the three splits, given
        splits = [np.arange(a, b) for a, b in pairwise(pool.starts)]
        untrained = np.setdiff1d(np.arange(n_classes), pool.y[splits[0]])
        if untrained.size:  # its weights would never be trained, yet it is scored
            raise ConfigError(
                f"{where}: class {untrained[0]} has no example in the given training split "
                "(y_train); add some, or give X and y and let the sweep split them"
            )
    return Selection(pool, *splits, n_classes=n_classes, name=name)


def cross_validation_folds(sel: Selection, folds: int, seed: int) -> list[Selection]:
    """folds == 1 -> [sel]; else StratifiedKFold(shuffle, seed) over train+val concatenated;
    each fold's val is one part, test unchanged, so every example is validated on exactly once."""
    if folds == 1:
        return [sel]
    rows = np.concatenate([sel.train, sel.val])
    y = sel.pool.y[rows]
    counts = np.bincount(y, minlength=sel.n_classes)
    if counts.min() < folds:
        c = int(counts.argmin())
        raise ConfigError(
            f"{sel.name}: class {c} has only {counts[c]} examples in train+val, fewer than "
            f"data.folds={folds}; lower data.folds or add data"
        )
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        replace(sel, train=rows[tr], val=rows[va]) for tr, va in kfold.split(np.zeros(len(y)), y)
    ]


def fold_selections(cfg: DataConfig) -> list[Selection]:
    """One Selection per fold of cfg.folds (one without cross-validation)."""
    return cross_validation_folds(select(cfg), cfg.folds, cfg.seed)


def train_scaler(sel: Selection) -> StandardScaler:
    """Zero-mean unit-variance statistics from the training rows ONLY (features with std 0
    keep scale 1), so nothing leaks from val/test; read a block of rows at a time."""
    scaler = StandardScaler()
    for block in sel.pool.blocks(np.sort(sel.train)):  # in file order: sequential reads
        scaler.partial_fit(block)
    return scaler


def copy_out(sel: Selection, standardize: bool) -> Dataset:
    """The selected rows as a Dataset of float32 arrays, standardized with train_scaler."""
    scaler = train_scaler(sel) if standardize else None

    def split(rows: np.ndarray) -> Split:
        X = sel.pool.take(rows)
        return Split(X if scaler is None else scaler.transform(X, copy=False), sel.pool.y[rows])

    return Dataset(*(split(getattr(sel, s)) for s in SPLITS), sel.n_classes, sel.name)


def load_dataset(cfg: DataConfig) -> Dataset:
    """The splits as ``select`` makes them, copied out, not standardized."""
    return copy_out(select(cfg), standardize=False)


def refit_dataset(cfg: DataConfig) -> Dataset:
    """What a sweep's chosen config is retrained on (scikit-learn's ``refit``): train and
    validation together as the training split, whatever data.folds (the folds' parts are the
    same examples), standardized with statistics of that split only, so nothing comes from
    test. No example is held out, so ``val`` is the training split itself (its metrics are
    training metrics, not logged as validation); ``test`` is untouched but for the scaling."""
    return copy_out(refit_selection(cfg), cfg.standardize)


def refit_selection(cfg: DataConfig) -> Selection:
    """The rows of ``refit_dataset``: train and validation together, as train and as val."""
    sel = select(cfg)
    pool = np.concatenate([sel.train, sel.val])
    return replace(sel, train=pool, val=pool)


def prepare(cfg: DataConfig) -> list[Dataset]:
    """fold_selections, each copied out and standardized if cfg.standardize. What a trainer
    trains on: one Dataset per fold."""
    return [copy_out(sel, cfg.standardize) for sel in fold_selections(cfg)]


# ---------------------------------------------------------------- validation and splitting
def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _checked(
    X: object,
    y: object,
    where: str,
    xname: str = "X",
    yname: str = "y",
    columns: list | None = None,
) -> Split:
    """Split from raw arrays, or a ConfigError saying what is wrong with them. A memory-mapped
    X is kept as it is, any numeric dtype (Pool.take converts the rows it copies)."""
    mapped = isinstance(X, np.memmap)
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2:
        raise ConfigError(f"{where}: {xname} must be 2-D (examples x features); got {X.shape}")
    if y.ndim != 1:
        raise ConfigError(f"{where}: {yname} must be 1-D (one label each); got {y.shape}")
    if len(X) != len(y):
        raise ConfigError(f"{where}: {xname} has {len(X)} rows but {yname} has {len(y)} labels")
    if len(y) == 0 or X.shape[1] == 0:
        raise ConfigError(f"{where}: {xname} is empty (shape {X.shape}); it needs examples")
    if X.dtype.kind not in "biuf":
        raise ConfigError(f"{where}: {xname} must be numeric; got dtype {X.dtype}")
    if not mapped:  # read whole: float32 now, the original freed; a map converts as rows are read
        with np.errstate(over="ignore"):
            X = X.astype(np.float32, copy=False)
    count, bad_columns = 0, np.zeros(X.shape[1], bool)
    rows = block_rows(X.shape[1])
    for start in range(0, len(X), rows):  # a block at a time: no N x D mask
        with np.errstate(over="ignore"):  # beyond float32: infinite, so refused below
            bad = ~np.isfinite(X[start : start + rows].astype(np.float32, copy=False))
        count += int(bad.sum())
        bad_columns |= bad.any(0)
    if count:
        names = columns or range(X.shape[1])
        cols = ", ".join(str(names[j]) for j in bad_columns.nonzero()[0])
        raise ConfigError(
            f"{where}: {xname} has {count} NaN or infinite values (or beyond float32) in "
            f"column(s) {cols}; fill or drop them"
        )
    if y.dtype.kind in "biuf":  # a label beyond int32 (1e300, say) is no class number
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y <= MAX_LABEL))
    else:
        bad = np.ones(len(y), bool)
    if bad.any():
        eg = y[bad][:1].tolist()[0]
        raise ConfigError(
            f"{where}: {yname} must be labels 0..C-1; {bad.sum()} are not, e.g. {eg!r}"
        )
    return Split(X, y.astype(np.int64))


def _count_classes(y: np.ndarray, where: str) -> int:
    """C, after checking that the labels are exactly 0..C-1 with every class present."""
    top = int(y.max())
    if top >= len(y):  # cannot all be present; also keeps bincount small
        raise ConfigError(f"{where}: label {top} but only {len(y)} examples; labels must be 0..C-1")
    counts = np.bincount(y)
    absent = np.flatnonzero(counts == 0)
    if absent.size:
        shown = ", ".join(map(str, absent[:10])) + (", ..." if absent.size > 10 else "")
        raise ConfigError(f"{where}: labels must be 0..C-1 with no gaps; class(es) {shown} absent")
    if len(counts) < 2:
        raise ConfigError(f"{where}: needs at least 2 classes; every label is 0")
    return len(counts)


def _split(y: np.ndarray, fractions: list[float], seed: int, where: str) -> list[np.ndarray]:
    """Stratified split of the rows of labels ``y`` into parts of the given fractions (the first
    is the rest), so each class keeps its share; every part must get every class."""
    counts = np.bincount(y)
    need = math.ceil(1 / min(fractions) - 1e-9)

    def too_small(c: int) -> ConfigError:
        return ConfigError(
            f"{where}: class {c} has only {counts[c]} examples, too few to appear in every split "
            f"(about {need} needed); raise data.val_fraction / data.test_fraction or add data"
        )

    if counts.min() < need:
        raise too_small(int(counts.argmin()))
    idx, parts, left = np.arange(len(y)), [], 1.0
    try:
        for f in fractions[:0:-1]:  # val, test: each a fraction of what is left
            idx, taken = train_test_split(
                idx, test_size=f / left, stratify=y[idx], random_state=seed
            )
            parts, left = [taken, *parts], left - f
    except ValueError:  # sklearn: a class too small to stratify
        raise too_small(int(counts.argmin())) from None
    for part in (parts := [idx, *parts]):
        missing = np.setdiff1d(np.arange(len(counts)), y[part])
        if missing.size:  # rounding can still leave a small class out of one part
            raise too_small(int(missing[0]))
    return parts


# ---------------------------------------------------------------- sources
def _path(cfg: DataConfig, folder: bool = False, whole: bool = True) -> Path:
    """data.path, checked to be a folder (cifar10) or a regular file, of at most MAX_BYTES
    where it is read ``whole``: a FIFO or /dev/zero would be read until the kernel stops the
    process."""
    if not cfg.path:
        raise ConfigError(f"data.path is required for data.source {cfg.source}")
    path = expanded(cfg.path, "data.path")
    if not path.exists():
        raise ConfigError(f"data.path: no such {'folder' if folder else 'file'}: {path}")
    if folder and not path.is_dir():
        raise ConfigError(f"data.path: {path} is not a folder; {cfg.source} reads a folder")
    return path if folder else _regular_file(path, "data.path: ", whole)


def _regular_file(path: Path, label: str = "", whole: bool = True) -> Path:
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"{label}{path} is {kind}; give a data file")
    if whole and (size := path.stat().st_size) > MAX_BYTES:
        raise ConfigError(
            f"{label}{path} holds {memory_size(size)}, more than the "
            f"{memory_size(MAX_BYTES)} a trial reads into memory; use a smaller file"
        )
    return path


def memory_size(n: int) -> str:
    """Bytes as people read them: 3.2 GiB, 640.0 MiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _synthetic(cfg: DataConfig) -> tuple[str, list[Split]]:
    """Gaussian blobs at hypercube corners with 1% flipped labels: linear, but not trivially."""
    if cfg.n_classes > 2**cfg.n_features:  # one hypercube corner per class
        need = math.ceil(math.log2(cfg.n_classes))
        raise ConfigError(
            f"data.n_features must be >= {need} for {cfg.n_classes} synthetic classes"
        )
    X, y = make_classification(
        n_samples=cfg.n_samples,
        n_features=cfg.n_features,
        n_informative=cfg.n_features,
        n_redundant=0,
        n_classes=cfg.n_classes,
        n_clusters_per_class=1,
        random_state=cfg.seed,
    )
    return "synthetic", [_checked(X, y, "synthetic")]


_SPLIT_KEYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


def _npz(cfg: DataConfig) -> tuple[str, list[Split]]:
    """An npz's arrays: those np.savez stores, memory-mapped; those np.savez_compressed packs,
    read whole, at most MAX_BYTES once unpacked (a small zip can unpack to any size). Their
    size is checked against the free memory before any of it is read."""
    path = _path(cfg, whole=False)
    if not zipfile.is_zipfile(path):  # np.load would read a .npy or a pickle as something else
        raise ConfigError(
            f"data.path: {path} is not an npz file (a zip of arrays, as np.savez writes)"
        )
    unreadable = (OSError, EOFError, zipfile.BadZipFile, ValueError)
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except unreadable as e:
        raise ConfigError(f"data.path: cannot read {path} as npz: {_one_line(e)}") from None
    packed = sum(i.file_size for i in members if i.compress_type != zipfile.ZIP_STORED)
    if packed > MAX_BYTES:
        raise ConfigError(
            f"data.path: {path} unpacks to {memory_size(packed)}, more than the "
            f"{memory_size(MAX_BYTES)} a trial reads into memory; save it with np.savez "
            "(memory-mapped), or as .npy files"
        )
    _fits(sum(i.file_size for i in members), str(path))
    try:
        arrays = _npz_arrays(path)
    except unreadable as e:
        raise ConfigError(f"data.path: cannot read {path} as npz: {_one_line(e)}") from None
    keys = _array_keys(arrays.keys(), path)
    return path.name, _parts(arrays, keys, path)


def _npy(cfg: DataConfig) -> tuple[str, list[Split]]:
    """A folder of .npy arrays (X.npy and y.npy, or the six split files), memory-mapped: the
    arrays are read as they are split, and their size is checked against the free memory
    before any of it is read."""
    folder = _path(cfg, folder=True)
    keys = _array_keys({p.stem for p in folder.glob("*.npy")}, folder, ".npy")
    _fits(sum(math.prod(_npy_shape(folder / f"{x}.npy")) * 4 for x, _ in keys), str(folder))
    arrays = {name: _mapped(folder / f"{name}.npy") for pair in keys for name in pair}
    return folder.name, _parts(arrays, keys, folder)


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The array's shape, from the .npy file's header alone."""
    try:
        with path.open("rb") as f:
            return _npy_header(f)[0]
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.path: cannot read {path} as .npy: {_one_line(e)}") from None


def _npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from a .npy header; ``f`` is left where the data start."""
    major, _ = np.lib.format.read_magic(f)
    fmt = np.lib.format
    return (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """An npz's arrays: each member np.savez stored as it is, memory-mapped in place (as an
    .npy would be); each compressed one (np.savez_compressed), read whole."""
    arrays = {}
    with zipfile.ZipFile(path) as z, np.load(path, allow_pickle=False) as f, path.open("rb") as raw:
        for info in z.infolist():
            name = info.filename.removesuffix(".npy")
            stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1
            member = _npz_member(raw, info, path) if stored else None
            arrays[name] = f[name] if member is None else member
    return arrays


def _npz_member(raw: BinaryIO, info: zipfile.ZipInfo, path: Path) -> np.ndarray | None:
    """A stored npz member mapped where it lies in the file, or None (no array to map)."""
    raw.seek(info.header_offset)
    local = raw.read(30)  # the zip's local header: then the member's name and extra field
    if local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    raw.seek(info.header_offset + 30 + name_len + extra_len)
    shape, fortran, dtype = _npy_header(raw)
    if dtype.hasobject or math.prod(shape) == 0:
        return None
    order = "F" if fortran else "C"
    return np.memmap(path, dtype, mode="c", offset=raw.tell(), shape=shape, order=order)


def _mapped(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)  # never written
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.path: cannot read {path} as .npy: {_one_line(e)}") from None


def _array_keys(names: Collection[str], path: Path, ext: str = "") -> list[tuple[str, str]]:
    """The (X, y) name pairs an npz or npy folder holds: one pool, or the three splits."""
    if set(_SPLIT_KEYS) <= set(names):
        return [(_SPLIT_KEYS[i], _SPLIT_KEYS[i + 1]) for i in (0, 2, 4)]
    if {"X", "y"} <= set(names):
        return [("X", "y")]
    found = ", ".join(sorted(f"{n}{ext}" for n in names)) or "none"
    wanted = ", ".join(f"{k}{ext}" for k in _SPLIT_KEYS)
    raise ConfigError(f"data.path: {path} must hold X{ext}, y{ext} or {wanted}; found {found}")


def _parts(
    arrays: Mapping[str, np.ndarray], keys: list[tuple[str, str]], path: Path
) -> list[Split]:
    parts = [_checked(arrays[x], arrays[y], str(path), x, y) for x, y in keys]
    if len({p.X.shape[1] for p in parts}) > 1:
        raise ConfigError(f"{path}: X_train, X_val and X_test have different numbers of columns")
    return parts


def free_memory() -> int | None:
    """The memory the kernel can give without swapping (Linux's MemAvailable), or None where
    there is no /proc/meminfo: then nothing is checked."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _fits(nbytes: int, where: str) -> None:
    """Refuse data that cannot be held in memory, before any of it is read."""
    free = free_memory()
    if free is not None and nbytes > free:
        raise ConfigError(
            f"{where}: the data take {memory_size(nbytes)} as float32, more than the "
            f"{memory_size(free)} of memory free here; use fewer examples or features (e.g. a "
            "PCA), or a machine with more memory"
        )


def _table(cfg: DataConfig) -> tuple[str, list[Split]]:
    """csv or parquet: the label column plus numeric feature columns, or (parquet) a column of
    equal-length lists of numbers: an embedding, as many features as its length."""
    path = _path(cfg)
    try:
        df = pd.read_csv(path) if cfg.source == "csv" else pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pandas and pyarrow parse errors are ValueErrors
        raise ConfigError(
            f"data.path: cannot read {path} as {cfg.source}: {_one_line(e)}"
        ) from None
    label = cfg.label_column
    if label not in df.columns:
        columns = ", ".join(map(str, df.columns))
        raise ConfigError(f"data.label_column: no column {label!r} in {path}; columns: {columns}")
    features = df.drop(columns=[label])
    blocks, names = [], []
    for col in features.columns:
        if pd.api.types.is_numeric_dtype(features[col]):
            blocks.append(features[col].to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            names.append(col)
            continue
        example = next(iter(features[col].dropna()), None)
        if not isinstance(example, list | np.ndarray):
            bad = _first_not_numeric(features[col].dropna(), example)
            raise ConfigError(
                f"{path}: feature column {col!r} is not numeric (e.g. {bad!r}); every "
                f"column but data.label_column ({label!r}) must be a number or (parquet) a list "
                "of numbers"
            )
        block = _embedding(features[col], f"{path}: column {col!r}")
        blocks.append(block)
        names += [f"{col}[{i}]" for i in range(block.shape[1])]
    X = np.hstack(blocks) if blocks else np.empty((len(df), 0))
    y = df[label].to_numpy()
    return path.name, [_checked(X, y, str(path), "X", f"column {label!r}", names)]


def _first_not_numeric(values: pd.Series, default: object) -> object:
    """The first value that is not a number (nor the text of one), else ``default``: the
    example a refusal quotes (a CSV column of ``2, x`` is text throughout, "2" included)."""
    for v in values:
        if isinstance(v, str):
            try:
                float(v)
            except ValueError:
                return v
        elif not isinstance(v, numbers.Number):
            return v
    return default


def _embedding(column: pd.Series, where: str) -> np.ndarray:
    """A column of lists (or arrays) of numbers, one per example, as an (N, length) matrix."""
    lengths = {len(v) if isinstance(v, list | np.ndarray) else -1 for v in column}
    if -1 in lengths:
        raise ConfigError(f"{where} holds a list for some examples and not others")
    if len(lengths) > 1:
        raise ConfigError(
            f"{where} holds lists of {min(lengths)} to {max(lengths)} numbers; an embedding "
            "column needs one length"
        )
    try:
        return np.stack(column.to_numpy()).astype(np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} holds lists of something other than numbers") from None


class _Refused(pickle.UnpicklingError):
    pass


_RECONSTRUCT = np.empty(0).__reduce__()[0]  # wherever this numpy keeps _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a pickle can otherwise run any code.
    `_codecs.encode` is how Python 3 writes bytes at protocol 2 (harmless: text to bytes)."""

    SAFE = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.SAFE:
            raise _Refused(f"refusing to unpickle {module}.{name}")
        return self.SAFE[module, name]


def _cifar_batch(file: Path) -> Split:
    if not file.exists():
        raise ConfigError(f"data.path: CIFAR-10 folder {file.parent} has no file {file.name}")
    _regular_file(file, "data.path: ")
    try:
        with open(file, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    except _Refused as e:
        raise ConfigError(f"{e} from {file}: not a CIFAR-10 batch") from None
    except Exception as e:  # nothing but numpy could run, so any failure means a bad file
        raise ConfigError(f"cannot read {file}: not a CIFAR-10 batch ({_one_line(e)})") from None
    ok = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)
    if not (ok and labels.shape == (len(data),)):
        raise ConfigError(f"{file}: not a CIFAR-10 batch of b'data' (N x 3072 uint8), b'labels'")
    return _checked(data / np.float32(255), labels, str(file), "b'data'", "b'labels'")


def _cifar10(cfg: DataConfig) -> tuple[str, list[Split]]:
    """The 'CIFAR-10 python version' folder: data_batch_1..5 are train+val, test_batch is test."""
    folder = _path(cfg, folder=True)
    batches = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    pool = Split(np.concatenate([b.X for b in batches]), np.concatenate([b.y for b in batches]))
    return folder.name, [pool, _cifar_batch(folder / "test_batch")]


_LOADERS: dict[str, Callable[[DataConfig], tuple[str, list[Split]]]] = {
    "digits": lambda cfg: ("digits", [_checked(*load_digits(return_X_y=True), "digits")]),
    "npz": _npz,
    "npy": _npy,
    "csv": _table,
    "parquet": _table,
    "cifar10": _cifar10,
    "synthetic": _synthetic,
}
