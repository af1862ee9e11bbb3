"""Hyperparameter sweeps of linear classifiers: Ray Tune orchestration, MLflow tracking,
SLURM submission and reports. The training itself lives in ``trainers``."""
