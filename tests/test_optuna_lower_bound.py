"""The oldest Optuna that pyproject.toml accepts runs the search tests: it is installed on its own
(its dependencies are the environment's) and imported ahead of the environment's Optuna, in the
process that runs tests/test_search.py. Needs the network to PyPI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_search_passes_with_the_oldest_optuna_accepted(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    lowest = re.search(r'"optuna>=([\d.]+)"', pyproject).group(1)
    pinned = ".".join((lowest.split(".") + ["0", "0"])[:3])  # 4.0 -> 4.0.0
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp_path]
        + [f"optuna=={pinned}"],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    # One process: the Optuna it names is the one the tests then import.
    code = (
        "import sys, optuna, pytest; print('optuna', optuna.__version__, optuna.__file__); "
        "sys.exit(pytest.main(['tests/test_search.py', '-q', '-p', 'no:cacheprovider']))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    name, version, where = run.stdout.splitlines()[0].split(" ", 2)
    assert (name, version) == ("optuna", pinned)
    assert Path(where).is_relative_to(tmp_path)
