"""Start a real MLflow tracking server for tests (a helper, not a test module).

    with mlflow_server(tmp_path) as uri:  # "http://127.0.0.1:PORT"
        MlflowClient(uri) ...

The server keeps its runs in ``<tmp>/srv.db`` and serves artifacts itself
(``--serve-artifacts``, stored under ``<tmp>/artifacts``), so clients upload and download
artifacts over HTTP through ``mlflow-artifacts:/`` URIs, as they would on a cluster.
One worker and no job execution keep it to two processes (~430 MiB, ready in ~6 s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(tmp_path: Path, store: str | None = None, workers: int = 1) -> Iterator[str]:
    """Run ``mlflow server`` on a free local port for the duration of the block; ``store``:
    its backend store (a database URL), else ``<tmp>/srv.db``; ``workers``: its processes."""
    tmp_path = Path(tmp_path).resolve()
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    cmd = [
        str(mlflow_exe),
        "server",
        "--backend-store-uri",
        store or f"sqlite:///{tmp_path / 'srv.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with serving(cmd, port, tmp_path) as url:
        yield url


@contextlib.contextmanager
def serving(cmd: list[str], port: int, cwd: Path) -> Iterator[str]:
    """Start ``cmd`` (a server on ``port``), wait until ``GET /`` answers 200, stop it after."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = Path(cwd) / f"server-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[1]} exited with code {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{cmd[1]} not ready at {url} after {READY_TIMEOUT_S:.0f} s:\n{_tail(log)}"
                )
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)
