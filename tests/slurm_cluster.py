"""Start and stop a real one-machine SLURM cluster for tests (stdlib only).

The cluster has one slurmctld and two slurmd daemons on this machine (nodes
``n1`` and ``n2``, both ``NodeAddr=127.0.0.1``), each node with fake GPUs
(``Gres=gpu:2``; the gres ``File=`` entries are symlinks to /dev/null under the
base dir).  Everything (config, state, spool, logs, pid files) lives under one
base directory; clients find the cluster through ``SLURM_CONF`` only, so
/etc/slurm is never touched.  Daemons run as root (slurmd must).

Usage from Python::

    cluster = start(Path("/tmp/slurmtest-x"))
    job = submit("#!/bin/bash\\necho hi\\n", cluster.env, cwd=some_dir)
    wait_job(job, cluster.env, timeout=30)
    stop(cluster.base)

From the shell::

    python tests/slurm_cluster.py start|stop|status BASE_DIR

Keep BASE_DIR short (under ~50 characters): slurmd puts Unix sockets in its
spool dir below it and socket paths are limited to 107 bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

__all__ = [
    "Cluster",
    "ensure_installed",
    "start",
    "stop",
    "status",
    "submit",
    "wait_job",
    "job_state",
    "client_env",
    "NODES",
    "PARTITIONS",
]

NODES = ("n1", "n2")
PARTITIONS = ("debug", "gpu")  # "debug" is the default partition
MARKER = "SWEEPS_SLURM_BASE"  # env var set on our daemons (and inherited by slurmstepd)
STATE_FILE = "cluster.json"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_PIDFILE = Path("/run/munge/munged.pid")
# Client env vars a surrounding (real) SLURM job would leak into our clients.
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_", "SCANCEL_")


@dataclasses.dataclass
class Cluster:
    base: Path
    conf: Path  # slurm.conf
    env: dict  # merge into os.environ for clients: {"SLURM_CONF": ...}
    nodes: list
    partitions: list  # partitions[0] is the default
    default_partition: str
    ports: dict  # {"slurmctld": P, "n1": P, "n2": P}
    cpus_per_node: int
    gpus_per_node: int
    mem_mb: int

    def submit(self, script_or_args, **kw) -> str:
        return submit(script_or_args, self.env, **kw)

    def wait_job(self, job_id, timeout: float = 60.0):
        return wait_job(job_id, self.env, timeout)

    def client_env(self) -> dict:
        return client_env(self.env)


# --------------------------------------------------------------------------
# small helpers


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(f"  | {x}" for x in lines[-n:]) or f"  (empty log {path})"


def _fail(msg: str, *logs: Path) -> RuntimeError:
    """A RuntimeError: `msg` (plus the last fatal line of the logs, if any) on the
    first line, then the tails of the logs."""
    for log in logs:
        try:
            fatal = [x for x in Path(log).read_text(errors="replace").splitlines() if "fatal:" in x]
        except OSError:
            continue
        if fatal:
            msg = f"{msg}: {fatal[-1].split('fatal:', 1)[1].strip()}"
            break
    parts = [msg]
    for log in logs:
        parts.append(f"--- last lines of {log}:\n{_log_tail(log)}")
    return RuntimeError("\n".join(parts))


def client_env(env: dict | None = None) -> dict:
    """os.environ without inherited SLURM client variables, plus ``env``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
    out.update(env or {})
    return out


def _run(cmd, env=None, check=True, timeout=30, **kw) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"command timed out after {timeout}s: {' '.join(map(str, cmd))}"
        ) from None
    if check and cp.returncode != 0:
        raise RuntimeError(
            f"command failed (rc={cp.returncode}): {' '.join(map(str, cmd))}: "
            f"{(cp.stderr or cp.stdout).strip()[-2000:]}"
        )
    return cp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _environ_of(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def _read_pid(path: Path) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _port_free(port: int) -> bool:
    for host in ("0.0.0.0", "127.0.0.1"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def _pick_ports(base: Path, n: int) -> list[int]:
    """n consecutive free ports, derived from the base path (so parallel clusters
    in different base dirs do not collide), in 20000..29999."""
    start = 20000 + (zlib.crc32(str(base).encode()) % 1900) * 5
    for i in range(200):
        first = 20000 + (start - 20000 + i * 5) % 9990
        ports = list(range(first, first + n))
        if all(_port_free(p) for p in ports):
            return ports
    raise RuntimeError("no free TCP ports found for slurmctld/slurmd in 20000-29999")


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


# --------------------------------------------------------------------------
# installation and munge


def ensure_installed() -> None:
    """Install slurm-wlm (with munge) through apt if sbatch/slurmctld are missing."""
    needed = ("sbatch", "squeue", "slurmctld", "slurmd", "munged")
    if all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in needed):
        return
    if os.geteuid() != 0:
        raise RuntimeError(
            "SLURM is not installed and installing it needs root (apt-get install slurm-wlm)"
        )
    if not shutil.which("apt-get"):
        raise RuntimeError("SLURM is not installed and apt-get is not available to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd, tmo in (
        (["apt-get", "update", "-qq"], 300),
        (["apt-get", "install", "-y", "-qq", "--no-install-recommends", "slurm-wlm"], 600),
    ):
        cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=tmo)
        if cp.returncode != 0:
            tail = "\n".join((cp.stdout + cp.stderr).splitlines()[-15:])
            raise RuntimeError(f"{' '.join(cmd)} failed (rc={cp.returncode})\n{tail}")
    missing = [b for b in needed if not (shutil.which(b) or Path(f"/usr/sbin/{b}").exists())]
    if missing:
        raise RuntimeError(f"slurm-wlm installed but still missing: {missing}")


def _munge_works() -> bool:
    if not shutil.which("munge"):
        return False
    try:
        cp = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return cp.returncode == 0


def _ensure_munged(base: Path) -> None:
    """Start munged unless one answers already; record in base/munged.started if we did."""
    if _munge_works():
        return
    import grp
    import pwd

    try:
        uid = pwd.getpwnam("munge").pw_uid
        gid = grp.getgrnam("munge").gr_gid
    except KeyError:
        raise RuntimeError(
            "user 'munge' does not exist (is the munge package installed?)"
        ) from None
    for d, mode in (
        ("/run/munge", 0o755),
        ("/var/log/munge", 0o700),
        ("/var/lib/munge", 0o711),
        ("/etc/munge", 0o700),
    ):
        os.makedirs(d, exist_ok=True)
        os.chown(d, uid, gid)
        os.chmod(d, mode)
    if not MUNGE_KEY.exists():
        MUNGE_KEY.write_bytes(os.urandom(128))
    os.chown(MUNGE_KEY, uid, gid)
    os.chmod(MUNGE_KEY, 0o400)
    munged = shutil.which("munged") or "/usr/sbin/munged"
    cp = subprocess.run(
        ["runuser", "-u", "munge", "--", munged],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    if cp.returncode != 0:
        raise _fail(
            f"munged failed to start (rc={cp.returncode}): {cp.stderr.strip()}",
            Path("/var/log/munge/munged.log"),
        )
    deadline = time.monotonic() + 10
    while not _munge_works():
        if time.monotonic() > deadline:
            raise _fail(
                "munged started but `munge -n` still fails after 10 s",
                Path("/var/log/munge/munged.log"),
            )
        time.sleep(0.1)
    (base / "munged.started").write_text(str(_read_pid(MUNGE_PIDFILE) or ""))


# --------------------------------------------------------------------------
# config


def _hardware() -> dict:
    """CPU/memory line from `slurmd -C`."""
    slurmd = shutil.which("slurmd") or "/usr/sbin/slurmd"
    cp = _run([slurmd, "-C"], timeout=30)
    hw = dict(re.findall(r"(\w+)=(\S+)", cp.stdout.splitlines()[0]))
    return hw


def _write_config(
    base: Path,
    ports: list[int],
    cpus: int,
    mem_mb: int,
    gpus: int,
    cred_expire: int,
    first_job_id: int,
) -> Path:
    host = _short_hostname()
    for sub in ("state", "log", "run", "dev", *(f"spool/{n}" for n in NODES)):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(gpus):
        link = base / "dev" / f"nvidia{i}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    ctld_port, *node_ports = ports
    gres = f"gpu:{gpus}" if gpus else None
    node_lines = []
    for name, port in zip(NODES, node_ports):
        line = (
            f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={host} Port={port} "
            f"CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 "
            f"RealMemory={mem_mb} State=UNKNOWN"
        )
        if gres:
            line += f" Gres={gres}"
        node_lines.append(line)
    nodes = ",".join(NODES)
    conf = f"""\
# generated by tests/slurm_cluster.py for a one-machine test cluster
ClusterName=sweepstest
FirstJobId={first_job_id}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# also the delay before a requeued job may start again (default 120 s)
AuthInfo=cred_expire={cred_expire}
MpiDefault=none
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool/%n
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd-%n.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# the node lines below (more CPUs/memory than real is fine) win over what slurmd sees
SlurmdParameters=config_overrides
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
KillWait=2
MinJobAge=300
InactiveLimit=0
MailProg=/bin/true
Waittime=0
SlurmdTimeout=60
GresTypes=gpu
{chr(10).join(node_lines)}
PartitionName={PARTITIONS[0]} Nodes={nodes} Default=YES MaxTime=INFINITE State=UP
PartitionName={PARTITIONS[1]} Nodes={nodes} MaxTime=INFINITE State=UP
"""
    (base / "slurm.conf").write_text(conf)
    gres_lines = ["# fake GPUs: symlinks to /dev/null"]
    if gpus:
        last = gpus - 1
        files = f"{base}/dev/nvidia[0-{last}]" if gpus > 1 else f"{base}/dev/nvidia0"
        gres_lines.append(f"Name=gpu File={files}")
    (base / "gres.conf").write_text("\n".join(gres_lines) + "\n")
    # only read by cgroup plugins (unused with proctrack/pgid + task/none); harmless
    (base / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")
    return base / "slurm.conf"


# --------------------------------------------------------------------------
# start / stop / status


def _daemon_env(base: Path, conf: Path) -> dict:
    env = client_env({"SLURM_CONF": str(conf), MARKER: str(base)})
    return env


_SUPERVISORS: dict = {}  # pid -> Popen of supervisors started by this process (to reap them)


def _supervise(base: Path) -> int:
    """Body of the supervisor process (``slurm_cluster.py _supervise BASE``).

    It starts slurmctld and the slurmd daemons in the foreground (-D) as its
    children and, being a child subreaper, adopts what they orphan (each
    slurmstepd, jobs' daemonized processes) and reaps everything until no child
    is left.  Without it every finished job leaves a zombie slurmstepd where PID 1
    does not reap, as in this container.  Exits are logged to log/supervisor.log.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # stop() ends the daemons; we end after them
    specs = json.loads((base / "run" / "daemons.json").read_text())
    with open(base / "log" / "supervisor.log", "a", buffering=1) as log:
        names = {}
        for name, argv in specs:
            with open(base / "log" / f"{name}.stderr", "ab") as err:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
                )
            names[proc.pid] = name
            log.write(f"started {name} pid={proc.pid}\n")
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid in names:
                log.write(f"exited {names[pid]} pid={pid} rc={os.waitstatus_to_exitcode(status)}\n")
        log.write("supervisor done\n")
    return 0


def _start_supervisor(base: Path, specs: list, env: dict) -> subprocess.Popen:
    (base / "run" / "daemons.json").write_text(json.dumps(specs))
    with open(base / "log" / "supervisor.stderr", "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_supervise", str(base)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    _SUPERVISORS[proc.pid] = proc
    (base / "run" / "supervisor.pid").write_text(f"{proc.pid}\n")
    return proc


def _exited_daemons(base: Path) -> list[str]:
    try:
        text = (base / "log" / "supervisor.log").read_text()
    except OSError:
        return []
    return [line.split()[1] for line in text.splitlines() if line.startswith("exited ")]


def _node_states(env: dict) -> dict:
    cp = _run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, check=False, timeout=15)
    if cp.returncode != 0:
        return {}
    out = {}
    for line in cp.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def start(
    base: Path,
    *,
    cpus_per_node: int | None = None,
    mem_mb: int = 16000,
    gpus_per_node: int = 2,
    ports: list[int] | None = None,
    requeue_delay: int = 5,
    first_job_id: int = 1,
    timeout: float = 60.0,
) -> Cluster:
    """Write the config under `base` and start munged (if needed), slurmctld and
    slurmd for n1 and n2; return once sinfo shows both nodes idle.

    cpus_per_node defaults to the CPU count `slurmd -C` reports (at least 2);
    larger values are accepted (SlurmdParameters=config_overrides) and let more
    1-CPU jobs run at once.  mem_mb is each node's RealMemory (memory is not a
    consumable resource with CR_Core, so it only bounds --mem requests).
    requeue_delay sets AuthInfo=cred_expire: the seconds a requeued job waits
    before it may start again (Slurm's default is 120 s). first_job_id keeps the job ids (and
    so the Ray ports and temp dirs they name) of two clusters on one machine apart.
    Previous state under `base` is cleared (a running cluster there is stopped).
    """
    base = Path(base).resolve()
    base.mkdir(parents=True, exist_ok=True)
    if len(str(base)) > 60:
        raise RuntimeError(f"base dir too long for slurmd's Unix sockets (<= 60 chars): {base}")
    ensure_installed()
    if os.geteuid() != 0:
        raise RuntimeError("starting slurmd needs root")
    stop(base)  # a cluster left running in this base
    for sub in ("state", "spool", "run"):
        shutil.rmtree(base / sub, ignore_errors=True)
    for log in (base / "log").glob("*"):
        log.unlink()

    hw = _hardware()
    cpus = cpus_per_node or max(int(hw.get("CPUs", 1)), 2)
    if ports:
        ports = list(ports)
        busy = [p for p in ports if not _port_free(p)]
        if busy:
            raise RuntimeError(f"TCP ports already in use, cannot start SLURM: {busy}")
    else:
        ports = _pick_ports(base, 1 + len(NODES))
    conf = _write_config(base, ports, cpus, mem_mb, gpus_per_node, requeue_delay, first_job_id)
    env = {"SLURM_CONF": str(conf)}
    cluster = Cluster(
        base=base,
        conf=conf,
        env=env,
        nodes=list(NODES),
        partitions=list(PARTITIONS),
        default_partition=PARTITIONS[0],
        ports={"slurmctld": ports[0], **dict(zip(NODES, ports[1:]))},
        cpus_per_node=cpus,
        gpus_per_node=gpus_per_node,
        mem_mb=mem_mb,
    )
    (base / STATE_FILE).write_text(
        json.dumps({**dataclasses.asdict(cluster), "base": str(base), "conf": str(conf)}, indent=1)
    )

    log = base / "log"
    denv = _daemon_env(base, conf)
    try:
        _ensure_munged(base)
        slurmctld = shutil.which("slurmctld") or "/usr/sbin/slurmctld"
        slurmd = shutil.which("slurmd") or "/usr/sbin/slurmd"
        specs = [["slurmctld", [slurmctld, "-D", "-f", str(conf), "-c", "-i"]]]
        specs += [[f"slurmd-{n}", [slurmd, "-D", "-f", str(conf), "-N", n]] for n in NODES]
        sup = _start_supervisor(base, specs, denv)

        deadline = time.monotonic() + timeout
        states: dict = {}
        while True:
            states = _node_states(env)
            if all(states.get(n) == "idle" for n in NODES):
                break
            dead = _exited_daemons(base)
            if dead:
                name = dead[0]
                raise _fail(
                    f"{name} exited during startup", log / f"{name}.stderr", log / f"{name}.log"
                )
            if sup.poll() is not None:
                raise _fail(
                    f"the supervisor process exited (rc={sup.returncode})",
                    log / "supervisor.stderr",
                )
            if time.monotonic() > deadline:
                culprit = next((n for n in NODES if states.get(n) != "idle"), None)
                logs = [log / "slurmctld.log"] + (
                    [log / f"slurmd-{culprit}.log"] if culprit else []
                )
                raise _fail(
                    f"SLURM nodes not idle after {timeout:.0f} s: {states or 'sinfo failed'}", *logs
                )
            time.sleep(0.2)
    except BaseException:
        stop(base)
        raise
    return cluster


def _procs_of(base: Path) -> list[int]:
    """PIDs of processes belonging to the cluster in `base`: our daemons and
    their slurmstepd (marker env var) and job processes (SLURM_CONF of this
    cluster together with SLURM_JOB_ID).  Never this process or its ancestors."""
    conf = str(base / "slurm.conf")
    skip = {os.getpid()}
    pid = os.getpid()
    while pid > 1:  # ancestors
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        skip.add(pid)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        env = _environ_of(int(entry))
        if env.get(MARKER) == str(base) or (
            env.get("SLURM_CONF") == conf and "SLURM_JOB_ID" in env
        ):
            found.append(int(entry))
    return found


def _signal_all(pids, sig) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_dead(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _pid_alive(p)]
    return alive


def stop(base: Path, *, stop_munge: bool = False) -> None:
    """Cancel all jobs, stop slurmd/slurmctld of the cluster in `base` (SIGTERM,
    then SIGKILL), and kill any process left from its jobs.  Safe to call twice
    or after a failed start.  munged is left running (other clusters may use it)
    unless stop_munge=True and this base started it."""
    base = Path(base).resolve()
    conf = base / "slurm.conf"
    run = base / "run"
    pidfiles = [run / "slurmctld.pid", *(run / f"slurmd-{n}.pid" for n in NODES)]
    all_pidfiles = [*pidfiles, run / "supervisor.pid"]
    ctld = _read_pid(pidfiles[0])
    if conf.exists() and ctld and _pid_alive(ctld):
        env = client_env({"SLURM_CONF": str(conf)})
        _run(["scancel", "--full", "--user", str(os.geteuid())], env=env, check=False, timeout=10)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            cp = _run(["squeue", "-h", "-o", "%i"], env=env, check=False, timeout=10)
            if cp.returncode != 0 or not cp.stdout.strip():
                break
            time.sleep(0.2)
    daemons = []
    for pf in pidfiles:
        pid = _read_pid(pf)
        if pid and _pid_alive(pid) and _environ_of(pid).get(MARKER) == str(base):
            daemons.append(pid)
    sup = _read_pid(run / "supervisor.pid")
    if not (sup and _environ_of(sup).get(MARKER) == str(base)):
        sup = None
    others = [p for p in _procs_of(base) if p != sup]
    daemons = sorted(
        set(daemons) | {p for p in others if "slurmd" in _cmdline(p) or "slurmctld" in _cmdline(p)}
    )
    _signal_all(daemons, signal.SIGTERM)
    left = _wait_dead(daemons, 10)
    _signal_all(left, signal.SIGKILL)
    _wait_dead(left, 5)
    # slurmstepd and job processes outlive slurmd; kill them too
    rest = [p for p in _procs_of(base) if p != sup]
    if rest:
        _signal_all(rest, signal.SIGKILL)
        _wait_dead(rest, 5)
    # the supervisor exits by itself once it has reaped all of them
    if sup:
        if _wait_dead([sup], 5):
            _signal_all([sup], signal.SIGKILL)
            _wait_dead([sup], 5)
        proc = _SUPERVISORS.pop(sup, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
    for pf in all_pidfiles:
        with contextlib.suppress(OSError):
            pf.unlink()
    started = base / "munged.started"
    if stop_munge and started.exists():
        pid = _read_pid(started) or _read_pid(MUNGE_PIDFILE)
        if pid and _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            _wait_dead([pid], 5)
        started.unlink()


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def status(base: Path) -> dict:
    """Which daemons of the cluster in `base` are alive, and the node states."""
    base = Path(base).resolve()
    out = {"base": str(base), "daemons": {}, "nodes": {}}
    names = {
        "slurmctld": base / "run/slurmctld.pid",
        **{f"slurmd-{n}": base / f"run/slurmd-{n}.pid" for n in NODES},
    }
    for name, pf in names.items():
        pid = _read_pid(pf)
        out["daemons"][name] = pid if pid and _pid_alive(pid) else None
    if (base / "slurm.conf").exists() and out["daemons"]["slurmctld"]:
        out["nodes"] = _node_states(client_env({"SLURM_CONF": str(base / "slurm.conf")}))
    with contextlib.suppress(OSError, ValueError):
        out["cluster"] = json.loads((base / STATE_FILE).read_text())
    return out


# --------------------------------------------------------------------------
# job helpers


def submit(script_or_args, env: dict, *, args=(), cwd=None, timeout: float = 30) -> str:
    """Submit a job, return its id (a string).

    script_or_args: a str is the batch script text (fed to sbatch on stdin; a
    missing ``#!`` line gets ``#!/bin/bash``), `args` are extra sbatch options;
    a list/tuple is the full sbatch argument list (e.g. ["--wrap", "hostname"]).
    `env` is merged over a cleaned os.environ (see client_env)."""
    full_env = client_env(env)
    if isinstance(script_or_args, str):
        script = (
            script_or_args if script_or_args.startswith("#!") else "#!/bin/bash\n" + script_or_args
        )
        cmd = ["sbatch", "--parsable", *args]
        cp = _run(cmd, env=full_env, input=script, cwd=cwd, timeout=timeout)
    else:
        cmd = ["sbatch", "--parsable", *args, *script_or_args]
        cp = _run(cmd, env=full_env, cwd=cwd, timeout=timeout)
    job_id = cp.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise RuntimeError(f"sbatch gave no job id: {cp.stdout!r} {cp.stderr!r}")
    return job_id


_TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
    "SPECIAL_EXIT",
}


def job_state(job_id, env: dict) -> dict | None:
    """`scontrol show job ID` as a dict (JobState, ExitCode, NodeList, Restarts,
    ...), or None once the controller has forgotten the job (MinJobAge=300 s)."""
    cp = _run(["scontrol", "show", "job", "-o", str(job_id)], env=client_env(env), check=False)
    if cp.returncode != 0:
        return None
    return dict(re.findall(r"(\w+)=(\S*)", cp.stdout))


def wait_job(job_id, env: dict, timeout: float = 60.0, poll: float = 0.5) -> str | None:
    """Poll `squeue -h -j ID` every `poll` s until the job has left the queue
    (finished, failed or cancelled; not merely requeued).  Raise RuntimeError on
    timeout.  Return the final JobState from scontrol, if still known."""
    full_env = client_env(env)
    deadline = time.monotonic() + timeout
    while True:
        cp = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], env=full_env, check=False)
        states = cp.stdout.split()
        gone = ("Invalid job id" in cp.stderr) or (
            cp.returncode == 0 and all(s in _TERMINAL for s in states)
        )
        if gone:
            info = job_state(job_id, env)
            return info.get("JobState") if info else None
        if cp.returncode != 0 and "Invalid job id" not in cp.stderr:
            raise RuntimeError(f"squeue failed for job {job_id}: {cp.stderr.strip()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"job {job_id} still in queue after {timeout:.0f} s (state {states})"
            )
        time.sleep(poll)


# --------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "_supervise":
        return _supervise(Path(argv[1]))
    if len(argv) != 2 or argv[0] not in ("start", "stop", "status"):
        print("usage: python tests/slurm_cluster.py start|stop|status BASE_DIR", file=sys.stderr)
        return 2
    cmd, base = argv[0], Path(argv[1])
    try:
        if cmd == "start":
            t0 = time.monotonic()
            c = start(base)
            print(
                f"cluster up in {time.monotonic() - t0:.1f} s: nodes {c.nodes}, partitions "
                f"{c.partitions}, ports {c.ports}"
            )
            print(f"export SLURM_CONF={c.conf}")
        elif cmd == "stop":
            stop(base)
            print("stopped")
        else:
            print(json.dumps(status(base), indent=1))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
