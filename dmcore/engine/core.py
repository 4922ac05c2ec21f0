"""The mutation runner: transactional steps, the outbox, dispatch and the sweep.

dm changes state only through *mutations* (spec §7). A transactional mutation
runs in one store transaction on one root record and returns follow-ups.
Follow-ups on the same root that are due now run inline in the same
transaction (DM's tail call), as do those marked ``together`` (and then
their root's); the others are written as outbox records in
that transaction, so a step and its continuation commit together. After the
commit the outbox records are handed to the task queue as *named* tasks and
deleted; the sweep re-dispatches records left behind by a crash between
commit and dispatch. A queue that lives in the store's own file (the
embedded queue) takes the tasks in that same commit instead
(:meth:`TaskQueue.enqueue_in`): the task row is its own outbox record, and
two writes and a transaction per follow-up go away. Delivery is at least
once, so every mutation is idempotent by state guards.

Some steps must not run in a transaction (calling a distributor); those are
*actions*: they read outside a transaction, call out, then run mutations.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from dmcore.distributor import (
    RUN_RETRY_CAP,
    RUN_RETRY_WINDOW,
    Registry,
    Snapshot,
    TransientError,
)
from dmcore.engine import docs, steps
from dmcore.engine.base import Action, Ctx, Later, Mutation, Step, Uow, task_name
from dmcore.ids import ExecutionID
from dmcore.notify import tokens
from dmcore.proto import dm_pb2
from dmcore.queue.base import Task, TaskQueue
from dmcore.store.base import Doc, Store, Transaction

log = logging.getLogger("dm.engine")

MUTATION_TARGET = "mutation"
DISTRIBUTOR_TARGET_PREFIX = "distributor/"
OUTBOX_STALE_US = 5_000_000
MAX_INLINE = 256
"""Same-root follow-ups one transaction runs inline (tail calls) before queueing the rest."""
MAX_BATCH_INLINE = 10_000
"""Follow-up mutations a batch runs itself before it commits; more are queued."""
PROPAGATE_BATCH = 64
"""Back edges a completion acks per step; the step chains itself until none is left."""
INLINE_WRITE_BUDGET = 300
"""Tail calls stop running inline once a transaction has this many writes pending
(the rest are queued): with its outbox records it stays under Firestore's 500
writes per commit (``MAX_COMMIT_WRITES``), whatever the fan-out."""

Publish = Callable[[bytes, dict[str, str]], None]
"""Publish one message (data, attributes) to the notification topic; raise on failure."""


@dataclasses.dataclass
class Settings:
    """Engine knobs; defaults suit both back ends."""

    outbox_stale_us: int = OUTBOX_STALE_US
    sweep_batch: int = 200
    notify_topic: str = "dm-distributor-notify"
    notify_secret: bytes = b""
    """HMAC key of notification auth tokens (from configuration, never code)."""
    max_inline: int = MAX_INLINE
    propagate_batch: int = PROPAGATE_BATCH
    quest_cache: int = 10_000
    """Quest descriptions kept in memory (least recently used dropped first)."""
    run_retry_window_us: int = int(RUN_RETRY_WINDOW.total_seconds() * 1_000_000)
    """How long transient D.run errors are retried (from the first try) before REJECTED."""
    run_retry_cap_us: int = int(RUN_RETRY_CAP.total_seconds() * 1_000_000)
    """The longest wait between two tries of D.run."""
    run_lease_us: int = 600_000_000
    """How long a delivery's claim to call D.run for an execution holds: others wait
    (D.run is called once per execution), unless the claimer died (then it expires)."""


class _BatchState(threading.local):
    """Per thread: the mutations waiting to run at the end of the open batch, if any."""

    steps: collections.deque[Mutation] | None = None


class Engine:
    """Runs mutations against a store, queueing follow-ups through a task queue."""

    def __init__(
        self,
        store: Store,
        queue: TaskQueue,
        registry: Registry,
        *,
        clock: Callable[[], int],
        rand: Callable[[int], bytes],
        settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.registry = registry
        self.clock = clock
        self.rand = rand
        self.settings = settings or Settings()
        self._quests: collections.OrderedDict[str, dm_pb2.Quest.Desc] = collections.OrderedDict()
        self._quests_lock = threading.Lock()
        self._batch = _BatchState()
        self.stats: dict[str, int] = {}
        self.publish: Publish | None = None
        """Where notifications returned by ``handle_task_queue_task`` go.

        None (embedded default): processed inline by the task. Set (the gcp
        backend: the notification topic's publisher): each is published with
        an ``auth_token`` minted here, so it travels Pub/Sub -> ``dm_notify``
        like any external distributor's message. Raising fails the task
        (its queue delivers it again).
        """
        registry.prepare_topic = self._prepare_topic
        registry.enqueue_task = self._enqueue_distributor_task
        registry.store = store

    # -- distributor hooks ---------------------------------------------------------

    def _prepare_topic(self, config_name: str, eid: ExecutionID) -> tuple[str, str]:
        if not self.settings.notify_secret:
            raise TransientError("no notification secret configured")
        token = tokens.mint(self.settings.notify_secret, eid, config_name, self.clock())
        return self.settings.notify_topic, token

    def _enqueue_distributor_task(
        self, snap: Snapshot, body: bytes, delay_s: float, name: str | None = None
    ) -> None:
        if name is None:
            name = base64.urlsafe_b64encode(self.rand(18)).decode()
        else:
            name = task_name("distributor", snap.name, name)
        self.queue.enqueue(
            Task(
                name=name,
                target=DISTRIBUTOR_TARGET_PREFIX + snap.name,
                # The config travels with the task: it is handled by the config the
                # distributor was built from (the execution's snapshot, W-11).
                payload={"body_b64": base64.b64encode(body).decode(), "config": snap.to_doc()},
                eta_us=self.clock() + int(delay_s * 1_000_000) if delay_s > 0 else 0,
            )
        )

    def notification_attrs(
        self, config_name: str, eid: ExecutionID, attrs: Mapping[str, str]
    ) -> dict[str, str]:
        """``attrs`` plus the ``auth_token`` for ``eid`` under ``config_name`` (to publish)."""
        _, token = self._prepare_topic(config_name, eid)
        return {**attrs, "auth_token": token}

    def receive_notification(self, data: bytes, attrs: Mapping[str, str]) -> str:
        """Process a distributor notification (Pub/Sub message or in-process).

        Returns "ok" or why it was dropped. A bad, expired or foreign
        ``auth_token`` is dropped, not retried; processing errors raise (the
        caller answers 5xx so the message is delivered again).
        """
        token = attrs.get("auth_token", "")
        if not token:
            return "dropped: no auth_token"
        try:
            eid, config_name = tokens.verify(self.settings.notify_secret, token, self.clock())
        except tokens.BadToken as e:
            log.warning("notification dropped: %s", e)
            return f"dropped: {e}"
        rest = {k: v for k, v in attrs.items() if k != "auth_token"}
        steps.NotifyExecution(
            eid=str(eid),
            data_b64=base64.b64encode(data).decode(),
            attrs=rest,
            config_name=config_name,
        ).execute(self, 1)
        return "ok"

    # -- quests (immutable, so cached) -----------------------------------------

    def quest_desc(self, qid: str, doc: Doc | None = None) -> dm_pb2.Quest.Desc | None:
        """Quest ``qid``'s description (from ``doc`` if given), or None if absent."""
        with self._quests_lock:
            desc = self._quests.get(qid)
            if desc is not None:
                self._quests.move_to_end(qid)
                return desc
        if doc is None:
            doc = self.store.get(docs.quest_path(qid))
        if doc is None:
            return None
        desc = dm_pb2.Quest.Desc.FromString(base64.b64decode(doc["desc"]))
        with self._quests_lock:
            self._quests[qid] = desc
            while len(self._quests) > max(1, self.settings.quest_cache):
                self._quests.popitem(last=False)
        return desc

    # -- running steps ------------------------------------------------------------

    def run(self, mutation: Mutation, *, origin: str | None = None) -> None:
        """Run ``mutation`` now in a transaction, then dispatch its follow-ups.

        Errors raised by the mutation propagate and nothing is written.
        """
        origin = origin or base64.urlsafe_b64encode(self.rand(16)).decode().rstrip("=")
        batch = self._batch.steps
        outbox, now = self.store.transaction(
            lambda tx: self._roll(tx, mutation, origin, batch is not None)
        )
        if batch is not None:
            batch.extend(now)  # committed with the batch: run before it ends, not queued
        self.dispatch(outbox)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit the steps run in the block together, where the store and queue allow.

        Only when the queue keeps its tasks in the store (:meth:`TaskQueue.commits_with`):
        a step's follow-ups then wait for the same commit as the step, and
        those that are mutations due now run at the end of the block, in the
        same commit, instead of making a round trip through the queue (up to
        ``MAX_BATCH_INLINE``; a failing one, and any beyond, are queued). Otherwise
        this does nothing and each step commits (and dispatches) on its own.
        A batch inside a batch is part of it.
        """
        state = self._batch
        if state.steps is not None or not self.queue.commits_with(self.store):
            yield
            return
        with self.store.batch():
            state.steps = collections.deque()  # run first in, first out
            try:
                yield
                self._run_inline(state.steps)
            finally:
                state.steps = None

    def _run_inline(self, steps: collections.deque[Mutation]) -> None:
        ran = 0
        while steps:
            step = steps.popleft()
            if ran >= MAX_BATCH_INLINE:
                self.enqueue(step)
                continue
            ran += 1
            try:
                self.run(step)
            except Exception:
                log.warning("inline %s failed; queued to be retried", step.KIND, exc_info=True)
                self.enqueue(step)

    def run_many(self, mutations: Iterable[Mutation]) -> None:
        for m in mutations:
            self.run(m)

    def _roll(
        self, tx: Transaction, first: Mutation, origin: str, batching: bool = False
    ) -> tuple[list[Outbox], list[Mutation]]:
        """Run ``first`` and its same-root tail calls; queue the follow-ups.

        Returns the outbox records to dispatch after the commit and (only when
        ``batching``) the follow-ups that are mutations due now, for the batch to run.
        """
        uow = Uow(tx)
        ctx = Ctx(uow=uow, now_us=self.clock(), engine=self)
        roots = {first.root()}
        pending: list[Step | Later] = [first]
        later: list[Step | Later] = []
        ran = 0
        while pending:
            item = pending.pop(0)
            together = isinstance(item, Later) and item.together
            step = item.step if isinstance(item, Later) and together else item
            if (
                isinstance(step, Mutation)
                and (together or step.root() in roots)
                and ran < self.settings.max_inline
                and (ran == 0 or uow.pending_writes < INLINE_WRITE_BUDGET)
            ):
                ran += 1
                roots.add(step.root())
                self.stats[step.KIND] = self.stats.get(step.KIND, 0) + 1
                pending[0:0] = step.roll_forward(ctx)
            else:
                later.append(step)
        inline: list[Mutation] = []
        if batching:
            inline = [m for m in later if isinstance(m, Mutation)]
            later = [m for m in later if not isinstance(m, Mutation)]
        tasks = [self._task_for(item, origin) for item in later]
        uow.flush()
        if not tasks or self.queue.enqueue_in(tx, tasks):
            return [], inline  # the tasks are queued by this very commit (the store's queue)
        assert not inline, "batching needs a queue that commits with the store"
        outbox: list[Outbox] = []
        for group in _outbox_groups(tasks):
            # Named by its tasks, as they are: a redelivery with other follow-ups
            # writes another record, never over one not yet dispatched.
            path = docs.outbox_path(task_name(origin, "outbox", *(t.name for t in group)))
            tx.set(path, {"tasks": [_task_doc(t) for t in group], "created_us": ctx.now_us})
            outbox.append((path, group))
        return outbox, []

    def _task_for(self, item: Step | Later, origin: str) -> Task:
        """The task for a follow-up of the task ``origin``, named by what it does.

        Not by its position among the follow-ups (DESIGN.md §3): a redelivered
        task yielding the same work yields the same names (refused by the
        queue as duplicates), and one yielding other work (a completion that
        found the next batch of edges) yields other names, never refused.
        """
        if isinstance(item, Later):
            step, eta, name = item.step, item.eta_us, item.name
        else:
            step, eta, name = item, 0, None
        payload = step.to_payload()
        if name is None:
            what = json.dumps(payload, sort_keys=True, separators=(",", ":"))
            name = task_name(origin, what)
        # A mutation's tasks are sharded by its root record: one record's steps go to
        # one queue (DM_TASKS_QUEUES), in the order that queue keeps.
        shard = step.root() if isinstance(step, Mutation) else ""
        return Task(
            name=name, target=step_target(step), payload=payload, eta_us=eta, shard_key=shard
        )

    def dispatch(self, outbox: Sequence[Outbox]) -> None:
        """Queue committed follow-ups, then delete their outbox records."""
        if not outbox:
            return
        tasks = [t for _, group in outbox for t in group]
        try:
            self.queue.enqueue_many(tasks)
        except Exception:
            # Committed already: the sweep re-dispatches the outbox records.
            log.warning(
                "dispatch of %d follow-ups failed; left to the sweep", len(tasks), exc_info=True
            )
            return
        paths = [p for p, _ in outbox]

        def drop(tx: Transaction) -> None:
            for p in paths:
                tx.delete(p)

        self.store.transaction(drop)

    def enqueue(self, step: Step, *, eta_us: int = 0, name: str | None = None) -> None:
        """Queue a step directly (no transaction to tie it to)."""
        origin = base64.urlsafe_b64encode(self.rand(16)).decode().rstrip("=")
        self.queue.enqueue(self._task_for(Later(step, eta_us, name), origin))

    def handle_task(
        self, target: str, payload: Mapping[str, Any], delivery: int = 1, name: str = ""
    ) -> None:
        """Run one delivered task (the queue's handler, also dm_tasks').

        ``delivery`` counts deliveries of this task (1 = first); ``name`` is the
        task's name, from which follow-up names derive (so a redelivered task
        produces the same follow-up names, refused as duplicates).
        """
        if target.startswith(DISTRIBUTOR_TARGET_PREFIX):
            config = payload.get("config")
            steps.HandleDistributorTask(
                config_name=target[len(DISTRIBUTOR_TARGET_PREFIX) :],
                body_b64=str(payload.get("body_b64", "")),
                config=dict(config) if isinstance(config, Mapping) else None,
            ).execute(self, delivery)
            return
        if target != MUTATION_TARGET:
            raise ValueError(f"unknown task target {target!r}")
        step = Step.from_payload(payload)
        if isinstance(step, Mutation):
            self.run(step, origin=name or None)
        else:
            assert isinstance(step, Action)
            step.execute(self, delivery)

    # -- the sweep ------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Re-dispatch stale outbox records; fire due timers, polls and expiries (idempotent)."""
        now = self.clock()
        stale: list[Outbox] = []
        for path, doc in self.store.query(
            docs.OUTBOX, order_by="created_us", limit=self.settings.sweep_batch
        ):
            if doc["created_us"] > now - self.settings.outbox_stale_us:
                break
            # One record per step ("tasks"); records written before that hold one "task".
            group = doc["tasks"] if "tasks" in doc else [doc["task"]]
            stale.append((path, [_task_from_doc(t) for t in group]))
        self.dispatch(stale)
        fired = 0
        # Timers, polls and expiries are fields of the attempts (docs.TIMER_DUE, ...):
        # an ordered query on one finds the attempts that have it, earliest first.
        for _, att in self.store.query(
            docs.ATTEMPTS, order_by=docs.TIMER_DUE, limit=self.settings.sweep_batch
        ):
            if att[docs.TIMER_DUE] > now:
                break
            timer = att["timer"]
            step, name = steps.timer_step(timer)
            try:
                self.queue.enqueue(
                    Task(name, step_target(step), step.to_payload(), timer["deadline_us"])
                )
            except Exception:
                # The timer stays armed: the next sweep fires it (like dispatch above).
                log.warning("firing timer %s failed; left to the next sweep", name, exc_info=True)
                continue
            fired += 1
        polled = 0
        for _, att in self.store.query(
            docs.ATTEMPTS, order_by=docs.POLL_DUE, limit=self.settings.sweep_batch
        ):
            if att[docs.POLL_DUE] > now:
                break
            later = steps.poll_later(att["poll"])
            try:
                self.queue.enqueue(self._task_for(later, ""))
            except Exception:
                log.warning(
                    "queueing poll of %s failed; left to the next sweep",
                    att["poll"]["eid"],
                    exc_info=True,
                )
                continue
            polled += 1
        expired = 0
        for path, att in self.store.query(
            docs.ATTEMPTS, order_by=docs.EXPIRY_DUE, limit=self.settings.sweep_batch
        ):
            if att[docs.EXPIRY_DUE] > now:
                break
            record = {"aid": docs.last_id(path), "due_us": att[docs.EXPIRY_DUE]}
            try:
                self.queue.enqueue(self._task_for(steps.expiry_later(record), ""))
            except Exception:
                log.warning(
                    "queueing expiry of %s failed; left to the next sweep",
                    record["aid"],
                    exc_info=True,
                )
                continue
            expired += 1
        return {"outbox": len(stale), "timers": fired, "polls": polled, "expiries": expired}


def step_target(step: Step) -> str:
    return MUTATION_TARGET


Outbox = tuple[str, Sequence[Task]]
"""An outbox record: its path and the follow-up tasks it holds."""

OUTBOX_RECORD_BYTES = 512 * 1024
"""Follow-ups share an outbox record (one write and one delete per step, not per
follow-up) up to about this much JSON; Firestore documents stop at 1 MiB."""
OUTBOX_RECORD_TASKS = 100


def _outbox_groups(tasks: Sequence[Task]) -> list[list[Task]]:
    """``tasks`` cut into groups that each fit one outbox record."""
    groups: list[list[Task]] = [[]]
    size = 0
    for t in tasks:
        n = len(json.dumps(t.payload)) + len(t.name) + len(t.target) + 64
        if groups[-1] and (
            size + n > OUTBOX_RECORD_BYTES or len(groups[-1]) >= OUTBOX_RECORD_TASKS
        ):
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += n
    return groups


def _task_doc(task: Task) -> dict[str, Any]:
    return {
        "name": task.name,
        "target": task.target,
        "payload": task.payload,
        "eta_us": task.eta_us,
        "shard_key": task.shard_key,
    }


def _task_from_doc(d: Mapping[str, Any]) -> Task:
    return Task(
        str(d["name"]),
        str(d["target"]),
        dict(d["payload"]),
        int(d["eta_us"]),
        shard_key=str(d.get("shard_key", "")),
    )
