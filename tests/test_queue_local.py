"""Tests of the local (SQLite) TaskQueue adapter (its worker: tests/test_embedded.py)."""

from __future__ import annotations

import contextlib
import multiprocessing
import re
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dmcore.queue.base import InvalidTask, QueueError, Task
from dmcore.queue.local import DEFAULT_LEASE_US, LeasedTask, LocalQueue
from dmcore.store.sqlite import LockTimeout, SqliteStore

SEC = 1_000_000
T0 = 1_700_000_000 * SEC
TOMBSTONE_US = 3600 * SEC


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now_us: int = T0) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, us: int) -> None:
        self.now_us += us


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.sqlite"


@pytest.fixture(params=["file", "store"])
def q(request: pytest.FixtureRequest, db_path: Path, clock: FakeClock) -> Iterator[LocalQueue]:
    """The queue in a file of its own, and as a table of a SqliteStore's file."""
    if request.param == "file":
        queue = LocalQueue(db_path, clock=clock)
        yield queue
        queue.close()
        return
    store = SqliteStore(db_path)
    queue = LocalQueue(store=store, clock=clock)
    yield queue
    queue.close()
    store.close()


def task(name: str, target: str = "mutation", eta_us: int = 0, **payload: Any) -> Task:
    return Task(name=name, target=target, payload=payload, eta_us=eta_us)


def advance_to_next_due(q: LocalQueue, clock: FakeClock) -> None:
    """What a driver loop with a fake clock does instead of sleeping."""
    due = q.next_due_us()
    assert due is not None
    clock.now_us = max(clock.now_us, due)


def names(leased: list[LeasedTask]) -> list[str]:
    return [lt.task.name for lt in leased]


# -- LocalQueue --


def test_enqueue_lease_ack(q: LocalQueue, clock: FakeClock) -> None:
    t = task("a", target="distributor/jobsim", x=1, nested={"l": [1, "two", None]})
    assert q.enqueue(t)
    assert q.pending_count() == 1
    [lt] = q.lease()
    assert lt == LeasedTask(task=t, attempt=1, leased_at=clock.now_us)
    assert q.lease() == []  # hidden while leased
    q.ack(["a"])
    assert q.pending_count() == 0
    assert q.next_due_us() is None
    assert q.lease() == []


def test_duplicate_refused_pending_done_and_accepted_after_tombstone(
    q: LocalQueue, clock: FakeClock
) -> None:
    assert q.enqueue(task("a", v=1))
    assert not q.enqueue(task("a", v=2))  # pending
    [lt] = q.lease()
    assert not q.enqueue(task("a", v=3))  # leased
    q.ack([lt.task.name])
    assert not q.enqueue(task("a", v=4))  # tombstone
    clock.advance(TOMBSTONE_US - 1)
    assert q.purge_tombstones() == 0
    assert not q.enqueue(task("a", v=5))  # tombstone still live
    clock.advance(1)
    assert q.purge_tombstones() == 1
    assert q.enqueue(task("a", v=6))
    [lt] = q.lease()
    assert lt.task.payload == {"v": 6}
    assert lt.attempt == 1


def test_expired_tombstone_not_yet_purged_is_replaced(q: LocalQueue, clock: FakeClock) -> None:
    q.enqueue(task("a", v=1))
    q.lease()
    q.ack(["a"])
    clock.advance(TOMBSTONE_US)
    assert q.enqueue(task("a", v=2))  # expired even though purge has not run
    [lt] = q.lease()
    assert (lt.task.payload, lt.attempt) == ({"v": 2}, 1)


def test_eta_respected(q: LocalQueue, clock: FakeClock) -> None:
    q.enqueue(task("later", eta_us=T0 + 10 * SEC))
    assert q.lease() == []
    assert q.next_due_us() == T0 + 10 * SEC
    clock.advance(10 * SEC - 1)
    assert q.lease() == []
    clock.advance(1)
    assert names(q.lease()) == ["later"]


def test_lease_orders_by_eta_then_as_queued_and_limits(q: LocalQueue, clock: FakeClock) -> None:
    q.enqueue_many(
        [
            task("c", eta_us=T0 - 1),
            task("b", eta_us=T0 - 5),
            task("a", eta_us=T0 - 1),
            task("d", eta_us=0),
            task("future", eta_us=T0 + 1),
        ]
    )
    q.enqueue(task("0", eta_us=T0 - 1))  # queued last: after c and a, whatever its name
    assert names(q.lease(limit=2)) == ["d", "b"]
    assert names(q.lease()) == ["c", "a", "0"]
    assert q.lease(limit=0) == []


@pytest.mark.parametrize("prefix", [None, "distributor/"])
def test_lease_uses_an_index_for_its_order(q: LocalQueue, prefix: str | None) -> None:
    """The order by rowid comes from the index, not from sorting every pending task:
    the plan of the very statement lease() runs (traced, its values bound)."""
    q.enqueue_many([task("m", target="mutation"), task("d", target="distributor/jobsim")])
    conn = q._conn()
    ran: list[str] = []
    conn.set_trace_callback(ran.append)
    try:
        q.lease(limit=10, target_prefix=prefix)
    finally:
        conn.set_trace_callback(None)
    (select,) = [s for s in ran if s.lstrip().upper().startswith("SELECT") and "tasks" in s]
    details = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + select)]
    assert any("USING INDEX tasks_due" in d for d in details), details
    assert not any("TEMP B-TREE" in d for d in details), details


def _lease_steps(q: LocalQueue) -> tuple[list[str], int]:
    """Lease what is due; the names leased, and the SQLite VM steps that took."""
    conn = q._conn()
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    conn.set_progress_handler(count, 1)
    try:
        leased = q.lease(limit=10)
    finally:
        conn.set_progress_handler(None, 1)
    return names(leased), steps[0]


def test_lease_steps_over_no_tombstone(q: LocalQueue) -> None:
    """A done task (a tombstone, kept for the dedupe window) leaves the index lease()
    scans: the lease of one due task costs as much among 10 tombstones as among 1,000
    (SQLite VM steps: a count, not a timing). With done tasks in that index, every
    lease would step over each tombstone due before now."""

    def lease_among(tombstones: int) -> int:
        q.enqueue_many([task(f"t{tombstones}-{i}") for i in range(tombstones)])
        q.ack(q.lease(limit=tombstones))
        q.enqueue(task(f"due-{tombstones}"))
        leased, steps = _lease_steps(q)
        assert leased == [f"due-{tombstones}"]
        q.ack(leased)
        return steps

    few = lease_among(10)
    many = lease_among(990)  # 1,000 tombstones, 11 of them from before
    assert many <= few * 1.2, (few, many)


def test_open_drops_an_older_queues_pending_index(db_path: Path, clock: FakeClock) -> None:
    LocalQueue(db_path, clock=clock).close()
    conn = sqlite3.connect(db_path)
    conn.execute("DROP INDEX tasks_due")
    conn.execute("CREATE INDEX tasks_pending ON tasks (eta_us, name) WHERE done_us IS NULL")
    conn.commit()
    conn.close()
    queue = LocalQueue(db_path, clock=clock)
    listed = queue._conn().execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    indexes = {row[0] for row in listed}
    queue.close()
    assert "tasks_due" in indexes
    assert "tasks_pending" not in indexes


def test_lease_target_prefix(q: LocalQueue) -> None:
    q.enqueue_many([task("m", target="mutation"), task("d", target="distributor/jobsim")])
    assert names(q.lease(target_prefix="distributor/")) == ["d"]
    assert names(q.lease(target_prefix="distributor/")) == []
    assert names(q.lease()) == ["m"]


def test_unacked_lease_expires_and_task_is_redelivered(q: LocalQueue, clock: FakeClock) -> None:
    q.enqueue(task("a"))
    [first] = q.lease()
    assert first.attempt == 1
    # The worker "crashes": no ack. The task stays hidden for the lease.
    assert q.next_due_us() == T0 + DEFAULT_LEASE_US
    clock.advance(DEFAULT_LEASE_US - 1)
    assert q.lease() == []
    clock.advance(1)
    [second] = q.lease()
    assert second.task == first.task
    assert second.attempt == 2
    q.ack(["a"])
    assert q.pending_count() == 0


def test_nack_sets_retry_time(q: LocalQueue, clock: FakeClock) -> None:
    q.enqueue(task("a"))
    q.lease()
    q.nack("a", T0 + 5 * SEC)  # earlier than the lease end: the lease is released
    assert q.next_due_us() == T0 + 5 * SEC
    clock.advance(5 * SEC - 1)
    assert q.lease() == []
    clock.advance(1)
    [lt] = q.lease()
    assert lt.attempt == 2


def test_ack_and_nack_of_unknown_or_done_names_are_ignored(q: LocalQueue, clock: FakeClock) -> None:
    q.ack([])
    q.ack(["nope"])
    q.nack("nope", T0)
    q.enqueue(task("a"))
    q.lease()
    q.ack(["a"])
    q.nack("a", T0)  # a late nack does not revive a done task
    clock.advance(1)
    q.ack(["a"])  # nor does a second ack extend the tombstone
    assert q.pending_count() == 0
    clock.advance(TOMBSTONE_US - 1)
    assert q.purge_tombstones() == 1


def test_survives_restart(db_path: Path, clock: FakeClock) -> None:
    q1 = LocalQueue(db_path, clock=clock)
    q1.enqueue_many([task("done"), task("leased"), task("later", eta_us=T0 + SEC)])
    [lt] = q1.lease(limit=1)
    assert lt.task.name == "done"
    q1.ack(["done"])
    q1.lease(limit=1)  # "leased", never acked
    q1.close()
    with pytest.raises(QueueError):
        q1.pending_count()

    q2 = LocalQueue(db_path, clock=clock)
    try:
        assert q2.pending_count() == 2
        assert not q2.enqueue(task("done"))  # tombstone survived
        assert not q2.enqueue(task("later"))
        clock.advance(DEFAULT_LEASE_US)
        got = q2.lease()
        assert [(lt.task.name, lt.attempt) for lt in got] == [("leased", 2), ("later", 1)]
    finally:
        q2.close()


def test_enqueue_many_per_task_results(q: LocalQueue) -> None:
    q.enqueue(task("old"))
    assert q.enqueue_many([]) == []
    result = q.enqueue_many([task("x", v=1), task("old"), task("x", v=2), task("y")])
    assert result == [True, False, False, True]
    got = {lt.task.name: lt.task.payload for lt in q.lease()}
    assert got == {"old": {}, "x": {"v": 1}, "y": {}}


@pytest.mark.parametrize("bad_name", ["", "has space", "slash/no", "x" * 501, "dot.no"])
def test_invalid_task_name_rejected_by_task(bad_name: str) -> None:
    with pytest.raises(InvalidTask):
        Task(name=bad_name, target="mutation", payload={})


def test_invalid_task_rejected_with_nothing_written(q: LocalQueue) -> None:
    with pytest.raises(InvalidTask):
        Task(name="ok", target="", payload={})
    bad_payload = Task(name="bad", target="mutation", payload={"x": object()})
    with pytest.raises(InvalidTask):
        q.enqueue_many([task("good"), bad_payload])
    nan_payload = Task(name="nan", target="mutation", payload={"x": float("nan")})
    with pytest.raises(InvalidTask):
        q.enqueue(nan_payload)
    # A name that slipped past Task's own check (frozen dataclasses can be bypassed).
    sneaky = task("sneaky")
    object.__setattr__(sneaky, "name", "bad name")
    with pytest.raises(InvalidTask):
        q.enqueue_many([task("good"), sneaky])
    assert q.pending_count() == 0
    assert q.enqueue(task("good"))


def test_next_due_us(q: LocalQueue, clock: FakeClock) -> None:
    assert q.next_due_us() is None
    q.enqueue(task("late", eta_us=T0 + 100 * SEC))
    assert q.next_due_us() == T0 + 100 * SEC
    q.enqueue(task("past", eta_us=T0 - SEC))
    assert q.next_due_us() == T0 - SEC  # may be in the past: due now
    q.lease(limit=1)  # leases "past"
    assert q.next_due_us() == T0 + DEFAULT_LEASE_US
    q.ack(["past"])
    assert q.next_due_us() == T0 + 100 * SEC


def test_constructor_rejects_memory_and_bad_durations(db_path: Path, clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        LocalQueue(":memory:", clock=clock)
    with pytest.raises(ValueError):
        LocalQueue(db_path, clock=clock, lease_us=0)


def test_threads_have_their_own_connections(q: LocalQueue) -> None:
    q.enqueue_many([task(f"t{i:02d}") for i in range(20)])
    got: list[list[str]] = [[], []]

    def lease_all(i: int) -> None:
        while batch := q.lease(limit=1):
            got[i].extend(names(batch))

    threads = [threading.Thread(target=lease_all, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got[0] + got[1]) == [f"t{i:02d}" for i in range(20)]


# -- two processes --

_MP_NOW = T0


def _mp_clock() -> int:
    return _MP_NOW


def _mp_lease_all(path: str, barrier: Any, results: Any) -> None:
    """Child process: lease one task at a time until none is left."""
    queue = LocalQueue(path, clock=_mp_clock)
    got: list[str] = []
    barrier.wait()
    while batch := queue.lease(limit=2):
        got.extend(names(batch))
    queue.close()
    results.put(got)


def test_two_processes_never_lease_the_same_task(db_path: Path) -> None:
    n = 60
    q = LocalQueue(db_path, clock=_mp_clock)
    q.enqueue_many([task(f"p{i:03d}") for i in range(n)])
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_mp_lease_all, args=(str(db_path), barrier, results)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=60), results.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    all_leased = got[0] + got[1]
    assert len(all_leased) == n  # each exactly once
    assert sorted(all_leased) == [f"p{i:03d}" for i in range(n)]
    assert q.lease() == []  # all still leased
    q.close()


# -- model-based check against a plain-Python model of the semantics --


class QueueModel(RuleBasedStateMachine):
    """Random enqueue/lease/ack/nack/purge/clock moves agree with a dict model."""

    NAMES = st.sampled_from(["a", "b", "c", "d"])
    LEASE_US = 10
    TOMB_US = 30

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = FakeClock(1000)
        self.q = LocalQueue(
            Path(self.tmp.name) / "q.sqlite",
            clock=self.clock,
            lease_us=self.LEASE_US,
            tombstone_us=self.TOMB_US,
        )
        # name -> [eta, leased_until, attempts, done_us | None]
        self.model: dict[str, list[Any]] = {}

    def teardown(self) -> None:
        self.q.close()
        self.tmp.cleanup()

    def _live(self, name: str) -> bool:
        row = self.model.get(name)
        return row is not None and (row[3] is None or row[3] + self.TOMB_US > self.clock())

    @rule(name=NAMES, delay=st.integers(0, 20))
    def enqueue(self, name: str, delay: int) -> None:
        expected = not self._live(name)
        assert self.q.enqueue(task(name, eta_us=self.clock() + delay)) == expected
        if expected:
            self.model[name] = [self.clock() + delay, 0, 0, None]

    @rule(limit=st.integers(1, 4))
    def lease(self, limit: int) -> None:
        now = self.clock()
        due = sorted(
            (r[0], n) for n, r in self.model.items() if r[3] is None and max(r[0], r[1]) <= now
        )[:limit]
        got = self.q.lease(limit)
        assert [(lt.task.eta_us, lt.task.name) for lt in got] == due
        for lt in got:
            row = self.model[lt.task.name]
            row[1] = now + self.LEASE_US
            row[2] += 1
            assert lt.attempt == row[2]

    @rule(name=NAMES)
    def ack(self, name: str) -> None:
        self.q.ack([name])
        row = self.model.get(name)
        if row is not None and row[3] is None:
            row[3] = self.clock()

    @rule(name=NAMES, delay=st.integers(0, 20))
    def nack(self, name: str, delay: int) -> None:
        self.q.nack(name, self.clock() + delay)
        row = self.model.get(name)
        if row is not None and row[3] is None:
            row[0], row[1] = self.clock() + delay, 0

    @rule()
    def purge(self) -> None:
        dead = [
            n
            for n, r in self.model.items()
            if r[3] is not None and r[3] + self.TOMB_US <= self.clock()
        ]
        assert self.q.purge_tombstones() == len(dead)
        for n in dead:
            del self.model[n]

    @rule(dt=st.integers(1, 25))
    def tick(self, dt: int) -> None:
        self.clock.advance(dt)

    @invariant()
    def counts_agree(self) -> None:
        pending = [r for r in self.model.values() if r[3] is None]
        assert self.q.pending_count() == len(pending)
        expected = min((max(r[0], r[1]) for r in pending), default=None)
        assert self.q.next_due_us() == expected


QueueModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_queue_model = QueueModel.TestCase


# -- a queue in a store's file: tasks that commit with a store transaction ------------------


@pytest.fixture
def store_q(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[SqliteStore, LocalQueue]]:
    store = SqliteStore(tmp_path / "dm.sqlite")
    queue = LocalQueue(store=store, clock=clock)
    yield store, queue
    queue.close()
    store.close()


def test_enqueue_in_commits_with_the_transaction(
    store_q: tuple[SqliteStore, LocalQueue],
) -> None:
    store, queue = store_q

    def step(tx: Any) -> None:
        tx.set("a/1", {"n": 1})
        assert queue.enqueue_in(tx, [task("t1"), task("t2")])

    store.transaction(step)
    assert store.get("a/1") == {"n": 1}
    assert sorted(lt.task.name for lt in queue.lease(10)) == ["t1", "t2"]


def test_enqueue_in_nothing_when_the_transaction_fails(
    store_q: tuple[SqliteStore, LocalQueue],
) -> None:
    store, queue = store_q

    def step(tx: Any) -> None:
        tx.set("a/1", {"n": 1})
        queue.enqueue_in(tx, [task("t1")])
        raise RuntimeError("the step failed")

    with pytest.raises(RuntimeError):
        store.transaction(step)
    assert store.get("a/1") is None
    assert queue.pending_count() == 0


def test_enqueue_in_refuses_known_names(store_q: tuple[SqliteStore, LocalQueue]) -> None:
    store, queue = store_q
    assert queue.enqueue(task("t1", n=1))
    store.transaction(lambda tx: queue.enqueue_in(tx, [task("t1", n=2), task("t2")]))
    got = {lt.task.name: lt.task.payload for lt in queue.lease(10)}
    assert got == {"t1": {"n": 1}, "t2": {}}


def test_enqueue_in_invalid_task_writes_nothing(store_q: tuple[SqliteStore, LocalQueue]) -> None:
    store, queue = store_q

    def step(tx: Any) -> None:
        tx.set("a/1", {"n": 1})
        queue.enqueue_in(tx, [task("t1", bad=float("nan"))])

    with pytest.raises(InvalidTask):
        store.transaction(step)
    assert store.get("a/1") is None
    assert queue.pending_count() == 0


def test_enqueue_in_other_transactions_declined(
    q: LocalQueue, tmp_path: Path, clock: FakeClock
) -> None:
    other = SqliteStore(tmp_path / "other.sqlite")
    try:
        assert other.transaction(lambda tx: q.enqueue_in(tx, [task("t1")])) is False
    finally:
        other.close()
    assert q.pending_count() == 0


def test_queue_writes_join_a_store_batch(store_q: tuple[SqliteStore, LocalQueue]) -> None:
    store, queue = store_q
    queue.enqueue(task("t1"))
    with pytest.raises(RuntimeError), store.batch():
        assert [lt.task.name for lt in queue.lease(10)] == ["t1"]
        queue.ack(["t1"])
        queue.enqueue(task("t2"))
        raise RuntimeError("the worker died mid-batch")
    # Lease, ack and enqueue went with the batch: t1 is due again, t2 never existed.
    assert [lt.task.name for lt in queue.lease(10)] == ["t1"]
    assert queue.pending_count() == 1


def test_a_delivery_acks_only_itself(q: LocalQueue, clock: FakeClock) -> None:
    q.enqueue(task("a"))
    (slow,) = q.lease(1)
    clock.advance(DEFAULT_LEASE_US + 1)  # the first worker overran its lease
    (fast,) = q.lease(1)
    assert fast.attempt == slow.attempt + 1
    q.ack([slow])  # late: the task is another worker's now
    q.nack(slow, clock.now_us)  # nor can it put it back
    assert q.pending_count() == 1
    assert q.lease(1) == []  # still leased to the second worker
    q.ack([fast])
    assert q.pending_count() == 0


def test_a_late_ack_leaves_a_new_task_of_the_same_name(tmp_path: Path, clock: FakeClock) -> None:
    q = LocalQueue(tmp_path / "q.sqlite", clock=clock, tombstone_us=10 * SEC)
    try:
        q.enqueue(task("a", n=1))
        (first,) = q.lease(1)
        clock.advance(DEFAULT_LEASE_US + 1)
        (second,) = q.lease(1)
        q.ack([second])
        clock.advance(11 * SEC)  # the tombstone expires; the name is free again
        assert q.enqueue(task("a", n=2))
        (fresh,) = q.lease(1)
        assert fresh.task.payload == {"n": 2}
        assert fresh.attempt == first.attempt  # same delivery count, another delivery
        q.ack([first])  # the first worker wakes up at last
        assert q.pending_count() == 1
        q.ack([fresh])
        assert q.pending_count() == 0
    finally:
        q.close()


def test_a_queue_file_from_before_leased_at_is_upgraded(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE tasks (name TEXT PRIMARY KEY, target TEXT NOT NULL, payload TEXT NOT NULL,"
        " eta_us INTEGER NOT NULL, leased_until INTEGER NOT NULL DEFAULT 0,"
        " attempts INTEGER NOT NULL DEFAULT 0, done_us INTEGER NULL)"
    )
    conn.execute("INSERT INTO tasks (name, target, payload, eta_us) VALUES ('a', 'm', '{}', 0)")
    conn.commit()
    conn.close()
    q = LocalQueue(path, clock=clock)
    try:
        (lt,) = q.lease(1)
        q.ack([lt])
        assert q.pending_count() == 0
    finally:
        q.close()


# -- another process holds the write lock ----------------------------------------------------


@contextlib.contextmanager
def write_locked(path: Path, release_after_s: float | None = None) -> Iterator[None]:
    """Another connection (as another process would) holds ``path``'s write lock:
    until ``release_after_s`` has passed, else until the block ends."""
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    timer = None
    if release_after_s is not None:
        timer = threading.Timer(release_after_s, lambda: blocker.execute("ROLLBACK"))
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.join()
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()


def test_opening_a_queue_takes_no_write_lock(tmp_path: Path, clock: FakeClock) -> None:
    """Each job process opens the home's queue: that must not queue for the lock."""
    path = tmp_path / "dm.sqlite"
    LocalQueue(store=SqliteStore(path), clock=clock).enqueue(task("a"))
    with write_locked(path):
        store = SqliteStore(path, busy_timeout=0.02, lock_wait=0.2)
        q = LocalQueue(store=store, clock=clock)  # opened although the lock is held
        assert q.pending_count() == 1
        assert q.any_due()
        # A write waits lock_wait, then says which file is busy.
        with pytest.raises(LockTimeout, match=re.escape(str(path))):
            q.enqueue(task("b"))
    assert q.enqueue(task("b"))
    q.close()
    store.close()


@pytest.mark.parametrize("where", ["file", "store"])
def test_writes_wait_out_a_lock_held_over_many_busy_timeouts(
    tmp_path: Path, clock: FakeClock, where: str
) -> None:
    """A writer elsewhere holding the lock for a while delays a write, never fails it."""
    path = tmp_path / "dm.sqlite"
    store = SqliteStore(path, busy_timeout=0.02) if where == "store" else None
    if store is None:
        q = LocalQueue(path, clock=clock, busy_timeout_ms=20)
    else:
        q = LocalQueue(store=store, clock=clock)
    try:
        q.enqueue(task("a"))
        with write_locked(path, release_after_s=0.3):
            assert q.enqueue(task("b"))  # ~15 busy timeouts
        with write_locked(path, release_after_s=0.3):
            leased = q.lease(10)
        assert names(leased) == ["a", "b"]
        with write_locked(path, release_after_s=0.3):
            q.nack(leased[1], clock.now_us)
        with write_locked(path, release_after_s=0.3):
            q.ack([leased[0]])
        assert names(q.lease(10)) == ["b"]
    finally:
        q.close()
        if store is not None:
            store.close()


def test_release_gives_back_a_lease_uncounted(q: LocalQueue, clock: FakeClock) -> None:
    q.enqueue_many([task("a"), task("b")])
    first = q.lease(2)
    q.release(first[1:])
    (again,) = q.lease(2)  # b is due again at once; a is still leased
    assert again.task.name == "b" and again.attempt == 1  # the released delivery did not count
    q.ack([first[1]])  # a late ack of the released delivery is ignored
    assert q.pending_count() == 2
    q.ack([first[0], again])
    assert q.pending_count() == 0


def test_wait_for_commit_wakes_on_another_process_commit(
    q: LocalQueue, db_path: Path, clock: FakeClock
) -> None:
    """The embedded worker's idle wait: another connection's commit ends it; its own do not."""
    since = q.data_version()
    q.enqueue(task("own"))  # this process's own commit
    assert q.data_version() == since
    assert q.wait_for_commit(since, 0.05) is False  # nothing from elsewhere: the wait runs out
    other = LocalQueue(db_path, clock=clock) if q.store is None else None
    store = SqliteStore(db_path) if q.store is not None else None
    elsewhere = other or LocalQueue(store=store, clock=clock)
    try:
        elsewhere.enqueue(task("theirs"))
        assert q.wait_for_commit(since, 60.0) is True  # at once, not after 60 s
    finally:
        elsewhere.close()
        if store is not None:
            store.close()
