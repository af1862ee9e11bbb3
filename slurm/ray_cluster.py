"""Small Ray checks the SLURM job scripts run (see slurm/ray.sh); messages go to stderr.

    python ray_cluster.py address PORT PID   wait until the GCS of the head started here (by
                                             process PID) answers on PORT; print HOST:PORT
    python ray_cluster.py nodes ADDRESS N    wait until N Ray nodes are alive; list them
    python ray_cluster.py report ADDRESS     where the sweep's trial actors ran, per SLURM node

Readiness is checked by connecting, not with `ray status` (which can trip over token auth).
"""

from __future__ import annotations

import os
import socket
import sys
import time

TIMEOUT_S = float(os.environ.get("SWEEPS_RAY_TIMEOUT", "180"))
NODE_KEY = "slurm-node:"  # the custom resource slurm/ray.sh gives each node: slurm-node:<name>


def say(msg: str) -> None:
    print(f"[sweeps {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def alive(pid: int) -> bool:
    """Whether process pid runs (a zombie, i.e. exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def address(port: int, pid: int) -> int:
    from ray.util import get_node_ip_address

    host = get_node_ip_address()  # the address `ray start` picked for this node
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            print(f"{host}:{port}")
            return 0
        except OSError:
            pass
        if not alive(pid):
            say(f"error: `ray start` exited before its GCS answered on {host}:{port}")
            return 1
        if time.monotonic() > deadline:
            say(f"error: no Ray GCS on {host}:{port} after {TIMEOUT_S:.0f} s")
            return 1
        time.sleep(0.2)


def slurm_node(node: dict) -> str:
    """The SLURM node a Ray node runs on; Ray forgets a node's resources once it has left."""
    names = [k[len(NODE_KEY) :] for k in node.get("Resources", {}) if k.startswith(NODE_KEY)]
    return names[0] if names else f"left:{node['NodeID'][:8]}"


def nodes(addr: str, want: int) -> int:
    import ray

    ray.init(address=addr, logging_level="ERROR", log_to_driver=False)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        up = [n for n in ray.nodes() if n["Alive"]]
        if len(up) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for n in up:
        res = n["Resources"]
        say(
            f"ray node {n['NodeID'][:12]} on SLURM node {slurm_node(n)}: "
            f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
        )
    if len(up) < want:
        say(f"error: {len(up)} of {want} Ray nodes alive after {TIMEOUT_S:.0f} s")
        return 1
    say(f"Ray cluster ready: {len(up)} nodes")
    return 0


def report(addr: str) -> int:
    import ray

    ray.init(address=addr, logging_level="ERROR", log_to_driver=False)
    where = {n["NodeID"]: slurm_node(n) for n in ray.nodes()}
    try:  # Ray's own record of every actor (dead ones too); a private API, so best effort
        actors = ray._private.state.actors().values()
    except Exception as err:  # noqa: BLE001
        say(f"trial placement unknown: {err}")
        return 0
    counts: dict[str, int] = {}
    for a in actors:
        node = where.get(a.get("Address", {}).get("NodeID", ""), "?")
        counts[node] = counts.get(node, 0) + 1
    say("trial actors per SLURM node: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "address":
        return address(int(argv[1]), int(argv[2]))
    if len(argv) == 3 and argv[0] == "nodes":
        return nodes(argv[1], int(argv[2]))
    if len(argv) == 2 and argv[0] == "report":
        return report(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
