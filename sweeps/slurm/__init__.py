"""``sweep submit``: SLURM jobs from a cluster profile (``submit``); the launch script and the
bundled profiles are installed beside it (``scripts``, ``profiles``: links in a checkout)."""
