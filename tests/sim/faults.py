"""The fake distributor with faults, for the simulation: errors on run, get_status
and cancel (transient and final), runs that time out after starting the task
(maybe the distributor busy after, while the job runs: dm records the run only once
its stop timer fell due), tasks the distributor loses, and a record of everything
dm asked of it.

Configs whose name starts with ``fake_tq`` report an execution's end through a
task on dm's queue (``Config.enqueue_task``, as jobsim does) instead of a
Pub/Sub message: that task must be handled with the config the execution
started with, even once the config is changed or removed.

Decisions come from a random stream of their own (seeded by the plan), so a
sequential run replays exactly; the records are what the invariants about the
distributor are checked against (D.run once per execution, no task left
running for an ended execution).
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable

from distributors.fake import FakeDistributor, FakeWorld
from dmcore import distributor as dist
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2

MAX_RUN_TRANSIENT = 3
"""Transient run errors per execution, outages aside (so the outage window only
passes for the executions meant to hit it)."""
MAX_STATUS_TRANSIENT = 2
"""Transient get_status errors per execution: fewer than the STOPPING re-polls,
so they delay dm's learning of the end, never change it."""


@dataclasses.dataclass
class Faults:
    """Fault rates of the distributor (0 = never)."""

    run_transient: float = 0.0
    run_timeout: float = 0.0
    """A run that starts the task, then fails transiently (a deadline exceeded)."""
    slow_record: float = 0.0
    """How often a run that timed out is followed by a busy distributor: every try to
    run fails transiently until the quest's stop timeout (plus a second) has passed,
    while the task's job runs at once (:attr:`FaultyWorld.after_slow_start`). A job
    that stops then is still unknown to dm by token: its stop timer falls due with
    nothing to ask, and dm records the run a few seconds later."""
    record_between: float = 0.0
    """How often, on the ChaosQueue with one worker, such a stop timer's step that found
    no token has the run recorded by another delivery between its read and its
    commit, the distributor free by then (:mod:`tests.sim.recorded_between`)."""
    run_reject: float = 0.0
    """A final run error (dm must REJECT the execution)."""
    outage: float = 0.0
    """An execution whose every run fails transiently (dm REJECTS after its window)."""
    status_transient: float = 0.0
    lost: float = 0.0
    """The distributor loses a task that stopped quietly (get_status: not found)."""
    cancel_transient: float = 0.0
    cancel_refuse: float = 0.0

    def __str__(self) -> str:
        on = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)]
        return "faults(" + " ".join(x for x in on if not x.endswith("=0.0")) + ")"


@dataclasses.dataclass
class TaskLog:
    """What dm asked of the distributor about one execution, and what it got."""

    runs_ok: int = 0  # run calls that returned a token to dm
    runs_transient: int = 0
    runs_timed_out: int = 0  # the task was started, but dm saw an error
    rejected: bool = False
    outage: bool = False
    first_try_us: int | None = None
    last_try_us: int | None = None
    busy_until_us: int = 0  # tries to run fail transiently until then (slow_record)
    started: dist.Started | None = None
    """What D.run would have answered for the task a run that timed out started
    before the distributor got busy (slow_record)."""
    status_errors: int = 0
    status_calls: list[int] = dataclasses.field(default_factory=list)  # when get_status was called
    told_us: list[int] = dataclasses.field(default_factory=list)
    """When the distributor told dm how the task ended (a report read, a poll answered)."""
    lost: bool = False
    cancelled: int = 0
    cancel_refused: bool = False


class FaultyWorld(FakeWorld):
    """A FakeWorld whose distributors inject :class:`Faults` and log every call."""

    def __init__(self, faults: Faults, seed: str) -> None:
        super().__init__()
        self.clock: Callable[[], int] = lambda: 0
        """The harness's clock (set once the harness is built)."""
        self.faults = faults
        self.rng = random.Random(seed)
        # Its own stream: a plan without slow_record keeps its run.
        self.slow_rng = random.Random(f"{seed}/slow_record")
        self.logs: dict[ExecutionID, TaskLog] = {}
        self.lock = threading.RLock()
        self.before_run: Callable[[ExecutionID], None] | None = None
        """Called as run starts (between dm's read and the task's start)."""
        self.after_start: Callable[[ExecutionID], None] | None = None
        """Called once run has started the task, before it returns (a fast job may
        run to its end right there, before dm has recorded the run)."""
        self.after_slow_start: Callable[[ExecutionID], None] | None = None
        """Called once a run that timed out has started the task, before the distributor
        stays busy (``Faults.slow_record``): the job runs while dm has no token."""
        self.configs: dict[ExecutionID, dist.Config] = {}
        """The config each task was started with (to queue its report with)."""
        self.config_drift: list[str] = []
        """Calls about a task made with another config than it started with (W-11)."""

    def factory(self, cfg: dist.Config) -> dist.D:
        return FaultyDistributor(self, cfg)

    def log(self, eid: ExecutionID) -> TaskLog:
        with self.lock:
            return self.logs.setdefault(eid, TaskLog())

    def lose(self, eid: ExecutionID) -> bool:
        """Maybe lose the task of ``eid`` (it stopped quietly); whether it was lost."""
        with self.lock:
            if self.faults.lost and self.rng.random() < self.faults.lost:
                self.log(eid).lost = True
                return True
            return False

    def roll(self, p: float) -> bool:
        with self.lock:
            return bool(p) and self.rng.random() < p

    def notify(self, eid: ExecutionID) -> None:
        """Report the task's end: through dm's queue for a ``fake_tq`` config, else Pub/Sub."""
        cfg = self.configs.get(eid)
        if cfg is not None and cfg.name.startswith("fake_tq"):
            for _ in range(100):  # a distributor retries until its report is queued
                try:
                    cfg.enqueue_task(self.token_of(eid).encode())
                    return
                except ConnectionError:
                    continue
            raise ConnectionError(f"sim: could not queue the report of {eid}")
        super().notify(eid)


def _check_config(w: FaultyWorld, eid: ExecutionID | None, cfg: dist.Config, what: str) -> None:
    started = w.configs.get(eid) if eid is not None else None
    if started is not None and (started.name, started.version) != (cfg.name, cfg.version):
        with w.lock:
            w.config_drift.append(
                f"{eid}: {what} with config {cfg.name}@{cfg.version}, "
                f"started with {started.name}@{started.version}"
            )


def _eid_of(token: str) -> ExecutionID | None:
    prefix = "fakeDistributor:"
    return ExecutionID.parse(token[len(prefix) :]) if token.startswith(prefix) else None


class FaultyDistributor(FakeDistributor):
    def __init__(self, world: FaultyWorld, cfg: dist.Config) -> None:
        super().__init__(world, cfg)
        self.faulty = world

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        w = self.faulty
        eid = ExecutionID.from_proto(auth.id)
        if w.before_run is not None:
            w.before_run(eid)
        f = w.faults
        with w.lock:
            log = w.log(eid)
            now = w.clock()
            first = log.first_try_us is None
            if first:
                log.first_try_us = now
                log.outage = w.roll(f.outage)
            log.last_try_us = now
            if log.outage:
                log.runs_transient += 1
                raise dist.TransientError("sim: distributor outage")
            if now < log.busy_until_us:
                raise dist.TransientError("sim: distributor busy (slow_record)")
            if first and not log.runs_ok and w.roll(f.run_reject):
                log.rejected = True
                raise ValueError("sim: the distributor refuses this task")
            if log.runs_transient < MAX_RUN_TRANSIENT and w.roll(f.run_transient):
                log.runs_transient += 1
                raise dist.TransientError("sim: distributor busy")
            started = super().run(desc, auth, prev_result)
            w.configs[eid] = self.cfg
            slow = False
            if not log.runs_timed_out and w.roll(f.run_timeout):
                log.runs_timed_out += 1
                slow = bool(f.slow_record) and w.slow_rng.random() < f.slow_record
                if not slow:
                    raise dist.TransientError("sim: deadline exceeded (the task was started)")
                stop_s = desc.meta.timeouts.stop.seconds
                log.started = started
                log.busy_until_us = now + (stop_s + 1) * 1_000_000
            else:
                log.runs_ok += 1
        if slow:
            if w.after_slow_start is not None:
                w.after_slow_start(eid)  # outside the lock: the job's calls reach dm
            raise dist.TransientError("sim: deadline exceeded (the task was started)")
        if w.after_start is not None:
            w.after_start(eid)
        return started

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        w = self.faulty
        eid = _eid_of(token)
        _check_config(w, eid, self.cfg, "get_status")
        if eid is not None:
            with w.lock:
                log = w.log(eid)
                log.status_calls.append(w.clock())
                if log.lost:
                    raise ValueError(f"sim: no such task {token}")
                if log.status_errors < MAX_STATUS_TRANSIENT and w.roll(w.faults.status_transient):
                    log.status_errors += 1
                    raise dist.TransientError("sim: status unavailable")
        got = super().get_status(desc, token)
        if eid is not None and got is not None:
            w.log(eid).told_us.append(w.clock())
        return got

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: dist.Notification
    ) -> dm_pb2.Result | None:
        eid = _eid_of(notification.attrs.get("token", ""))
        _check_config(self.faulty, eid, self.cfg, "handle_notification")
        if eid is not None and self.faulty.log(eid).lost:
            return None  # a lost task's stray report: ignored
        got = super().get_status(desc, notification.attrs.get("token", ""))
        if eid is not None and got is not None:
            self.faulty.log(eid).told_us.append(self.faulty.clock())
        return got

    def handle_task_queue_task(self, request: dist.TaskRequest) -> list[dist.Notification]:
        """A report this distributor queued for itself (``fake_tq``): the task's token."""
        token = request.body.decode()
        eid = _eid_of(token)
        if eid is None:
            return []
        _check_config(self.faulty, eid, self.cfg, "handle_task_queue_task")
        return [dist.Notification(eid, b"", {"token": token})]

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        w = self.faulty
        eid = _eid_of(token)
        _check_config(w, eid, self.cfg, "cancel")
        with w.lock:
            if w.roll(w.faults.cancel_transient):
                raise dist.TransientError("sim: cancel unavailable")
            if eid is not None and w.roll(w.faults.cancel_refuse):
                w.log(eid).cancel_refused = True
                raise ValueError("sim: the distributor refuses to cancel")
            super().cancel(desc, token)
            if eid is not None:
                w.log(eid).cancelled += 1
