"""MLflow, a copy of the sweep folder: which store (``store``), the tag names (``tags``), the
writes (``writer``, from a thread: ``writes``), the reads (``reader``), the rebuild of a store
from the folder (``sync``), and the sweep's page in the MLflow UI (``ui``)."""
