"""Retry rules and timeouts on the fake clock (spec §1.6-§1.8, §4.4-§4.6, §7.2;
DESIGN.md §3: W-9, W-10, W-11, W-13 and the 30 s GetStatus rule).

Every test runs on the real local queue and on the ChaosQueue (duplicated,
reordered and delayed deliveries, dispatches failing after the commit). Time
moves only when a test moves the fake clock, so each deadline is checked just
before and just after it is due; the assertions are on the records, the
results and the number of distributor calls, never on wall-clock time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from distributors.fake import Crash, FakeDistributor, Job, quest_desc
from dmcore import distributor as dist
from dmcore import jsonnorm
from dmcore.engine import docs, steps
from dmcore.engine.core import OUTBOX_STALE_US
from dmcore.engine.records import TIMER_QUEUE_HORIZON_US, b64
from dmcore.engine.steps import RunExecution
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState
from tests.harness import Harness, follow_ups_left
from tests.sim.observe import Internals

S = 1_000_000  # microseconds in a second
WINDOW_S = 3600  # the default outage window for transient D.run errors
RUN_RETRY_CAP_S = 300  # the longest wait between two tries
REPOLL = int(dist.STOPPING_REPOLL_INTERVAL.total_seconds()) * S
MAXED = {"failed": 5, "crashed": 5, "expired": 5, "timed_out": 5}


# -- helpers ------------------------------------------------------------------------------


def desc(
    name: str,
    config: str = "fake",
    *,
    start: int = 0,
    run: int = 0,
    stop: int = 0,
    retry: Mapping[str, int] | None = None,
    **counters: int,
) -> dm_pb2.Quest.Desc:
    """A fake quest with ``meta.timeouts`` in seconds and ``meta.retry`` counters."""
    d = quest_desc(name, config, **{**(retry or {}), **counters})
    if start:
        d.meta.timeouts.start.FromSeconds(start)
    if run:
        d.meta.timeouts.run.FromSeconds(run)
    if stop:
        d.meta.timeouts.stop.FromSeconds(stop)
    return d


def queued_kinds(h: Harness) -> set[str]:
    """The step kinds of the tasks waiting in the harness's queue."""
    if h.local is not None:
        rows = h.local.store.connection().execute(  # type: ignore[union-attr]
            "SELECT payload FROM tasks WHERE done_us IS NULL"
        )
        return {json.loads(p).get("kind", "") for (p,) in rows}
    assert h.chaos is not None
    return {t.payload.get("kind", "") for t, _ in h.chaos.pending}


def run_until(h: Harness, t_us: int) -> None:
    """Run everything that is due up to ``t_us``; the clock stops exactly at ``t_us``.

    Unlike ``Harness.settle`` this never moves the clock past ``t_us``, so a
    test can look at the records just before a deadline.
    """
    extra = 0
    for _ in range(100_000):
        h.drain()
        h.engine.sweep()
        if h.drain():
            continue
        now = h.clock()
        if now >= t_us:
            # The ChaosQueue may have failed the sweep's queueing of a due timer
            # (left to the next sweep, as in production): sweep a few more times.
            extra += 1
            if extra > 5:
                return
            continue
        nxt = h.next_due_us()
        target = t_us if nxt is None or nxt <= now else min(t_us, nxt)
        if follow_ups_left(h.store, now + OUTBOX_STALE_US):  # left to the sweep: stale after 5 s
            target = min(target, now + OUTBOX_STALE_US + S)
        # A timely sweep: it runs when the next timer far ahead falls due.
        target = min(target, _next_swept_us(h, now) or target)
        h.clock.now_us = target
    raise AssertionError("run_until did not converge")


def _next_swept_us(h: Harness, now: int) -> int | None:
    """The next deadline after ``now`` of a record only the sweep fires (long timers)."""
    return Internals(h.store).next_armed_us(now)


def settle(h: Harness) -> None:
    """``Harness.settle``, repeated while outbox records are left (their re-dispatch
    by the sweep can fail on the ChaosQueue too, and then ``settle`` stops early)."""
    for _ in range(100):
        h.settle()
        if not follow_ups_left(h.store, h.clock()):
            return
    raise AssertionError("committed follow-ups never drained")


def wait(h: Harness, seconds: float) -> None:
    run_until(h, h.clock() + int(seconds * S))


def wait_pending(h: Harness, eid: ExecutionID, limit_s: int = 900) -> None:
    """Run the engine until ``eid`` has been handed to the fake distributor."""
    end = h.clock() + limit_s * S
    while eid not in h.world.pending():
        assert h.clock() < end, f"{eid} never reached the distributor"
        wait(h, 5)


def start(h: Harness, d: dm_pb2.Quest.Desc) -> ExecutionID:
    """Create quest ``d`` and run until its attempt 1's first execution runs."""
    (qid,) = h.ensure(d)
    eid = AttemptID(qid, 1).execution(1)
    wait_pending(h, eid)
    return eid


def executions(h: Harness, aid: AttemptID) -> list[dict[str, Any]]:
    return docs.list_executions(h.store, aid, h.attempt(aid))


def timer(h: Harness, eid: ExecutionID) -> dict[str, Any] | None:
    return docs.timer_of(h.attempt(eid.attempt_id), eid)


def abnormal_of(doc: dict[str, Any]) -> tuple[AbnormalStatus, str]:
    ab = doc["abnormal"]
    assert ab is not None, f"not abnormal: {doc}"
    return AbnormalStatus(ab["status"]), str(ab["reason"])


def quiet(h: Harness, eid: ExecutionID, cb: Callable[[Job], None]) -> None:
    """Play ``eid`` without the distributor notifying dm of its end."""
    h.world.run_task(eid, cb, notify=False)
    h.drain()


def report(h: Harness, eid: ExecutionID, result: dm_pb2.Result) -> None:
    """The fake distributor reports ``result`` for ``eid`` (a notification)."""
    task = h.world.task(eid)
    task.ran = True
    task.result = result
    h.world.notify(eid)
    h.drain()


def abnormal_result(status: AbnormalStatus, reason: str = "") -> dm_pb2.Result:
    return dm_pb2.Result(
        abnormal_finish=dm_pb2.AbnormalFinish(
            status=dm_pb2.AbnormalFinish.Status.Name(int(status)), reason=reason or status.name
        )
    )


def data_result(text: str) -> dm_pb2.Result:
    return dm_pb2.Result(data=dm_pb2.JsonResult(object=text))


def finishing(result: Any) -> Callable[[Job], None]:
    def job(j: Job) -> None:
        j.activate()
        j.finish(result)

    return job


def activating(j: Job) -> None:
    j.activate()


def failing(j: Job) -> None:
    raise ValueError("boom")


def crashing(j: Job) -> None:
    raise Crash("kaboom")


@dataclasses.dataclass
class Spy:
    """Counts the fake distributor's ``run`` and ``get_status`` calls (clock at each call).

    ``status_reply(n, got)`` may replace (or raise instead of) the n-th
    get_status answer. Notifications do not count as get_status calls.
    """

    h: Harness
    runs: list[int] = dataclasses.field(default_factory=list)
    polls: list[int] = dataclasses.field(default_factory=list)
    status_reply: Callable[[int, dm_pb2.Result | None], dm_pb2.Result | None] | None = None


@pytest.fixture
def spy(h: Harness, monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    s = Spy(h)
    orig_run = FakeDistributor.run
    orig_status = FakeDistributor.get_status

    def run(
        self: FakeDistributor,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        s.runs.append(h.clock())
        return orig_run(self, desc, auth, prev_result)

    def get_status(
        self: FakeDistributor, desc: dm_pb2.Quest.Desc, token: str
    ) -> dm_pb2.Result | None:
        s.polls.append(h.clock())
        got = orig_status(self, desc, token)
        return s.status_reply(len(s.polls), got) if s.status_reply else got

    def handle_notification(
        self: FakeDistributor, desc: dm_pb2.Quest.Desc, n: dist.Notification
    ) -> dm_pb2.Result | None:
        return orig_status(self, desc, n.attrs.get("token", ""))

    monkeypatch.setattr(FakeDistributor, "run", run)
    monkeypatch.setattr(FakeDistributor, "get_status", get_status)
    monkeypatch.setattr(FakeDistributor, "handle_notification", handle_notification)
    yield s


def set_configs(h: Harness, configs: dict[str, Any], version: str) -> None:
    h.registry.set_config(
        h.registry.config_from_dict({"distributor_configs": configs}), version=version
    )


# -- D.run errors (spec §4.4) -------------------------------------------------------------


def test_non_transient_run_error_rejects_without_retry(h: Harness, spy: Spy) -> None:
    h.world.run_error = ValueError("nope")
    (qid,) = h.ensure(desc("R", retry=MAXED))
    aid = AttemptID(qid, 1)
    settle(h)

    ex = h.execution(aid.execution(1))
    assert ExecutionState(ex["state"]) == ExecutionState.ABNORMAL_FINISHED
    status, reason = abnormal_of(ex)
    assert status == AbnormalStatus.REJECTED
    assert reason.startswith("rejected during scheduling with non-transient error")
    assert reason.endswith("nope")
    assert h.state(aid) == AttemptState.ABNORMAL_FINISHED
    assert abnormal_of(h.attempt(aid)) == (status, reason)
    assert h.attempt(aid)["is_abnormal"] is True
    # Not retried although every retry counter allows 5 retries.
    assert h.attempt(aid)["cur_execution"] == 1
    assert len(executions(h, aid)) == 1
    assert len(spy.runs) == 1
    h.world.run_error = None
    settle(h)
    assert len(spy.runs) == 1 and h.world.pending() == []


def test_transient_run_error_retried_with_capped_backoff(h: Harness, spy: Spy) -> None:
    h.world.run_error = dist.TransientError("busy")
    (qid,) = h.ensure(desc("T"))
    aid = AttemptID(qid, 1)
    eid = aid.execution(1)
    wait(h, 40)
    tries = len(spy.runs)
    assert tries >= 3
    for k, (a, b) in enumerate(itertools.pairwise(spy.runs), start=1):
        assert b - a >= dist.backoff(k, cap_s=RUN_RETRY_CAP_S) * S, f"retry {k} came too early"
    ex = h.execution(eid)
    assert ExecutionState(ex["state"]) == ExecutionState.SCHEDULING
    assert ex["dist_token"] == "" and ex["abnormal"] is None
    assert h.state(aid) == AttemptState.EXECUTING

    h.world.run_error = None
    wait_pending(h, eid)
    assert len(spy.runs) == tries + 1
    assert h.execution(eid)["dist_token"] == h.world.token_of(eid)
    assert h.attempt(aid)["cur_execution"] == 1  # the same execution, not a new one
    h.play(eid, finishing({"ok": True}))
    settle(h)
    assert h.state(aid) == AttemptState.FINISHED
    assert h.result(aid) == {"ok": True}
    assert h.failures == []  # retried by dm itself, not as a failing task


def test_transient_run_errors_rejected_once_the_outage_window_passes(h: Harness, spy: Spy) -> None:
    """A distributor outage is retried for the window (1 h by default) from the first
    try to run, with backoff capped so that it keeps trying; then REJECTED."""
    h.world.run_error = dist.TransientError("still busy")
    (qid,) = h.ensure(desc("T", retry=MAXED))
    aid = AttemptID(qid, 1)
    while not spy.runs:
        wait(h, 1)
    first = spy.runs[0]
    run_until(h, first + WINDOW_S * S - 60 * S)
    assert h.exec_state(aid.execution(1)) == ExecutionState.SCHEDULING
    assert all(b - a <= RUN_RETRY_CAP_S * S + 5 * S for a, b in itertools.pairwise(spy.runs))
    run_until(h, first + WINDOW_S * S + RUN_RETRY_CAP_S * S + 30 * S)
    status, reason = abnormal_of(h.execution(aid.execution(1)))
    assert status == AbnormalStatus.REJECTED
    assert "still busy" in reason and "1:00:00" in reason
    assert h.state(aid) == AttemptState.ABNORMAL_FINISHED
    assert h.attempt(aid)["cur_execution"] == 1
    tries = len(spy.runs)
    assert WINDOW_S // RUN_RETRY_CAP_S <= tries <= WINDOW_S // RUN_RETRY_CAP_S + 12
    h.world.run_error = None
    settle(h)
    assert len(spy.runs) == tries


def test_outage_window_counts_from_the_first_try_to_run(tmp_path: pathlib.Path) -> None:
    """Not from when the execution was created: a run first tried after a long queue
    backlog still gets the whole window."""
    h = Harness(tmp_path)
    try:
        h.world.run_error = dist.TransientError("busy")
        req = dm_pb2.EnsureGraphDataReq()
        req.quest.append(desc("backlog"))
        req.quest_attempt.add(nums=[1])
        rsp = h.service.ensure_graph_data(req, Caller.trusted())
        aid = AttemptID(rsp.quest_ids[0].id, 1)
        h.clock.advance(2 * WINDOW_S)  # nothing ran meanwhile
        h.drain()
        wait(h, 600)
        assert h.exec_state(aid.execution(1)) == ExecutionState.SCHEDULING
        h.world.run_error = None
        wait_pending(h, aid.execution(1))
    finally:
        h.close()


def test_run_window_is_a_setting(h: Harness, spy: Spy) -> None:
    h.engine.settings.run_retry_window_us = 120 * S
    h.world.run_error = dist.TransientError("down")
    (qid,) = h.ensure(desc("short-window"))
    aid = AttemptID(qid, 1)
    while not spy.runs:
        wait(h, 1)
    run_until(h, spy.runs[0] + 400 * S)
    status, reason = abnormal_of(h.execution(aid.execution(1)))
    assert status == AbnormalStatus.REJECTED and "0:02:00" in reason


def test_d_run_is_called_once_per_execution_under_concurrent_deliveries(
    h: Harness, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second delivery of RunExecution while the first is inside D.run (two workers)
    does not call D.run again: the first holds a claim to run the execution."""
    counted = FakeDistributor.run
    nested: list[int] = []

    def slow(
        self: FakeDistributor,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        if not nested:
            nested.append(1)
            eid = ExecutionID.from_proto(auth.id)
            again = RunExecution(eid=str(eid), activation_b64=b64(auth.token))
            h.engine.handle_task("mutation", again.to_payload(), 1, "a-duplicate")
        return counted(self, desc, auth, prev_result)

    monkeypatch.setattr(FakeDistributor, "run", slow)
    (qid,) = h.ensure(desc("once"))
    aid = AttemptID(qid, 1)
    settle(h)
    assert nested == [1]
    assert len(spy.runs) == 1
    h.play(aid.execution(1), finishing({"ok": 1}))
    settle(h)
    assert h.state(aid) == AttemptState.FINISHED
    assert len(spy.runs) == 1


# -- unknown config (W-9) and the config snapshot (W-11) -----------------------------------


BASE_CONFIGS = {"fake": {"fake": {}}, "fake_poll": {"fake": {"poll_timeout": "60s"}}}


def test_config_vanishing_rejects_retry_but_running_execution_keeps_its_snapshot(
    h: Harness, spy: Spy
) -> None:
    set_configs(h, {**BASE_CONFIGS, "doomed": {"fake": {}}}, "v2")
    eid = start(h, desc("D", "doomed", failed=3))
    aid = eid.attempt_id
    set_configs(h, BASE_CONFIGS, "v3")

    # Execution 1 still reaches its distributor through the snapshot (W-11) ...
    h.play(eid, failing)
    settle(h)
    assert abnormal_of(h.execution(eid))[0] == AbnormalStatus.FAILED
    # ... but its retry cannot be scheduled: REJECTED at once, not retried forever (W-9).
    ex2 = h.execution(aid.execution(2))
    status, reason = abnormal_of(ex2)
    assert status == AbnormalStatus.REJECTED
    assert "doomed" in reason
    assert ex2["config"] is None
    assert h.state(aid) == AttemptState.ABNORMAL_FINISHED
    assert abnormal_of(h.attempt(aid))[0] == AbnormalStatus.REJECTED
    assert h.attempt(aid)["cur_execution"] == 2
    assert len(spy.runs) == 1
    assert h.next_due_us() is None  # nothing left retrying
    assert not any("ScheduleExecution" in f for f in h.failures)


def test_unknown_config_for_new_attempt_rejected(h: Harness, spy: Spy) -> None:
    set_configs(h, {**BASE_CONFIGS, "doomed": {"fake": {}}}, "v2")
    eid = start(h, desc("D2", "doomed", retry=MAXED))
    set_configs(h, BASE_CONFIGS, "v3")
    req = dm_pb2.EnsureGraphDataReq()
    req.raw_attempts.to[eid.quest].nums.append(2)
    assert h.service.ensure_graph_data(req, Caller.trusted()).accepted
    settle(h)

    a2 = AttemptID(eid.quest, 2)
    assert h.state(a2) == AttemptState.ABNORMAL_FINISHED
    status, reason = abnormal_of(h.attempt(a2))
    assert status == AbnormalStatus.REJECTED
    assert "doomed" in reason
    assert len(executions(h, a2)) == 1
    assert len(spy.runs) == 1  # only attempt 1's execution ever ran
    assert h.next_due_us() is None


def test_notification_for_an_uninstalled_distributor_kind_is_dropped(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Not raised (Pub/Sub would deliver it again forever): dropped with an error log."""
    eid = start(h, desc("gone-kind"))
    h.world.run_task(eid, finishing({"r": 1}), notify=False)
    h.drain()
    h.engine.registry = dist.Registry()  # the kind the execution ran on is gone
    h.world.notify(eid)
    ((data, attrs),) = h.inbox
    h.inbox.clear()
    h.engine.receive_notification(data, attrs)  # does not raise
    assert any(r.levelname == "ERROR" and "not installed" in r.getMessage() for r in caplog.records)
    assert h.exec_state(eid) == ExecutionState.STOPPING


def test_execution_uses_config_snapshot_taken_when_created(h: Harness, spy: Spy) -> None:
    h.world.run_error = dist.TransientError("busy")
    (qid,) = h.ensure(desc("W11", stop=600, failed=1))
    aid = AttemptID(qid, 1)
    eid = aid.execution(1)
    while not spy.runs:
        wait(h, 1)
    assert h.execution(eid)["config"]["version"] == "v1"
    # The registry changes while execution 1 exists but has not run yet.
    set_configs(h, {**BASE_CONFIGS, "fake": {"fake": {"poll_timeout": "5s"}}}, "v2")
    h.world.run_error = None
    wait_pending(h, eid)

    ex = h.execution(eid)
    assert ex["config"]["version"] == "v1"
    assert ex["poll_timeout_us"] == 0  # run got the old config: no poll timeout
    quiet(h, eid, finishing({"x": 1}))
    h.world.task(eid).result = None
    t = timer(h, eid)
    assert t is not None and t["state"] == ExecutionState.STOPPING
    assert t["deadline_us"] == h.clock() + 600 * S  # the quest's stop timeout, not 5 s
    wait(h, 300)
    assert spy.polls == []
    assert h.exec_state(eid) == ExecutionState.STOPPING

    # The retry is a new execution: it gets the new config.
    report(h, eid, abnormal_result(AbnormalStatus.FAILED))
    eid2 = aid.execution(2)
    wait_pending(h, eid2)
    ex2 = h.execution(eid2)
    assert ex2["config"]["version"] == "v2"
    assert ex2["poll_timeout_us"] == 5 * S


# -- the retry policy (spec §1.8) --------------------------------------------------------------


def _end_failed(h: Harness, eid: ExecutionID) -> None:
    h.play(eid, failing)


def _end_crashed(h: Harness, eid: ExecutionID) -> None:
    h.play(eid, crashing)


def _end_expired(h: Harness, eid: ExecutionID) -> None:
    report(h, eid, abnormal_result(AbnormalStatus.EXPIRED, "expired in the queue"))


def _end_timed_out(h: Harness, eid: ExecutionID) -> None:
    t = timer(h, eid)
    assert t is not None and t["state"] == ExecutionState.SCHEDULING
    run_until(h, int(t["deadline_us"]) + 20 * S)


ENDINGS: dict[AbnormalStatus, Callable[[Harness, ExecutionID], None]] = {
    AbnormalStatus.FAILED: _end_failed,
    AbnormalStatus.CRASHED: _end_crashed,
    AbnormalStatus.EXPIRED: _end_expired,
    AbnormalStatus.TIMED_OUT: _end_timed_out,
}


@pytest.mark.parametrize("status", list(ENDINGS), ids=lambda s: s.name)
def test_retryable_status_retried_per_counter(h: Harness, status: AbnormalStatus) -> None:
    field = status.name.lower()
    (qid,) = h.ensure(desc(f"retry-{field}", start=600, retry={field: 2}))
    aid = AttemptID(qid, 1)
    for n in (1, 2, 3):
        eid = aid.execution(n)
        wait_pending(h, eid)
        assert h.state(aid) == AttemptState.EXECUTING
        ENDINGS[status](h, eid)
    wait(h, 60)

    exs = executions(h, aid)
    assert len(exs) == 3  # retry.<status> = 2: two retries, three executions
    for ex in exs:
        assert ExecutionState(ex["state"]) == ExecutionState.ABNORMAL_FINISHED
        assert abnormal_of(ex)[0] == status
    assert h.state(aid) == AttemptState.ABNORMAL_FINISHED
    att = h.attempt(aid)
    assert abnormal_of(att)[0] == status
    assert att["cur_execution"] == 3
    assert att["retry"][field] == 3
    assert sorted(t.eid.num for t in h.world.tasks.values()) == [1, 2, 3]  # run 3 times
    if status == AbnormalStatus.TIMED_OUT:
        assert abnormal_of(exs[0])[1] == "DM timeout (SCHEDULING)"


def test_retry_counters_are_per_status(h: Harness) -> None:
    (qid,) = h.ensure(desc("per-status", failed=1, crashed=1))
    aid = AttemptID(qid, 1)
    settle(h)
    h.play(aid.execution(1), failing)
    settle(h)
    # A shared counter would stop here: one retry is used up, but not the CRASHED one.
    h.play(aid.execution(2), crashing)
    settle(h)
    assert h.state(aid) == AttemptState.EXECUTING
    h.play(aid.execution(3), failing)
    settle(h)

    assert h.state(aid) == AttemptState.ABNORMAL_FINISHED
    assert abnormal_of(h.attempt(aid))[0] == AbnormalStatus.FAILED
    assert h.attempt(aid)["retry"] == {"failed": 2, "crashed": 1, "expired": 0, "timed_out": 0}
    assert len(executions(h, aid)) == 3


def test_normal_execution_end_resets_retry_counters(h: Harness) -> None:
    a_desc, b_desc = desc("A-reset", failed=1), quest_desc("B-reset")
    (qa,) = h.ensure(a_desc)
    a1, b1 = AttemptID(qa, 1), AttemptID(h.ensure(b_desc)[0], 1)
    settle(h)
    h.play(a1.execution(1), failing)  # uses the one FAILED retry
    settle(h)
    assert h.attempt(a1)["retry"]["failed"] == 1

    def halt(j: Job) -> None:
        j.activate()
        assert j.dep_on(b1).should_halt

    h.play(a1.execution(2), halt)  # ends normally (FINISHED) while the attempt waits
    settle(h)
    assert h.exec_state(a1.execution(2)) == ExecutionState.FINISHED
    assert h.state(a1) == AttemptState.WAITING
    assert h.attempt(a1)["retry"]["failed"] == 0
    h.play(b1.execution(1), finishing({"b": 1}))
    settle(h)

    h.play(a1.execution(3), failing)  # retried: the counter was reset
    settle(h)
    assert h.state(a1) == AttemptState.EXECUTING
    h.play(a1.execution(4), failing)
    settle(h)
    assert h.state(a1) == AttemptState.ABNORMAL_FINISHED
    assert len(executions(h, a1)) == 4


def test_retried_then_successful_attempt_is_not_abnormal(h: Harness) -> None:
    (qid,) = h.ensure(desc("flaky", crashed=1))
    aid = AttemptID(qid, 1)
    settle(h)
    h.play(aid.execution(1), crashing)
    settle(h)
    h.play(aid.execution(2), finishing({"done": 1}))
    settle(h)
    assert h.state(aid) == AttemptState.FINISHED
    att = h.attempt(aid)
    assert att["is_abnormal"] is False  # W-7
    assert att["abnormal"] is None
    assert att["retry"]["crashed"] == 0
    assert h.execution(aid.execution(1))["is_abnormal"] is True


NON_RETRYABLE = {
    "CANCELLED": abnormal_result(AbnormalStatus.CANCELLED, "cancelled via Cancel()"),
    "MISSING": abnormal_result(AbnormalStatus.MISSING, "unknown token"),
    "RESULT_MALFORMED": data_result('{"a": '),
}


@pytest.mark.parametrize("name", list(NON_RETRYABLE))
def test_non_retryable_status_not_retried(h: Harness, name: str) -> None:
    eid = start(h, desc(f"nr-{name}", retry=MAXED))
    aid = eid.attempt_id
    report(h, eid, NON_RETRYABLE[name])
    settle(h)

    status, reason = abnormal_of(h.execution(eid))
    assert status == AbnormalStatus[name]
    if name == "RESULT_MALFORMED":
        assert reason.startswith("distributor result malformed")
    assert h.state(aid) == AttemptState.ABNORMAL_FINISHED
    assert abnormal_of(h.attempt(aid))[0] == status
    assert len(executions(h, aid)) == 1
    assert h.world.pending() == []


@pytest.mark.parametrize("activate", [False, True], ids=["SCHEDULING", "RUNNING"])
def test_normal_result_before_stopping_is_failed(h: Harness, activate: bool) -> None:
    eid = start(h, desc(f"early-{activate}", failed=1))
    aid = eid.attempt_id

    def job(j: Job) -> None:  # returns without FinishAttempt
        if activate:
            j.activate()
        j.state["progress"] = 1

    r = h.play(eid, job)
    assert r.HasField("data")  # the distributor itself says "finished normally"
    settle(h)
    state = "RUNNING" if activate else "SCHEDULING"
    ex = h.execution(eid)
    assert ExecutionState(ex["state"]) == ExecutionState.ABNORMAL_FINISHED
    assert abnormal_of(ex) == (
        AbnormalStatus.FAILED,
        f"distributor finished execution while it was in the {state} state.",
    )
    assert ex["result"] is None
    # FAILED is retryable: retry.failed = 1 gives a second execution.
    assert h.world.pending() == [aid.execution(2)]
    assert h.state(aid) == AttemptState.EXECUTING


def test_retry_gets_prev_result_of_last_successful_execution(h: Harness) -> None:
    a_desc, b_desc = desc("A-prev", failed=2), quest_desc("B-prev")
    (qa,) = h.ensure(a_desc)
    a1, b1 = AttemptID(qa, 1), AttemptID(h.ensure(b_desc)[0], 1)
    settle(h)
    seen: dict[int, dict[str, Any]] = {}

    def first(j: Job) -> None:
        seen[1] = dict(j.state)
        j.state["stage"] = 1
        raise ValueError("first try fails")

    h.play(a1.execution(1), first)
    settle(h)

    def halt(j: Job) -> None:
        seen[2] = dict(j.state)
        j.activate()
        assert j.dep_on(b1).should_halt
        j.state["stage"] = 2

    h.play(a1.execution(2), halt)
    settle(h)
    h.play(b1.execution(1), finishing({"b": 1}))
    settle(h)

    def fail_after_changing_state(j: Job) -> None:
        seen[3] = dict(j.state)
        j.activate()
        j.state["stage"] = 3
        raise ValueError("boom")

    h.play(a1.execution(3), fail_after_changing_state)
    settle(h)

    def last(j: Job) -> None:
        seen[4] = dict(j.state)
        j.activate()
        j.finish({"done": True})

    h.play(a1.execution(4), last)
    settle(h)
    assert seen[1] == {} and seen[2] == {}  # a failed first execution leaves no state
    assert seen[3] == {"stage": 2}  # execution 2's distributor result
    assert seen[4] == seen[3]  # the retry gets the same prev_result as the failed one
    assert h.state(a1) == AttemptState.FINISHED


# -- timeouts (spec §4.5) -------------------------------------------------------------------------


def test_start_timeout_counts_from_successful_run(h: Harness, spy: Spy) -> None:
    h.world.run_error = dist.TransientError("busy")
    (qid,) = h.ensure(desc("start-to", start=60))
    aid = AttemptID(qid, 1)
    eid = aid.execution(1)
    wait(h, 200)  # well past 60 s after the execution was created
    assert len(spy.runs) >= 3
    assert h.exec_state(eid) == ExecutionState.SCHEDULING
    assert timer(h, eid) is None  # no start timer before run succeeded

    h.world.run_error = None
    wait_pending(h, eid)
    ex = h.execution(eid)
    ran = int(ex["run_at_us"])
    assert ran - int(ex["created"]) > 60 * S
    t = timer(h, eid)
    assert t is not None and t["state"] == ExecutionState.SCHEDULING
    assert t["deadline_us"] == ran + 60 * S
    run_until(h, ran + 59 * S)
    assert h.exec_state(eid) == ExecutionState.SCHEDULING
    run_until(h, ran + 75 * S)
    ex = h.execution(eid)
    assert ExecutionState(ex["state"]) == ExecutionState.ABNORMAL_FINISHED
    assert abnormal_of(ex) == (AbnormalStatus.TIMED_OUT, "DM timeout (SCHEDULING)")
    assert h.state(aid) == AttemptState.ABNORMAL_FINISHED  # retry.timed_out = 0
    assert timer(h, eid) is None


def test_run_timeout_rearmed_by_reactivation(h: Harness) -> None:
    eid = start(h, desc("run-to", start=60, run=120))
    jobs: list[Job] = []

    def job(j: Job) -> None:
        j.activate()
        jobs.append(j)

    quiet(h, eid, job)  # returns without a notification: stays RUNNING
    activated = h.clock()
    t = timer(h, eid)
    assert t is not None and t["state"] == ExecutionState.RUNNING
    assert t["deadline_us"] == activated + 120 * S

    run_until(h, activated + 100 * S)
    assert h.exec_state(eid) == ExecutionState.RUNNING
    task = h.world.task(eid)
    h.service.activate_execution(
        dm_pb2.ActivateExecutionReq(auth=task.auth, execution_token=jobs[0].token)
    )
    t = timer(h, eid)
    assert t is not None and t["deadline_us"] == activated + 220 * S
    run_until(h, activated + 219 * S)  # past the first deadline (and the start one)
    assert h.exec_state(eid) == ExecutionState.RUNNING
    run_until(h, activated + 235 * S)
    ex = h.execution(eid)
    assert ExecutionState(ex["state"]) == ExecutionState.ABNORMAL_FINISHED
    assert abnormal_of(ex) == (AbnormalStatus.TIMED_OUT, "DM timeout (RUNNING)")


def test_start_timer_is_noop_after_activation(h: Harness) -> None:
    eid = start(h, desc("start-noop", start=60))
    quiet(h, eid, activating)
    assert timer(h, eid) is None  # no run timeout: disarmed
    wait(h, 3600)
    assert h.exec_state(eid) == ExecutionState.RUNNING
    assert h.state(eid.attempt_id) == AttemptState.EXECUTING


def test_run_timer_is_noop_once_stopping(h: Harness, spy: Spy) -> None:
    eid = start(h, desc("run-noop", run=60, stop=600))
    quiet(h, eid, finishing({"r": 1}))
    stopped = h.clock()
    wait(h, 300)  # past the run deadline
    assert h.exec_state(eid) == ExecutionState.STOPPING
    assert spy.polls == []
    run_until(h, stopped + 620 * S)
    assert len(spy.polls) == 1  # the stop timer polled and got the task's result
    assert h.exec_state(eid) == ExecutionState.FINISHED
    assert h.state(eid.attempt_id) == AttemptState.FINISHED


def test_timers_noop_after_execution_finished(h: Harness, spy: Spy) -> None:
    eid = start(h, desc("done-early", start=60, run=120, stop=30, timed_out=3))
    h.play(eid, finishing({"r": 2}))
    settle(h)
    assert h.state(eid.attempt_id) == AttemptState.FINISHED
    ex = h.execution(eid)
    assert timer(h, eid) is None
    wait(h, 2 * 3600)
    assert h.execution(eid) == ex
    assert h.state(eid.attempt_id) == AttemptState.FINISHED
    assert spy.polls == []
    assert len(executions(h, eid.attempt_id)) == 1
    assert h.result(eid.attempt_id) == {"r": 2}


# -- STOPPING: polling get_status (spec §4.5, W-10, W-13, the 30 s rule) ---------------------


def stop_quietly(h: Harness, eid: ExecutionID, *, keep_result: bool = False) -> int:
    """FinishAttempt without a notification; return the stop timer's deadline."""
    quiet(h, eid, finishing({"attempt": "result"}))
    if not keep_result:
        h.world.task(eid).result = None  # get_status: still running
    assert h.exec_state(eid) == ExecutionState.STOPPING
    t = timer(h, eid)
    assert t is not None and t["state"] == ExecutionState.STOPPING
    return int(t["deadline_us"])


def test_stopping_polls_four_times_then_times_out(h: Harness, spy: Spy) -> None:
    eid = start(h, desc("polls", stop=60))
    finished = h.clock()
    due = stop_quietly(h, eid)
    assert due == finished + 60 * S
    run_until(h, due - S)
    assert spy.polls == []
    for n in range(4):
        run_until(h, due + n * REPOLL + 15 * S)
        assert len(spy.polls) == n + 1
        assert spy.polls[n] >= due + n * REPOLL
        if n < 3:
            assert h.exec_state(eid) == ExecutionState.STOPPING
            run_until(h, due + (n + 1) * REPOLL - S)
            assert len(spy.polls) == n + 1
    ex = h.execution(eid)
    assert abnormal_of(ex) == (AbnormalStatus.TIMED_OUT, "DM timeout (STOPPING)")
    assert h.state(eid.attempt_id) == AttemptState.ABNORMAL_FINISHED
    wait(h, 3600)
    assert len(spy.polls) == 4


def test_late_stop_timer_rearms_its_polls_from_now(h: Harness, spy: Spy) -> None:
    """A stop timer fired late (a backlog, a sweep that ran late) polls again 30 s
    after it fired, not 30 s after its old deadline (which would poll back to back)."""
    eid = start(h, desc("late-polls", stop=60))
    due = stop_quietly(h, eid)
    late = due + 3600 * S
    h.clock.now_us = late  # nothing ran in between
    run_until(h, late + 15 * S)
    assert len(spy.polls) == 1
    assert h.exec_state(eid) == ExecutionState.STOPPING
    run_until(h, late + 3 * REPOLL + 15 * S)
    assert len(spy.polls) == 4
    assert all(b - a >= REPOLL for a, b in zip(spy.polls, spy.polls[1:], strict=False))
    assert abnormal_of(h.execution(eid))[0] == AbnormalStatus.TIMED_OUT


def test_stopping_poll_result_finishes_execution(h: Harness, spy: Spy) -> None:
    eid = start(h, desc("poll-ok", stop=60))
    due = stop_quietly(h, eid)
    run_until(h, due + 10 * S)
    assert len(spy.polls) == 1
    h.world.task(eid).result = dm_pb2.Result(data=dist.result_json({"exit": 0}))
    run_until(h, due + REPOLL + 10 * S)
    assert len(spy.polls) == 2
    ex = h.execution(eid)
    assert ExecutionState(ex["state"]) == ExecutionState.FINISHED
    assert json.loads(ex["result"]["data"]["object"]) == {"exit": 0}
    assert h.state(eid.attempt_id) == AttemptState.FINISHED
    assert h.result(eid.attempt_id) == {"attempt": "result"}
    wait(h, 3600)
    assert len(spy.polls) == 2


def test_polled_result_is_normalised(h: Harness, spy: Spy) -> None:
    raw = '{ "b" : 1,\n  "a": [1, 2] }'
    eid = start(h, desc("poll-norm", stop=60))
    due = stop_quietly(h, eid)
    h.world.task(eid).result = data_result(raw)
    run_until(h, due + 10 * S)
    ex = h.execution(eid)
    assert ExecutionState(ex["state"]) == ExecutionState.FINISHED
    want, size = jsonnorm.normalize_result(raw)
    assert want != raw
    assert ex["result"]["data"]["object"] == want
    assert ex["result"]["data"]["size"] == size


def test_polled_malformed_result_is_result_malformed(h: Harness, spy: Spy) -> None:
    eid = start(h, desc("poll-bad", stop=60, retry=MAXED))
    due = stop_quietly(h, eid)
    h.world.task(eid).result = data_result("[1, 2")
    run_until(h, due + 10 * S)
    status, reason = abnormal_of(h.execution(eid))
    assert status == AbnormalStatus.RESULT_MALFORMED
    assert reason.startswith("distributor result malformed")
    assert h.state(eid.attempt_id) == AttemptState.ABNORMAL_FINISHED
    assert len(executions(h, eid.attempt_id)) == 1


def test_polled_abnormal_result_follows_retry_policy(h: Harness, spy: Spy) -> None:
    eid = start(h, desc("poll-expired", stop=60, expired=1))
    due = stop_quietly(h, eid)
    h.world.task(eid).result = abnormal_result(AbnormalStatus.EXPIRED, "bot expired")
    run_until(h, due + 10 * S)
    assert len(spy.polls) == 1
    assert abnormal_of(h.execution(eid)) == (AbnormalStatus.EXPIRED, "bot expired")
    wait_pending(h, eid.attempt_id.execution(2))  # retry.expired = 1
    assert h.attempt(eid.attempt_id)["retry"]["expired"] == 1


def test_poll_timeout_from_run_replaces_stop_timeout(h: Harness, spy: Spy) -> None:
    eid = start(h, desc("poll-to", "fake_poll", stop=600))
    assert h.execution(eid)["poll_timeout_us"] == 60 * S
    finished = h.clock()
    due = stop_quietly(h, eid, keep_result=True)
    assert due == finished + 60 * S
    run_until(h, due - S)
    assert spy.polls == []
    run_until(h, due + 15 * S)
    assert len(spy.polls) == 1
    assert h.exec_state(eid) == ExecutionState.FINISHED


def test_poll_timeout_applies_when_the_job_stops_before_run_returns(
    h: Harness, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast job activates and finishes its attempt before dm has recorded what
    ``run`` returned (``D.run`` runs outside any transaction): the stop phase
    still lasts the poll timeout run gave (spec §4.5), not the quest's stop
    timeout or the 12 h hedge."""
    counted_run = FakeDistributor.run
    stopped: list[int] = []

    def fast(
        self: FakeDistributor,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        started = counted_run(self, desc, auth, prev_result)
        eid = ExecutionID.from_proto(auth.id)
        h.world.run_task(eid, finishing({"fast": True}), notify=False)
        stopped.append(h.clock())
        return started

    monkeypatch.setattr(FakeDistributor, "run", fast)
    (qid,) = h.ensure(desc("fast-job", "fake_poll"))
    eid = AttemptID(qid, 1).execution(1)
    run_until(h, h.clock() + 30 * S)
    assert len(stopped) == 1
    ex = h.execution(eid)
    assert ExecutionState(ex["state"]) == ExecutionState.STOPPING
    assert ex["poll_timeout_us"] == 60 * S
    t = timer(h, eid)
    assert t is not None and t["state"] == ExecutionState.STOPPING
    assert t["deadline_us"] == stopped[0] + 60 * S  # not the 12 h hedge
    run_until(h, stopped[0] + 75 * S)
    assert len(spy.polls) == 1
    assert h.exec_state(eid) == ExecutionState.FINISHED
    assert h.state(eid.attempt_id) == AttemptState.FINISHED


def run_times_out_first(h: Harness, monkeypatch: pytest.MonkeyPatch, ok_at: int) -> list[int]:
    """``D.run`` starts the task at its first try but answers a transient error (a
    timeout), then is busy until try ``ok_at``; returns the times of the tries."""
    counted_run = FakeDistributor.run
    tries: list[int] = []

    def timing_out(
        self: FakeDistributor,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        tries.append(h.clock())
        if len(tries) == 1:
            counted_run(self, desc, auth, prev_result)  # the task starts...
            raise dist.TransientError("deadline exceeded")  # ...but dm is not told
        if len(tries) < ok_at:
            raise dist.TransientError("busy")
        return counted_run(self, desc, auth, prev_result)

    monkeypatch.setattr(FakeDistributor, "run", timing_out)
    return tries


def stopped_before_recorded(
    h: Harness, tries: list[int], d: dm_pb2.Quest.Desc
) -> tuple[ExecutionID, int]:
    """Ensure ``d``; once its run was first tried, the job runs and stops without dm
    having its token: (its execution, when it stopped)."""
    (qid,) = h.ensure(d)
    eid = AttemptID(qid, 1).execution(1)
    while not tries:
        wait(h, 1)
    quiet(h, eid, finishing({"r": 1}))  # the job runs and stops, dm has no token yet
    return eid, h.clock()


def test_stop_timer_due_before_the_run_is_recorded_waits_for_its_poll_timeout(
    h: Harness, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the simulation (seed 661): a run that started the task but answered
    with a transient error (a timeout), the job stopping at once, and the quest's
    short stop timer falling due before a retried run is recorded. With no token
    there is nothing to poll: that is no poll, and the poll timeout run then
    returns still sets the stop phase."""
    tries = run_times_out_first(h, monkeypatch, ok_at=5)
    eid, stopped = stopped_before_recorded(h, tries, desc("slow-to-record", "fake_poll", stop=5))
    assert not h.execution(eid)["dist_token"]
    run_until(h, stopped + 30 * S)
    assert len(tries) == 5 and h.execution(eid)["dist_token"]
    assert spy.polls == []
    run_until(h, stopped + 75 * S)
    assert len(spy.polls) == 1 and spy.polls[0] >= stopped + 60 * S
    assert h.exec_state(eid) == ExecutionState.FINISHED


def test_stop_timer_due_before_the_run_is_recorded_polls_once_it_is(
    h: Harness, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the simulation (local seed 111): as above, but with no poll timeout.
    The quest's 5 s stop timer falls due while dm has no token, so it asks nothing
    and is put off a re-poll interval (30 s). The stop phase is over once the run
    is recorded: the first poll comes then, not at the put-off timer."""
    tries = run_times_out_first(h, monkeypatch, ok_at=4)
    eid, stopped = stopped_before_recorded(h, tries, desc("stopped-before-recorded", stop=5))
    run_until(h, stopped + 20 * S)
    assert len(tries) == 4 and h.execution(eid)["dist_token"]
    recorded = tries[-1]
    assert recorded > stopped + 5 * S  # the stop timer fell due first, with nothing to ask
    # Right after the run is recorded; late only by a delayed or re-sent delivery.
    assert len(spy.polls) == 1 and recorded <= spy.polls[0] <= recorded + 10 * S
    assert h.exec_state(eid) == ExecutionState.FINISHED


def test_a_run_recorded_between_a_stop_timers_read_and_its_commit_is_polled_at_once(
    h: Harness, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the simulation (Faults.slow_record with several workers): the stop
    timer's delivery finds no token (read outside any transaction) and another
    worker records the run before its TimerFired commits. RecordRun leaves a timer
    not yet fired as it is, so TimerFired must see the token itself and ask now,
    not put the timer off a re-poll interval (30 s)."""
    started: list[dist.Started] = []
    counted_run = FakeDistributor.run

    def keeping(self: FakeDistributor, *args: Any) -> dist.Started:
        got = counted_run(self, *args)
        started.append(got)
        return got

    monkeypatch.setattr(FakeDistributor, "run", keeping)
    tries = run_times_out_first(h, monkeypatch, ok_at=1_000)  # dm never records it itself
    eid, stopped = stopped_before_recorded(h, tries, desc("recorded-in-between", stop=5))
    (token,) = [s.token for s in started]
    engine_run = type(h.engine).run

    def recorded_in_between(engine: Any, step: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(step, steps.TimerFired) and not step.polled and not engine_run_seen:
            engine_run_seen.append(step)
            # Another worker's RecordRun commits between the read and this commit.
            engine_run(engine, steps.RecordRun(eid=str(eid), dist_token=token, poll_timeout_us=0))
        return engine_run(engine, step, *args, **kw)

    engine_run_seen: list[Any] = []
    monkeypatch.setattr(type(h.engine), "run", recorded_in_between)
    run_until(h, stopped + 15 * S)
    assert engine_run_seen, "the stop timer never fell due without a token"
    assert h.execution(eid)["dist_token"] == token
    # The stop phase (5 s) is over: asked at once, not 30 s after the timer.
    assert len(spy.polls) == 1 and spy.polls[0] <= stopped + 10 * S
    assert h.exec_state(eid) == ExecutionState.FINISHED


def test_stop_hedge_when_no_stop_or_poll_timeout(h: Harness, spy: Spy) -> None:
    eid = start(h, desc("hedge"))
    finished = h.clock()
    due = stop_quietly(h, eid, keep_result=True)
    hedge = int(dist.DEFAULT_STOP_HEDGE.total_seconds()) * S
    assert due == finished + hedge
    # Beyond the queueing horizon: no delayed task waits 12 h, the sweep fires it.
    assert hedge > TIMER_QUEUE_HORIZON_US
    assert "TimeoutExecution" not in queued_kinds(h)
    run_until(h, finished + hedge - 60 * S)  # 11 h 59 min
    assert spy.polls == []
    assert h.exec_state(eid) == ExecutionState.STOPPING
    run_until(h, finished + hedge + 15 * S)
    assert len(spy.polls) == 1
    assert h.exec_state(eid) == ExecutionState.FINISHED
    assert h.state(eid.attempt_id) == AttemptState.FINISHED


def test_get_status_error_within_30s_of_run_is_a_failed_poll(h: Harness, spy: Spy) -> None:
    def gone(n: int, got: dm_pb2.Result | None) -> dm_pb2.Result | None:
        raise ValueError("no such task")

    spy.status_reply = gone
    eid = start(h, desc("grace", stop=5, retry=MAXED))
    due = stop_quietly(h, eid)
    ran = int(h.execution(eid)["run_at_us"])
    run_until(h, due + 10 * S)
    assert len(spy.polls) == 1
    assert spy.polls[0] - ran <= 30 * S  # precondition: the first poll is within 30 s
    assert h.exec_state(eid) == ExecutionState.STOPPING  # treated as transient
    t = timer(h, eid)
    assert t is not None and t["polls"] == 1
    run_until(h, due + REPOLL + 10 * S)
    assert len(spy.polls) == 2
    assert spy.polls[1] - ran > 30 * S
    status, reason = abnormal_of(h.execution(eid))
    assert status == AbnormalStatus.MISSING
    assert "no such task" in reason
    assert h.state(eid.attempt_id) == AttemptState.ABNORMAL_FINISHED
    assert len(executions(h, eid.attempt_id)) == 1  # MISSING is not retried


def test_get_status_error_after_30s_of_run_is_missing(h: Harness, spy: Spy) -> None:
    def gone(n: int, got: dm_pb2.Result | None) -> dm_pb2.Result | None:
        raise ValueError("no such task")

    spy.status_reply = gone
    eid = start(h, desc("late", stop=60))
    due = stop_quietly(h, eid)
    run_until(h, due + 15 * S)
    assert len(spy.polls) == 1
    assert abnormal_of(h.execution(eid))[0] == AbnormalStatus.MISSING
    assert h.state(eid.attempt_id) == AttemptState.ABNORMAL_FINISHED


def test_transient_get_status_error_is_always_a_failed_poll(h: Harness, spy: Spy) -> None:
    def flaky(n: int, got: dm_pb2.Result | None) -> dm_pb2.Result | None:
        raise dist.TransientError("backend flaky")

    spy.status_reply = flaky
    eid = start(h, desc("flaky-poll", stop=60, timed_out=1))
    due = stop_quietly(h, eid)
    run_until(h, due + 3 * REPOLL - S)
    assert len(spy.polls) == 3
    assert h.exec_state(eid) == ExecutionState.STOPPING  # long after 30 s: still a failed poll
    run_until(h, due + 3 * REPOLL + 15 * S)
    assert len(spy.polls) == 4
    assert abnormal_of(h.execution(eid)) == (
        AbnormalStatus.TIMED_OUT,
        "DM timeout (STOPPING) w/ error: backend flaky",
    )
    # TIMED_OUT is retryable: retry.timed_out = 1 schedules execution 2.
    wait_pending(h, eid.attempt_id.execution(2))


def test_sweep_keeps_firing_timers_when_the_queue_fails(
    h: Harness, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's timer backstop is best effort per timer, like the outbox dispatch."""
    e1 = start(h, desc("sweep-1", stop=60))
    e2 = start(h, desc("sweep-2", stop=60))
    d1 = stop_quietly(h, e1, keep_result=True)
    d2 = stop_quietly(h, e2, keep_result=True)
    assert d1 == d2
    if h.chaos is not None:
        h.chaos.chaos.fail_dispatch = 0.0  # only the failure injected below
    h.clock.now_us = d1  # both timers are due; nothing has run yet
    enqueue = h.engine.queue.enqueue
    tried: list[str] = []

    def flaky_enqueue(task: Any) -> bool:
        tried.append(task.name)
        if len(tried) == 1:
            raise ConnectionError("queue down")
        return enqueue(task)

    monkeypatch.setattr(h.engine.queue, "enqueue", flaky_enqueue)
    got = h.engine.sweep()  # must not raise: the failed timer stays armed
    assert len(tried) == 2
    assert got["timers"] == 1
    monkeypatch.setattr(h.engine.queue, "enqueue", enqueue)
    run_until(h, d1 + 15 * S)
    assert h.exec_state(e1) == ExecutionState.FINISHED
    assert h.exec_state(e2) == ExecutionState.FINISHED
    assert len(spy.polls) == 2  # one poll each: the sweep's re-fire is deduplicated
