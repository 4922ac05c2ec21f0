"""A halted execution's resume, checked against re-opens (``dm retry``) in the simulation.

The rule (docs/behaviour.md, "Retrying what failed": what a depender not over
waits for): an attempt halted for dependencies resumes only once every dependency
its halted execution declared is over. A dependee re-opened while the depender
waits opens the depender's edge again, and the depender waits for its re-run. The
one exception is a resume that beat the re-open's walk to the depender's edge (the
edge still satisfied when the resume commits): no execution can tell it from a
retry made just after the resume, and its next declaration halts on the dependee.

:class:`ReopenWaitSim` checks this on every resume, in the resume's own
transaction: a probe wraps the two steps that resume a halted attempt
(``CheckDeps``, and ``FinishExecution`` of an execution that halted once its
dependencies were over already) and, when one resumes execution ``n``, reads each
attempt that ``n`` declared and ``n``'s edge to it: an attempt not over behind an
edge that is not satisfied is a violation (the edge was opened again by a
re-open before the resume, and the waiter did not count it).

The retry simulation's mid-run retries pick failed attempts at random; this one
also retries, while the graph runs, a failed attempt that a halted attempt has a
satisfied edge to, and its jobs read a failed dependency as 0 and go on (as a
job that tolerates failures does), so that halted dependers of failed attempts
are common. Without the re-open tagging the edge with the depender's current
execution (dmcore.engine.reopen.unack_fwd_dep), default seeds fail
(:data:`PLANTED_SEED`).
"""

from __future__ import annotations

import pathlib
import random
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from dmcore.engine import base, docs, reopen, steps
from dmcore.engine.base import Ctx, Later, Step
from dmcore.engine.records import attempt_is_terminal, load_current
from dmcore.ids import AttemptID, ExecutionID
from dmcore.states import AttemptState, ExecutionState
from tests.sim import test_sim_retry
from tests.sim.planted import replanted
from tests.sim.sim import ExecRecord, Plan
from tests.sim.test_sim_retry import ROUNDS, RetrySim, simulate_retries

SEEDS = 30
LOCAL_SEEDS = 3
P_FAIL = 0.25
"""Jobs fail at least this often before the fail-free rounds (the plan's draw, if more)."""
P_WAITER_RETRY = 0.5
"""Before a play, the chance that a user retries a failed attempt some halted attempt
has a satisfied edge to (if any; one an earlier execution's edge leads to first)."""
WAITER_RETRIES = 4
"""Such retries per round at most, before the fail-free rounds (apart from RetrySim's
own mid-run retries)."""

PLANTED_SEED = 25
"""A default seed that fails with the planted mistake below (re-find one when the
plan's draws change). With it, 4 of ChaosQueue seeds 0..59 fail: 25, 35, 52 and 54
(2, 29 and 30 did before RetrySim's users also re-open a dependee right after a halt,
RetrySim._after_halt); with the fix seeds 0..149 passed."""

KEPT_TAG = (
    r'opened = \{\*\*edge, "satisfied": False, "for_execution": int\(der\["cur_execution"\]\)\}',
    'opened = {**edge, "satisfied": False} if told else edge',
)
"""The behaviour before the re-open tagged the edge: opened again, it kept the tag of
the execution that wrote it, so a halt that did not arm it did not count it."""


class ReopenWaitSim(RetrySim):
    """The retry simulation, checking each resume against the re-opens (module doc)."""

    current: ClassVar[ReopenWaitSim | None] = None
    """The sim whose world runs now: the probes report to it."""

    def __init__(self, plan: Plan, *args: Any, fail_on_abnormal: bool, **kw: Any) -> None:
        # Jobs fail more often, and a failed dependency is read as 0 and the job goes
        # on, so that dependers of failed attempts halt on others instead of failing.
        plan.p_fail = max(plan.p_fail, P_FAIL)
        super().__init__(plan, *args, fail_on_abnormal=False, **kw)
        self.named: dict[ExecutionID, set[AttemptID]] = {}
        """What each execution declared (in any of its calls)."""
        self.waiter_rng = random.Random(f"dm-sim-reopen-wait/{self.plan.seed}")
        self.resumes_checked = 0
        self.waiter_round = -1
        self.waiter_left = [0, 0]
        self.waiter_retries = [0, 0]
        """Retries made of a failed attempt behind a halt: (older edge, the halt's own)."""
        ReopenWaitSim.current = self

    def _call(self, rec: ExecRecord, what: str, fn: Callable[[], Any]) -> Any:
        d = self.declaring
        if d is not None and d.eid == rec.eid:
            self.named.setdefault(rec.eid, set()).update(d.aids)
        return super()._call(rec, what, fn)

    def _play(self, eid: ExecutionID, *, fast: bool = False, quiet: bool = False) -> None:
        if not fast and self._may_retry(0):
            older: set[AttemptID] = set()
            current: set[AttemptID] = set()
            for p, att in self.h.store.query(docs.ATTEMPTS):
                if att["state"] == AttemptState.WAITING:
                    me = AttemptID.decode(docs.last_id(p))
                    o, c = self._failed_behind(me, int(att["cur_execution"]))
                    older |= o
                    current |= c
            self._retry_one(0, older, current)
        super()._play(eid, fast=fast, quiet=quiet)

    def _midjob(self, rec: ExecRecord) -> None:
        # A job that declared a failed attempt (over: told at once) and goes on to
        # declare more, perhaps halting on them: the failed one is retried meanwhile.
        if (
            not (rec.fast or self.in_parts or self.in_other)
            and self._may_retry(1)
            and self._retry_one(1, *self._failed_behind(rec.eid.attempt_id, rec.eid.num))
        ):
            self.h.drain()  # the re-open reaches the job's edge before its next call
        super()._midjob(rec)

    def _may_retry(self, where: int) -> bool:
        """Whether to retry now: before a play (``where`` 0) or in a job (1)."""
        if self.waiter_round != self.round:
            self.waiter_round, self.waiter_left = self.round, [WAITER_RETRIES] * 2
        return (
            self.round < ROUNDS  # none in the fail-free rounds (as RetrySim's own)
            and self.waiter_left[where] > 0
            and self.waiter_rng.random() < P_WAITER_RETRY
        )

    def _retry_one(self, where: int, older: set[AttemptID], current: set[AttemptID]) -> bool:
        """Retry one of ``older`` if any, else of ``current``; whether one was."""
        waited = sorted(older or current, key=lambda a: a.encoded)
        if not waited:
            return False
        self.waiter_left[where] -= 1
        self.waiter_retries[0 if older else 1] += 1
        self.retry(self.waiter_rng.choice(waited))
        return True

    def _failed_behind(self, me: AttemptID, cur: int) -> tuple[set[AttemptID], set[AttemptID]]:
        """Failed attempts behind a satisfied edge of ``me``, whose current execution is
        ``cur``: those whose edge an earlier execution wrote (its tag is not ``cur``:
        the hard case), and the others."""
        older: set[AttemptID] = set()
        current: set[AttemptID] = set()
        for ep, edge in self.h.store.query(docs.fwd_deps_collection(me)):
            dee = AttemptID.decode(docs.last_id(ep))
            if edge["satisfied"] and self.h.state(dee) == AttemptState.ABNORMAL_FINISHED:
                (current if edge["for_execution"] == cur else older).add(dee)
        return older, current

    def check_resume(self, ctx: Ctx, eid: ExecutionID) -> None:
        """Execution ``eid``, halted, is resumed in ``ctx``'s transaction (module doc)."""
        self.resumes_checked += 1
        me = eid.attempt_id
        for d in sorted(self.named.get(eid, ()), key=lambda a: a.encoded):
            dee = ctx.uow.get(docs.attempt_path(d))
            edge = ctx.uow.get(docs.fwd_dep_path(me, d))
            if dee is None or edge is None or attempt_is_terminal(dee) or edge["satisfied"]:
                continue
            self.violation(
                f"{self.ename(eid)} resumed while {self.name(d)}, which it declared, is "
                f"{AttemptState(dee['state']).name} behind an open edge (for execution "
                f"{edge['for_execution']}): a re-open before the resume was not waited for"
            )


Handler = Callable[[Any, Ctx], list[Step | Later]]


def _probe(fn: Handler) -> Handler:
    """``fn``, reporting a resume of a halted execution to the running sim."""

    def run(step: Any, ctx: Ctx) -> list[Step | Later]:
        sim = ReopenWaitSim.current
        if isinstance(step, steps.CheckDeps):
            aid = AttemptID.decode(step.aid)
        else:
            aid = ExecutionID.parse(step.eid).attempt_id
        att = ctx.uow.get(docs.attempt_path(aid))
        halted = (
            None if att is None or not att.get("deps_execution") else int(att["deps_execution"])
        )
        out = fn(step, ctx)
        if sim is None or halted is None:
            return out
        eid = aid.execution(halted)
        att, ex = load_current(ctx, eid)
        if (
            att is not None
            and ex is not None
            and att["state"] == AttemptState.SCHEDULING
            and int(att["cur_execution"]) == halted
            and not att.get("deps_execution")
            and ex["state"] == ExecutionState.FINISHED
        ):
            sim.check_resume(ctx, eid)
        return out

    return run


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The resume probes in place, and :class:`ReopenWaitSim` as the retry sim."""
    table = base._ROLL_FORWARD
    for cls in (steps.CheckDeps, steps.FinishExecution):
        monkeypatch.setitem(table, cls, _probe(table[cls]))
    monkeypatch.setattr(test_sim_retry, "RetrySim", ReopenWaitSim)
    yield
    ReopenWaitSim.current = None


@pytest.mark.parametrize("wait_seed", range(SEEDS), ids=lambda s: f"seed-{s}")
def test_resumes_wait_for_reopened_dependencies(
    wait_seed: int, tmp_path: pathlib.Path, probed: None
) -> None:
    simulate_retries(wait_seed, tmp_path, queue="chaos")
    sim = ReopenWaitSim.current
    assert sim is not None and sim.resumes_checked > 0


@pytest.mark.parametrize("wait_seed", range(LOCAL_SEEDS), ids=lambda s: f"seed-{s}")
def test_resumes_wait_for_reopened_dependencies_local(
    wait_seed: int, tmp_path: pathlib.Path, probed: None
) -> None:
    simulate_retries(wait_seed, tmp_path, queue="local")


def test_a_resume_that_ignores_a_reopened_edge_is_caught(
    tmp_path: pathlib.Path, probed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the re-opened edge keeping its old tag, a default seed reports a resume
    that did not wait for a re-opened dependency its halted execution declared."""
    table: dict[Any, Any] = base._ROLL_FORWARD
    monkeypatch.delitem(table, steps.UnackFwdDep)  # put back after the test
    replanted(reopen.unack_fwd_dep, *KEPT_TAG)  # its decorator registers it
    with pytest.raises(AssertionError, match="a re-open before the resume was not waited for"):
        simulate_retries(PLANTED_SEED, tmp_path, queue="chaos")
