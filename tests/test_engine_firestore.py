"""The engine scenarios of test_engine_scenarios.py on the Firestore backend (emulator).

Same scenarios, same queues (the real local queue and the ChaosQueue), only the
store differs. Each run also reports what Firestore would bill: document reads
and writes (deletes included) per execution, counted by the store
(:attr:`FirestoreStore.stats`) over the whole scenario — API calls, mutations,
notifications, sweeps — but not the test's own checks; printed (``-s``) and
attached to the test report with ``record_property`` for the benchmark to track.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dmcore.engine import docs
from dmcore.store.firestore import FirestoreStore
from tests import test_engine_scenarios as scenarios
from tests.emulator_fixtures import firestore_per_execution
from tests.harness import Chaos, Harness

pytestmark = pytest.mark.emulator


@pytest.fixture(params=["local", "chaos"])
def fh(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, firestore_store: FirestoreStore
) -> Iterator[Harness]:
    """The conftest ``h`` harness, on a fresh Firestore namespace instead of SQLite."""
    harness = Harness(
        tmp_path,
        queue=request.param,
        seed=7,
        chaos=Chaos(duplicate=0.5, delay=0.3, fail_dispatch=0.1),
        store=firestore_store,
    )
    yield harness
    harness.close()


def _executions(store: FirestoreStore) -> int:
    """How many executions the scenario made: the sum of every attempt's ``cur_execution``."""
    return sum(int(doc["cur_execution"]) for _, doc in store.query(docs.ATTEMPTS))


def _uncounted(store: FirestoreStore, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its own store reads left out of the counters (the test's checks)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = store.stats.reads
        try:
            return fn(*args, **kwargs)
        finally:
            store.stats.add(reads=before - store.stats.reads)

    return wrapper


def _run_and_measure(
    fh: Harness,
    scenario: Callable[[Harness], None],
    record_property: Callable[[str, object], None],
) -> None:
    store = fh.store
    assert isinstance(store, FirestoreStore)
    # The scenario's own checks (h.state(), h.attempt(), h.result(), ...) read the
    # store too; only what the engine and the service read is counted. The harness
    # runs one thing at a time, so subtracting around those calls is exact.
    for name in ("attempt", "execution", "result"):
        setattr(fh, name, _uncounted(store, getattr(fh, name)))
    store.stats.reset()
    scenario(fh)
    stats = store.stats.snapshot()  # before counting executions (which reads too)
    n = _executions(store)
    assert n > 0
    queue = "chaos" if fh.chaos is not None else "local"
    line = firestore_per_execution(n, stats, record_property)
    print(f"\nfirestore [{scenario.__name__}, {queue} queue]: {line}")


def test_worked_sequence(fh: Harness, record_property: Callable[[str, object], None]) -> None:
    """Spec §2.3 on Firestore: A depends on a new B, waits, resumes with its previous state."""
    _run_and_measure(fh, scenarios.test_worked_sequence, record_property)


def test_diamond_runs_shared_dependency_once(
    fh: Harness, record_property: Callable[[str, object], None]
) -> None:
    """A→B, A→C, B→D, C→D on Firestore: D runs once and its result is reused."""
    _run_and_measure(fh, scenarios.test_diamond_runs_shared_dependency_once, record_property)


def test_a_sweep_with_nothing_due_reads_nothing_not_yet_due(
    tmp_path: pathlib.Path, firestore_store: FirestoreStore
) -> None:
    """Attempts whose timers, polls, expiries and follow-ups are all due later cost a
    sweep nothing: each of its queries is bounded by now, so it bills one read for its
    empty answer, not a page of documents it would pass over (as it did before)."""
    h = Harness(tmp_path, store=firestore_store)
    try:
        shards = max(1, h.engine.settings.sweep_shards, h.engine.settings.swept_shards)
        later = h.engine.clock() + 3600 * 10**6

        def arm(tx: Any) -> None:
            for i in range(60):
                path = f"{docs.ATTEMPTS}/later{i}"
                doc: dict[str, Any] = {f: later for f in docs.SWEPT}
                if shards > 1:
                    doc[docs.SWEEP_SHARD] = docs.sweep_shard(path, shards)
                tx.set(path, doc)

        firestore_store.transaction(arm)
        firestore_store.stats.reset()
        assert h.engine.sweep() == {"outbox": 0, "timers": 0, "polls": 0, "expiries": 0}
        queries = (len(docs.SWEPT) + 1) * shards  # each swept field and the outbox, per shard
        assert firestore_store.stats.reads <= queries
    finally:
        h.close()
