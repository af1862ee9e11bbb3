"""The sweep folder, the source of truth: its layout (``layout``) and lock (``lock``), the
append-only history (``history``), each trial's outcome (``outcomes``), results.csv
(``results``), trials' readable names (``naming``), and a full disk's stop (``disk``)."""
