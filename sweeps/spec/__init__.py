"""What a sweep is, checked before anything runs: the config document read (``document``),
validated into a ``SweepSpec`` (``sweep``), its searched space (``space``), and the key tables
of docs/config.md generated from those rules (``docs``)."""
