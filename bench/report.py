"""How long `sweep report` takes to draw a large sweep: the page and every figure.

    python bench/report.py [--trials 1000 10000]

The sweeps are synthetic (tests/test_report.py's ``synthetic``: ASHA-like epochs, a few
diverged and failed trials), so only the drawing is timed, not MLflow or the folder's reads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_report import synthetic  # noqa: E402

from sweeps.view.report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1000])
    args = parser.parse_args()
    for n in args.trials:
        data = synthetic(n)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            page = write_report(data, Path(out) / "report")
            seconds = time.perf_counter() - start
            size = page.stat().st_size
        print(f"{n:>7,} trials: report written in {seconds:5.1f} s, page {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
