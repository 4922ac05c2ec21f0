"""The mutation runner: transactional steps, pending follow-ups, dispatch and the sweep.

dm changes state only through *mutations* (spec §7). A transactional mutation
runs in one store transaction on one root record and returns follow-ups.
Follow-ups on the same root that are due now run inline in the same
transaction (DM's tail call), as do those marked ``together`` (and then
their root's); the others are queued as *named* tasks after the commit.

So that a crash between the commit and the queueing loses nothing, the
follow-ups commit with their step, at no extra write: they are kept as the
``pending`` field of an attempt document the transaction writes anyway
(preferably the one the follow-up is about). Nothing clears them once queued
(that would be a write); instead a later transaction that writes the same
attempt while delivering one of them drops it (the follow-up's own step:
RunExecution's claim writes the attempt it was queued for). What is left past
``outbox_stale_us`` is re-sent by the sweep (same names: a task queued
already is refused as a duplicate, and steps are idempotent anyway), which
then clears it. A transaction that wrote no attempt keeps its follow-ups in
an outbox record instead, deleted once they are queued (rare: a step deferring
to a later try, a test's own step). A queue that lives in the store's own file (the
embedded queue) takes the tasks in that same commit instead
(:meth:`TaskQueue.enqueue_in`): the task row is its own outbox record.
Delivery is at least once, so every mutation is idempotent by state guards.

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
"""How long a committed follow-up waits before the sweep re-sends it."""
SWEEP_SHARDS = 16
"""Shards of the sweep's time-ordered keys on Firestore (see ``Settings.sweep_shards``)."""
MAX_INLINE = 256
"""Same-root follow-ups one transaction runs inline (tail calls) before queueing the rest."""
MAX_BATCH_INLINE = 10_000
"""Follow-up mutations a batch runs itself before it commits; more are queued."""
MAX_BATCH_ACTIONS = 64
"""Runs and in-process distributor tasks a batch runs itself (``Engine.batch``); more
go through the queue, whose worker commits its batch after about ``HOLD_S``: a chain
of jobsim jobs would otherwise hold the store's write lock to its end."""
PROPAGATE_BATCH = 64
"""Back edges a completion acks per step; the step chains itself until none is left."""
INLINE_WRITE_BUDGET = 300
"""Tail calls stop running inline once a transaction has this many writes pending
(the rest are queued): with its outbox records it stays under Firestore's 500
writes per commit (``MAX_COMMIT_WRITES``), whatever the fan-out."""

INLINE_ROOM = 2
"""Tail calls and writes one transaction allows per document of the store's
``transaction_docs`` (a new dependee of a declaration's part: three documents, about
four tail calls and five writes)."""

Publish = Callable[[bytes, dict[str, str]], None]
"""Publish one message (data, attributes) to the notification topic; raise on failure."""


@dataclasses.dataclass
class Settings:
    """Engine knobs; defaults suit both back ends."""

    outbox_stale_us: int = OUTBOX_STALE_US
    sweep_batch: int = 200
    """Due attempts the sweep takes per shard and field."""
    sweep_shards: int = SWEEP_SHARDS
    """Attempts with something for the sweep (``docs.SWEPT``) carry a shard number
    (``docs.SWEEP_SHARD``) and the sweep queries each shard apart, so no index on a
    due time, which only grows, takes all the writes (Firestore holds a collection
    with such an index near 500 writes/s; a composite index on shard and due time
    spreads them over this many ranges). 1: no shard field (SQLite, where one query
    beats 16). Records keep the shard they were given until written again, so the
    sweep queries at least ``swept_shards``."""
    swept_shards: int = 0
    """Shards the store's records may have been stamped with (recorded in the store by
    :func:`dmcore.engine.layout.check`): a store stamped under a larger count before
    ``sweep_shards`` was lowered keeps being swept over all of them."""
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
    """Per thread: the steps waiting to run at the end of the open batch, if any
    (follow-up mutations; runs and tasks of in-process distributors)."""

    steps: collections.deque[Mutation | Action] | None = None
    held_runs: set[str] | None = None
    """Executions whose D.run this thread is making under the open batch's hold
    (:meth:`Engine.holding_run`)."""
    delivers: bool = False
    """The open batch delivers queued tasks (a worker's, not an API call's): only then
    do runs and tasks of in-process distributors join it. An API call returns once
    its own steps are committed and leaves the jobs it causes to the worker."""


class _Delivery(threading.local):
    """Per thread: the name of the task being handled, if any (its pending entry is dropped
    by the transactions of its handling that write the attempt holding it)."""

    name: str | None = None


@dataclasses.dataclass
class Dispatch:
    """What a committed transaction leaves to queue."""

    tasks: list[Task] = dataclasses.field(default_factory=list)
    records: list[str] = dataclasses.field(default_factory=list)
    """Outbox records holding some of ``tasks``: deleted once they are queued."""


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
        self._delivery = _Delivery()
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
        batch = self._batch.steps
        if (
            batch is not None
            and self._batch.delivers
            and delay_s <= 0
            and self.registry.in_process(snap.kind)
        ):
            # Inside a batch (the queue commits with the store) a task due now of a
            # distributor that calls nothing outside this process runs at the batch's
            # end, in its commit, like a follow-up mutation: no queue round trip
            # (jobsim's worker task, once per execution). A failure queues it.
            batch.append(
                steps.HandleDistributorTask(
                    config_name=snap.name,
                    body_b64=base64.b64encode(body).decode(),
                    config=snap.to_doc(),
                )
            )
            return
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
        out, now = self.store.transaction(
            lambda tx: self._roll(tx, mutation, origin, batch is not None)
        )
        if batch is not None:
            batch.extend(now)  # committed with the batch: run before it ends, not queued
        self.dispatch(out)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit the steps run in the block together, where the store and queue allow.

        Only when the queue keeps its tasks in the store (:meth:`TaskQueue.commits_with`):
        a step's follow-ups then wait for the same commit as the step, and
        those that are mutations due now run at the end of the block, in the
        same commit, instead of making a round trip through the queue (up to
        ``MAX_BATCH_INLINE``; a failing one, and any beyond, are queued); so do, in
        a batch that delivers tasks (a worker's), the runs of executions and the
        tasks due now of in-process distributors (jobsim). Otherwise
        this does nothing and each step commits (and dispatches) on its own.
        A batch inside a batch is part of it.
        """
        state = self._batch
        if state.steps is not None or not self.queue.commits_with(self.store):
            yield
            return
        with self.store.batch():
            state.steps = collections.deque()  # run first in, first out
            state.held_runs = set()
            state.delivers = False
            try:
                yield
                self._run_inline(state.steps)
            finally:
                state.steps = None
                state.held_runs = None
                state.delivers = False

    def _run_inline(self, waiting: collections.deque[Mutation | Action]) -> None:
        ran = actions = 0
        while waiting:
            step = waiting.popleft()
            if ran >= MAX_BATCH_INLINE or (
                not isinstance(step, Mutation) and actions >= MAX_BATCH_ACTIONS
            ):
                self.enqueue(step)
                continue
            ran += 1
            actions += not isinstance(step, Mutation)
            try:
                if isinstance(step, Mutation):
                    self.run(step)
                else:
                    step.execute(self, 1)
            except Exception:
                log.warning("inline %s failed; queued to be retried", step.KIND, exc_info=True)
                self.enqueue(step)

    def run_many(self, mutations: Iterable[Mutation]) -> None:
        for m in mutations:
            self.run(m)

    def _roll(
        self, tx: Transaction, first: Mutation, origin: str, batching: bool = False
    ) -> tuple[Dispatch, list[Mutation | Action]]:
        """Run ``first`` and its same-root tail calls; queue the follow-ups.

        Returns what to dispatch after the commit and (only when ``batching``)
        the follow-ups that are mutations due now, for the batch to run.
        """
        uow = Uow(tx)
        ctx = Ctx(uow=uow, now_us=self.clock(), engine=self)
        roots = {first.root()}
        pending: collections.deque[Step | Later] = collections.deque([first])
        later: list[Step | Later] = []
        ran = 0
        most, budget = self._inline_limits(first)
        while pending:
            item = pending.popleft()
            together = isinstance(item, Later) and item.together
            step = item.step if isinstance(item, Later) and together else item
            if (
                isinstance(step, Mutation)
                and (together or step.root() in roots)
                and ran < most
                and (ran == 0 or uow.pending_writes < budget)
            ):
                ran += 1
                roots.add(step.root())
                self.stats[step.KIND] = self.stats.get(step.KIND, 0) + 1
                # Depth first: a step's follow-ups before the steps already waiting.
                pending.extendleft(reversed(step.roll_forward(ctx)))
            else:
                later.append(step)
        inline: list[Mutation | Action] = []
        if batching:
            queued: list[Step | Later] = []
            for item in later:
                if isinstance(item, Mutation) or (
                    isinstance(item, Action)
                    and self._batch.delivers
                    and self._runs_in_process(uow, item)
                ):
                    inline.append(item)
                else:
                    queued.append(item)
            later = queued
        tasks = [self._task_for(item, origin) for item in later]
        homes = [_home(item.step if isinstance(item, Later) else item) for item in later]
        if tasks and self.queue.enqueue_in(tx, tasks):
            tasks = []  # queued by this very commit (the store's queue)
        assert not tasks or not inline, "batching needs a queue that commits with the store"
        held = self._hold(uow, tasks, homes, first.root(), ctx.now_us)
        self._stamp_shards(uow)
        uow.flush()
        out = Dispatch(tasks)
        left = [t for t in tasks if t.name not in held]
        for group in _outbox_groups(left) if left else []:
            # Named by its tasks, as they are: a redelivery with other follow-ups
            # writes another record, never over one not yet dispatched.
            path = docs.outbox_path(task_name(origin, "outbox", *(t.name for t in group)))
            record = {"tasks": [_task_doc(t) for t in group], "created_us": ctx.now_us}
            if self.settings.sweep_shards > 1:
                record[docs.SWEEP_SHARD] = docs.sweep_shard(path, self.settings.sweep_shards)
            tx.set(path, record)
            out.records.append(path)
        return out, inline

    def _inline_limits(self, first: Mutation) -> tuple[int, int]:
        """Tail calls the transaction of ``first`` runs, at most, and the pending writes
        past which it runs no more (the rest are queued, or run by the batch on their
        own).

        Firestore's by default (``max_inline``; ``INLINE_WRITE_BUDGET``, under its 500
        writes a commit). A declaration on a store that takes parts of
        ``transaction_docs`` documents (SQLite, no write limit) has room for all the
        tail calls of such a part (its quests, attempts and back edges): else most
        of a part's steps would each take a transaction of their own after it. Only
        a declaration: any other step keeps the small limits, so that one (a
        completion reaching thousands of dependers) does not hold the write lock
        for thousands of steps.
        """
        docs_cap = self.store.transaction_docs
        if docs_cap is None or first.KIND != "DeclareDeps":
            return self.settings.max_inline, INLINE_WRITE_BUDGET
        room = INLINE_ROOM * docs_cap
        return max(self.settings.max_inline, room), max(INLINE_WRITE_BUDGET, room)

    def batch_holds_run(self, kind: str) -> bool:
        """Whether a D.run of a distributor of ``kind`` made now is held by the open batch.

        Inside a batch this thread holds the store's write lock to the commit, and
        everything an in-process distributor does lands in that same commit (or is
        rolled back with it). No other delivery can then claim the run between the
        claim's read and the run's record: the claim need not be written (one write
        of the attempt less per execution in the embedded worker).
        """
        return self._batch.steps is not None and self.registry.in_process(kind)

    def run_held(self, eid: str) -> bool:
        """Whether this thread is inside D.run of execution ``eid`` under the batch's hold
        (a duplicate delivered from inside that call must not run it again)."""
        held = self._batch.held_runs
        return held is not None and eid in held

    @contextlib.contextmanager
    def holding_run(self, eid: str) -> Iterator[None]:
        """Mark D.run of ``eid``, claimed without a write (:meth:`batch_holds_run`), as
        under way for the block."""
        held = self._batch.held_runs
        assert held is not None, "a held run is made inside a batch"
        held.add(eid)
        try:
            yield
        finally:
            held.discard(eid)

    def _runs_in_process(self, uow: Uow, item: Action) -> bool:
        """Whether ``item`` is the run, due now, of an execution whose distributor is
        in-process (its config read from the attempt this step has in hand).

        In a batch it then runs at the batch's end like a follow-up mutation, not
        through the queue: its calls reach nothing outside, so they may be made
        while the batch holds the store's write lock.
        """
        if not isinstance(item, steps.RunExecution):
            return False
        eid = ExecutionID.parse(item.eid)
        att = uow.cached(docs.attempt_path(eid.attempt_id))
        ex = att.get(docs.CURRENT) if att is not None else None
        if not ex or ex.get("num") != eid.num or not ex.get("config"):
            return False
        return self.registry.in_process(str(ex["config"].get("kind", "")))

    def _hold(
        self, uow: Uow, tasks: Sequence[Task], homes: Sequence[str], root: str, now_us: int
    ) -> set[str]:
        """Keep ``tasks`` pending on the attempts ``uow`` writes anyway; drop the one
        being delivered from them. Returns the names of the tasks kept so.

        A task goes to its home attempt (the one it is about) if written, else to the
        root's, else to any written, while the attempt has room (``PENDING_BYTES``,
        ``PENDING_TASKS``); what finds none is left to an outbox record.
        """
        delivered = self._delivery.name
        if not tasks and delivered is None:
            return set()  # most steps of the embedded worker's batch: nothing to hold or drop
        attempts = {p: d for p, d in uow.written() if docs.is_attempt_path(p)}
        if delivered is not None:
            for doc in attempts.values():
                entries = doc.get(docs.PENDING) or []
                if any(e["name"] == delivered for e in entries):
                    _set_pending(doc, [e for e in entries if e["name"] != delivered])
        held: set[str] = set()
        if not tasks or not attempts:
            return held
        room = {
            p: (
                PENDING_BYTES - _pending_bytes(d.get(docs.PENDING) or []),
                PENDING_TASKS - len(d.get(docs.PENDING) or []),
            )
            for p, d in attempts.items()
        }
        due = now_us + self.settings.outbox_stale_us
        for task, home in zip(tasks, homes, strict=True):
            entry = {**_task_doc(task), "due_us": due}
            size = _pending_bytes([entry])
            for p in dict.fromkeys([home, root, *attempts]):
                if p not in room or room[p][0] < size or room[p][1] < 1:
                    continue
                doc = attempts[p]
                mine = [e for e in doc.get(docs.PENDING) or [] if e["name"] != task.name]
                _set_pending(doc, [*mine, entry])
                room[p] = (room[p][0] - size, room[p][1] - 1)
                held.add(task.name)
                break
        return held

    def _stamp_shards(self, uow: Uow) -> None:
        """Give the written attempts with something for the sweep their sweep shard."""
        shards = self.settings.sweep_shards
        if shards <= 1:
            return
        for path, doc in uow.written():
            if docs.is_attempt_path(path) and any(f in doc for f in docs.SWEPT):
                doc[docs.SWEEP_SHARD] = docs.sweep_shard(path, shards)

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

    def dispatch(self, out: Dispatch) -> None:
        """Queue committed follow-ups, then delete their outbox records (if any).

        Pending follow-ups on attempts are not cleared here (that would be a
        write): their delivery's step, or else the sweep, drops them.
        """
        if not out.tasks:
            return
        try:
            self.queue.enqueue_many(out.tasks)
        except Exception:
            # Committed already: the sweep re-sends them.
            log.warning(
                "dispatch of %d follow-ups failed; left to the sweep",
                len(out.tasks),
                exc_info=True,
            )
            return
        paths = out.records
        if not paths:
            return

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
        if self._batch.steps is not None:
            self._batch.delivers = True
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
        outer = self._delivery.name
        self._delivery.name = name or None
        try:
            if isinstance(step, Mutation):
                self.run(step, origin=name or None)
            else:
                assert isinstance(step, Action)
                step.execute(self, delivery)
        finally:
            self._delivery.name = outer

    # -- the sweep ------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Re-send stale follow-ups; fire due timers, polls and expiries (idempotent)."""
        now = self.clock()
        resent = self._sweep_outbox(now) + self._sweep_pending(now)
        fired = 0
        # Timers, polls and expiries are fields of the attempts (docs.TIMER_DUE, ...):
        # an ordered query on one finds the attempts that have it, earliest first.
        for _, att in self._due(docs.TIMER_DUE, now):
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
        for _, att in self._due(docs.POLL_DUE, now):
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
        for path, att in self._due(docs.EXPIRY_DUE, now):
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
        return {"outbox": resent, "timers": fired, "polls": polled, "expiries": expired}

    def _due(
        self, field: str, now: int, collection: str = docs.ATTEMPTS
    ) -> Iterator[tuple[str, Doc]]:
        """Documents whose ``field`` is ``now`` or earlier, earliest first in each sweep shard."""
        shards = max(self.settings.sweep_shards, self.settings.swept_shards)
        for shard in range(max(1, shards)):
            where = {docs.SWEEP_SHARD: shard} if shards > 1 else None
            # Bounded by ``now``: a sweep with nothing due reads nothing (on
            # Firestore one read for the empty answer, not a page of the not yet due).
            for path, doc in self.store.query(
                collection, where, order_by=field, limit=self.settings.sweep_batch, at_most=now
            ):
                due = doc.get(field)
                if due is None:  # an index that disagrees with the document: not due
                    log.warning("sweep: %s has no %s though its store ordered it so", path, field)
                    continue
                if due > now:
                    break
                yield path, doc

    def _sweep_pending(self, now: int) -> int:
        """Re-send the pending follow-ups due by ``now``, then clear them; how many."""
        resent = 0
        for path, att in self._due(docs.PENDING_DUE, now):
            tasks = [_task_from_doc(e) for e in att[docs.PENDING] if e["due_us"] <= now]
            try:
                self.queue.enqueue_many(tasks)
            except Exception:
                log.warning("re-sending follow-ups of %s failed", path, exc_info=True)
                continue
            names = {t.name for t in tasks}

            def clear(tx: Transaction, path: str = path, names: set[str] = names) -> None:
                doc = tx.get(path)
                entries = (doc or {}).get(docs.PENDING) or []
                keep = [e for e in entries if e["name"] not in names]
                if doc is not None and len(keep) != len(entries):
                    _set_pending(doc, keep)
                    tx.set(path, doc)

            self.store.transaction(clear)
            resent += len(tasks)
        return resent

    def _sweep_outbox(self, now: int) -> int:
        """Re-dispatch stale outbox records (a step that wrote no attempt); how many."""
        stale = Dispatch()
        for path, doc in self._due("created_us", now - self.settings.outbox_stale_us, docs.OUTBOX):
            # One record per step ("tasks"); records written before that hold one "task".
            group = doc["tasks"] if "tasks" in doc else [doc["task"]]
            stale.tasks += [_task_from_doc(t) for t in group]
            stale.records.append(path)
        self.dispatch(stale)
        return len(stale.records)


def step_target(step: Step) -> str:
    return MUTATION_TARGET


PENDING_BYTES = 256 * 1024
"""Follow-ups kept pending on one attempt, at most (JSON): the attempt also holds its
current execution and a small result, and Firestore documents stop at 1 MiB."""
PENDING_TASKS = 100


def _home(step: Step) -> str:
    """The attempt a follow-up is about (its pending entry is best kept there: its
    delivery writes that attempt, and drops the entry at no extra write)."""
    if isinstance(step, Mutation) and docs.is_attempt_path(step.root()):
        return step.root()
    eid = getattr(step, "eid", None)
    if isinstance(eid, str) and eid:
        return docs.attempt_path(ExecutionID.parse(eid).attempt_id)
    aid = getattr(step, "aid", None)
    return f"{docs.ATTEMPTS}/{aid}" if isinstance(aid, str) and aid else ""


def _pending_bytes(entries: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(json.dumps(e, separators=(",", ":"))) for e in entries)


def _set_pending(doc: Doc, entries: Sequence[Doc]) -> None:
    """Set ``doc``'s pending follow-ups (and when the sweep is due to look at them)."""
    if entries:
        doc[docs.PENDING] = list(entries)
        doc[docs.PENDING_DUE] = min(int(e["due_us"]) for e in entries)
    else:
        doc.pop(docs.PENDING, None)
        doc.pop(docs.PENDING_DUE, None)


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
