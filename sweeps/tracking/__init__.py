"""MLflow, a copy of the sweep folder: which store (its URI: ``uri``; whether it can take the
sweep: ``store``), the tag names (``tags``), the writes (``writer``, from a thread: ``writes``;
many runs per transaction on SQLite: ``bulk``), the reads (``reader``), the rebuild of a store
from the folder (``sync``), and the sweep's page in the MLflow UI (``ui``)."""
