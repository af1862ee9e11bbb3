"""Tests of the one-machine SLURM test cluster (tests/slurm_cluster.py).

They start real slurmctld/slurmd daemons (root needed; slurm-wlm is installed
through apt when missing) and submit real jobs. The cluster is the session
fixture `slurm_cluster` of tests/conftest.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster as sc  # noqa: E402
from sweeping import wait_for  # noqa: E402

pytestmark = pytest.mark.slurm


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_gpu_job_gets_cuda_visible_devices(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    job = sc.submit(
        [
            "--gres=gpu:1",
            "-c",
            "1",
            "-o",
            str(tmp_path / "out.txt"),
            "--wrap",
            "echo CVD=$CUDA_VISIBLE_DEVICES; echo CPUS=$SLURM_JOB_CPUS_PER_NODE",
        ],
        env,
    )
    state = sc.wait_job(job, env, timeout=30)
    assert state == "COMPLETED"
    lines = _read_lines(tmp_path / "out.txt")
    cvd = next(x.split("=", 1)[1] for x in lines if x.startswith("CVD="))
    assert cvd in {"0", "1"}, lines
    assert "CPUS=1" in lines


def test_two_node_job_runs_a_task_on_each_node(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    script = (
        "#!/bin/bash\n"
        "#SBATCH -N 2\n"
        "#SBATCH --ntasks-per-node=1\n"
        "srun bash -c 'echo task=$SLURM_PROCID node=$SLURMD_NODENAME'\n"
    )
    job = sc.submit(script, env, args=["-o", str(tmp_path / "out.txt")])
    assert sc.wait_job(job, env, timeout=30) == "COMPLETED"
    lines = _read_lines(tmp_path / "out.txt")
    nodes = sorted(x.split("node=")[1] for x in lines if "node=" in x)
    assert nodes == ["n1", "n2"], lines


def test_two_one_cpu_jobs_run_at_the_same_time(slurm_cluster, tmp_path):
    """Each job waits (a minute at most) until both have started: jobs SLURM ran one after the
    other do not overlap, however fast or slow the machine is."""
    env = slurm_cluster.env
    started = " && ".join(f"[[ -s {tmp_path / f't{i}'} ]]" for i in range(2))
    script = (
        "#!/bin/bash\n#SBATCH -c 1\ndate +%s.%N > {f}\n"
        f"for i in $(seq 600); do {started} && break; sleep 0.1; done\n"
        "date +%s.%N >> {f}\n"
    )
    jobs = [
        sc.submit(script.format(f=tmp_path / f"t{i}"), env, args=["-o", "/dev/null"])
        for i in range(2)
    ]
    for job in jobs:
        assert sc.wait_job(job, env, timeout=120) == "COMPLETED"
    (s0, e0), (s1, e1) = ([float(x) for x in _read_lines(tmp_path / f"t{i}")] for i in range(2))
    assert max(s0, s1) < min(e0, e1), "the two jobs did not overlap in time"


def test_requeue_runs_the_job_again(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    runs = tmp_path / "runs.txt"
    script = (
        "#!/bin/bash\n"
        "#SBATCH --requeue\n"
        f'echo "restart=${{SLURM_RESTART_COUNT:-0}}" >> {runs}\n'
        "sleep 600\n"  # until requeued, then cancelled
    )
    job = sc.submit(script, env, args=["-o", "/dev/null"])
    try:
        wait_for(lambda: len(_read_lines(runs)) >= 1, "the first run", 20)
        subprocess.run(
            ["scontrol", "requeue", job],
            env=sc.client_env(env),
            check=True,
            capture_output=True,
            timeout=10,
        )
        wait_for(lambda: len(_read_lines(runs)) >= 2, "the run after requeue", 30)
        assert _read_lines(runs) == ["restart=0", "restart=1"]
        assert sc.job_state(job, env)["Restarts"] == "1"
    finally:
        subprocess.run(["scancel", job], env=sc.client_env(env), capture_output=True, timeout=10)
    assert sc.wait_job(job, env, timeout=20) == "CANCELLED"


def test_scancel_signal_reaches_batch_script_trap(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    log = tmp_path / "sig.txt"
    script = (
        "#!/bin/bash\n"
        f"trap 'echo got-USR1 >> {log}; exit 0' USR1\n"
        f"echo started >> {log}\n"
        "for i in $(seq 3000); do sleep 0.1; done\n"  # until the signal
        f"echo no-signal >> {log}\n"
    )
    job = sc.submit(script, env, args=["-o", "/dev/null"])
    wait_for(lambda: "started" in _read_lines(log), "the job to start", 20)
    subprocess.run(
        ["scancel", "--signal=USR1", "--batch", job],
        env=sc.client_env(env),
        check=True,
        capture_output=True,
        timeout=10,
    )
    assert sc.wait_job(job, env, timeout=20) == "COMPLETED"
    assert _read_lines(log) == ["started", "got-USR1"]
