"""Where a sweep's MLflow store is: its URI, resolved without importing MLflow (``sweep
submit`` and ``sweep status`` need it in a fraction of a second).

The URI comes from the config, else $MLFLOW_TRACKING_URI, else (``sweep submit``) the cluster
profile's, else, for a sweep that has run, the store its state file names, else ./mlflow.db.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sweeps.record.layout import DEFAULT_DB
from trainers.rules import expanded

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def resolve_tracking_uri(
    configured: Any,
    workdir: Path,
    key: str = "mlflow.tracking_uri",
    recorded: str | None = None,
    fallback: str = "",
) -> str:
    """The sweep config's ``mlflow.tracking_uri`` (``key`` names where it came from), else
    $MLFLOW_TRACKING_URI, else ``fallback`` (a cluster profile's store, checked by its own
    rule), else the store an existing sweep's runs are in (``recorded``, from its state file,
    while that store's folder is there: a command run from another directory finds them), else
    a SQLite database in ``workdir``. Relative paths in the configured URI and the fallback are
    made absolute against ``workdir`` (the environment's against the current directory):
    trials and the UI run elsewhere. A bare path ending in .db/.sqlite means a SQLite database.
    The form is checked by the rule of a given URI (sweeps.spec.sweep: the config's rule, whose
    null means nothing on a command line or in the environment)."""
    from sweeps.spec.sweep import TRACKING_URI

    if configured is not None and configured != "":
        return _absolute(TRACKING_URI.check(key, configured), workdir, key)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env = TRACKING_URI.check("$MLFLOW_TRACKING_URI", os.environ["MLFLOW_TRACKING_URI"])
        return _absolute(env, Path.cwd(), "$MLFLOW_TRACKING_URI")
    if fallback:
        return _absolute(fallback, workdir, "mlflow_tracking_uri")
    if recorded and ((db := sqlite_file(recorded)) is None or db.parent.is_dir()):
        return recorded
    return f"sqlite:///{workdir.resolve()}/{DEFAULT_DB}"


def sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?")[0])


def _absolute(uri: str, base: Path, key: str) -> str:
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        return uri if path.startswith("/") else f"sqlite:///{base.resolve() / path}"
    if "://" in uri or uri.startswith("file:"):
        return uri  # a server or a file URI: checked as given
    path = (base / expanded(uri, key)).resolve()
    return f"sqlite:///{path}" if path.suffix in SQLITE_SUFFIXES else uri
