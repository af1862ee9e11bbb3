"""The two properties of the one-machine SLURM test cluster (tests/slurm_cluster.py) that the
project's SLURM tests take for granted, checked first so that a broken harness fails here with a
plain message rather than as a sweep that never starts: a GPU job sees its (fake) GPU, and a
two-node job runs a task on each node. Requeue, scancel's signals and jobs side by side are
exercised by tests/test_slurm.py through the project itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster as sc  # noqa: E402

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
