"""Hyperparameter sweeps of linear classifiers: Ray Tune orchestration, MLflow tracking,
SLURM submission and reports. The training itself lives in ``trainers``."""

from sweeps.engine import ray_env

ray_env.apply()  # before any module of the package imports Ray, which reads them then
