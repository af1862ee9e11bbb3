"""Who can use a sweep's Ray: a process with the sweep's token (Ray's token authentication),
and for a local sweep only from this machine (its Ray listens on the loopback address only).

An intruder, a Python process of its own with no token and a home without ~/.ray, tries to join
the Ray of a sweep held mid-training and to run a task that writes into the sweep's folder:
Ray refuses it, the file is not written, and the sweep, let go, completes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import Hold, check_complete, output, start_sweep, write_config  # noqa: E402
from test_slurm import (  # noqa: E402, F401  (the module's fixtures, for the SLURM test)
    cancel_what_a_test_left,
    check_sweep,
    events,
    log_of,
    no_ray_left,
    profile,
    ray_tmp,
    submit,
    wait,
)

from sweeps.engine.ray_process import descendants  # noqa: E402

INTRUDER = """
import sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
@ray.remote
def write(path):
    open(path, "w").write("intruder")
ray.get(write.remote(sys.argv[2]), timeout=60)
print("the intruder's task ran")
"""
REFUSAL = "Authentication token is missing or incorrect"  # the GCS answered, and said no


def intrude(address: str, target: Path, home: Path, **env: str) -> str:
    """Run the intruder against ``address``; its output. Its environment is empty but for
    PATH, a home of its own and ``env``."""
    home.mkdir(exist_ok=True)
    cp = subprocess.run(
        [sys.executable, "-c", INTRUDER, address, str(target)],
        env={"PATH": os.environ["PATH"], "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    return f"exit {cp.returncode}\n{cp.stdout}{cp.stderr}"


def refused(said: str, target: Path) -> None:
    assert not said.startswith("exit 0") and "the intruder's task ran" not in said, said
    assert REFUSAL in said, said[-3000:]
    assert not target.exists()


def listening(pids: list[int]) -> dict[int, list[tuple[str, int]]]:
    """pid -> the (address, port) its TCP sockets listen on (from /proc/net/tcp and tcp6)."""
    owner = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                if (link := os.readlink(fd)).startswith("socket:["):
                    owner[link[8:-1]] = pid
    found: dict[int, list[tuple[str, int]]] = {}
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] != "0A" or cols[9] not in owner:  # 0A: LISTEN
                continue
            hexaddr, port = cols[1].split(":")
            raw = bytes.fromhex(hexaddr)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.setdefault(owner[cols[9]], []).append(
                (str(ipaddress.ip_address(raw)), int(port, 16))
            )
    return found


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (
        ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback
    )


def machine_addresses() -> list[str]:
    """This machine's IPv4 addresses other than the loopback ones."""
    infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    return sorted({i[4][0] for i in infos} - {"127.0.0.1"} | set(_route_address()))


def _route_address() -> list[str]:
    """The address Ray itself would pick (of the interface with the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.255", 9))  # no packet is sent: it only picks a route
        except OSError:
            return []
        address = s.getsockname()[0]
    return [] if ipaddress.ip_address(address).is_loopback else [address]


# ---------------------------------------------------------------- a local sweep
@pytest.mark.slow
def test_a_local_sweep_ray_listens_on_loopback_and_refuses_a_process_without_its_token(
    workdir, monkeypatch
):
    holds = Hold(workdir / "holds", "epoch-1")
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)  # the sweep's defaults, not this process's
    lrs = [0.01, 0.02]
    search = {"type": "grid", "num_samples": 1}
    config = write_config(workdir, "guarded", search=search, space={"train.lr": {"grid": lrs}})
    sweep = start_sweep("run", str(config), hold=holds)
    try:
        holds.reached("epoch-1")  # a trial is mid-training, held
        tree = [sweep.pid, *descendants(sweep.pid)]
        sockets = listening(tree)
        everything = [a for addrs in sockets.values() for a in addrs]
        assert everything and all(loopback(ip) for ip, _ in everything), sockets
        (gcs,) = [
            pid
            for pid in tree
            if Path(f"/proc/{pid}/comm").read_text().strip() == "gcs_server" and pid in sockets
        ]
        (port,) = {port for _, port in sockets[gcs]}
        for ip in machine_addresses():  # nothing of it answers on the machine's addresses
            with socket.socket() as s, pytest.raises(OSError):
                s.settimeout(5)
                s.connect((ip, port))

        target = workdir / "runs" / "guarded" / "intruder.txt"
        # From this machine the loopback address reaches it (Ray, unless told so, would turn
        # 127.0.0.1 into the machine's address); without the token, or with a wrong one:
        local = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        refused(intrude(f"127.0.0.1:{port}", target, workdir / "home", **local), target)
        wrong = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64, **local}
        refused(intrude(f"127.0.0.1:{port}", target, workdir / "home", **wrong), target)
    finally:
        holds.let_go("epoch-1")
    assert sweep.wait(timeout=300) == 0, output(sweep)
    check_complete(workdir, "guarded", lrs, epochs=4)


# ---------------------------------------------------------------- a SLURM job
@pytest.mark.slurm
def test_a_slurm_sweep_ray_refuses_a_process_without_its_token(
    slurm_cluster,
    profile,  # noqa: F811 (test_slurm's fixture)
    tmp_path,
    ray_tmp,  # noqa: F811
    monkeypatch,
):
    holds = Hold(tmp_path / "holds", "epoch-1")
    monkeypatch.setenv("SWEEPS_HOLD", str(holds.folder))  # sbatch passes it on to the job
    job = submit(slurm_cluster, profile, tmp_path, "guarded")
    folder = tmp_path / "runs" / "guarded"
    try:
        holds.reached("epoch-1", timeout=240)
        (up,) = events(log_of(tmp_path, "guarded", job), "Ray head up at")
        address = up.rsplit(" ", 1)[1]
        token = folder / "ray-auth-token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
        target = folder / "intruder.txt"
        refused(intrude(address, target, tmp_path / "home"), target)
    finally:
        holds.let_go("epoch-1")
    state, log = (
        wait(slurm_cluster, job, tmp_path, "guarded", 300),
        log_of(tmp_path, "guarded", job),
    )
    assert state == "COMPLETED", log[-3000:]
    check_sweep(tmp_path, "guarded")
    assert not (folder / "ray-auth-token").exists()  # the job removed its token at its end
    no_ray_left(ray_tmp)
