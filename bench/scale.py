"""Sweeps at the sizes users bring: memory and start-up against the data's size.

    python bench/scale.py [--sizes digits,100000x256x20,400000x256x20] [--engines trial,fused]
                          [--trials 8] [--epochs 2]

For each size N x D x C (synthetic: Gaussian classes, float32, saved as an npz; ``digits`` is
scikit-learn's) and engine, a random sweep of ``--trials`` configurations, two at once
(``max_concurrent`` 2 per trial; two populations fused), run as `sweep run` in a fresh folder:

- peak memory of all the sweep's processes together: the sum of their proportional set sizes
  (Linux's Pss: a page that n processes map counts 1/n in each, so one copy of the data shared
  by every trial counts once), sampled every 0.2 s over the driver and its descendants (Ray's
  head processes and workers); and that peak above the same sweep's on digits, in units of the
  data's size (target: at most 1.5 for 400,000 x 256 x 20);
- time to the first epoch (the sweep's start to the first trial's first epoch reported), and
  the median seconds of a trial's epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(Path(sys.executable).with_name("sweep"))


def make_data(folder: Path, n: int, d: int, c: int) -> Path:
    """Gaussian classes around random centres: N x D float32, C classes, as an npz."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, c, size=n)
    X = rng.normal(size=(c, d)).astype(np.float32)[y] * 0.5
    X += rng.standard_normal(size=(n, d), dtype=np.float32)
    path = folder / f"{n}x{d}x{c}.npz"
    np.savez(path, X=X, y=y)
    return path


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sweep(data: dict, engine: str, trials: int, epochs: int) -> dict[str, float]:
    """One sweep in a fresh folder, its memory sampled while it runs."""
    search = {"type": "random", "num_samples": trials, "seed": 0, "refit": False}
    search |= {"engine": engine, "max_concurrent": 2}
    if engine == "fused":
        search["population_size"] = trials // 2  # two populations, as two trials at once
    doc = {
        "name": "scale",
        "data": data,
        "train": {"epochs": epochs, "batch_size": 256, "optimizer": "momentum"},
        "search": search,
        "space": {
            "train.lr": {"loguniform": [1.0e-3, 0.1]},
            "train.lambda": {"loguniform": [1.0e-5, 1.0e-2]},
        },
        "resources": {"cpu": 1, "gpu": 0},
    }
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "scale.yaml"
        config.write_text(yaml.safe_dump(doc))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        start = time.time()
        proc = subprocess.Popen(
            [SWEEP, "run", str(config)],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        peak = [0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], sum(pss_bytes(p) for p in descendants(proc.pid)))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        out, _ = proc.communicate()
        sampler.join()
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed:\n{out[-3000:]}")
        events = [json.loads(x) for x in (Path(tmp) / "runs/scale/history.jsonl").open()]
    results = [e["metrics"] for e in events if e["event"] == "result"]
    first = min(m["time"] for m in results) / 1000 - start
    return {
        "peak": peak[0],
        "first_epoch_s": first,
        "epoch_s": statistics.median(m["epoch_seconds"] for m in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="digits,100000x256x20,400000x256x20")
    parser.add_argument("--engines", default="trial,fused")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            base = None
            for size in args.sizes.split(","):
                if size == "digits":
                    data, nbytes = {"source": "digits"}, 1797 * 64 * 4
                else:
                    n, d, c = (int(x) for x in size.split("x"))
                    data = {"source": "npz", "path": str(make_data(Path(tmp), n, d, c))}
                    nbytes = n * d * 4
                got = sweep(data, engine, args.trials, args.epochs)
                base = got["peak"] if base is None else base
                above = (got["peak"] - base) / nbytes
                print(
                    f"{engine:<6} {size:<16} data {nbytes / 2**20:7.1f} MiB  peak Pss "
                    f"{got['peak'] / 2**20:7.1f} MiB  above the first size: {above:4.2f} x the "
                    f"data  first epoch after {got['first_epoch_s']:5.1f} s  epoch "
                    f"{got['epoch_s']:.3f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
