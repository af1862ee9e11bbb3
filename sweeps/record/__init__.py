"""The sweep folder, the source of truth: its layout (``layout``) and lock (``lock``), the
append-only history (``history``) that the driver writes through ``recorder``, each trial's
outcome (``outcomes``), results.csv (``results``), and a full disk's stop (``disk``)."""
