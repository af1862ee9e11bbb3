"""The installed package: `sweep submit` from a wheel, far from the checkout.

The wheel is built from a copy of the checkout (a build leaves build/ and *.egg-info behind,
and a stale build/ can leak into the next wheel), installed, not editable, into a new
virtual environment that borrows only the dependencies of the running one, and run from a
folder outside the checkout with no PYTHONPATH: the job it renders must source the ray.sh
inside that environment's site-packages, and the bundled and a user's profiles must load.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    ".*", "build", "*.egg-info", "__pycache__", "runs", "mlruns", "mlflow.db"
)
pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment: about 15 s
SWEEP = """\
data: {source: digits, seed: 0}
model: {loss: softmax}
train: {epochs: 2, optimizer: momentum, schedule: constant, batch_size: 64}
search: {type: random, num_samples: 2, metric: val_acc, seed: 0}
space:
  train.lr: {loguniform: [0.01, 0.3]}
resources: {cpu: 1, gpu: 0}
"""


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    clean.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        cmd, cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline by this environment's setuptools (the dev extra's)."""
    have = version("setuptools")
    assert tuple(int(x) for x in have.split(".")[:2]) >= (70, 1), (
        f"setuptools {have} builds no wheel by itself; the dev extra asks for >= 70.1: "
        "pip install -e '.[dev]'"
    )
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=NOT_SOURCES)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cp = subprocess.run(
        [*cmd, "-w", str(tmp), str(src)], capture_output=True, text=True, timeout=300
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    (path,) = tmp.glob("sweeps-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A new environment with the wheel installed; its dependencies through a .pth line per
    site-packages folder of the running interpreter (written after the install, so that pip
    sees no other sweeps installed)."""
    env = tmp_path_factory.mktemp("venv")
    cp = run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=env)
    assert cp.returncode == 0, cp.stderr
    python = str(env / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps"]
    cp = run([*pip, str(wheel)], cwd=env)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (site_of(env) / "_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    return env


def site_of(venv: Path) -> Path:
    (site,) = venv.glob("lib/python3*/site-packages")
    return site


def test_the_wheel_holds_one_copy_of_the_launch_scripts_and_profiles(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.endswith(("ray.sh", "ray_cluster.py"))] == [
        "sweeps/slurm/scripts/ray.sh",
        "sweeps/slurm/scripts/ray_cluster.py",
    ]
    profiles = sorted(n for n in names if n.endswith(".yaml"))
    bundled = sorted(p.name for p in (ROOT / "configs/clusters").glob("*.yaml"))
    assert profiles == [f"sweeps/slurm/profiles/{name}" for name in bundled]


def test_installed_sweep_submit_renders_a_job_with_its_own_ray_sh(venv, tmp_path):
    """A Discovery job (workers mode: the head's and the workers' scripts) from a folder
    outside the checkout: every path in it is the installed package's or the user's."""
    shutil.copy(ROOT / "configs/digits_asha.yaml", tmp_path / "sweep.yaml")
    sweep = str(venv / "bin" / "sweep")
    cp = run([sweep, "submit", "sweep.yaml", "--profile", "discovery", "--dry-run"], tmp_path)
    assert cp.returncode == 0, cp.stderr
    script, ray_sh = cp.stdout, site_of(venv) / "sweeps" / "slurm" / "scripts" / "ray.sh"
    assert f"source {ray_sh}\n" in script
    assert re.search(rf"^exec bash {re.escape(str(ray_sh))} worker \S+ 0$", script, re.M)
    assert ray_sh.is_file() and not ray_sh.is_symlink()
    assert ray_sh.read_bytes() == (ROOT / "slurm/ray.sh").read_bytes()
    assert (ray_sh.parent / "ray_cluster.py").is_file()  # ray.sh runs it from beside itself
    assert "#SBATCH --partition=short" in script  # discovery's head partition
    assert str(ROOT) not in script  # nothing of the checkout


def test_installed_sweep_submit_takes_a_users_profile_and_refuses_a_missing_one(venv, tmp_path):
    shutil.copy(ROOT / "configs/digits_asha.yaml", tmp_path / "sweep.yaml")
    (tmp_path / "mine.yml").write_text("partition: lab\ncpus_per_node: 4\n")
    sweep = [str(venv / "bin" / "sweep"), "submit", "sweep.yaml", "--dry-run", "--profile"]
    cp = run([*sweep, "mine.yml"], tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert "#SBATCH --partition=lab" in cp.stdout and "#SBATCH --cpus-per-task=4" in cp.stdout
    for profile, message in (
        ("theirs.yaml", f"error: {tmp_path}/theirs.yaml: no such cluster profile; the bundled "
         "ones: discovery, local\n"),
        ("nope", "error: unknown cluster profile 'nope'; known: discovery, local (or a .yaml "
         "path)\n"),
    ):  # fmt: skip
        cp = run([*sweep, profile], tmp_path)
        assert (cp.returncode, cp.stderr) == (2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yml", "sweep.yaml"]


@pytest.mark.slurm
def test_installed_package_runs_a_two_node_sweep_on_slurm(venv, slurm_cluster, tmp_path):
    """A real job of the installed package, from a user's profile: its ray.sh starts the head,
    srun starts its ray.sh on the other node, its ray_cluster.py waits for both nodes and
    reports where the trials ran; the sweep completes and the job leaves no Ray behind."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="sw", dir="/tmp"))  # short: Ray's socket paths
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    (tmp_path / "cluster.yaml").write_text(f"ray_tmp: {ray_tmp}\n")
    cmd = [str(venv / "bin" / "sweep"), "submit", "sweep.yaml", "--profile", "cluster.yaml"]
    cp = run([*cmd, "--nodes", "2", "--name", "installed"], tmp_path, **slurm_cluster.env)
    assert cp.returncode == 0, cp.stderr
    job = re.search(r"submitted job (\d+)", cp.stdout)[1]
    folder = tmp_path / "runs" / "installed"
    try:
        state = slurm_cluster.wait_job(job, timeout=300)
        left = sorted(p.name for p in ray_tmp.glob("r*"))  # each node's temp dir, if left
    finally:
        subprocess.run(["scancel", job], env=slurm_cluster.client_env(), capture_output=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log = (folder / f"slurm-{job}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-3000:]
    ray_sh = site_of(venv) / "sweeps" / "slurm" / "scripts" / "ray.sh"
    assert f"source {ray_sh}\n" in (folder / "job.sbatch").read_text()
    assert "Ray cluster ready: 2 nodes" in log and "trial actors per SLURM node:" in log, log
    table = pd.read_csv(folder / "results.csv")
    assert sorted(table["status"]) == ["completed"] * 2, table
    assert left == []  # the exit trap removed every node's temp dir
