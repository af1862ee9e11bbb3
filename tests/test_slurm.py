"""`sweep submit`: sweeps as SLURM jobs with a Ray cluster over their nodes.

The slurm tests submit tiny sweeps (digits, 4 trials) through `sweep submit` to the real
one-machine cluster of tests/conftest.py, as a user would, then read what a user would: the
job's state and log, results.csv and the MLflow runs. The other tests need no cluster: the
rendered scripts' key lines, bash -n and shellcheck, refused input, the ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from sweeps.cli import main
from sweeps.engine.hold import ENV as HOLD_ENV
from sweeps.slurm import submit as sub

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster as sc  # noqa: E402
from sweeping import Hold, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(Path(sys.executable).with_name("sweep"))
CONFIG = """\
data: {source: digits, seed: 0}
model: {loss: softmax}
train: {epochs: EPOCHS, optimizer: momentum, schedule: constant, batch_size: 64}
search: {type: random, num_samples: 4, metric: val_acc, seed: 0}
space:
  train.lr: {loguniform: [0.01, 0.3]}
resources: {cpu: 1, gpu: 0}
"""
slurm = pytest.mark.slurm


# ---------------------------------------------------------------- helpers
SUBMITTED: list[tuple[sc.Cluster, str]] = []  # the sweeps' jobs a test submitted


@pytest.fixture(autouse=True)
def cancel_what_a_test_left():
    """A test that failed may leave its sweep's job running: its Ray loads the machine and
    the next test's no_ray_left would find it. Cancel it and wait until it has left."""
    yield
    while SUBMITTED:
        cluster, job = SUBMITTED.pop()
        env = cluster.client_env()
        subprocess.run(["scancel", job], env=env, capture_output=True, timeout=20)
        with contextlib.suppress(RuntimeError):  # the next test reports what is left
            cluster.wait_job(job, timeout=60)


@pytest.fixture(scope="module")
def ray_tmp():
    """A short temp root of our own for the jobs' Ray (another test cluster may run beside)."""
    path = Path(tempfile.mkdtemp(prefix="sw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def profile(ray_tmp):
    """configs/clusters/local.yaml with Ray's temp dirs under ray_tmp."""
    text = (ROOT / "configs/clusters/local.yaml").read_text()
    path = ray_tmp / "local.yaml"
    path.write_text(re.sub(r"(?m)^ray_tmp: .*$", f"ray_tmp: {ray_tmp}", text))
    return path


def submit(
    cluster,
    profile: Path,
    workdir: Path,
    name: str,
    *args: str,
    epochs: int = 3,
    hold: Hold | None = None,
) -> str:
    """`sweep submit` in workdir as a user would; the job id. With ``hold``, the job's driver
    stops at its points (sbatch passes the environment on)."""
    (workdir / "sweep.yaml").write_text(CONFIG.replace("EPOCHS", str(epochs)))
    env = cluster.client_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    if hold:
        env[HOLD_ENV] = str(hold.folder)
    cmd = [SWEEP, "submit", "sweep.yaml", "--profile", str(profile), "--name", name, *args]
    cp = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    job = re.search(r"submitted job (\d+)", cp.stdout).group(1)
    SUBMITTED.append((cluster, job))
    return job


def log_of(workdir: Path, name: str, job: str) -> str:
    path = workdir / "runs" / name / f"slurm-{job}.out"
    return path.read_text(errors="replace") if path.exists() else f"(no log {path})"


def wait(cluster, job: str, workdir: Path, name: str, timeout: float = 150) -> str:
    """The job's final state once it left the queue; the log's tail if it does not."""
    try:
        return cluster.wait_job(job, timeout=timeout)
    except RuntimeError as err:
        raise AssertionError(f"{err}\n{log_of(workdir, name, job)[-3000:]}") from None


def squeue(cluster, name: str) -> list[str]:
    cp = subprocess.run(
        ["squeue", "-h", "-n", f"sweep-{name}", "-o", "%i %T"],
        env=cluster.client_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    return cp.stdout.split("\n")[:-1]


def check_sweep(workdir: Path, name: str, trials: int = 4) -> pd.DataFrame:
    """results.csv lists every trial completed; MLflow holds one parent run, one child run
    per trial and one refit run (search.refit), none RUNNING, each curve one point per epoch."""
    from mlflow.tracking import MlflowClient

    table = pd.read_csv(workdir / "runs" / name / "results.csv")
    assert sorted(table["status"]) == ["completed"] * trials, table
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    refits = [r for r in children if r.data.tags.get("sweep.role") == "refit"]
    assert len(refits) == 1  # the chosen config, retrained on train+validation
    trial_ids = [r.data.tags["sweep.trial_id"] for r in children if r not in refits]
    assert sorted(trial_ids) == sorted(table["trial_id"])
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert steps == sorted(set(steps)), steps  # no epoch logged twice
    return table


def ray_processes() -> dict[int, tuple[str, bytes]]:
    """Every process that a job of ours started for Ray: pid -> (its SWEEPS_RAY_TAG, the
    node's temp dir; its title, such as b"ray::ImplicitFunc" for a trial actor)."""
    found = {}
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            tags = [v for v in env.read_bytes().split(b"\0") if v.startswith(b"SWEEPS_RAY_TAG=")]
            title = (env.parent / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if tags:
            found[int(env.parent.name)] = (tags[0].split(b"=", 1)[1].decode(), title)
    return found


def no_ray_left(ray_tmp: Path) -> None:
    """Every job cleaned up after itself: no Ray process tagged with our temp root, no dir."""
    tagged = [pid for pid, (tag, _) in ray_processes().items() if tag.startswith(f"{ray_tmp}/")]
    assert tagged == [], f"Ray processes left: {tagged}"
    assert [p.name for p in ray_tmp.glob("r*")] == []


def trial_actors(tag: str) -> list[int]:
    """The pids of the trial actors of the Ray node whose temp dir is tag: Ray workers titled
    `ray::ImplicitFunc` (Tune's actor class of a function trainable)."""
    return [
        pid
        for pid, (tag_, title) in ray_processes().items()
        if tag_ == tag and title.startswith(b"ray::ImplicitFunc")
    ]


def freeze_trials(tag: str) -> None:
    """SIGSTOP the node's trial actors as soon as there is one: the sweep cannot end while it
    is frozen, so a signal or a cancel sent next finds it mid-trial."""
    for pid in wait_for(lambda: trial_actors(tag), f"a trial running under {tag}", 120):
        os.kill(pid, signal.SIGSTOP)


def events(log: str, what: str) -> list[str]:
    return [line for line in log.splitlines() if what in line]


# ---------------------------------------------------------------- single job
@pytest.fixture(scope="module")
def two_jobs(slurm_cluster, profile, tmp_path_factory):
    """Two single-job sweeps submitted at once (same machine, maybe the same node), each held
    before its report until both got there: they ran at the same time."""
    names = ["pair0", "pair1"]
    dirs = [tmp_path_factory.mktemp(name) for name in names]
    hold = Hold(tmp_path_factory.mktemp("hold"), "report")
    jobs = [submit(slurm_cluster, profile, d, n, hold=hold) for d, n in zip(dirs, names)]
    hold.reached("report", 2)
    hold.let_go("report")
    states = [wait(slurm_cluster, *job) for job in zip(jobs, dirs, names)]
    logs = [log_of(d, name, j) for j, d, name in zip(jobs, dirs, names)]
    return list(zip(jobs, dirs, names, states, logs))


@slurm
def test_single_job_sweep_completes(two_jobs):
    job, workdir, name, state, log = two_jobs[0]
    assert state == "COMPLETED", log[-3000:]
    check_sweep(workdir, name)
    assert events(log, "the sweep driver exited with 0")


@slurm
def test_two_jobs_at_once_each_use_their_own_ray(two_jobs, ray_tmp):
    heads, temps, spans = [], [], []
    for job, workdir, name, state, log in two_jobs:
        assert state == "COMPLETED", log[-3000:]
        check_sweep(workdir, name)
        (up,) = events(log, "Ray head up at")
        heads.append(int(up.rsplit(":", 1)[1]))
        # The formula's slot, or the next free one after the slots the log says were taken
        # (other tests' jobs run on this machine at the same time).
        first = ray_ports(int(job))["gcs"]
        tried = [20000 + (first - 20000 + 100 * i) % 12700 for i in range(127)]
        taken = [int(p) for p in re.findall(r"ports (\d+)-\d+ are in use or claimed here", log)]
        assert taken == tried[: len(taken)] and heads[-1] == tried[len(taken)], (first, taken)
        temps.append(re.search(r"temp dir (\S+)", events(log, "starting a Ray head")[0])[1])
        times = re.findall(r"^\[sweeps (\d\d:\d\d:\d\d)\]", log, re.M)
        spans.append((times[0], times[-1]))
    assert heads[0] != heads[1] and all(20000 <= p < 32700 for p in heads)
    assert temps[0] != temps[1]
    assert max(s for s, _ in spans) <= min(e for _, e in spans), f"no overlap: {spans}"
    no_ray_left(ray_tmp)


@slurm
def test_two_node_job_runs_trials_on_both_nodes(slurm_cluster, profile, tmp_path, ray_tmp):
    job = submit(slurm_cluster, profile, tmp_path, "two", "--nodes", "2")
    state, log = wait(slurm_cluster, job, tmp_path, "two"), log_of(tmp_path, "two", job)
    assert state == "COMPLETED", log[-3000:]
    check_sweep(tmp_path, "two")
    assert events(log, "Ray cluster ready: 2 nodes"), log[-3000:]
    for node in ("n1", "n2"):  # each SLURM node's Ray, with the CPUs SLURM gave it
        assert events(log, f"on SLURM node {node}: 2 CPU, 0 GPU"), log[-3000:]
    (placed,) = events(log, "trial actors per SLURM node:")
    counts = dict(re.findall(r"(\S+)=(\d+)", placed))
    assert set(counts) == {"n1", "n2"} and all(int(n) >= 1 for n in counts.values()), placed
    no_ray_left(ray_tmp)


# ---------------------------------------------------------------- workers mode
@slurm
def test_workers_join_and_a_cancelled_worker_costs_no_trial(
    slurm_cluster, profile, tmp_path, ray_tmp
):
    args = ["--mode", "workers", "--workers", "2", "--gpus-per-node", "1", "--partition", "gpu"]
    head = submit(slurm_cluster, profile, tmp_path, "wk", *args, epochs=800)
    folder = tmp_path / "runs" / "wk"
    wait_for(
        lambda: len([j for j in squeue(slurm_cluster, "wk") if "_" in j and "RUNNING" in j]) == 2,
        "two running worker jobs",
        60,
        poll=0.5,
    )
    # Worker 1's trials are frozen (SIGSTOP) the moment they start, then the worker is
    # cancelled: its trials are mid-way when it goes, however fast the machine trains (800
    # epochs take 6 s on an idle one: a plain cancel came after they had finished).
    (first,) = [j.split()[0] for j in squeue(slurm_cluster, "wk") if j.split()[0].endswith("_1")]
    (log1,) = wait_for(lambda: list(folder.glob("worker-*_1.out")), "worker 1's log", 30)
    (tag,) = wait_for(lambda: re.findall(r"temp dir (\S+)", log1.read_text()), "its Ray", 60)
    freeze_trials(tag)
    subprocess.run(["scancel", first], env=slurm_cluster.client_env(), check=True, timeout=20)

    state, log = wait(slurm_cluster, head, tmp_path, "wk", 300), log_of(tmp_path, "wk", head)
    assert state == "COMPLETED", log[-3000:]
    table = check_sweep(tmp_path, "wk")
    hit = set(re.findall(r"Trial task failed for trial trainable_(\w+)", log))
    assert hit, "the cancelled worker ran no trial:\n" + log[-3000:]
    assert hit <= set(table["trial_id"])  # and each of them was retried to completion
    (placed,) = events(log, "trial actors per SLURM node:")  # Ray's record: a node that left
    assert re.search(r"left:\w+=[1-9]", placed), placed  # (the cancelled worker) ran trials
    assert "--set search.max_failures=3" in (folder / "job.sbatch").read_text()  # submit's
    for n in (1, 2):
        (wlog,) = folder.glob(f"worker-*_{n}.out")
        assert "starting a Ray worker" in wlog.read_text(), wlog.read_text()[-2000:]
    # the head cancelled what was left of the array; nothing of this sweep stays queued
    wait_for(lambda: squeue(slurm_cluster, "wk") == [], "the worker jobs to end", 30, poll=0.5)
    assert events(log, "cancelling the worker jobs")
    assert slurm_cluster.wait_job(first, timeout=5) == "CANCELLED"
    no_ray_left(ray_tmp)


# ---------------------------------------------------------------- the pre-timeout signal
@slurm
def test_pre_timeout_signal_requeues_and_resumes(slurm_cluster, profile, tmp_path, ray_tmp):
    job = submit(slurm_cluster, profile, tmp_path, "rq", epochs=600)

    # Its trials are frozen as soon as they start: the sweep is mid-trial when the signal
    # comes, however fast this machine trains (600 epochs took 3 s on an idle one, and only
    # the refit and the report were left to interrupt).
    head_log = wait_for(
        lambda: re.search(r"starting a Ray head .* temp dir (\S+)", log_of(tmp_path, "rq", job)),
        "the head",
        90,
    )
    freeze_trials(head_log[1])
    subprocess.run(
        ["scancel", "--signal=USR1", "--batch", job],
        env=slurm_cluster.client_env(),
        check=True,
        timeout=20,
    )
    state, log = wait(slurm_cluster, job, tmp_path, "rq"), log_of(tmp_path, "rq", job)
    assert state == "COMPLETED", log[-3000:]
    assert sc.job_state(job, slurm_cluster.env)["Restarts"] == "1"
    for said in (
        "got SIGUSR1",
        "the sweep driver exited with 130",
        "requeueing job",
        f"job {job} on",
        "restart 1",
        "the sweep driver exited with 0",
    ):
        assert events(log, said), f"{said!r} not in the log:\n{log[-3000:]}"
    check_sweep(tmp_path, "rq")  # the same runs continued: one parent, one child per trial
    no_ray_left(ray_tmp)


# ---------------------------------------------------------------- the renderer, no cluster
def dry_run(capsys, monkeypatch, tmp_path, *args: str) -> str:
    monkeypatch.chdir(tmp_path)
    assert main(["submit", str(ROOT / "configs/digits_asha.yaml"), "--dry-run", *args]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="session")
def shellcheck() -> str:
    """shellcheck, which `make test` installs through apt when missing: a check that cannot
    run fails rather than skips."""
    path = shutil.which("shellcheck")
    assert path, "shellcheck is not installed: `make test` installs it (apt-get install shellcheck)"
    return path


def _lint_args(profile_name: str, mode: str, count: int) -> list[str]:
    """Options for one profile x mode x node count, on GPU nodes, in a partition that allows
    the job's GPUs (a multi-node job on Discovery needs multigpu)."""
    prof = sub.load_profile(profile_name)
    args = ["--profile", profile_name, "--mode", mode, "--gpus-per-node", "1"]
    args += ["--workers" if mode == "workers" else "--nodes", str(count)]
    gpus = 1 if mode == "workers" else count
    caps = prof.max_gpus_per_job
    if caps.get(prof.partition, gpus) < gpus:
        args += ["--partition", max(caps, key=caps.get)]
    return args


LINT_CASES = [
    (profile.stem, mode, count)
    for profile in sorted(sub.PROFILES.glob("*.yaml"))
    for mode in sub.MODES
    for count in (1, 2)
]


@pytest.mark.parametrize(("profile_name", "mode", "count"), LINT_CASES)
def test_dry_run_scripts_pass_bash_n_and_shellcheck(
    capsys, monkeypatch, tmp_path, shellcheck, profile_name, mode, count
):
    """Every profile x mode x node count: bash -n, and shellcheck both as a user runs it on
    the script alone (-S warning) and following the sourced slurm/ray.sh (-x)."""
    text = dry_run(capsys, monkeypatch, tmp_path, *_lint_args(profile_name, mode, count))
    scripts = {"job.sbatch": text}
    inner = re.search(r"<<'WORKER_JOB'\n(.*?)\nWORKER_JOB\n", text, re.S)
    assert bool(inner) == (mode == "workers")
    if inner:
        scripts["worker.sbatch"] = inner[1] + "\n"
    for name, body in scripts.items():
        path = tmp_path / name
        path.write_text(body)
        for cmd in (
            ["bash", "-n", str(path)],
            [shellcheck, "-S", "warning", str(path)],
            [shellcheck, "-x", str(path)],
        ):
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert cp.returncode == 0, f"{' '.join(cmd)}:\n{cp.stdout}{cp.stderr}\n{body}"
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_shell_side_passes_shellcheck(shellcheck):
    cp = subprocess.run(
        [shellcheck, "-x", str(ROOT / "slurm/ray.sh")], capture_output=True, text=True, timeout=60
    )
    assert cp.returncode == 0, cp.stdout


def test_single_job_script_key_lines(capsys, monkeypatch, tmp_path):
    text = dry_run(
        capsys,
        monkeypatch,
        tmp_path,
        "--profile",
        "local",
        "--nodes",
        "2",
        "--gpus-per-node",
        "1",
        "--time",
        "02:00:00",
        "--set",
        "train.epochs=3",
    )
    lines = text.splitlines()
    for want in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --partition=debug",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@180",
        "#SBATCH --time=02:00:00",
        f"#SBATCH --output={tmp_path}/runs/digits_asha/slurm-%j.out",
        'ray_head --num-cpus="$(slurm_cpus)" --num-gpus="$(slurm_gpus)"',
        "ray_other_nodes --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=2 "
        "--gres=gpu:1 --kill-on-bad-exit=0",
        "ray_wait_nodes 2",
        "unset RAY_AUTH_TOKEN RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
        "export RAY_AUTH_MODE=token"
        f" RAY_AUTH_TOKEN_PATH={tmp_path}/runs/digits_asha/ray-auth-token",
        "sweeps_trap_signals",
    ):
        assert want in lines, want
    (driver,) = [line for line in lines if line.startswith("run_driver")]
    assert driver.startswith(f'run_driver "$PYTHON" -u -m sweeps.cli run {ROOT}/configs/')
    # the config asks for no GPU; on GPU nodes trials share them (2 per GPU in local.yaml)
    assert driver.endswith(
        "--resume --set train.epochs=3 --set resources.gpu=0.5 --set resources.cpu=1"
    )
    assert f"export PYTHON={sys.executable} " in text
    assert lines[-1].startswith("sweeps_finish 3 'cd ")


def test_workers_script_key_lines(capsys, monkeypatch, tmp_path):
    text = dry_run(capsys, monkeypatch, tmp_path, "--profile", "discovery")
    head, worker = text.split("<<'WORKER_JOB'\n")
    for want in (
        "#SBATCH --partition=short",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=8G",
        "ray_head --num-cpus=0 --num-gpus=0",
        "module load cuda/12.1",
        "conda activate sweeps",
        "#SBATCH --signal=B:USR1@180",
        "ray_report",
    ):
        assert want in text.splitlines(), want
    assert "--gres" not in head  # the head job: CPUs only
    for want in (
        "#SBATCH --array=1-4",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --no-requeue",
    ):
        assert want in worker.splitlines(), want
    assert re.search(r"^exec bash \S+/slurm/ray.sh worker \S+/ray-head-address 0$", worker, re.M)
    assert "--set resources.gpu=0.25 --set resources.cpu=2 --set search.max_failures=3" in text


@pytest.mark.parametrize(
    ("profile_uri", "env", "sets", "exported"),
    [
        ("", None, [], "sqlite:///{work}/mlflow.db"),
        ("p/profile.db", None, [], "sqlite:///{work}/p/profile.db"),
        ("p/profile.db", "e/env.db", [], "sqlite:///{work}/e/env.db"),
        (
            "p/profile.db",
            "e/env.db",
            ["mlflow.tracking_uri=c/config.db"],
            "sqlite:///{work}/c/config.db",
        ),
        ("http://profile:5000", None, [], "http://profile:5000"),
    ],
)
def test_the_script_exports_the_store_as_sweep_run_resolves_it(
    capsys, monkeypatch, tmp_path, profile_uri, env, sets, exported
):
    """The config's store, else $MLFLOW_TRACKING_URI's, else the profile's, else SQLite in the
    working directory (sweeps.tracking.store.resolve_tracking_uri); a relative path made
    absolute, as the driver would make it."""
    profile = tmp_path / "cluster.yaml"
    profile.write_text(f"partition: debug\nmlflow_tracking_uri: {profile_uri}\n")
    if env is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    sets = [a for s in sets for a in ("--set", s)]
    text = dry_run(capsys, monkeypatch, tmp_path, "--profile", str(profile), *sets)
    want = f"export MLFLOW_TRACKING_URI={exported.format(work=tmp_path.resolve())}"
    assert want in text.splitlines(), text


def test_a_resumed_sweep_exports_the_store_its_runs_are_in(capsys, monkeypatch, tmp_path):
    """`sweep submit --resume` with nothing configured: the jobs write to the store the
    sweep's state file names, as `sweep run --resume` would, not to a new one in the working
    directory."""
    (tmp_path / "elsewhere").mkdir()
    recorded = f"sqlite:///{tmp_path.resolve()}/elsewhere/first.db"
    folder = tmp_path / "runs" / "digits_asha"
    folder.mkdir(parents=True)
    (folder / "mlflow_runs.json").write_text(json.dumps({"tracking_uri": recorded}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    profile = tmp_path / "cluster.yaml"
    profile.write_text("partition: debug\n")
    text = dry_run(capsys, monkeypatch, tmp_path, "--profile", str(profile), "--resume")
    assert f"export MLFLOW_TRACKING_URI={recorded}" in text.splitlines(), text


# slurm/ray.sh's formula (ray_slot, then Ray's ports in order): 100 ports for node `node` of
# job `job_id`, in one of 127 slots from port 20000.
PORT_NAMES = "gcs node_manager object_manager client_server dashboard dashboard_agent_http"
PORT_NAMES += " dashboard_agent_grpc metrics runtime_env_agent"


def ray_ports(job_id: int, node: int = 0) -> dict[str, int]:
    first = 20000 + 100 * ((job_id + node) % 127)
    ports = {name: first + i for i, name in enumerate(PORT_NAMES.split())}
    return ports | {"min_worker": first + 10, "max_worker": first + 99}


def test_ports_differ_between_jobs_and_stay_in_range():
    seen = {}
    for job in range(1, 500):
        ports = ray_ports(job)
        assert min(ports.values()) >= 20000 and max(ports.values()) <= 32699
        assert len(set(ports.values())) == len(ports)
        assert ports["max_worker"] - ports["min_worker"] == 89
        seen.setdefault(ports["gcs"], []).append(job)
    for jobs in seen.values():  # 127 consecutive job ids never share a slot
        assert all(b - a >= 127 for a, b in zip(jobs, jobs[1:]))
    assert ray_ports(41, node=1)["gcs"] == ray_ports(42)["gcs"]


def bash(script: str, **env: str) -> str:
    cp = subprocess.run(
        ["bash", "-c", f"source {ROOT}/slurm/ray.sh; {script}"],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


def test_shell_and_python_give_the_same_ports():
    for job, node in ((1, 0), (126, 1), (127, 0), (123456789, 3)):
        got = bash(f"ray_slot {node}", SLURM_JOB_ID=str(job))
        assert int(got) == ray_ports(job, node)["gcs"]


def test_a_busy_slot_is_skipped():
    first = ray_ports(5)["gcs"]
    with socket.socket() as s:
        s.bind(("", first + 42))  # one port of the slot taken, e.g. by another job's Ray
        s.listen()
        out = bash("ray_ports 0; echo $RAY_PORT", SLURM_JOB_ID="5")
    assert f"ports {first}-{first + 99} are in use or claimed here" in out  # the job log says so
    assert out.endswith(str(first + 100))


def test_a_slot_claimed_by_another_job_is_skipped(tmp_path):
    first = ray_ports(5)["gcs"]
    with open(tmp_path / f"sweeps-ray-slot-{first}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a job running there holds it
        got = bash("ray_ports 0; echo $RAY_PORT", SLURM_JOB_ID="5", SWEEPS_RAY_TMP=str(tmp_path))
    assert got.endswith(str(first + 100))


def test_jobs_starting_at_once_with_one_slot_get_different_ports(tmp_path):
    """Two jobs whose ids share a slot (5 and 5 + 127), started together on one host: each
    claims its own 100 ports, though both found the formula's slot free."""
    env = {**os.environ, "PYTHON": sys.executable, "SWEEPS_RAY_TMP": str(tmp_path)}
    go = tmp_path / "go"  # each keeps its claim (stays up) until both have their ports
    script = f"source {ROOT}/slurm/ray.sh; ray_ports 0; echo $RAY_PORT; "
    script += f"while [[ ! -e {go} ]]; do sleep 0.05; done"
    procs = [
        subprocess.Popen(
            ["bash", "-c", script],
            env={**env, "SLURM_JOB_ID": job},
            stdout=subprocess.PIPE,
            text=True,
        )
        for job in ("5", "132")
    ]
    try:
        ports = [int(next(ln for ln in p.stdout if ln.strip().isdigit())) for p in procs]
    finally:
        go.touch()
        for p in procs:
            p.communicate(timeout=60)
    # each scans up from the formula's slot; one taken by anything else on this machine (the
    # other pytest worker's test cluster runs job 5 too) moves both on: distinct blocks only
    first = ray_ports(5)["gcs"]
    steps = sorted((port - first) % 12700 for port in ports)
    assert steps[0] % 100 == 0 and steps[1] % 100 == 0 and steps[0] < steps[1], ports


@pytest.mark.parametrize("fails, code, tries", [(2, 0, 3), (5, 1, 3)])
def test_a_worker_that_fails_to_join_tries_again(tmp_path, fails, code, tries):
    """Ray gives a node a fixed 30 s to join; a worker whose `ray start` failed that soon starts
    it again, at most three times (a fake `ray start` that fails ``fails`` times)."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/bash\n"
        "if [[ $1 == -m && $2 == ray.scripts.scripts ]]; then\n"
        f'  echo "$SWEEPS_RAY_TAG" >> {tmp_path}/starts\n'
        f"  (( $(wc -l < {tmp_path}/starts) > {fails} )); exit\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    token = tmp_path / "ray-auth-token"  # as the head job leaves it for its workers
    token.write_text("0" * 64)
    env = {
        **os.environ,
        "PYTHON": str(fake),
        "SLURM_JOB_ID": "9",
        "SWEEPS_RAY_TMP": str(tmp_path),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    cp = subprocess.run(
        ["bash", str(ROOT / "slurm/ray.sh"), "worker", "10.0.0.1:20000", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == code, cp.stdout + cp.stderr
    starts = (tmp_path / "starts").read_text().split()
    assert starts == [f"{tmp_path}/r9n1"] * tries  # the same node, cleaned up between tries
    assert cp.stdout.count("did not join") == tries - 1, cp.stdout
    assert f"the Ray worker exited (rc {code})" in cp.stdout


def test_shell_starts_the_other_nodes_and_the_worker_array(tmp_path):
    """ray_other_nodes and sweeps_submit_workers, against a fake srun and sbatch that record
    what they were given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("srun", f'echo "$@" > {tmp_path}/srun.args'),
        ("sbatch", f'echo "$@" > {tmp_path}/sbatch.args; cat > {tmp_path}/array.sh; echo "77;c1"'),
    ):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    out = bash(
        "ray_other_nodes --nodes=1 --ntasks=1; wait $RAY_SRUN_PID; echo srun=$RAY_SRUN_PID; "
        "sweeps_submit_workers /f <<'W'\n#!/bin/bash\necho worker\nW\necho job=$WORKERS_JOB",
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURMD_NODENAME="n1",
        RAY_ADDRESS="10.0.0.1:20000",
    )
    assert re.search(r"^srun=\d+$", out, re.M) and out.endswith("job=77"), out
    assert (tmp_path / "srun.args").read_text() == (
        f"--nodes=1 --ntasks=1 --exclude=n1 bash {ROOT}/slurm/ray.sh worker 10.0.0.1:20000\n"
    )
    assert (tmp_path / "sbatch.args").read_text() == "--parsable\n"
    assert (tmp_path / "array.sh").read_text() == "#!/bin/bash\necho worker\n"


def test_every_profile_key_is_documented_and_the_profiles_load():
    doc = (ROOT / "docs/slurm.md").read_text()
    assert [key for key in sub.RULES if f"| `{key}` |" not in doc] == []
    assert sub.load_profile("discovery").mode == "workers"
    assert sub.load_profile("local").mode == "single-job"


def test_unknown_profile_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: debug\ngpu_per_node: 1\n")
    with pytest.raises(
        sub.ConfigError, match="profile bad: unknown key gpu_per_node; did you mean gpus_per_node"
    ):
        sub.load_profile(str(bad))


# ---------------------------------------------------------------- refused input
BAD_PROFILES = {  # file name -> its bytes
    "latin1.yaml": "partition: d\xe9bug\n".encode("latin-1"),
    "twice.yaml": b"partition: debug\nnodes: 1\npartition: gpu\n",
    "uri.yaml": b"mlflow_tracking_uri: file:///tmp/x\n",
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x; touch /tmp/pwned"], "name must be letters, digits"),
        (["--name", "evil\n"], "pass --name); got 'evil\\n'"),
        (["--partition", "x; touch /tmp/pwned"], "--partition must be a partition name"),
        (["--partition", "gpu\n"], "--partition must be a partition name"),
        (["--time", "1:00:00; touch /tmp/pwned"], "--time must be [D-]HH:MM:SS"),
        (["--set", "name=x;touch /tmp/pwned"], "name must be letters, digits"),
        (["--profile", "nope"], "unknown cluster profile 'nope'; known: discovery, local"),
        (["--time", "90"], "--time must be [D-]HH:MM:SS"),
        (["--time", "00:02:00"], "leaves no room for the pre-timeout signal"),
        (["--nodes", "0"], "--nodes must be an integer >= 1; got 0"),
        (["--mode", "workers", "--nodes", "2"], "--nodes is for --mode single-job"),
        (["--mode", "swarm"], "--mode must be one of single-job, workers"),
        (["--gpus-per-node", "2", "--profile", "discovery"], "partition gpu allows 1 GPU(s)"),
        (
            ["--gpus-per-node", "4", "--profile", "discovery"],
            "not 4 (each worker is one job): use --gpus-per-node 1 and more --workers, "
            "or --partition multigpu",
        ),
        (
            ["--profile", "discovery", "--mode", "single-job", "--nodes", "2"],
            "not 2: use --mode workers, --nodes 1, or --partition multigpu",
        ),
        (["--set", "resources.cpu=4"], "a trial asks for 4 CPU, 0 GPU; a node has 2 CPU"),
        (["--profile", "{bad}/latin1.yaml"], "latin1.yaml: not UTF-8 text (byte 0xe9 at offset"),
        (
            ["--profile", "{bad}/twice.yaml"],
            "at line 3: duplicate key 'partition' (first at line 1)",
        ),
        (["--profile", "{bad}/uri.yaml"], "profile uri: mlflow_tracking_uri must be empty or an"),
        (["--profile", "/dev/zero.yaml"], "/dev/zero.yaml"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    capsys, monkeypatch, tmp_path, args, message
):
    """Every input mistake is reported before the machine's state is looked at: no sbatch on
    the PATH here, and still each mistake's own message."""
    bad = tmp_path / "profiles"
    bad.mkdir()
    for name, data in BAD_PROFILES.items():
        (bad / name).write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    pwned = Path("/tmp/pwned")
    pwned.unlink(missing_ok=True)
    args = [a.format(bad=bad) for a in args]
    argv = ["submit", str(ROOT / "configs/digits_asha.yaml"), "--profile", "local", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert list(work.iterdir()) == [] and not pwned.exists()


def test_too_many_gpus_per_job_names_a_fix_that_passes(capsys, monkeypatch, tmp_path):
    """Discovery's gpu partition gives one GPU per job and its profile runs workers mode: 4
    GPUs a worker is refused with the fix for that mode (not --mode workers, which it is in
    already), and the fix it names submits."""
    monkeypatch.chdir(tmp_path)
    argv = ["submit", str(ROOT / "configs/digits_asha.yaml"), "--profile", "discovery"]
    for mode in ([], ["--mode", "workers"]):
        assert main([*argv, *mode, "--gpus-per-node", "4", "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert "use --gpus-per-node 1 and more --workers" in err and "--mode" not in err, err
    fixed = ["--gpus-per-node", "1", "--workers", "4", "--dry-run"]
    assert main([*argv, *fixed]) == 0
    assert "#SBATCH --array=1-4" in capsys.readouterr().out.splitlines()


def test_missing_sbatch_is_one_line_exit_2_and_writes_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert main(["submit", str(ROOT / "configs/digits_asha.yaml"), "--profile", "local"]) == 2
    err = capsys.readouterr().err
    assert err == "error: sbatch not found: run `sweep submit` where SLURM is (a login node)\n"
    assert list(tmp_path.iterdir()) == []


def fake_sbatch(tmp_path: Path, monkeypatch, script: str) -> Path:
    """An `sbatch` of our own on the PATH (and nothing else of SLURM's); returns the empty
    working directory the test runs in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\n{script}\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_submit_prints_the_job_log_and_commands(capsys, monkeypatch, tmp_path):
    work = fake_sbatch(tmp_path, monkeypatch, 'echo "$@" > "$(dirname "$0")/args"; echo 4242')
    assert main(["submit", str(ROOT / "configs/digits_asha.yaml"), "--profile", "local"]) == 0
    out = capsys.readouterr().out
    folder = work / "runs" / "digits_asha"
    assert out.startswith("submitted job 4242: sweep digits_asha, --mode single-job\n")
    for want in (
        f"log:     {folder}/slurm-4242.out",
        "squeue --name=sweep-digits_asha",
        "scancel --name=sweep-digits_asha",
        f"resume:  cd {work} && sweep submit ",
    ):
        assert want in out, out
    assert (tmp_path / "bin/args").read_text() == f"--parsable {folder}/job.sbatch\n"
    assert (folder / "job.sbatch").read_text().startswith("#!/bin/bash\n")


def test_sbatch_refusing_is_one_line_exit_2_and_leaves_nothing(capsys, monkeypatch, tmp_path):
    work = fake_sbatch(
        tmp_path, monkeypatch, 'echo "sbatch: error: invalid partition: debug" >&2; exit 1'
    )
    assert main(["submit", str(ROOT / "configs/digits_asha.yaml"), "--profile", "local"]) == 2
    err = capsys.readouterr().err
    assert err == "error: sbatch refused the job: sbatch: error: invalid partition: debug\n"
    assert list(work.iterdir()) == []
