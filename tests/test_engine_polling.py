"""Polling scheduled and running executions (Started.poll_interval).

A distributor whose notification can be lost (a supervisor that dies) asks dm
to poll get_status while the execution runs; a result ends the execution, and
the 30 s GetStatus rule applies to errors.
"""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Iterator

import pytest

from distributors.fake import Crash, FakeDistributor, Job, quest_desc
from dmcore import distributor as dist
from dmcore.engine import docs
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState
from tests.harness import SETTLE_OVERRUN_S, Chaos, Harness, SettleStuck

CONFIGS = {"fake": {"fake": {"poll_interval": "30s"}}}


@pytest.fixture(params=["local", "chaos"])
def hp(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Harness]:
    h = Harness(
        tmp_path,
        queue=request.param,
        seed=3,
        chaos=Chaos(duplicate=0.5, delay=0.3),
        configs=CONFIGS,
    )
    yield h
    h.close()


def _start(h: Harness, crashed: int = 0) -> AttemptID:
    (qid,) = h.ensure(quest_desc("polled", crashed=crashed))
    h.settle(max_seconds=1)
    return AttemptID(qid, 1)


def _polls(h: Harness, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = FakeDistributor.get_status

    def spy(self: FakeDistributor, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        seen.append(h.clock())
        return real(self, desc, token)

    monkeypatch.setattr(FakeDistributor, "get_status", spy)
    return seen


def test_lost_notification_found_by_polling(hp: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    a1 = _start(hp, crashed=1)
    polls = _polls(hp, monkeypatch)

    def crash(job: Job) -> None:
        job.activate()
        raise Crash("boom")

    hp.world.run_task(a1.execution(1), crash, notify=False)  # the report is lost
    hp.drain()
    assert hp.exec_state(a1.execution(1)) == ExecutionState.RUNNING
    run_at = hp.execution(a1.execution(1))["run_at_us"]
    hp.settle(max_seconds=40)
    assert polls and polls[0] >= run_at + 30_000_000  # not before the interval
    ex = hp.execution(a1.execution(1))
    assert ex["state"] == ExecutionState.ABNORMAL_FINISHED
    assert ex["abnormal"]["status"] == AbnormalStatus.CRASHED
    # Retried (retry.crashed = 1) and polling ended for the old execution.
    assert hp.attempt(a1)["cur_execution"] == 2
    assert docs.poll_of(hp.attempt(a1), a1.execution(1)) is None


def test_polls_repeat_while_running_and_stop_when_stopping(
    hp: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    a1 = _start(hp)
    polls = _polls(hp, monkeypatch)
    jobs: dict[str, Job] = {}

    def activate_only(job: Job) -> None:
        job.activate()
        jobs["j"] = job

    hp.world.run_task(a1.execution(1), activate_only, notify=False)
    hp.world.task(a1.execution(1)).result = None  # still running, as far as the fake says
    run_at = hp.execution(a1.execution(1))["run_at_us"]
    hp.settle(max_seconds=100)
    assert len(polls) >= 2
    assert polls[0] >= run_at + 30_000_000
    assert all(b - a >= 30_000_000 for a, b in itertools.pairwise(polls))
    assert hp.exec_state(a1.execution(1)) == ExecutionState.RUNNING
    jobs["j"].finish({"ok": True})
    hp.drain()
    assert hp.exec_state(a1.execution(1)) == ExecutionState.STOPPING
    before = len(polls)
    hp.settle(max_seconds=60)
    assert len(polls) <= before + 1  # at most one already-queued poll sees STOPPING and stops
    assert docs.poll_of(hp.attempt(a1), a1.execution(1)) is None


def test_poll_error_within_30s_is_transient_then_missing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, configs={"fake": {"fake": {"poll_interval": "20s"}}})
    a1 = _start(h)
    calls: list[int] = []

    def broken(self: FakeDistributor, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        calls.append(h.clock())
        raise ValueError("no such task")

    monkeypatch.setattr(FakeDistributor, "get_status", broken)
    eid = a1.execution(1)
    run_at = h.execution(eid)["run_at_us"]
    h.settle(max_seconds=21)
    assert len(calls) == 1 and calls[0] - run_at <= 30_000_000
    assert h.exec_state(eid) == ExecutionState.SCHEDULING  # within 30 s: transient
    h.settle(max_seconds=20)
    assert len(calls) == 2 and calls[1] - run_at > 30_000_000
    ex = h.execution(eid)
    assert ex["abnormal"]["status"] == AbnormalStatus.MISSING
    assert h.state(a1) == AttemptState.ABNORMAL_FINISHED
    h.close()


def test_transient_poll_errors_keep_polling(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, configs=CONFIGS)
    a1 = _start(h)
    calls: list[int] = []

    def flaky(self: FakeDistributor, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        calls.append(h.clock())
        raise dist.TransientError("try later")

    monkeypatch.setattr(FakeDistributor, "get_status", flaky)
    h.settle(max_seconds=125)
    assert len(calls) == 4
    assert h.exec_state(ExecutionID(a1.quest, 1, 1)) == ExecutionState.SCHEDULING
    h.close()


def test_settle_stops_at_its_end_while_polls_keep_coming(
    hp: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running executions polled in turn, some poll due in every step of settle's
    clock: settle still returns at its end (sim seed 328 went on for hours of fake
    time, its polls never letting the loop reach the check of ``max_seconds``)."""
    deadline = [hp.clock() + 60_000_000]  # the set-up's 30 s and its settle's 1 s, with room
    real_sweep = hp.engine.sweep

    def bounded_sweep() -> object:
        # Fails the test instead of letting it run forever.
        assert hp.clock() <= deadline[0], "settle ran past its end"
        return real_sweep()

    monkeypatch.setattr(hp.engine, "sweep", bounded_sweep)
    aids: list[AttemptID] = []
    for i in range(10):  # handed to the distributor 3 s apart: their polls interleave
        (qid,) = hp.ensure(quest_desc(f"w{i}"))
        aids.append(AttemptID(qid, 1))
        hp.drain()
        hp.clock.advance(3)
    hp.settle(max_seconds=1)
    for a in aids:
        hp.world.run_task(a.execution(1), lambda job: job.activate(), notify=False)
        hp.world.task(a.execution(1)).result = None  # still running, as the fake says
        hp.drain()
    polls = _polls(hp, monkeypatch)
    end = hp.clock() + 300_000_000
    deadline[0] = end + 60_000_000
    hp.settle(max_seconds=300)
    assert len(polls) >= 10 * 300 // 30 - 10  # each was polled through the 300 s
    assert all(hp.exec_state(a.execution(1)) == ExecutionState.RUNNING for a in aids)
    assert hp.clock() <= end + 30_000_000


def test_settle_gives_up_on_follow_ups_that_never_go(
    hp: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outbox record that no sweep clears: settle says so an hour past its end
    (SettleStuck, which the simulation reports as a failed run) instead of
    sweeping for ever."""
    sweeps = [0]

    def stuck_sweep() -> None:
        sweeps[0] += 1  # re-sends nothing, as an engine that lost track of the record would
        assert sweeps[0] < 10 * SETTLE_OVERRUN_S, "settle never gave up"

    monkeypatch.setattr(hp.engine, "sweep", stuck_sweep)
    hp.store.transaction(lambda tx: tx.set(docs.outbox_path("stuck"), {"steps": []}))
    start = hp.clock()
    with pytest.raises(SettleStuck, match="1 outbox records"):
        hp.settle(max_seconds=60)
    assert start + (60 + SETTLE_OVERRUN_S) * 1_000_000 < hp.clock()
