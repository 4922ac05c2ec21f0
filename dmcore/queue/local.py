"""The ``local`` TaskQueue adapter: a persistent task queue in its own SQLite file.

Embedded mode has no Cloud Tasks, so follow-up work goes to a table in a
SQLite file that survives a process restart. Delivery is *at least once*:

* :meth:`LocalQueue.lease` hides a task for ``lease_us``; a worker that
  crashes before :meth:`LocalQueue.ack` gets the task redelivered once the
  lease runs out (with ``attempt`` + 1).
* An acked task is not deleted but kept as a *tombstone* for
  ``tombstone_us`` (as Cloud Tasks does), so a re-sent task of the same name is
  refused instead of running twice in a row.

Time comes only from the injected ``clock`` (integer microseconds since the
epoch), so tests drive the queue with a fake clock; :meth:`LocalQueue.next_due_us`
tells a driver loop how far to sleep (or to advance a fake clock).

Several threads and processes may share one file: each thread has its own
connection, and every write runs in a ``BEGIN IMMEDIATE`` transaction so two
leasers never get the same task while its lease holds. A write waits for the
lock while another process holds it, retrying up to ``lock_wait``
(:func:`~dmcore.store.sqlite.begin_immediate`); opening a queue whose table
exists takes no write lock at all.

Built on a :class:`~dmcore.store.sqlite.SqliteStore` (``LocalQueue(store=...)``,
the embedded default) the queue is a table of the store's own file and uses
the store's connections: its writes join the store's
:meth:`~dmcore.store.sqlite.SqliteStore.batch`, and :meth:`LocalQueue.enqueue_in`
queues tasks in the same commit as a store transaction, so the engine needs
no outbox record for them.

The worker that runs leased tasks is :func:`dmcore.runtime.embedded.run_batch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dmcore.queue.base import TASK_NAME_RE, InvalidTask, QueueError, Task, TaskQueue
from dmcore.store.base import Store, Transaction
from dmcore.store.sqlite import LOCK_WAIT_S, SqliteStore, ensure_schema, immediate

logger = logging.getLogger("dm.queue")

Clock = Callable[[], int]
"""Returns now in integer microseconds since the Unix epoch."""

DEFAULT_LEASE_US = 60 * 1_000_000
DEFAULT_TOMBSTONE_US = 3600 * 1_000_000
_BUSY_TIMEOUT_MS = 30_000

_SCHEMA = {
    "tasks": """
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    eta_us INTEGER NOT NULL,
    leased_until INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    done_us INTEGER NULL,
    leased_at INTEGER NOT NULL DEFAULT 0
)""",
    # Pending tasks by due time, then as queued (the rowid every index ends with):
    # what lease() scans.
    "tasks_due": "CREATE INDEX IF NOT EXISTS tasks_due ON tasks (eta_us) WHERE done_us IS NULL",
    # Tombstones by age: what purge_tombstones() deletes.
    "tasks_done": "CREATE INDEX IF NOT EXISTS tasks_done ON tasks (done_us)"
    " WHERE done_us IS NOT NULL",
}
_OLD_PENDING = "tasks_pending"
"""The pending tasks' index of an older dm, by (eta_us, name): dropped at open. Tasks
ran in the order of their names, random hashes, so a worker's batch wrote documents
all over the file; in the order queued, the steps of one batch write neighbouring
rows (a fan-in of 10,000 wrote 43% fewer bytes)."""

# Insert, or take over a name whose tombstone has expired (but was not purged
# yet); a pending task or a live tombstone leaves the row alone (0 changes).
_INSERT = """
INSERT INTO tasks (name, target, payload, eta_us, leased_until, attempts, done_us)
VALUES (:name, :target, :payload, :eta_us, 0, 0, NULL)
ON CONFLICT (name) DO UPDATE SET
    target = excluded.target,
    payload = excluded.payload,
    eta_us = excluded.eta_us,
    leased_until = 0,
    attempts = 0,
    done_us = NULL
WHERE tasks.done_us IS NOT NULL AND tasks.done_us + :tombstone_us <= :now
"""


@dataclasses.dataclass(frozen=True)
class LeasedTask:
    """A task handed to a worker, hidden from other leasers until acked or expired."""

    task: Task
    attempt: int
    """1 on the first delivery, +1 on each redelivery (nack or lease expiry)."""
    leased_at: int = 0
    """When this delivery was leased (queue clock, µs; one more than the task's
    previous delivery when the clock has not moved since): it tells the delivery
    apart from any other of the same name, for :meth:`LocalQueue.ack` and ``nack``."""


def _by_delivery(
    tasks: Sequence[str | LeasedTask], value: int
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """WHERE clauses and parameter rows for names, and for leased deliveries."""
    names = [(value, t) for t in tasks if isinstance(t, str)]
    leased = [(value, t.task.name, t.leased_at) for t in tasks if isinstance(t, LeasedTask)]
    out: list[tuple[str, list[tuple[Any, ...]]]] = []
    if names:
        out.append(("WHERE name = ? AND done_us IS NULL", list(names)))
    if leased:
        out.append(("WHERE name = ? AND leased_at = ? AND done_us IS NULL", list(leased)))
    return out


def _encode(task: Task) -> dict[str, Any]:
    """Validates ``task`` and returns its row; raises InvalidTask before any write."""
    # Task checks name and target in __post_init__; check again here since a
    # frozen dataclass can still be bypassed, and the payload is not checked.
    if not isinstance(task.name, str) or not TASK_NAME_RE.match(task.name):
        raise InvalidTask(f"task name must match {TASK_NAME_RE.pattern}: {task.name!r}")
    if not isinstance(task.target, str) or not task.target:
        raise InvalidTask(f"task {task.name}: target must be a non-empty string")
    if not isinstance(task.eta_us, int) or isinstance(task.eta_us, bool) or task.eta_us < 0:
        raise InvalidTask(f"task {task.name}: eta_us must be an int >= 0: {task.eta_us!r}")
    if not isinstance(task.payload, dict):
        raise InvalidTask(f"task {task.name}: payload must be a dict")
    try:
        payload = _ENCODER.encode(task.payload)
    except (TypeError, ValueError) as e:
        raise InvalidTask(f"task {task.name}: payload is not JSON: {e}") from e
    return {"name": task.name, "target": task.target, "payload": payload, "eta_us": task.eta_us}


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


class LocalQueue(TaskQueue):
    """A persistent, at-least-once task queue in a SQLite file (embedded mode)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        clock: Clock,
        lease_us: int = DEFAULT_LEASE_US,
        tombstone_us: int = DEFAULT_TOMBSTONE_US,
        store: SqliteStore | None = None,
        busy_timeout_ms: int = _BUSY_TIMEOUT_MS,
        lock_wait: float = LOCK_WAIT_S,
    ) -> None:
        """A queue in ``path``, or (``store``) in the store's file on its connections.

        ``busy_timeout_ms`` and ``lock_wait`` (seconds): how long a write waits
        for the lock, per try and in all (in a store's file, the store's own).
        """
        if (path is None) == (store is None):
            raise ValueError("LocalQueue needs exactly one of path and store")
        self.store = store
        path = os.fspath(store.path if store is not None else path)  # type: ignore[arg-type]
        if path == ":memory:" or not path:
            # Each thread has its own connection, so an in-memory db would not be shared.
            raise ValueError("LocalQueue needs a file path")
        if lease_us <= 0 or tombstone_us < 0:
            raise ValueError("lease_us must be > 0 and tombstone_us >= 0")
        self.path = path
        self.clock = clock
        self.lease_us = lease_us
        self.tombstone_us = tombstone_us
        self._busy_timeout_ms = busy_timeout_ms
        self._lock_wait = lock_wait if store is None else store.lock_wait
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        # Every job process opens the queue: when the schema is there (always but
        # the first time), only reads, so that opening waits for no write lock.
        ensure_schema(self._conn(), _SCHEMA, self._lock_wait)
        if self._has_index(_OLD_PENDING):  # replaced by tasks_due; an index costs every write
            with self._write() as conn:
                conn.execute(f"DROP INDEX IF EXISTS {_OLD_PENDING}")
        if not self._has_leased_at():  # a queue from before deliveries were told apart
            with self._write() as conn:
                if not self._has_leased_at():
                    conn.execute(
                        "ALTER TABLE tasks ADD COLUMN leased_at INTEGER NOT NULL DEFAULT 0"
                    )

    # -- connections and transactions --

    def _has_index(self, name: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?"
        return self._conn().execute(sql, (name,)).fetchone() is not None

    def _has_leased_at(self) -> bool:
        return any(
            row[1] == "leased_at" for row in self._conn().execute("PRAGMA table_info(tasks)")
        )

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared)."""
        if self._closed:
            raise QueueError("queue is closed")
        if self.store is not None:
            return self.store.connection()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            # check_same_thread=False only so close() may close it from any thread.
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            with self._conns_lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front.

        BEGIN IMMEDIATE (not deferred) so that a read-then-write such as lease()
        cannot be overtaken by another writer between its read and its write.
        """
        if self._closed:
            raise QueueError("queue is closed")
        if self.store is not None:
            with self.store.write_scope() as conn:
                yield conn
            return
        conn = self._conn()
        with immediate(conn, self._lock_wait):
            yield conn

    def close(self) -> None:
        """Closes every thread's connection; the queue is unusable afterwards."""
        with self._conns_lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> LocalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- TaskQueue --

    def enqueue(self, task: Task) -> bool:
        """Queues ``task``; False if the name is pending or has a live tombstone."""
        return self.enqueue_many([task])[0]

    def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        """Queues ``tasks`` in one transaction; per task, True if it was new.

        A name repeated inside the batch is refused after its first occurrence.
        All tasks are validated first: an invalid one raises InvalidTask and
        nothing is written.
        """
        rows = [_encode(t) for t in tasks]
        if not rows:
            return []
        with self._write() as conn:
            return self._insert(conn, rows)

    def _insert(self, conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> list[bool]:
        now = self.clock()
        out: list[bool] = []
        for row in rows:
            cur = conn.execute(_INSERT, {**row, "now": now, "tombstone_us": self.tombstone_us})
            out.append(cur.rowcount == 1)
        return out

    def commits_with(self, store: Store) -> bool:
        return self.store is not None and self.store is store

    def enqueue_in(self, tx: Transaction, tasks: Sequence[Task]) -> bool:
        """Queue ``tasks`` in the commit of ``tx``, a transaction of this queue's store."""
        if self.store is None or self._closed:
            return False
        rows = [_encode(t) for t in tasks]

        def write(conn: sqlite3.Connection) -> None:
            self._insert(conn, rows)

        return self.store.join_transaction(tx, write)

    # -- consuming --

    def lease(self, limit: int = 100, target_prefix: str | None = None) -> list[LeasedTask]:
        """Leases up to ``limit`` due tasks (by eta, then as queued) for ``lease_us``.

        The tasks stay hidden from other leasers until the lease runs out; the
        caller must :meth:`ack` (or :meth:`nack`) them before then, otherwise
        they are delivered again.
        """
        if limit <= 0:
            return []
        sql = (
            "SELECT name, target, payload, eta_us, attempts, leased_at FROM tasks"
            " WHERE done_us IS NULL AND eta_us <= :now AND leased_until <= :now"
        )
        params: dict[str, Any] = {"limit": limit}
        if target_prefix:
            sql += " AND substr(target, 1, length(:prefix)) = :prefix"
            params["prefix"] = target_prefix
        sql += " ORDER BY eta_us, rowid LIMIT :limit"
        with self._write() as conn:
            now = self.clock()
            params["now"] = now
            # Each delivery of a task gets a later stamp than the one before, even
            # at the same clock reading (a released lease leased again at once), so
            # that a late ack of an earlier delivery never matches the current one.
            rows = [(*r[:5], max(now, r[5] + 1)) for r in conn.execute(sql, params)]
            conn.executemany(
                "UPDATE tasks SET leased_until = ?, attempts = attempts + 1, leased_at = ?"
                " WHERE name = ?",
                [(now + self.lease_us, stamp, r[0]) for *r, stamp in rows],
            )
        return [
            LeasedTask(
                task=Task(name=name, target=target, payload=json.loads(payload), eta_us=eta_us),
                attempt=attempts + 1,
                leased_at=stamp,
            )
            for name, target, payload, eta_us, attempts, stamp in rows
        ]

    def ack(self, tasks: Sequence[str | LeasedTask]) -> None:
        """Marks tasks done, keeping tombstones; unknown or already-done ones are ignored.

        A :class:`LeasedTask` is acknowledged only while it is still that
        delivery: a worker that overran its lease cannot ack the redelivery
        another worker holds now, nor a new task that took the name later.
        A bare name acknowledges whatever is pending under it.
        """
        if not tasks:
            return
        with self._write() as conn:
            now = self.clock()
            for sql, rows in _by_delivery(tasks, now):
                conn.executemany(f"UPDATE tasks SET done_us = ?, leased_until = 0 {sql}", rows)

    def nack(self, task: str | LeasedTask, retry_at_us: int) -> None:
        """Releases the lease on ``task`` and makes it due again at ``retry_at_us``.

        As for :meth:`ack`, a :class:`LeasedTask` only while it is that delivery.
        """
        with self._write() as conn:
            for sql, rows in _by_delivery([task], retry_at_us):
                conn.executemany(f"UPDATE tasks SET eta_us = ?, leased_until = 0 {sql}", rows)

    def release(self, tasks: Sequence[LeasedTask]) -> None:
        """Gives back leased tasks that were not started: due again at once, and
        this delivery is not counted (``attempt`` stays as it was before the lease).

        For a worker that leased more than it had time for. Only while each is
        still that delivery, as for :meth:`ack`.
        """
        if not tasks:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE tasks SET leased_until = 0, attempts = attempts - 1"
                " WHERE name = ? AND leased_at = ? AND done_us IS NULL AND attempts > 0",
                [(t.task.name, t.leased_at) for t in tasks],
            )

    # -- housekeeping and introspection --

    def purge_tombstones(self) -> int:
        """Deletes tombstones older than ``tombstone_us``; returns how many."""
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM tasks WHERE done_us IS NOT NULL AND done_us + ? <= ?",
                (self.tombstone_us, self.clock()),
            )
            return cur.rowcount

    def any_due(self) -> bool:
        """Whether :meth:`lease` would lease anything now (a read: no write lock)."""
        now = self.clock()
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM tasks WHERE done_us IS NULL AND eta_us <= ? AND leased_until <= ?"
                " LIMIT 1",
                (now, now),
            )
            .fetchone()
        )
        return row is not None

    def data_version(self) -> int:
        """SQLite's ``data_version`` of this thread's connection: it changes when
        another connection commits to the queue's file (this one's commits do not)."""
        row = self._conn().execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def wait_for_commit(self, since: int, timeout_s: float, every_s: float = 0.02) -> bool:
        """Sleep up to ``timeout_s``; return early (True) once another process has
        committed to the queue's file since :meth:`data_version` read ``since`` (a
        job's supervisor reporting its end, a job's step), so the worker runs what
        that queued now rather than at its next poll. A read of a shared-memory
        counter every ``every_s``: no lock, no disk."""
        deadline = time.monotonic() + timeout_s
        while self.data_version() == since:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(every_s, left))
        return True

    def next_due_us(self) -> int | None:
        """When the earliest pending task becomes deliverable (may be in the past).

        That is max(eta, lease end) over pending tasks; None if none is pending.
        """
        row = (
            self._conn()
            .execute("SELECT MIN(MAX(eta_us, leased_until)) FROM tasks WHERE done_us IS NULL")
            .fetchone()
        )
        due: int | None = row[0]
        return due

    def pending_count(self) -> int:
        """Tasks not done yet, leased or not."""
        row = self._conn().execute("SELECT COUNT(*) FROM tasks WHERE done_us IS NULL").fetchone()
        count: int = row[0]
        return count
