"""A test bench for the engine: fake clock, seeded randomness, the fake distributor.

``Harness(tmp_path)`` runs the real engine on a real SQLite store with either
the real local queue (``queue="local"``) or :class:`ChaosQueue`, an in-memory
test double of the TaskQueue port that delivers due tasks in random order,
delivers some twice (at once, or hours later: after the queue's dedupe window),
delays some, and can fail a dispatch after the commit (as a process crash
between commit and enqueue would). ``Harness.drain(workers=N)`` delivers the
ChaosQueue's tasks from N threads at once, as several function instances would.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from distributors.fake import FakeWorld, Job
from dmcore import ids
from dmcore.client import serve_in_process
from dmcore.distributor import Registry, backoff
from dmcore.engine import docs
from dmcore.engine.core import Engine, Settings
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.queue.base import Task, TaskQueue
from dmcore.queue.local import LocalQueue
from dmcore.runtime.embedded import run_batch
from dmcore.service import Caller, Service
from dmcore.states import AttemptState, ExecutionState
from dmcore.store.base import MAX_COMMIT_WRITES, Store
from dmcore.store.sqlite import SqliteStore

START_US = 1_700_000_000_000_000
SECRET = b"test-notify-secret-0123456789abc"


class FakeClock:
    def __init__(self, start_us: int = START_US) -> None:
        self.now_us = start_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * 1_000_000)


@dataclasses.dataclass
class Chaos:
    """Fault rates of the ChaosQueue (0 = never)."""

    duplicate: float = 0.0
    delay: float = 0.0
    fail_dispatch: float = 0.0
    """Chance that a dispatch fails (after the step's commit, as a process dying there)."""
    fail_partway: bool = False
    """A failing dispatch queues some of its tasks first (a random head of them)."""
    reorder: bool = True
    late_duplicate: float = 0.0
    """Chance that a task delivered once is delivered again hours later."""
    late_s: tuple[float, float] = (2 * 3600.0, 8 * 3600.0)
    """How much later a late duplicate comes (after any dedupe window)."""
    dedupe_s: float | None = None
    """How long a task name is remembered (refused when queued again); None: forever.
    Cloud Tasks remembers about an hour after the task ran."""
    twin: float = 0.0
    """Chance that a task is handed out twice at once (two workers may run it together)."""


class ChaosQueue(TaskQueue):
    """In-memory TaskQueue test double with injected faults; safe across threads."""

    def __init__(self, clock: FakeClock, rng: random.Random, chaos: Chaos) -> None:
        self.clock = clock
        self.rng = rng
        self.chaos = chaos
        self.pending: list[tuple[Task, int]] = []
        self.seen: dict[str, int] = {}  # name -> when it was last queued
        self.delivered = 0
        self.lock = threading.RLock()

    def enqueue(self, task: Task) -> bool:
        return self.enqueue_many([task])[0]

    def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        with self.lock:
            if self.chaos.fail_dispatch and self.rng.random() < self.chaos.fail_dispatch:
                if self.chaos.fail_partway and len(tasks) > 1:
                    self._queue(tasks[: self.rng.randint(1, len(tasks) - 1)])
                raise ConnectionError("chaos: dispatch failed")
            return self._queue(tasks)

    def _queue(self, tasks: Sequence[Task]) -> list[bool]:
        with self.lock:
            now = self.clock()
            window = None if self.chaos.dedupe_s is None else int(self.chaos.dedupe_s * 1e6)
            out = []
            for t in tasks:
                if t.name in self.seen and (window is None or self.seen[t.name] + window > now):
                    out.append(False)
                    continue
                self.seen[t.name] = max(now, t.eta_us)
                eta = t.eta_us
                if self.chaos.delay and self.rng.random() < self.chaos.delay:
                    eta = max(eta, now) + self.rng.randint(1, 3_000_000)
                # Through JSON, as a real queue stores it: no object is shared with the step.
                payload = json.loads(json.dumps(t.payload))
                self.pending.append((dataclasses.replace(t, eta_us=eta, payload=payload), 1))
                if self.chaos.twin and self.rng.random() < self.chaos.twin:
                    self.pending.append((dataclasses.replace(t, eta_us=eta, payload=payload), 2))
                out.append(True)
            return out

    def next_due_us(self) -> int | None:
        with self.lock:
            return min((t.eta_us for t, _ in self.pending), default=None)

    def take(self) -> tuple[Task, int] | None:
        with self.lock:
            now = self.clock()
            due = [i for i, (t, _) in enumerate(self.pending) if t.eta_us <= now]
            if not due:
                return None
            i = self.rng.choice(due) if self.chaos.reorder else due[0]
            return self.pending.pop(i)

    def retry(self, task: Task, delivery: int, at_us: int) -> None:
        with self.lock:
            self.pending.append((dataclasses.replace(task, eta_us=at_us), delivery + 1))

    def maybe_duplicate(self, task: Task, delivery: int) -> None:
        """Deliver a task once more (a first delivery only, so duplicate=1.0 means
        "every task twice"), at a random later point among the due tasks, or
        (``late_duplicate``) hours later."""
        if delivery != 1:
            return
        with self.lock:
            if self.chaos.duplicate and self.rng.random() < self.chaos.duplicate:
                self.pending.append((task, delivery + 1))
            if self.chaos.late_duplicate and self.rng.random() < self.chaos.late_duplicate:
                low, high = self.chaos.late_s
                at = self.clock() + int(self.rng.uniform(low, high) * 1e6)
                self.pending.append((dataclasses.replace(task, eta_us=at), delivery + 1))


SETTLE_OVERRUN_S = 3600
"""How long past its end :meth:`Harness.settle` follows follow-ups that keep coming back
before it gives up (:class:`SettleStuck`): a failed re-dispatch is retried by the next
sweep, minutes at most, so an hour means they never go."""


class SettleStuck(RuntimeError):
    """Follow-ups keep coming back past settle's end: a run that can never settle."""


def follow_ups_left(store: Store, now_us: int) -> bool:
    """Whether committed follow-ups wait for the sweep: outbox records, or follow-ups
    pending on an attempt that are due to be re-sent by ``now_us``."""
    if store.count(docs.OUTBOX):
        return True
    first = store.query(docs.ATTEMPTS, order_by=docs.PENDING_DUE, limit=1)
    return bool(first) and int(first[0][1][docs.PENDING_DUE]) <= now_us


class Harness:
    """The engine + service + fake distributor, driven step by step by a test."""

    def __init__(
        self,
        tmp_path: Any,
        *,
        queue: str = "local",
        seed: int = 0,
        chaos: Chaos | None = None,
        configs: dict[str, Any] | None = None,
        store: Store | None = None,
        world: FakeWorld | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.rng = random.Random(seed)
        # Typed as the default SqliteStore so tests that reach into the SQLite file keep
        # type-checking; a store passed in is used through the Store port only.
        # Not durable (no fsync: tests are about what is committed, not power cuts),
        # and held to Firestore's 500 writes per commit, whatever the store.
        self.store = (
            SqliteStore(
                tmp_path / "dm.sqlite",
                indexed_fields=docs.INDEXED_FIELDS,
                ordered_fields=docs.SWEPT,
                durable=False,
            )
            if store is None
            else cast(SqliteStore, store)
        )
        self.store.max_writes = MAX_COMMIT_WRITES
        self.local: LocalQueue | None = None
        self._batch_threads: list[concurrent.futures.ThreadPoolExecutor] = []
        self.chaos: ChaosQueue | None = None
        q: TaskQueue
        if queue == "local":
            # As embedded mode has it: on SQLite the queue is a table of the store's
            # file (tasks commit with their step, batches commit once); on another
            # store a file of its own (the engine's outbox carries the follow-ups).
            self.local = (
                LocalQueue(store=self.store, clock=self.clock)
                if isinstance(self.store, SqliteStore)
                else LocalQueue(tmp_path / "queue.sqlite", clock=self.clock)
            )
            q = self.local
        else:
            self.chaos = ChaosQueue(self.clock, self.rng, chaos or Chaos(duplicate=0.3, delay=0.2))
            q = self.chaos
        self.registry = Registry(dm_host="dm.test")
        self.world = world or FakeWorld(self.rng.randbytes)
        self.world.install(self.registry)
        self.registry.set_config(
            self.registry.config_from_dict(
                {
                    "distributor_configs": configs
                    or {
                        "fake": {"fake": {}},
                        "fake_poll": {"fake": {"poll_timeout": "60s"}},
                        "fake_alias": {"alias": {"other_config": "fake"}},
                    }
                }
            ),
            version="v1",
        )
        self.engine = Engine(
            self.store,
            q,
            self.registry,
            clock=self.clock,
            rand=self.rng.randbytes,
            settings=Settings(notify_secret=SECRET),
        )
        self.service = serve_in_process(Service(self.engine))
        self.world.service = self.service
        self.inbox: list[tuple[bytes, dict[str, str]]] = []
        self.world.publish = lambda topic, data, attrs: self.inbox.append((data, dict(attrs)))
        self.failures: list[str] = []
        self.workers = 1
        """Threads that run the ChaosQueue's tasks in :meth:`drain` (1: in order, replayable)."""

    # -- driving ------------------------------------------------------------------

    def _deliver_inbox(self) -> int:
        n = 0
        while self.inbox:
            i = self.rng.randrange(len(self.inbox)) if self.chaos else 0
            data, attrs = self.inbox.pop(i)
            self.engine.receive_notification(data, attrs)
            if (
                self.chaos
                and self.chaos.chaos.duplicate
                and self.rng.random() < self.chaos.chaos.duplicate
            ):
                self.engine.receive_notification(data, attrs)
            n += 1
        return n

    def drain(self, max_tasks: int = 100_000, *, workers: int | None = None) -> int:
        """Deliver notifications and run every task due now; returns how many ran.

        ``workers`` (default ``self.workers``) > 1: the ChaosQueue's tasks are run
        by that many threads at once (their order then varies from run to run);
        the local queue's batches, one at a time, each by one of that many threads
        (drawn), so that a thread's batch follows commits of other connections.
        """
        workers = self.workers if workers is None else workers
        total = 0
        while total < max_tasks:
            n = self._deliver_inbox()
            if self.local is not None:
                n += self._local_batch(workers)
            elif workers > 1:
                n += self._run_concurrently(workers)
            else:
                assert self.chaos is not None
                while (item := self.chaos.take()) is not None:
                    self._deliver(*item)
                    n += 1
            if n == 0:
                break
            total += n
        return total

    def deliver_one(self) -> bool:
        """Run one task due now (the ChaosQueue's pick, or the local queue's next),
        so that a test can act between two deliveries; whether one ran."""
        if self.local is not None:
            return run_batch(self.engine, self.local, 1, self._failed) > 0
        assert self.chaos is not None
        item = self.chaos.take()
        if item is None:
            return False
        self._deliver(*item)
        return True

    def _deliver(self, task: Task, delivery: int) -> None:
        assert self.chaos is not None
        try:
            self.engine.handle_task(task.target, task.payload, delivery, task.name)
        except Exception as e:
            self.failures.append(f"{task.payload.get('kind')}: {e!r}")
            self.chaos.retry(task, delivery, self.clock() + int(backoff(delivery) * 1e6))
        else:
            self.chaos.maybe_duplicate(task, delivery)

    def _local_batch(self, workers: int) -> int:
        """One batch of the local queue, here or (``workers`` > 1) on a drawn thread of
        a pool that lives as long as the harness."""
        assert self.local is not None
        if workers <= 1:
            return run_batch(self.engine, self.local, 50, self._failed)
        while len(self._batch_threads) < workers:
            self._batch_threads.append(
                concurrent.futures.ThreadPoolExecutor(1, f"batch-{len(self._batch_threads)}")
            )
        pool = self._batch_threads[self.rng.randrange(workers)]
        return pool.submit(run_batch, self.engine, self.local, 50, self._failed).result()

    def _run_concurrently(self, workers: int) -> int:
        """Run the ChaosQueue's due tasks from ``workers`` threads until none is due."""
        chaos = self.chaos
        assert chaos is not None
        cv = threading.Condition()
        busy = [0]
        ran = [0]
        errors: list[BaseException] = []

        def work() -> None:
            while True:
                with cv:
                    item = chaos.take()
                    if item is None:
                        if busy[0] == 0:
                            cv.notify_all()
                            return
                        cv.wait(0.05)  # a busy worker may queue more
                        continue
                    busy[0] += 1
                try:
                    self._deliver(*item)
                except BaseException as e:  # the harness itself broke: report it
                    errors.append(e)
                finally:
                    with cv:
                        busy[0] -= 1
                        ran[0] += 1
                        cv.notify_all()

        threads = [threading.Thread(target=work, name=f"worker-{i}") for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return ran[0]

    def _failed(self, task: Task, e: Exception) -> None:
        self.failures.append(f"{task.payload.get('kind')}: {e!r}")

    def next_due_us(self) -> int | None:
        return (
            self.local.next_due_us()
            if self.local
            else self.chaos.next_due_us()
            if self.chaos
            else None
        )

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.drain()

    def settle(self, max_seconds: float = 3600) -> None:
        """Drain, sweep and move the clock to each next due task, up to ``max_seconds``."""
        end = self.clock() + int(max_seconds * 1e6)
        while True:
            self.drain()
            self.clock.advance(6)  # past the outbox staleness limit
            self.engine.sweep()
            # Past the end, what the drain ran was due by the clock's own steps
            # (polls of running executions re-armed in turn): stop, or the loop
            # would follow them for ever.
            if self.drain() and self.clock() < end:
                continue
            if follow_ups_left(self.store, self.clock()):
                if self.clock() > end + SETTLE_OVERRUN_S * 1_000_000:
                    pending = self.store.query(docs.ATTEMPTS, order_by=docs.PENDING_DUE, limit=1)
                    raise SettleStuck(
                        f"follow-ups still left {SETTLE_OVERRUN_S} s past settle's end: "
                        f"{self.store.count(docs.OUTBOX)} outbox records; first attempt with "
                        f"pending ones: {pending[0][0] if pending else None}"
                    )
                continue  # a re-dispatch failed (chaos): sweep again
            nxt = self.next_due_us()
            if nxt is None or nxt > end:
                return
            self.clock.now_us = max(self.clock.now_us, nxt)

    # -- the API as a user would call it ----------------------------------------------

    def ensure(self, *descs: dm_pb2.Quest.Desc, attempts: Sequence[int] = (1,)) -> list[str]:
        req = dm_pb2.EnsureGraphDataReq()
        for d in descs:
            req.quest.append(d)
            req.quest_attempt.add(nums=list(attempts))
        rsp = self.service.ensure_graph_data(req, Caller.trusted())
        assert rsp.accepted
        self.drain()
        return [q.id for q in rsp.quest_ids]

    def attempt(self, aid: AttemptID) -> dict[str, Any]:
        doc = self.store.get(docs.attempt_path(aid))
        assert doc is not None, f"no attempt {aid}"
        return doc

    def state(self, aid: AttemptID) -> AttemptState:
        return AttemptState(self.attempt(aid)["state"])

    def execution(self, eid: ExecutionID) -> dict[str, Any]:
        doc = docs.read_execution(self.store, eid)
        assert doc is not None, f"no execution {eid}"
        return doc

    def exec_state(self, eid: ExecutionID) -> ExecutionState:
        return ExecutionState(self.execution(eid)["state"])

    def result(self, aid: AttemptID) -> Any:
        import json

        doc = docs.read_result(self.store, aid)
        return None if doc is None else json.loads(doc["object"])

    def play(self, eid: ExecutionID, callback: Callable[[Job], None]) -> dm_pb2.Result:
        """Play one execution and let the engine react."""
        r = self.world.run_task(eid, callback)
        self.drain()
        return r

    def close(self) -> None:
        for pool in self._batch_threads:
            pool.shutdown()
        if self.local:
            self.local.close()
        self.store.close()


def qid_of(desc: dm_pb2.Quest.Desc) -> str:
    return ids.quest_id(desc)
