"""Seeds for the simulation: ``--seeds N`` (default 1000) or ``--seed S`` (replay one).

The options themselves are registered in ``tests/conftest.py``: pytest only
honours ``pytest_addoption`` in conftests it loads at start-up, and
``tests/sim/conftest.py`` is not one of them when running ``pytest tests``.
``--seeds`` sets the ChaosQueue seeds (0..N-1); the other kinds run a share of
as many (a twentieth on the local queue and with worker threads, at least
their defaults; jobsim's a fortieth), so ``--seeds 100000`` is a long run of every kind.
"""

from __future__ import annotations

import pytest

DEFAULT_SEEDS = 1000
LOCAL_SEEDS = 50
"""Seeds also run as embedded mode runs: the real local queue in the store's file,
leased batches in one commit, follow-up mutations run inside the batch."""
LOCAL_CATCHERS: tuple[int, ...] = ()
"""Local-queue seeds past ``LOCAL_SEEDS`` that are the only ones known to catch a fixed
engine defect, run by default too (none today). History: 111, the only one of 0..199
to catch a stop timer due before the run is recorded left put off 30 s
(records.rearm_stop_at_run) while the local queue leased tasks by name, and none of
0..327 once it leased them in the order queued; ``Faults.slow_record`` now makes that
situation common, and default local seeds 5, 12, 20 and 39 catch it
(tests/sim/test_sim_stop_timer.py)."""
THREADED_SEEDS = 50
"""Seeds also run with three worker threads delivering tasks at once (SQLite)."""
JOBSIM_SEEDS = 25
"""Seeds also played by jobsim instead of the fake distributor (tests/sim/test_sim_jobsim.py;
a fortieth of ``--seeds``, at least this many)."""
FIRESTORE_SEEDS = (0, 1, 2, 3, 4)
"""Seeds also run on the Firestore emulator (slower: a few are enough; odd ones threaded)."""

KNOWN_BUGS: dict[int, str] = {}
"""Default seeds that fail because of a reported, not yet fixed engine bug -> the bug.

Such a seed stays in ``test_simulation`` but is marked ``xfail(strict=True)`` with
the bug as reason, next to a scripted regression test in ``test_sim.py``: once the
bug is fixed the seed XPASSes, fails strictly, and is removed from here. Any change
in how the engine draws random bytes reshuffles what a seed does, so re-check this
list with ``--seeds 1000`` when the engine changes; ``--seed S`` runs S unmarked.

History: 30, 66 and 86 (W-6 halting retry refused for a carried-over edge to a
terminal dependee) until commit 298cd3c fixed DeclareDeps.
"""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    one = metafunc.config.getoption("seed", None)
    many = int(metafunc.config.getoption("seeds", DEFAULT_SEEDS))
    names = metafunc.fixturenames
    if "seed" in names:
        if one is not None:
            seeds = [pytest.param(int(one))]
        else:
            seeds = [
                pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[s]))
                if s in KNOWN_BUGS
                else pytest.param(s)
                for s in range(many)
            ]
        metafunc.parametrize("seed", seeds, ids=lambda s: f"seed-{s}")
    share = max(many // 20, 1)
    if "local_seed" in names:
        n_local = max(LOCAL_SEEDS, share)
        local = (
            [int(one)]
            if one is not None
            else [*range(n_local), *(c for c in LOCAL_CATCHERS if c >= n_local)]
        )
        metafunc.parametrize("local_seed", local, ids=lambda s: f"seed-{s}")
    if "threaded_seed" in names:
        threaded = [int(one)] if one is not None else list(range(max(THREADED_SEEDS, share)))
        metafunc.parametrize("threaded_seed", threaded, ids=lambda s: f"seed-{s}")
    if "jobsim_seed" in names:
        js = [int(one)] if one is not None else list(range(max(JOBSIM_SEEDS, many // 40)))
        metafunc.parametrize("jobsim_seed", js, ids=lambda s: f"seed-{s}")
    if "firestore_seed" in names:
        fs = [int(one)] if one is not None else list(FIRESTORE_SEEDS)
        metafunc.parametrize("firestore_seed", fs, ids=lambda s: f"seed-{s}")
