"""The environment Ray is started with: Ray reads these settings when it is imported, so
``sweeps/__init__.py`` applies them before any module of the package can import Ray. Each is a
default: a value the user set wins.
"""

from __future__ import annotations

import os

DEFAULTS = {
    # Token authentication: a process joins a sweep's Ray only with its token;
    # ray_process.connect() makes a local Ray's, a SLURM job's comes from slurm/ray.sh.
    "RAY_AUTH_MODE": "token",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no tables; the live view is ours
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report thread, no prompt
    # Ray's loggers are chosen in ray_tune.new_tuner: its TensorBoard one would write an event
    # file per report and cannot log the epochs a report carries.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # A snapshot forced by num_to_keep is rare (ray_tune.checkpoints_kept); no warning when one is.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # A fused population's report writes many configurations' runs: seconds by design (its
    # cadence keeps it a small share of the sweep), not the bottleneck Ray's warning suggests.
    "TUNE_WARN_THRESHOLD_S": "60",
    # Ray's crash handler takes the driver's SIGTERM and, at ray.shutdown, leaves it to the
    # default action, which would kill the driver before it could say or record anything;
    # sweeps/engine/stopping.py handles SIGTERM instead.
    "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1",
}
# A local Ray (no RAY_ADDRESS to join), which nothing off this machine needs to reach: its node
# address is the loopback one, and its servers listen there only. Any other way to ask for
# 127.0.0.1 is turned into the machine's address by Ray.
LOCAL = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def apply() -> None:
    """Set every default not set already."""
    for key, value in (DEFAULTS | ({} if "RAY_ADDRESS" in os.environ else LOCAL)).items():
        os.environ.setdefault(key, value)
