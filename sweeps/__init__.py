"""Hyperparameter sweeps of linear classifiers: Ray Tune orchestration, MLflow tracking,
SLURM submission and reports. The training itself lives in ``trainers``.

The subpackages follow a sweep's data, one way: ``spec`` (the config, checked) -> ``search``
(the configurations drawn) -> ``engine`` (Ray Tune runs the trials; ``trainers`` trains them)
-> ``record`` (the sweep folder: every epoch and outcome) -> ``tracking`` (MLflow, a copy of
the folder) -> ``view`` (the report, the live view, status). ``slurm`` submits a sweep as
SLURM jobs; ``cli`` is the ``sweep`` command over all of them.
"""

from sweeps.engine import ray_env

ray_env.apply()  # before any module of the package imports Ray, which reads them then
