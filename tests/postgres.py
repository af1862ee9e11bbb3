"""Start a real PostgreSQL server for tests (a helper, not a test module).

    with postgres("a", "b") as (a, b):  # "postgresql+psycopg://sweeps@127.0.0.1:PORT/a", ...
        ...

A cluster of its own (initdb) in a new folder under the system's temporary one, listening on
127.0.0.1 only, on a free port, with its socket in that folder; its one user has a random
password (another user of the machine cannot connect). PostgreSQL refuses to run as root: as
root, it runs as the ``postgres`` user that Debian's package makes (and the folder is that
user's, outside pytest's root-only tmp_path). Its programs are looked for on PATH, then in
Debian's /usr/lib/postgresql.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy
from mlflow_server import free_port


def _program(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (make tools does)")
    return found


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str]) -> None:
    done = subprocess.run(_as_owner(cmd), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")


def _create(server: str, name: str) -> None:
    engine = sqlalchemy.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        db.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


@contextlib.contextmanager
def postgres(*databases: str) -> Iterator[list[str]]:
    """A PostgreSQL server for the duration of the block, with these empty databases: their
    URLs, in order."""
    folder = Path(tempfile.mkdtemp(prefix="sweeps-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port, ctl = folder / "data", free_port(), _program("pg_ctl")
    password, pwfile = secrets.token_hex(16), folder / "password"
    pwfile.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres")
    try:
        auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"]
        _run([_program("initdb"), "-D", str(data), "-U", "sweeps", *auth])
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder}"
        )
        _run([ctl, "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"])
        try:
            server = f"postgresql+psycopg://sweeps:{password}@127.0.0.1:{port}"  # psycopg 3
            for name in databases:
                _create(server, name)
            yield [f"{server}/{name}" for name in databases]
        finally:
            _run([ctl, "-D", str(data), "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
