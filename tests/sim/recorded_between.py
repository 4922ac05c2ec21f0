"""The simulation's run recorded inside a stop timer's step, between its read and its commit.

A busy distributor (``Faults.slow_record``) leaves dm without the token of a task it
started while the job runs and stops: the stop timer falls due, TimeoutExecution
reads the execution outside any transaction, finds no token and has nothing to ask,
and commits TimerFired (``polled`` False), which puts the timer off a re-poll
interval. With several workers another delivery, dm's retried run answered at last,
may commit RecordRun in between: RecordRun leaves a timer not yet fired as it is
(records.rearm_stop_at_run), so TimerFired must see the token itself and ask at once
(timers._recorded_since), or the first poll comes 30 s late. Threads show that now
and then; :class:`RecordedBetween` makes it happen on one worker, replayably: it
wraps the engine's ``run`` and, as such a TimerFired is about to commit, the busy
distributor gets free and the other delivery's RecordRun commits first.

Only on the ChaosQueue (on the local queue a worker's batch reads and commits in one
write transaction, so nothing can commit between a step's read and its commit) and
with one worker: the other delivery's run is not claimed (ClaimRun), so with threads
a worker's own retried run could get the token too, which no claimed run does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from dmcore.engine import steps
from dmcore.engine.base import Mutation
from dmcore.ids import ExecutionID
from tests.harness import Harness
from tests.sim.faults import FaultyWorld

US = 1_000_000


class RecordedBetween:
    """``Engine.run`` wrapped (install with :meth:`install`): before a TimerFired that
    asked nothing for want of a token commits, maybe the run of its execution, whose
    task a busy distributor started (:attr:`~tests.sim.faults.TaskLog.started`), is
    recorded by another delivery. ``p``: how often, per such TimerFired."""

    def __init__(self, h: Harness, world: FaultyWorld, p: float, seed: int) -> None:
        self.h = h
        self.world = world
        self.p = p
        self.rng = random.Random(f"dm-sim-recorded-between/{seed}")
        self.engine_run: Callable[..., None] = h.engine.run
        self.recorded: list[ExecutionID] = []
        """The executions whose run was recorded so (what a test asserts happened)."""

    def install(self) -> None:
        self.h.engine.run = self  # type: ignore[method-assign]

    def __call__(self, mutation: Mutation, **kw: Any) -> None:
        if (
            isinstance(mutation, steps.TimerFired)
            and not mutation.polled
            and mutation.result is None
        ):
            self._record(ExecutionID.parse(mutation.eid))
        self.engine_run(mutation, **kw)

    def _record(self, eid: ExecutionID) -> None:
        w = self.world
        with w.lock:
            log = w.log(eid)
            started = log.started
            now = w.clock()
            if started is None or log.runs_ok:
                return  # no task of it started unknown to dm (slow_record), or recorded
            if self.rng.random() >= self.p:
                return
            # Another delivery's retried run, the distributor free by now, gets the
            # started task's token: D.run answered once, dm's last try of it now.
            log.busy_until_us = min(log.busy_until_us, now)
            log.runs_ok += 1
            log.last_try_us = now
        self.recorded.append(eid)
        self.engine_run(
            steps.RecordRun(
                eid=str(eid),
                dist_token=started.token,
                poll_timeout_us=int(started.poll_timeout.total_seconds() * US),
                poll_interval_us=int(started.poll_interval.total_seconds() * US),
            )
        )
