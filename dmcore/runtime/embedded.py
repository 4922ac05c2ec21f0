"""dm on one machine: SQLite store, local persistent queue, in-process worker.

``Embedded(home)`` keeps everything under ``home`` (default ``.dm/``):
``dm.sqlite`` (the store, with the task queue as a table of the same file;
with another store, ``tasks.sqlite``) and ``secret`` (the notification HMAC
key, created on first use, readable by the owner only).
:meth:`Embedded.work` runs a leased batch of due tasks in one commit;
:meth:`Embedded.drive` runs the worker until a condition holds, sleeping
until the next task is due.

Why one file and one commit per batch: a SQLite commit costs about as much as
the small transaction it ends, and an execution takes a dozen steps. With the
queue in the store's file a step and the tasks it queues commit together (no
outbox records), and the worker's batch makes one commit of many steps.
Durability is unchanged: a task is acknowledged in the same commit as its
effects, so a crash before it redelivers the task, which every step tolerates
(delivery is at least once).

Why the batch is short: it holds the file's write lock, and every job process
and supervisor of a ``local`` graph writes to the same file. So it runs for at
most :data:`HOLD_S`, and calls to distributors that start processes or ask
servers (all but ``in_process`` kinds) come after its commit: with a hundred
jobs to start, one batch held the lock for minutes, and jobs gave up waiting.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dmcore.client import serve_in_process
from dmcore.distributor import Registry, backoff
from dmcore.engine import docs, layout
from dmcore.engine.core import Engine, Settings
from dmcore.queue.base import Task
from dmcore.queue.local import LeasedTask, LocalQueue
from dmcore.service import Service
from dmcore.store.base import Store
from dmcore.store.sqlite import SqliteStore

log = logging.getLogger("dm.embedded")


DEFAULT_HOME = ".dm"
DEFAULT_CONFIG: dict[str, Any] = {
    "distributor_configs": {
        "jobsim": {"jobsim": {"pool": "local"}},
        "local": {"local": {}},
    }
}
"""Built-in distributor configs of embedded mode (``dm run --config`` replaces them)."""


def build_registry(config: Mapping[str, Any], *, dm_host: str = "") -> Registry:
    """A registry with every installed distributor and ``config`` (checked; no I/O)."""
    registry = Registry(dm_host=dm_host)
    registry.load_installed()
    text = json.dumps(config, sort_keys=True)
    registry.set_config(
        registry.config_from_dict(config), hashlib.sha256(text.encode()).hexdigest()[:12]
    )
    return registry


def home_registry(
    home: str | os.PathLike[str], config: Mapping[str, Any] | None = None
) -> Registry:
    """A registry with every installed distributor and the home's configs.

    With ``config``, it is checked, then saved in the home (``config.json``) so
    that job processes opening the same home see the same configs. Without,
    the saved one is used, or the built-in :data:`DEFAULT_CONFIG`.
    """
    path = pathlib.Path(home) / "config.json"
    if config is None:
        config = json.loads(path.read_text()) if path.exists() else DEFAULT_CONFIG
    registry = build_registry(config, dm_host=f"file://{pathlib.Path(home).resolve()}")
    text = json.dumps(config, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return registry


def wall_clock_us() -> int:
    return time.time_ns() // 1000


def load_secret(path: pathlib.Path) -> bytes:
    """The notification secret at ``path``, created (32 random bytes, mode 600) if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    return path.read_bytes()


class Embedded:
    """An engine, its service and a worker over files in ``home``."""

    def __init__(
        self,
        home: str | os.PathLike[str],
        registry: Registry,
        *,
        clock: Callable[[], int] = wall_clock_us,
        rand: Callable[[int], bytes] = os.urandom,
        settings: Settings | None = None,
        store: Store | None = None,
    ) -> None:
        """``store``: another Store than ``home/dm.sqlite`` (``dm serve --emulators``:
        Firestore); the queue is then ``home/tasks.sqlite``, a file apart that a
        later SQLite home in the same folder leaves alone."""
        self.home = pathlib.Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.store: Store = (
            SqliteStore(
                self.home / "dm.sqlite",
                indexed_fields=docs.INDEXED_FIELDS,
                ordered_fields=docs.SWEPT,
            )
            if store is None
            else store
        )
        settings = settings or Settings(quest_cache=QUEST_CACHE)
        if isinstance(self.store, SqliteStore):
            # One file, no per-collection write limit: one query per swept field beats 16.
            settings.sweep_shards = 1
        self.check_layout: Callable[[], None] | None = None
        """The record-layout check of a store given (a server's, left to its first
        request: opening contacts nothing); the home's own file is checked here."""
        if store is None:
            try:
                layout.check_settings(
                    self.store, str(self.home), f"move {self.home} aside or delete it", settings
                )
            except layout.LayoutMismatch:
                self.store.close()
                raise
        else:
            self.check_layout = functools.partial(
                layout.check_settings, self.store, repr(self.store), "empty that store", settings
            )
        if isinstance(self.store, SqliteStore):
            self.queue = LocalQueue(store=self.store, clock=clock)
            _adopt_old_queue(self.home / "queue.sqlite", self.queue)
        else:
            self.queue = LocalQueue(self.home / "tasks.sqlite", clock=clock)
        if not settings.notify_secret:
            settings.notify_secret = load_secret(self.home / "secret")
        self.engine = Engine(
            self.store, self.queue, registry, clock=clock, rand=rand, settings=settings
        )
        self.service = serve_in_process(Service(self.engine))

    def work(self, limit: int = 100) -> int:
        """Run the tasks due now (one leased batch, one commit); returns how many ran.

        The batch holds the store's write lock at most about :data:`HOLD_S`,
        and distributor calls after it take at most about :data:`CALLS_S`.
        """
        return run_batch(self.engine, self.queue, limit, hold_s=HOLD_S, calls_s=CALLS_S)

    def drain(self, max_rounds: int = 1_000_000) -> int:
        """Run tasks until none is due now (never waits); returns how many ran."""
        total = 0
        for _ in range(max_rounds):
            n = self.work()
            if n == 0:
                break
            total += n
        return total

    def drive(
        self,
        until: Callable[[], bool],
        *,
        timeout_s: float | None = None,
        tick: Callable[[], Any] | None = None,
        sweep_every_s: float = 5.0,
    ) -> bool:
        """Work (and sweep) until ``until()`` is true or ``timeout_s`` passes.

        Sleeps, when idle, until the next task is due (at most 0.2 s at a
        time), or until another process commits to the queue's file (a job's
        end, reported by its supervisor, wakes it at once). Returns whether
        ``until()`` became true.
        """
        start = time.monotonic()
        last_sweep = start
        while True:
            seen = self.queue.data_version()
            ran = self.drain()
            if tick is not None:
                tick()
            if until():
                return True
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                return False
            if now - last_sweep >= sweep_every_s:
                self.engine.sweep()
                last_sweep = now
            if ran == 0:
                nxt = self.queue.next_due_us()
                wait = 0.2 if nxt is None else max(0.0, min(0.2, (nxt - self.clock()) / 1e6))
                self.queue.wait_for_commit(seen, wait)

    def close(self) -> None:
        self.queue.close()
        close = getattr(self.store, "close", None)
        if callable(close):
            close()


QUEST_CACHE = 100_000
"""Quest descriptions an embedded engine keeps (``Settings.quest_cache``; about 550 bytes
each, some 55 MiB in all): the one process runs the whole graph, and a graph of more
quests than the default 10,000 would read and decode each again at each of its steps
(its run, its schedule, its end), the oldest being dropped first."""

HOLD_S = 0.5
"""How long the worker's batch runs tasks while it holds the store's write lock
before it commits and gives the tasks it has not started back to the queue:
job processes and supervisors wait for that commit."""

CALLS_S = 5.0
"""How long the worker spends on distributor calls after a batch before it
gives the rest back (they wait for no lock, but the queue waits for them)."""


class _CallRefused(BaseException):
    """A distributor call inside the worker's batch: the task is run after the commit.

    A BaseException, as the engine turns every Exception out of a distributor
    call into an outcome (REJECTED, MISSING, ...): this one is no outcome.
    """


_worker = threading.local()


def _refuse_in_batch() -> None:
    """The registry's ``call_guard``: no distributor call while the batch holds the lock."""
    if getattr(_worker, "in_batch", False):
        raise _CallRefused


@contextlib.contextmanager
def _calls_refused(locked: bool) -> Iterator[None]:
    _worker.in_batch = locked
    try:
        yield
    finally:
        _worker.in_batch = False


def run_batch(
    engine: Engine,
    queue: LocalQueue,
    limit: int = 100,
    on_failure: Callable[[Task, Exception], None] | None = None,
    *,
    hold_s: float | None = None,
    calls_s: float | None = None,
) -> int:
    """Lease up to ``limit`` due tasks, run them, acknowledge them; returns how many ran.

    On a queue in a SQLite store's file the tasks run in one commit of the
    store (:meth:`Engine.batch`), and a failing task's transaction writes
    nothing. That batch holds the file's write lock from start to end, so it
    makes no call to a distributor that is not ``in_process`` (a ``local``
    job to start, a server to ask): such a task is run after the commit, its
    own steps committing on their own. Nobody then waits for the lock while
    a job starts, and a job's supervisor is told to run a command only once
    the record it needs is committed.

    ``hold_s`` bounds the time the batch runs tasks with the lock held; until
    then it leases again what its own steps queued (a chain's next link, a
    job's report), so that a step and the ones it causes share one commit:
    a commit (an fsync) costs more than most steps. ``calls_s`` bounds the
    time spent on distributor calls after it; tasks not started by then go
    back to the queue, their delivery uncounted (:meth:`LocalQueue.release`).
    At least one task runs in each phase. Without ``hold_s``, one lease of
    ``limit`` tasks. A failed task is put back with backoff (``on_failure``
    hears of it first). Distributor calls (``D.run`` and friends) are never
    made inside a store transaction; a task whose effects are lost with its
    batch is delivered again, as after any crash.
    """
    if not queue.any_due():
        return 0  # no write lock for nothing (the idle worker polls)
    locked = queue.commits_with(engine.store)
    engine.registry.call_guard = _refuse_in_batch
    after: list[LeasedTask] = []
    ran = 0
    started = 0.0  # set once the batch holds the lock

    def out_of_time() -> bool:
        return hold_s is not None and time.monotonic() - started >= hold_s

    with engine.store.batch() if locked else contextlib.nullcontext():
        started = time.monotonic()  # waiting for the lock is not counted
        while True:
            with engine.batch():  # its follow-ups due now run at its end, in this commit
                leased = queue.lease(limit)
                done: list[LeasedTask] = []
                with _calls_refused(locked):
                    for i, lt in enumerate(leased):
                        if ran and out_of_time():
                            queue.release(leased[i:])
                            break
                        try:
                            ok = _run_task(engine, queue, lt, on_failure)
                        except _CallRefused:
                            # Actions call their distributor before they write (else the
                            # run after the commit is one more delivery, which steps tolerate).
                            after.append(lt)
                            continue
                        ran += 1
                        if ok:
                            done.append(lt)
                if done:
                    queue.ack(done)
            if not (locked and hold_s is not None and leased) or out_of_time():
                break
    if not after:
        return ran
    started = time.monotonic()
    done = []
    rest: list[LeasedTask] = []
    for i, lt in enumerate(after):
        if i and calls_s is not None and time.monotonic() - started >= calls_s:
            rest = after[i:]
            break
        ran += 1
        if _run_task(engine, queue, lt, on_failure):
            done.append(lt)
    if done or rest:
        with engine.batch():  # one commit
            queue.ack(done)
            queue.release(rest)
    return ran


def _run_task(
    engine: Engine,
    queue: LocalQueue,
    lt: LeasedTask,
    on_failure: Callable[[Task, Exception], None] | None,
) -> bool:
    """Run one leased task; False (and the task put back with backoff) if it failed."""
    t = lt.task
    try:
        engine.handle_task(t.target, t.payload, lt.attempt, t.name)
    except Exception as e:
        log.exception("task %s (%s) failed, delivery %d", t.name, t.target, lt.attempt)
        if on_failure is not None:
            on_failure(t, e)
        retry_at = engine.clock() + int(backoff(lt.attempt, cap_s=60) * 1_000_000)
        queue.nack(lt, retry_at)
        return False
    return True


def _adopt_old_queue(path: pathlib.Path, queue: LocalQueue) -> None:
    """Move pending tasks of a home's former ``queue.sqlite`` into ``queue``, then drop it."""
    if not path.exists():
        return
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, target, payload, eta_us FROM tasks WHERE done_us IS NULL"
        ).fetchall()
    except sqlite3.Error:
        rows = []
    finally:
        conn.close()
    queue.enqueue_many([Task(n, t, json.loads(p), eta) for n, t, p, eta in rows])
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
    log.info("moved %d pending task(s) from %s into the store's file", len(rows), path)
