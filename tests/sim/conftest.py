"""Seeds for the simulation: ``--seeds N`` (default 200) or ``--seed S`` (replay one).

The options themselves are registered in ``tests/conftest.py``: pytest only
honours ``pytest_addoption`` in conftests it loads at start-up, and
``tests/sim/conftest.py`` is not one of them when running ``pytest tests``.
"""

from __future__ import annotations

import pytest

LOCAL_SEEDS = tuple(range(20))
"""Seeds also run as embedded mode runs: the real local queue in the store's file,
leased batches in one commit, follow-up mutations run inside the batch."""

KNOWN_BUGS: dict[int, str] = {}
"""Default seeds that fail because of a reported, not yet fixed engine bug -> the bug.

Such a seed stays in ``test_simulation`` but is marked ``xfail(strict=True)`` with
the bug as reason, next to a scripted regression test in ``test_sim.py``: once the
bug is fixed the seed XPASSes, fails strictly, and is removed from here. Any change
in how the engine draws random bytes reshuffles what a seed does, so re-check this
list with ``--seeds 200`` when the engine changes; ``--seed S`` runs S unmarked.

History: 30, 66 and 86 (W-6 halting retry refused for a carried-over edge to a
terminal dependee) until commit 298cd3c fixed DeclareDeps.
"""


FIRESTORE_SEEDS = (0, 1, 2)
"""Seeds also run on the Firestore emulator (slower: a few are enough)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    one = metafunc.config.getoption("seed", None)
    names = metafunc.fixturenames
    if "seed" in names:
        if one is not None:
            seeds = [pytest.param(int(one))]
        else:
            seeds = [
                pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[s]))
                if s in KNOWN_BUGS
                else pytest.param(s)
                for s in range(int(metafunc.config.getoption("seeds", 200)))
            ]
        metafunc.parametrize("seed", seeds, ids=lambda s: f"seed-{s}")
    if "firestore_seed" in names:
        fs = [int(one)] if one is not None else list(FIRESTORE_SEEDS)
        metafunc.parametrize("firestore_seed", fs, ids=lambda s: f"seed-{s}")
    if "local_seed" in names:
        local = [int(one)] if one is not None else list(LOCAL_SEEDS)
        metafunc.parametrize("local_seed", local, ids=lambda s: f"seed-{s}")
