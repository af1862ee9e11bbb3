"""Named points where a test can hold a running sweep, so that it never races the machine.

A test sets ``SWEEPS_HOLD`` to a folder for the sweep's processes (the driver and, through Ray,
its workers inherit it) and creates ``<point>.hold`` there for each point it wants held. A
process that reaches a held point writes ``<point>.<unique>.reached`` and waits until
``<point>.go`` exists, or ``<point>.<unique>.go`` (that one arrival let go: the next trial to
reach the point is held again); the test waits for the ``.reached`` files, does what it needs
(a signal, a ``sweep status``), and creates a ``.go`` (or kills the sweep). Points:

- ``ray-started``: the driver, once Ray is up and before the sweep folder is written;
- ``epoch-N``: a trial (or a fused population) after its epoch N, before it reports;
- ``refit``, ``test-look``, ``report``: the driver, before each of those phases;
- ``refit-epoch-N``: the driver, once a refit's epoch N is recorded, before its checkpoint.

Unset (everywhere outside the tests) ``point`` is one dictionary look-up and returns.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

ENV = "SWEEPS_HOLD"
POLL_S = 0.05


def point(name: str) -> None:
    """Hold here while the test asks for ``name`` to be held and has not let it go."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    here = Path(folder)
    if not (here / f"{name}.hold").exists():
        return
    arrival = f"{name}.{uuid.uuid4().hex}"
    (here / f"{arrival}.reached").write_text(str(os.getpid()))
    while not ((here / f"{name}.go").exists() or (here / f"{arrival}.go").exists()):
        time.sleep(POLL_S)


def epoch(number: int) -> None:
    """A trial's or a population's point after its epoch ``number``."""
    point(f"epoch-{number}")
