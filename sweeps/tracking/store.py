"""Whether a sweep's MLflow store (its URI: sweeps.tracking.uri) can take the sweep, before
anything runs.

``check_store`` asks the store within seconds and writes nothing: a refused sweep leaves
nothing behind. A new SQLite store's tables take seconds of CPU to make (MLflow runs every
schema migration), so they are made once per MLflow version into a cached empty store
(``empty_store``), copied for each new store; ``usable_store`` prepares the copy in a thread
while the driver starts Ray, and the tracker adopts the made file (``PreparedStore``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from sweeps.record.layout import unwritable
from sweeps.tracking.uri import resolve_tracking_uri, sqlite_file
from trainers.config import ConfigError

PROBE_TIMEOUT_S = 5  # a store that has not answered by then is reported, not retried
WHY = {  # urllib3's cause of a failed request -> words
    "NewConnectionError": "connection refused",
    "ConnectTimeoutError": f"no answer within {PROBE_TIMEOUT_S} s",
    "ReadTimeoutError": f"no answer within {PROBE_TIMEOUT_S} s",
    "NameResolutionError": "unknown host",
}


def answering_store(
    configured: Any, workdir: Path, key: str = "mlflow.tracking_uri", recorded: str | None = None
) -> str:
    """``resolve_tracking_uri``, then ``check_store``; errors name where the URI came from.
    Writes nothing (``sweep run --dry-run``)."""
    uri = resolve_tracking_uri(configured, workdir, key, recorded)
    if (configured is None or configured == "") and os.environ.get("MLFLOW_TRACKING_URI"):
        key = "$MLFLOW_TRACKING_URI"
    check_store(uri, key)
    return uri


def usable_store(
    configured: Any, workdir: Path, key: str = "mlflow.tracking_uri", recorded: str | None = None
) -> str:
    """``answering_store``, and a new SQLite store's tables made meanwhile."""
    uri = answering_store(configured, workdir, key, recorded)
    PreparedStore.start(uri)
    return uri


def check_store(uri: str, key: str = "mlflow.tracking_uri") -> None:
    """Ask the store, within a few seconds and without writing to it, whether it can take the
    sweep: a SQLite file that can be written (or made), a server that answers."""
    db = sqlite_file(uri)
    if db is not None:
        why = None
        if db.exists():
            try:
                with open(db, "r+b"):  # opened for writing, nothing written
                    pass
            except OSError as err:
                why = err.strerror
            why = why or not_mlflow(db)
        elif not db.parent.is_dir():
            why = f"no folder {db.parent}"
        else:
            why = unwritable(db.parent)  # SQLite makes the file there
        if why:
            raise ConfigError(f"{key}: cannot use the SQLite store {db}: {why}")
        return
    if why := unanswered(uri):
        raise ConfigError(
            f"{key}: no MLflow server answers at {uri} ({why}); start it or fix the URI"
        )


def not_mlflow(db: Path) -> str | None:
    """Why the SQLite file ``db`` cannot be an MLflow store, read without writing: it is no
    database, or it holds another program's tables (MLflow would add its own beside them);
    None for an MLflow store, or an empty database, where MLflow makes its tables."""
    try:
        read_only = f"{db.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(read_only, uri=True)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
    except sqlite3.OperationalError:  # locked past the 5 s timeout by a sweep that writes to it
        return None
    except sqlite3.DatabaseError as err:  # not a database at all
        return str(err)
    if tables and not {"experiments", "runs", "alembic_version"} <= tables:
        return "it holds other tables than MLflow's"
    return None


def unanswered(uri: str) -> str | None:
    """Why the store at ``uri`` (a server: not a SQLite file) does not answer a read within
    PROBE_TIMEOUT_S, asked once; None when it answers. Writes nothing."""
    fast = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_TIMEOUT_S),
    }
    with _environ(**fast):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except MlflowException as err:
            return why_failed(err)
    return None


def why_failed(err: MlflowException) -> str:
    """An MLflow error in a few words: urllib3's cause of a failed request, else its first line."""
    text = str(err)
    cause = re.search(r"Caused by (\w+)", text)
    if cause and cause.group(1) in WHY:
        return WHY[cause.group(1)]
    return text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.cache
def sqlite_without_fsync() -> None:
    """Every SQLite connection of this process commits without an fsync (PRAGMA
    synchronous=OFF). Each MLflow write is a commit, and on a busy disk its fsync was most of
    its time (about 36 ms a write against 11 without, bench/fused_sweep.py's machine). SQLite's
    journal still makes each commit atomic, so a killed driver loses nothing it committed; only
    an OS crash or a power loss can damage the database, and the store is a copy of the sweep
    folder's record: `sweep sync` rebuilds it. The rollback journal is kept (not WAL), so a
    store on NFS stays readable from other hosts."""

    def no_fsync(connection: Any, _record: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            connection.execute("PRAGMA synchronous=OFF")

    event.listen(Engine, "connect", no_fsync)


class PreparedStore:
    """A store made ready in a thread: MLflow imported and, for a SQLite file not there yet,
    its tables made (MLflow runs every schema migration, seconds) in a temporary folder.
    ``adopt`` waits for it and links the made file into place unless one appeared meanwhile,
    so that nothing is written where the store goes before the sweep passed its checks."""

    _by_uri: dict[str, PreparedStore] = {}

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.made: Path | None = None
        self.thread = threading.Thread(target=self._make, name="mlflow-store", daemon=True)

    @classmethod
    def start(cls, uri: str) -> None:
        if uri not in cls._by_uri:
            prepared = cls._by_uri[uri] = cls(uri)
            # MLflow announces the tables it makes; made aside, they are none of the user's
            # concern (and a refused sweep must say one line only)
            logging.getLogger("mlflow.store.db.utils").addFilter(prepared._not_mine)
            prepared.thread.start()

    def _not_mine(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread.ident

    def _make(self) -> None:
        try:
            db = sqlite_file(self.uri)
            if db is None or db.exists():
                return
            folder = Path(tempfile.mkdtemp(prefix="sweeps-store-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            made = folder / db.name
            with contextlib.suppress(OSError):  # else MLflow makes the tables, as for no cache
                shutil.copyfile(empty_store(), made)
            # from the copy, MLflow adds its Default experiment (as it would here), and it
            # refuses a copy whose schema is not its own: then no store is made aside
            MlflowClient(f"sqlite:///{made}").search_experiments(max_results=1)
            self.made = made
        except Exception:  # none made: MLflow makes the store itself, and says what is wrong
            return
        finally:
            logging.getLogger("mlflow.store.db.utils").removeFilter(self._not_mine)

    @classmethod
    def adopt(cls, uri: str) -> None:
        prepared = cls._by_uri.pop(uri, None)
        if prepared is None:
            return
        prepared.thread.join()
        db = sqlite_file(uri)
        if prepared.made is None or db is None or db.exists():
            return
        staged = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(prepared.made, staged)
            os.link(staged, db)  # fails if a store appeared meanwhile: that one is used
        except OSError:
            pass
        finally:
            staged.unlink(missing_ok=True)


def empty_store() -> Path:
    """A SQLite store with MLflow's tables and no experiment, made once per MLflow version
    under $XDG_CACHE_HOME/sweeps (else ~/.cache/sweeps): a copy of it is a new store in
    milliseconds, where making the tables costs seconds of CPU while Ray starts. Its Default
    experiment is left out: MLflow adds it when it opens a copy, with that copy's artifact
    location and time. A damaged one is made again (MLflow would retry opening a copy for a
    minute and more). OSError where the cache cannot be written."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweeps"
    path = cache / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.execute("SELECT version_num FROM alembic_version").fetchone()
        return path
    except sqlite3.Error:
        path.unlink(missing_ok=True)  # not there, or not a store
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as folder:
        made = Path(folder) / path.name
        MlflowClient(f"sqlite:///{made}").search_experiments(max_results=1)
        with contextlib.closing(sqlite3.connect(made)) as db:
            with db:
                db.execute("DELETE FROM experiments")
            db.execute("VACUUM")
        os.replace(made, path)  # whole or not at all, whoever made it first
    return path
