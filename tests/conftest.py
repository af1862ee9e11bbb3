"""Shared fixtures: a user's working directory, and the one-machine SLURM test cluster
(tests/slurm_cluster.py)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster as sc  # noqa: E402
from sweeping import make_data  # noqa: E402


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, as a user's, with the tests' data files and no MLflow URI
    set from outside. (Modules that share one sweep across tests define a wider one.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_data(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running two-node SLURM cluster for the whole session, stopped at the end: nodes n1 and
    n2 with 8 CPUs each (more than the machine has: several small jobs fit at once) and 2 fake
    GPUs each; partitions debug (the default) and gpu."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (slurmd runs jobs as their user)")
    if sys.platform != "linux":
        pytest.skip("the SLURM test cluster needs Linux")
    sc.ensure_installed()
    # slurmd keeps Unix sockets under the base dir: keep its path short
    base = tmp_path_factory.mktemp("slurm")
    if len(str(base)) > 50:
        base = Path(tempfile.mkdtemp(prefix="slurmtest-", dir="/tmp"))
    # each pytest-xdist worker has its own cluster: its job ids start 64 apart from the other's,
    # so that jobs of both never share a Ray port slot ((job id + node) % 127) or a temp dir
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    cluster = sc.start(base, cpus_per_node=8, first_job_id=1 + 64 * worker)
    try:
        yield cluster
    finally:
        sc.stop(base)


# The modules that take minutes, longest first (seconds of one fresh-clone CI run, two
# workers). `make test` hands out whole modules in collection order (--dist loadfile
# --no-loadscope-reorder): the long ones start first and the short ones fill in at the end,
# so that neither worker is left alone with a long module at the end.
LONGEST_FIRST = [
    "test_slurm.py",  # about 560
    "test_sweep_folder.py",  # 560
    "test_sweeps.py",  # 420
    "test_fused.py",  # 380
    "test_report.py",  # 330
    "test_signals.py",  # 230 (measured on a loaded machine)
    "test_refit.py",  # 180
    "test_status.py",  # 175
    "test_folder_refusals.py",  # 150
]


@pytest.hookimpl(trylast=True)  # after pytest groups the tests of a parametrized fixture
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order
