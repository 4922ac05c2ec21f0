"""Retrying failed sub-graphs (``dm retry``) in the seeded simulation, plus scripted cases.

The seeded run: the usual simulated graph runs to its end (:class:`tests.sim.sim.Sim`),
but its jobs fail when a dependency ended abnormally (as real jobs do) in most
seeds, so failures spread up the graph. Then, for a few rounds, some of the
attempts that ended abnormally are retried (``Service.retry_attempt``; some
requests made twice, as an impatient user would) and the world runs on; the
last round retries every one of them and no job fails any more. Before the
fail-free rounds, a user also retries a few failed attempts while the world
runs (between two plays, with steps still queued or delayed), so re-opens
race the engine's own steps, and right after a declaration naming a failed
dependee halted its job, which then calls again as if its answer was lost
(:meth:`RetrySim._after_halt`: answered "halted" again, W-6). On top of the
base invariants (:meth:`Sim.check`, whose retry-policy replay starts afresh at
each re-open), it checks:

* each retry re-opened every attempt then ended abnormally because of it,
  transitively (:meth:`RetrySim.check_cascades`);

* FINISHED attempts are never re-opened: executions, state and result
  document unchanged from the moment they finished;
* history is kept: an execution, once ended, never changes;
* results: each FINISHED attempt's value is 1 + what its finishing execution
  read of its dependencies; what it read as FINISHED is the dependency's
  result now (results are immutable); what it read as ended abnormally was
  re-opened only later, or never;
* after the last round every attempt is FINISHED, and no execution of that
  round read an abnormal dependency (a re-opened depender waited for its
  re-opened dependees);
* late deliveries change nothing: every re-open step is delivered again at
  the end, each must find nothing to do.
"""

from __future__ import annotations

import json
import logging
import pathlib
import random
from typing import Any

import pytest

from distributors.fake import Job, quest_desc
from dmcore.engine import core, docs, steps
from dmcore.engine.base import Mutation
from dmcore.errors import FailedPrecondition
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AttemptState, ExecutionState
from tests.harness import Chaos, Harness, qid_of
from tests.sim.faults import Faults
from tests.sim.observe import AttemptView
from tests.sim.sim import FAIL, ExecRecord, NotConverged, Sim, make_plan, new_harness, replay_hint
from tests.sim.test_sim import EXPECTED_FAILURES

ROUNDS = 3
"""Retry rounds after the first run; from the last one on, every attempt that ended
abnormally is retried and no job fails."""
FINAL_TRIES = 4
"""Fail-free rounds allowed for everything to finish (a start timeout may still
end an execution the driver left waiting: legitimate, retried again)."""

RETRY_SEEDS = 40
MIDRUN_RETRIES = 3
"""Retries a user makes while the graph runs, at most, per run of the world before the
fail-free rounds (each before a random play, so re-opens race the world's own steps)."""
P_MIDRUN = 0.1
P_REOPEN_AFTER_HALT = 0.5
"""How often, before the fail-free rounds, a user retries a dependee that had ended
abnormally right after a declaration naming it halted its depender, and the job then
calls again, its answer lost (W-6: answered "halted" again, deps._reopened_since)."""


class RetrySim(Sim):
    """The simulation, remembering what each execution read of its dependencies."""

    def __init__(self, *args: Any, fail_on_abnormal: bool, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fail_on_abnormal = fail_on_abnormal
        self.round = 0
        self.seen: dict[ExecutionID, dict[AttemptID, int | None]] = {}
        self.read_us: dict[ExecutionID, dict[AttemptID, int]] = {}
        """When each execution last read each dependency (sim clock)."""
        self.exec_round: dict[ExecutionID, int] = {}
        self.midrun_rng = random.Random(f"dm-sim-midrun/{self.plan.seed}")
        self.midrun_left = MIDRUN_RETRIES
        self.retries: list[tuple[AttemptID, dict[AttemptID, int]]] = []
        """Each retry, with the attempts then ended abnormally and their last execution."""
        self.late: list[steps.ReopenAttempt] = []
        self.halt_rng = random.Random(f"dm-sim-reopen-after-halt/{self.plan.seed}")
        self.reopened_after_halt: list[tuple[ExecutionID, AttemptID]] = []
        """(the halted execution, the dependee re-opened before its call came again)."""

    def retry(self, aid: AttemptID) -> None:
        """A user's ``dm retry`` of ``aid``, remembered for :meth:`check_cascades`."""
        abnormal = {
            AttemptID.decode(docs.last_id(p)): int(d["cur_execution"])
            for p, d in self.h.store.query(docs.ATTEMPTS)
            if d["state"] == AttemptState.ABNORMAL_FINISHED
        }
        self.h.service.retry_attempt(aid, Caller.trusted())
        self.retries.append((aid, abnormal))
        self.late.append(steps.ReopenAttempt(aid=aid.encoded, after_execution=abnormal[aid]))
        self.trace.append(f"round {self.round}: retry {self.name(aid)}")

    def _play(self, eid: ExecutionID, *, fast: bool = False, quiet: bool = False) -> None:
        if not fast and self.midrun_left and self.midrun_rng.random() < P_MIDRUN:
            failed = sorted(_abnormal(self.h), key=lambda a: a.encoded)
            if failed:
                self.midrun_left -= 1
                self.retry(self.midrun_rng.choice(failed))  # no drain: it races the world
        super()._play(eid, fast=fast, quiet=quiet)

    def _after_halt(self, rec: ExecRecord, declared: list[AttemptID]) -> bool:
        """Maybe a user retries (``dm retry``) a dependee the halting declaration found
        over, abnormally, and the re-open runs (it opens the halted depender's edge to
        it again, an edge an earlier execution may have left) before the job calls
        again, as a client does whose answer was lost."""
        if rec.fast or self.in_parts or self.in_other or self.round >= ROUNDS:
            return False
        abnormal = set(_abnormal(self.h))
        over = sorted((a for a in set(declared) if a in abnormal), key=lambda a: a.encoded)
        if not over or self.halt_rng.random() >= P_REOPEN_AFTER_HALT:
            return False
        aid = self.halt_rng.choice(over)
        self.retry(aid)
        self.reopened_after_halt.append((rec.eid, aid))
        self.trace.append(f"after {self.ename(rec.eid)} halted: retry {self.name(aid)}")
        self.h.drain()
        return True

    def check_cascades(self) -> list[str]:
        """Each retry re-opened every attempt that had ended abnormally because of it.

        Once the world is still: for each retry of D, the attempts ended abnormally
        at that moment whose last execution read D as ended abnormally, or read an
        attempt re-opened so in turn, must each have been re-opened after that
        execution, unless what it read ended abnormally again (a depender running
        when D was retried is not re-opened: it was not over).
        """
        v: list[str] = []
        for d, abnormal in self.retries:
            reach = {d}
            grew = True
            while grew:
                grew = False
                for x, cur in abnormal.items():
                    read = self.seen.get(x.execution(cur), {})
                    if x not in reach and any(
                        value is None and dep in reach for dep, value in read.items()
                    ):
                        reach.add(x)
                        grew = True
            for x in sorted(reach - {d}, key=lambda a: a.encoded):
                after = {int(r["after_execution"]) for r in self.h.attempt(x).get("reopened", [])}
                read = self.seen.get(x.execution(abnormal[x]), {})
                again = [  # what it read failed again since: re-running it would not help
                    dep
                    for dep, value in read.items()
                    if value is None and dep in reach and dep in _abnormal(self.h)
                ]
                if abnormal[x] not in after and not again:
                    v.append(
                        f"retry of {self.name(d)}: {self.name(x)} had ended abnormally because "
                        f"of it (execution {abnormal[x]}), was not re-opened"
                    )
        self.retries = []
        return v

    def _job(self, rec: ExecRecord, job: Job) -> None:
        self.exec_round[rec.eid] = self.round
        return super()._job(rec, job)

    def _dep_value(self, rec: ExecRecord, rsp: dm_pb2.EnsureGraphDataRsp, a: AttemptID) -> int:
        value = super()._dep_value(rec, rsp, a)
        data = (
            rsp.result.quests[a.quest].attempts[a.num].data
            if a.quest in rsp.result.quests
            else None
        )
        finished = data is not None and data.WhichOneof("attempt_type") == "finished"
        self.seen.setdefault(rec.eid, {})[a] = value if finished else None
        self.read_us.setdefault(rec.eid, {})[a] = self.h.clock()
        if not finished and self.fail_on_abnormal:
            rec.outcome = FAIL  # what dm must make of it: FAILED
            raise RuntimeError(f"sim: dependency {self.name(a)} ended abnormally")
        return value

    def _check_values(
        self, atts: dict[AttemptID, AttemptView], flagged: set[AttemptID]
    ) -> list[str]:
        v: list[str] = []
        for aid, att in atts.items():
            me = self.name(aid)
            if (aid in flagged) != (att.state == AttemptState.ABNORMAL_FINISHED):
                v.append(f"{me}: flagged abnormal={aid in flagged} but {att.state.name}")
            if att.state != AttemptState.FINISHED:
                continue
            writer = self.internals.result_writer(aid)
            if writer is None or not att.result:
                v.append(f"{me}: FINISHED without a result")
                continue
            eid = aid.execution(writer)
            seen = self.seen.get(eid, {})
            got = json.loads(att.result).get("v")
            if got != 1 + sum(x or 0 for x in seen.values()):
                v.append(f"{me}: result v={got}, its execution read {seen}")
            for dep, value in seen.items():
                dep_att = atts[dep]
                if value is not None:
                    now = json.loads(dep_att.result).get("v") if dep_att.result else None
                    if now != value:
                        v.append(f"{me}: read {self.name(dep)} = {value}, its result is {now}")
                    continue
                # Re-opened after the read is fine, even before the attempt ends (its
                # end may come later through the queue): it had the failure in hand
                # (docs/behaviour.md: a running depender is not re-opened).
                reopened = [at for _, at in self.internals.reopens(dep)]
                read_us = self.read_us[eid][dep]
                if dep_att.state != AttemptState.ABNORMAL_FINISHED and not any(
                    at >= read_us for at in reopened
                ):
                    v.append(
                        f"{me}: read {self.name(dep)} as ended abnormally, which is "
                        f"{dep_att.state.name} and was not re-opened after {me} read it"
                    )
                if self.exec_round.get(eid) == self.round:
                    v.append(f"{me}: in the last round, read {self.name(dep)} ended abnormally")
        return v


def _abnormal(h: Harness) -> list[AttemptID]:
    return [
        AttemptID.decode(docs.last_id(p))
        for p, d in h.store.query(docs.ATTEMPTS)
        if d["state"] == AttemptState.ABNORMAL_FINISHED
    ]


def _finished_snapshot(h: Harness) -> dict[AttemptID, Any]:
    out: dict[AttemptID, Any] = {}
    for p, d in h.store.query(docs.ATTEMPTS):
        if d["state"] == AttemptState.FINISHED:
            aid = AttemptID.decode(docs.last_id(p))
            out[aid] = (d, docs.read_result(h.store, aid, d))
    return out


def _ended_executions(h: Harness) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p, att in h.store.query(docs.ATTEMPTS):
        aid = AttemptID.decode(docs.last_id(p))
        for ex in docs.list_executions(h.store, aid, att):
            if ExecutionState(ex["state"]) in (
                ExecutionState.FINISHED,
                ExecutionState.ABNORMAL_FINISHED,
            ):
                out[str(aid.execution(int(ex["num"])))] = ex
    return out


def _retry_round(sim: RetrySim, rng: random.Random, chosen: list[AttemptID]) -> list[str]:
    """Retry ``chosen`` and run the world on; what changed that must not have."""
    h, v, rnd = sim.h, [], sim.round
    finished = _finished_snapshot(h)
    ended = _ended_executions(h)
    for aid in chosen:
        if h.state(aid) != AttemptState.ABNORMAL_FINISHED:
            continue  # re-opened since the round began, by the retry of a dependency
        sim.retry(aid)
        if rng.random() < 0.3:  # asked twice: the second finds it re-opened
            with pytest.raises(FailedPrecondition):
                h.service.retry_attempt(aid, Caller.trusted())
    h.drain()  # the re-open cascades run
    for aid in chosen:
        if rng.random() < 0.5:
            # Completion steps of the end before the re-open, delivered late.
            late_steps: list[Mutation] = [
                steps.PropagateCompletion(aid=aid.encoded),
            ]
            late_steps += [
                steps.AckFwdDep(depender=d.encoded, dependee=aid.encoded)
                for d in docs.list_dependers(h.store, aid, h.attempt(aid))
            ]
            for late_step in late_steps:
                h.engine.run(late_step)
            sim.trace.append(f"round {rnd}: late completion steps of {sim.name(aid)}")
    for aid in finished:
        if rng.random() < 0.1:
            with pytest.raises(FailedPrecondition, match="never re-opened"):
                h.service.retry_attempt(aid, Caller.trusted())
    sim.run()
    v += [f"round {rnd}: {c}" for c in sim.check_cascades()]
    for aid, (att, res) in finished.items():
        now = (h.attempt(aid), docs.read_result(h.store, aid))
        if now != (att, res):
            v.append(f"round {rnd}: FINISHED {sim.name(aid)} changed: {now}")
    now_ended = _ended_executions(h)
    v += [
        f"round {rnd}: ended execution {p} changed"
        for p, ex in ended.items()
        if now_ended.get(p) != ex
    ]
    return v


def simulate_retries(seed: int, tmp_path: pathlib.Path, *, queue: str) -> None:
    plan = make_plan(seed)
    # What these checks do not follow: results that expire (a value read may be
    # dropped later), and cancels (a user's cancel stands, no retry round ends it).
    plan.p_expire = plan.p_cancel = plan.p_cancel_in_run = 0.0
    rng = random.Random(f"dm-sim-retry/{seed}")
    h = new_harness(plan, tmp_path, queue=queue)
    sim = RetrySim(plan, h, fail_on_abnormal=rng.random() < 0.8)
    v: list[str] = []
    try:
        try:
            sim.run()
            v += sim.check_cascades()
            rnd = 0
            while True:
                rnd += 1
                sim.round = rnd
                failed = _abnormal(h)
                if rnd >= ROUNDS and not failed:
                    break
                if rnd > ROUNDS + FINAL_TRIES:
                    v.append(f"still ended abnormally after {FINAL_TRIES} fail-free rounds")
                    break
                if rnd >= ROUNDS:
                    chosen = failed
                    plan.p_fail = plan.p_crash = plan.p_early_exit = plan.p_stall = 0.0
                    plan.p_settle_between = 0.0
                    sim.world.faults = Faults()  # the distributor fails no more either
                    if h.chaos is not None:
                        # Duplicates still, but no lost dispatch or delay: each one costs
                        # the driver a sweep (6 s of clock), and a long re-open cascade
                        # would then outlive the new executions' start timeouts.
                        h.chaos.chaos = Chaos(duplicate=plan.chaos.duplicate)
                else:
                    chosen = [a for a in failed if rng.random() < 0.5]
                sim.midrun_left = MIDRUN_RETRIES if rnd < ROUNDS else 0
                v += _retry_round(sim, rng, chosen)
        except NotConverged as e:
            print("\n".join(sim.trace))
            raise AssertionError(f"seed {seed} ({queue}): {e}\n{replay_hint(seed)}") from None

        before = {p: d for p, d in h.store.query(docs.ATTEMPTS)}
        for step in sim.late:  # every re-open delivered again, late
            h.engine.run(step)
        sim._settle()
        after = {p: d for p, d in h.store.query(docs.ATTEMPTS)}
        if before != after:
            v.append("a late re-open changed an attempt")

        v += sim.check()
        v += [
            f"a queued task failed: {f}" for f in h.failures if not f.startswith(EXPECTED_FAILURES)
        ]
        if v:
            print("\n".join(sim.trace))
            shown = "\n  ".join(v[:40])
            raise AssertionError(
                f"seed {seed} ({queue}): {len(v)} violations; {replay_hint(seed)} "
                f"(tests/sim/test_sim_retry.py)\nplan: {plan.summary()}\n  {shown}"
            )
    finally:
        h.close()


@pytest.fixture(autouse=True)
def _quiet_dispatch_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="dm.engine")


@pytest.mark.parametrize("retry_seed", range(RETRY_SEEDS), ids=lambda s: f"seed-{s}")
def test_simulation_with_retries(retry_seed: int, tmp_path: pathlib.Path) -> None:
    simulate_retries(retry_seed, tmp_path, queue="chaos")


@pytest.mark.parametrize("retry_seed", range(5), ids=lambda s: f"seed-{s}")
def test_simulation_with_retries_local(retry_seed: int, tmp_path: pathlib.Path) -> None:
    simulate_retries(retry_seed, tmp_path, queue="local")


# -- scripted -------------------------------------------------------------------------


def _value_job(deps: list[AttemptID], quests: list[dm_pb2.Quest.Desc], fail: bool = False) -> Any:
    """A job depending on ``deps``: halts, fails on an abnormal one, else 1 + their sum."""

    def job(j: Job) -> None:
        j.activate()
        total = 1
        if deps:
            rsp = j.dep_on(*deps, quests=quests)
            if rsp.should_halt:
                return
            for a in deps:
                data = rsp.result.quests[a.quest].attempts[a.num].data
                if data.WhichOneof("attempt_type") != "finished":
                    raise RuntimeError(f"dependency {a} ended abnormally")
                total += json.loads(data.finished.data.object)["v"]
        if fail:
            raise RuntimeError("broken")
        j.finish({"v": total})

    return job


def test_retry_reopens_the_failed_chain_and_keeps_finished(tmp_path: pathlib.Path) -> None:
    """top -> mid -> leaf, and done -> leaf (done ignores failures). leaf fails; mid
    and top fail because of it; done finishes anyway. Retrying leaf re-opens leaf,
    mid and top (not done); the graph resumes and finishes with executions kept."""
    h = Harness(tmp_path, queue="local")
    try:
        leaf, mid, top = quest_desc("leaf"), quest_desc("mid"), quest_desc("top")
        l1, m1, t1 = (AttemptID(qid_of(d), 1) for d in (leaf, mid, top))
        done = quest_desc("done")
        d1 = AttemptID(qid_of(done), 1)
        h.ensure(top, done)

        def done_job(j: Job) -> None:
            j.activate()
            if not j.dep_on(l1, quests=[leaf]).should_halt:
                j.finish({"v": 0})

        h.play(t1.execution(1), _value_job([m1], [mid]))
        h.play(d1.execution(1), done_job)
        h.play(m1.execution(1), _value_job([l1], [leaf]))
        h.play(l1.execution(1), _value_job([], [], fail=True))
        h.settle()
        h.play(m1.execution(2), _value_job([l1], [leaf]))
        h.play(d1.execution(2), done_job)
        h.settle()
        h.play(t1.execution(2), _value_job([m1], [mid]))
        h.settle()
        assert [h.state(a) for a in (l1, m1, t1, d1)] == [
            AttemptState.ABNORMAL_FINISHED,
            AttemptState.ABNORMAL_FINISHED,
            AttemptState.ABNORMAL_FINISHED,
            AttemptState.FINISHED,
        ]
        done_before = h.attempt(d1)

        h.service.retry_attempt(l1, Caller.trusted())
        h.settle()
        assert h.state(m1) == AttemptState.EXECUTING and h.attempt(m1)["cur_execution"] == 3
        assert h.state(t1) == AttemptState.EXECUTING and h.attempt(t1)["cur_execution"] == 3
        assert h.attempt(d1) == done_before  # FINISHED: never re-opened
        with pytest.raises(FailedPrecondition, match="never re-opened"):
            h.service.retry_attempt(d1, Caller.trusted())
        with pytest.raises(FailedPrecondition, match="only an attempt that ended abnormally"):
            h.service.retry_attempt(l1, Caller.trusted())

        # The re-opened dependers wait for their re-opened dependees.
        h.play(t1.execution(3), _value_job([m1], [mid]))
        h.play(m1.execution(3), _value_job([l1], [leaf]))
        h.settle()
        assert h.state(m1) == AttemptState.WAITING and h.state(t1) == AttemptState.WAITING
        h.play(l1.execution(2), _value_job([], []))
        h.settle()
        h.play(m1.execution(4), _value_job([l1], [leaf]))
        h.settle()
        h.play(t1.execution(4), _value_job([m1], [mid]))
        h.settle()
        assert [h.result(a) for a in (l1, m1, t1)] == [{"v": 1}, {"v": 2}, {"v": 3}]
        assert h.exec_state(l1.execution(1)) == ExecutionState.ABNORMAL_FINISHED  # history kept
        (reopen,) = h.attempt(m1)["reopened"]
        assert reopen["after_execution"] == 2 and reopen["cause"] == l1.encoded
        assert h.failures == []
    finally:
        h.close()


def test_a_cancelled_depender_stays_cancelled(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, queue="local")
    try:
        leaf, top = quest_desc("leaf"), quest_desc("top")
        l1, t1 = AttemptID(qid_of(leaf), 1), AttemptID(qid_of(top), 1)
        h.ensure(top)
        h.play(t1.execution(1), _value_job([l1], [leaf]))
        h.settle()
        h.service.cancel_attempt(
            dm_pb2.CancelAttemptReq(attempt=t1.to_proto(), reason="enough"), Caller.trusted()
        )
        h.play(l1.execution(1), _value_job([], [], fail=True))
        h.settle()
        h.service.retry_attempt(l1, Caller.trusted())
        h.settle()
        assert h.state(t1) == AttemptState.ABNORMAL_FINISHED
        assert h.attempt(t1)["abnormal"]["reason"] == "enough"
    finally:
        h.close()


def _retried_then_resumed(
    h: Harness,
    d1: AttemptID,
    x: ExecutionID,
    deps: list[AttemptID],
    quests: list[dm_pb2.Quest.Desc],
    *,
    want: int,
) -> None:
    """D's new execution succeeds, then X's execution ``x`` reads its dependencies."""
    h.play(d1.execution(2), _value_job([], []))
    h.settle()
    h.play(x, _value_job(deps, quests))
    h.settle()
    assert h.result(x.attempt_id) == {"v": want}
    assert h.failures == []


def _waiting_on_a_failed_and_a_running(
    h: Harness,
) -> tuple[AttemptID, AttemptID, AttemptID, list[dm_pb2.Quest.Desc]]:
    """X depends on D and E; D failed (X's edge to it satisfied), E not played yet:
    X WAITING on E alone. Returns X, D, E and D, E's descriptions."""
    x, d, e = quest_desc("x"), quest_desc("d"), quest_desc("e")
    x1, d1, e1 = (AttemptID(qid_of(q), 1) for q in (x, d, e))
    h.ensure(x)
    h.play(x1.execution(1), _value_job([d1, e1], [d, e]))
    h.play(d1.execution(1), _value_job([], [], fail=True))
    h.settle()
    assert h.state(d1) == AttemptState.ABNORMAL_FINISHED
    assert h.store.get(docs.fwd_dep_path(x1, d1))["satisfied"]  # type: ignore[index]
    assert h.state(x1) == AttemptState.WAITING
    return x1, d1, e1, [d, e]


@pytest.mark.parametrize("late", [False, True], ids=["", "late completion steps"])
def test_a_waiting_depender_waits_again_for_its_retried_dependency(
    tmp_path: pathlib.Path, late: bool
) -> None:
    """Retrying D opens X's satisfied edge to D again (UnackFwdDep): when E ends, X
    keeps waiting for D's new end instead of resuming to read D as not finished.
    ``late``: the completion steps of D's failed end are delivered again after the
    retry (PropagateCompletion, AckFwdDep); they must not satisfy X's edge."""
    h = Harness(tmp_path, queue="local")
    try:
        x1, d1, e1, quests = _waiting_on_a_failed_and_a_running(h)
        h.service.retry_attempt(d1, Caller.trusted())
        h.settle()
        for step in (
            [
                steps.PropagateCompletion(aid=d1.encoded),
                steps.AckFwdDep(depender=x1.encoded, dependee=d1.encoded),
            ]
            if late
            else []
        ):
            h.engine.run(step)
            h.drain()
            # X's back edge is inline on D (no mark of its own): its edge tells.
            assert x1.encoded in h.attempt(d1)[docs.DEPENDERS]
            assert not h.store.get(docs.fwd_dep_path(x1, d1))["satisfied"]  # type: ignore[index]
        assert not h.store.get(docs.fwd_dep_path(x1, d1))["satisfied"]  # type: ignore[index]
        h.play(e1.execution(1), _value_job([], []))
        h.settle()
        assert h.state(x1) == AttemptState.WAITING and h.attempt(x1)["cur_execution"] == 1
        _retried_then_resumed(h, d1, x1.execution(2), [d1, e1], quests, want=3)
    finally:
        h.close()


def _failed_dependency(h: Harness) -> tuple[dm_pb2.Quest.Desc, AttemptID, AttemptID]:
    """Quests X and D, D's attempt ended abnormally: (D's desc, X|1, D|1)."""
    x, d = quest_desc("x"), quest_desc("d")
    x1, d1 = AttemptID(qid_of(x), 1), AttemptID(qid_of(d), 1)
    h.ensure(x, d)
    h.play(d1.execution(1), _value_job([], [], fail=True))
    h.settle()
    assert h.state(d1) == AttemptState.ABNORMAL_FINISHED
    return d, x1, d1


def test_a_retry_racing_a_depend_call_halts_the_caller(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X depends on D, which ended abnormally as X's call began; a user retries D
    before the call's transaction. X must not be told D is over: it halts, and
    resumes once D ends again (the alternative, an answer without a halt that
    shows D running, is one no job can act on)."""
    h = Harness(tmp_path, queue="local")
    try:
        d, x1, d1 = _failed_dependency(h)
        raced: list[bool] = []
        run = h.engine.run

        def run_after_retry(m: Mutation, **kw: Any) -> None:
            if isinstance(m, steps.DeclareDeps) and not raced:
                raced.append(True)
                h.service.retry_attempt(d1, Caller.trusted())
            run(m, **kw)

        monkeypatch.setattr(h.engine, "run", run_after_retry)
        halted: list[bool] = []

        def x_job(j: Job) -> None:
            j.activate()
            halted.append(j.dep_on(d1, quests=[d]).should_halt)

        h.play(x1.execution(1), x_job)
        monkeypatch.undo()
        assert raced == [True] and halted == [True]
        h.settle()
        assert h.state(x1) == AttemptState.WAITING
        _retried_then_resumed(h, d1, x1.execution(2), [d1], [d], want=2)
    finally:
        h.close()


def test_a_retry_after_a_depend_calls_transaction_leaves_its_answer_whole(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X depends on D, which ended abnormally; a user retries D after X's declaration
    committed but before its answer is made. The answer is what the declaration's
    transaction read (D over, abnormally), not a later read that would show D
    running without a halt: X is told, as if the retry came after the call."""
    h = Harness(tmp_path, queue="local")
    try:
        d, x1, d1 = _failed_dependency(h)
        snapshot = h.service._snapshot_graph

        def snapshot_after_retry(*a: Any, **kw: Any) -> dm_pb2.GraphData:
            h.service.retry_attempt(d1, Caller.trusted())
            return snapshot(*a, **kw)

        monkeypatch.setattr(h.service, "_snapshot_graph", snapshot_after_retry)
        told: list[str] = []

        def x_job(j: Job) -> None:
            j.activate()
            rsp = j.dep_on(d1, quests=[d])
            assert not rsp.should_halt
            told.append(
                rsp.result.quests[d1.quest].attempts[d1.num].data.WhichOneof("attempt_type")
            )
            j.finish({"v": 0})

        h.play(x1.execution(1), x_job)
        monkeypatch.undo()
        assert told == ["abnormal_finish"]
        assert h.state(d1) != AttemptState.ABNORMAL_FINISHED  # re-opened meanwhile
    finally:
        h.close()


def _run_queued(h: Harness, kind: str) -> int:
    """Run the queued tasks of one step kind now, ahead of the others (an interleaving)."""
    assert h.chaos is not None
    mine = [(t, n) for t, n in h.chaos.pending if t.payload.get("kind") == kind]
    h.chaos.pending = [(t, n) for t, n in h.chaos.pending if t.payload.get("kind") != kind]
    for task, delivery in mine:
        h.engine.handle_task(task.target, task.payload, delivery, task.name)
    return len(mine)


def test_a_depender_told_by_its_declaration_is_reopened(tmp_path: pathlib.Path) -> None:
    """X declares D after D ended abnormally (the declaration tells X at once; its back
    edge is recorded in the declaration's commit, after D's end). X fails because of
    it. Retrying D must re-open X like any depender told of the failure."""
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(reorder=False))
    try:
        x, d = quest_desc("x"), quest_desc("d")
        x1, d1 = AttemptID(qid_of(x), 1), AttemptID(qid_of(d), 1)
        h.ensure(x, d)
        h.world.run_task(d1.execution(1), _value_job([], [], fail=True))
        h._deliver_inbox()  # D ends (no back edge yet: its propagation acks none)
        assert h.state(d1) == AttemptState.ABNORMAL_FINISHED
        h.world.run_task(x1.execution(1), _value_job([d1], [d]))  # reads D failed, fails
        h._deliver_inbox()
        assert h.state(x1) == AttemptState.ABNORMAL_FINISHED
        assert h.store.get(docs.fwd_dep_path(x1, d1))["satisfied"]  # type: ignore[index]
        back = h.store.get(docs.back_dep_path(d1, x1))  # D had ended: acked, propagated
        assert back is not None and back["propagated"]

        h.service.retry_attempt(d1, Caller.trusted())
        h.settle()
        assert h.attempt(x1)["reopened"][0]["cause"] == d1.encoded
        assert not h.store.get(docs.fwd_dep_path(x1, d1))["satisfied"]  # type: ignore[index]
        _retried_then_resumed(h, d1, x1.execution(2), [d1], [d], want=2)
    finally:
        h.close()


def test_a_depender_told_by_its_declaration_reopened_when_its_back_edge_comes_late(
    tmp_path: pathlib.Path,
) -> None:
    """As above, but X's back edge is recorded only after the retry went through D's
    back edges (queued, not in the declaration's commit, once its write budget is
    spent): recording it must still open X's edge and re-open X."""
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(reorder=False))
    try:
        x, d = quest_desc("x"), quest_desc("d")
        x1, d1 = AttemptID(qid_of(x), 1), AttemptID(qid_of(d), 1)
        h.ensure(x, d)
        h.play(d1.execution(1), _value_job([], [], fail=True))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(core, "INLINE_WRITE_BUDGET", 0)  # the declaration's follow-ups queued
            h.world.run_task(x1.execution(1), _value_job([d1], [d]))
        h._deliver_inbox()
        assert h.state(x1) == AttemptState.ABNORMAL_FINISHED
        assert h.chaos is not None
        held = [(t, n) for t, n in h.chaos.pending if t.payload.get("kind") == "AddBackDep"]
        assert len(held) == 1
        h.chaos.pending = [p for p in h.chaos.pending if p not in held]

        h.service.retry_attempt(d1, Caller.trusted())
        h.drain()  # the re-open goes through D's back edges: X's is not there yet
        assert h.state(x1) == AttemptState.ABNORMAL_FINISHED
        h.chaos.pending += held
        h.settle()
        assert h.attempt(x1)["reopened"][0]["cause"] == d1.encoded
        _retried_then_resumed(h, d1, x1.execution(2), [d1], [d], want=2)
    finally:
        h.close()


def test_a_duplicate_of_the_last_reopen_step_loses_nothing(tmp_path: pathlib.Path) -> None:
    """The last ReopenDependers step, its follow-ups left to the sweep (dispatch
    failed after the commit), is delivered again before the sweep: the duplicate
    must not replace them with its own (as it would, were follow-ups named by
    their position rather than by what they do)."""
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(reorder=False))
    try:
        x, d = quest_desc("x"), quest_desc("d")
        x1, d1 = AttemptID(qid_of(x), 1), AttemptID(qid_of(d), 1)
        h.ensure(x)
        h.play(x1.execution(1), _value_job([d1], [d]))
        h.play(d1.execution(1), _value_job([], [], fail=True))
        h.settle()
        h.play(x1.execution(2), _value_job([d1], [d]))  # reads D failed, fails
        h.settle()
        assert h.state(x1) == AttemptState.ABNORMAL_FINISHED
        assert h.chaos is not None
        h.service.retry_attempt(d1, Caller.trusted())
        (walk,) = [(t, n) for t, n in h.chaos.pending if t.payload["kind"] == "ReopenDependers"]
        h.chaos.pending.remove(walk)
        h.chaos.chaos.fail_dispatch = 1.0
        for delivery in (1, 2):  # the original, then a duplicate
            h.engine.handle_task(walk[0].target, walk[0].payload, delivery, walk[0].name)
        h.chaos.chaos.fail_dispatch = 0.0
        h.settle()  # the sweep dispatches what was left
        assert h.attempt(x1)["reopened"][0]["cause"] == d1.encoded
        _retried_then_resumed(h, d1, x1.execution(3), [d1], [d], want=2)
    finally:
        h.close()


def test_a_retried_attempt_that_ended_unflagged_reaches_a_later_depender(
    tmp_path: pathlib.Path,
) -> None:
    """D, created without a dependency (docs.DEPENDED false), fails; only then X
    declares its dependencies on D (over: acked at once, D left as it ended) and E.
    Retrying D re-opens X's edge to D; D's next end must reach X, so the re-open
    flags D."""
    h = Harness(tmp_path, queue="local")
    try:
        x, d, e = quest_desc("x"), quest_desc("d"), quest_desc("e")
        x1, d1, e1 = (AttemptID(qid_of(q), 1) for q in (x, d, e))
        h.ensure(x, d, e)
        h.play(d1.execution(1), _value_job([], [], fail=True))
        h.settle()
        assert h.attempt(d1)[docs.DEPENDED] is False
        h.play(x1.execution(1), _value_job([d1, e1], []))
        h.settle()
        assert h.attempt(d1)[docs.DEPENDED] is False  # over: its record unchanged
        assert h.state(x1) == AttemptState.WAITING
        h.service.retry_attempt(d1, Caller.trusted())
        h.settle()
        assert not h.store.get(docs.fwd_dep_path(x1, d1))["satisfied"]  # type: ignore[index]
        h.play(e1.execution(1), _value_job([], []))
        h.settle()
        _retried_then_resumed(h, d1, x1.execution(2), [d1, e1], [], want=3)
    finally:
        h.close()
