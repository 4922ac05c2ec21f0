"""Results that expire (DESIGN.md §3: "marked expired and shown as such, never
reused silently"; docs/behaviour.md, "Expired results").

An attempt FINISHED with a result whose ``expiration`` has passed is expired:
the sweep marks it (``is_expired``), and every read treats it so from the
moment it is due, marked yet or not. WalkGraph shows it only with
``include.attempt.expired`` (else a placeholder, as for abnormal attempts),
flagged ``data.expired`` and without its result object (``partial.result =
EXPIRED``). A dependency on it does not halt (it will never change) and is
answered the same way: the job is told, and asks for a new attempt if it
wants a fresh result; dm neither serves the old one nor re-runs the finished
attempt.
"""

from __future__ import annotations

import json
from typing import Any

from distributors.fake import Job, quest_desc
from dmcore.cli import report
from dmcore.engine import docs
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AttemptState
from tests.harness import Harness

S = 1_000_000
TRUSTED = Caller.trusted()
EXPIRED = dm_pb2.Attempt.Partial.EXPIRED


def finish_with(h: Harness, eid: ExecutionID, result: Any, expires_in_s: float | None) -> None:
    """Play ``eid``: activate, finish with ``result`` expiring ``expires_in_s`` from now."""

    def job(j: Job) -> None:
        j.activate()
        exp = None if expires_in_s is None else h.clock() + int(expires_in_s * S)
        j.finish(result, expiration_us=exp)

    h.play(eid, job)
    h.settle(max_seconds=1)


def start(h: Harness, name: str) -> AttemptID:
    """Quest ``name``'s attempt 1, created and handed to the fake distributor."""
    (qid,) = h.ensure(quest_desc(name))
    # A dispatch that failed waits for the sweep (6 s), then the chaos queue may delay it 3 s.
    h.settle(max_seconds=15)
    return AttemptID(qid, 1)


def walk(
    h: Harness, aid: AttemptID, *, expired: bool = False, result: bool = True
) -> dm_pb2.Attempt:
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[aid.quest].nums.append(aid.num)
    req.include.attempt.data = True
    req.include.attempt.result = result
    req.include.attempt.expired = expired
    g = h.service.walk_graph(req, TRUSTED)
    return g.quests[aid.quest].attempts[aid.num]


def marked(h: Harness, aid: AttemptID) -> bool:
    return bool(h.attempt(aid).get("is_expired"))


def test_expired_result_is_marked_by_the_sweep_and_shown_as_such(h: Harness) -> None:
    a1 = start(h, "A")
    finish_with(h, a1.execution(1), {"a": 1}, expires_in_s=600)
    assert h.state(a1) == AttemptState.FINISHED
    fresh = walk(h, a1)
    assert fresh.data.finished.data.object == '{"a":1}' and not fresh.data.expired
    expiration = fresh.data.finished.data.expiration.ToMicroseconds()

    h.clock.now_us = expiration - S
    h.drain()
    h.engine.sweep()
    h.drain()
    assert not marked(h, a1) and walk(h, a1).data.finished.data.object == '{"a":1}'

    h.clock.now_us = expiration + 60 * S
    h.settle(max_seconds=60)
    assert marked(h, a1)
    assert h.state(a1) == AttemptState.FINISHED  # still finished: results are immutable
    hidden = walk(h, a1)
    assert not hidden.DNE and not hidden.HasField("data")  # a placeholder, as abnormal ones
    shown = walk(h, a1, expired=True)
    assert shown.data.expired and shown.data.HasField("finished")
    assert shown.data.finished.data.object == ""  # never served once expired
    assert shown.data.finished.data.size == len('{"a":1}')
    assert shown.data.finished.data.expiration.ToMicroseconds() == expiration
    assert shown.partial.result == EXPIRED
    assert h.store.query(docs.ATTEMPTS, order_by=docs.EXPIRY_DUE) == []  # nothing left to mark


def test_due_expiry_counts_on_read_before_the_sweep_marks_it(h: Harness) -> None:
    a1 = start(h, "A")
    finish_with(h, a1.execution(1), {"a": 1}, expires_in_s=600)
    h.clock.advance(601)  # no sweep, no task run
    assert not marked(h, a1)
    assert not walk(h, a1).HasField("data")
    shown = walk(h, a1, expired=True)
    assert shown.data.expired and shown.data.finished.data.object == ""
    view = report.view(h.engine, a1)
    assert view is not None and view.expired and view.to_json()["expired"] is True


def test_result_already_expired_when_the_attempt_finishes_is_marked_at_once(h: Harness) -> None:
    a1 = start(h, "A")
    finish_with(h, a1.execution(1), {"a": 1}, expires_in_s=-1)
    assert h.state(a1) == AttemptState.FINISHED
    assert marked(h, a1)
    assert h.store.query(docs.ATTEMPTS, order_by=docs.EXPIRY_DUE) == []


def test_result_without_expiration_never_expires(h: Harness) -> None:
    a1 = start(h, "A")
    finish_with(h, a1.execution(1), {"a": 1}, expires_in_s=None)
    h.clock.advance(10 * 365 * 86400)
    h.settle(max_seconds=60)
    assert not marked(h, a1)
    assert walk(h, a1).data.finished.data.object == '{"a":1}'


def test_listing_a_quests_attempts_honours_include_expired(h: Harness) -> None:
    a = quest_desc("A")
    (qa,) = h.ensure(a, attempts=(1, 2))
    h.settle(max_seconds=1)
    finish_with(h, AttemptID(qa, 1).execution(1), {"a": 1}, expires_in_s=10)
    finish_with(h, AttemptID(qa, 2).execution(1), {"a": 2}, expires_in_s=None)
    h.clock.advance(60)
    h.settle(max_seconds=60)
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[qa].SetInParent()  # every attempt of the quest
    req.include.attempt.data = True
    assert sorted(h.service.walk_graph(req, TRUSTED).quests[qa].attempts) == [2]
    req.include.attempt.expired = True
    got = h.service.walk_graph(req, TRUSTED).quests[qa].attempts
    assert sorted(got) == [1, 2] and got[1].data.expired and not got[2].data.expired


def test_a_dependency_on_an_expired_result_is_not_reused_silently(h: Harness) -> None:
    """The depender is told the dependency expired (no halt: it will not change, no
    result object); it can depend on a new attempt, which runs and is served."""
    a, x = quest_desc("A"), quest_desc("X")
    (qa, qx) = h.ensure(a, x)
    a1, a2, x1 = AttemptID(qa, 1), AttemptID(qa, 2), AttemptID(qx, 1)
    h.settle(max_seconds=1)
    finish_with(h, a1.execution(1), {"a": 1}, expires_in_s=30)
    h.clock.advance(31)
    seen: dict[str, Any] = {}

    def x_job(j: Job) -> None:
        j.activate()
        rsp = j.dep_on(a1)
        assert not rsp.should_halt
        att = rsp.result.quests[qa].attempts[1]
        seen["first"] = (att.data.expired, att.data.finished.data.object, att.partial.result)
        assert j.dep_on(a2).should_halt  # a new attempt of the same quest

    h.play(x1.execution(1), x_job)
    h.settle(max_seconds=1)
    assert seen["first"] == (True, "", EXPIRED)
    assert h.state(x1) == AttemptState.WAITING
    finish_with(h, a2.execution(1), {"a": 2}, expires_in_s=None)
    h.settle(max_seconds=1)

    def x_again(j: Job) -> None:
        j.activate()
        rsp = j.dep_on(a1, a2)
        assert not rsp.should_halt
        atts = rsp.result.quests[qa].attempts
        seen["again"] = (atts[1].data.finished.data.object, atts[2].data.finished.data.object)
        j.finish({"x": json.loads(atts[2].data.finished.data.object)["a"]})

    h.play(x1.execution(2), x_again)
    h.settle(max_seconds=1)
    assert seen["again"] == ("", '{"a":2}')
    assert h.state(x1) == AttemptState.FINISHED and h.result(x1) == {"x": 2}


def test_expired_execution_results_are_hidden_unless_included(h: Harness) -> None:
    """An execution's distributor result may carry an expiration too."""
    a1 = start(h, "A")
    qa, eid = a1.quest, a1.execution(1)

    def job(j: Job) -> None:
        j.activate()
        j.finish({"a": 1})

    h.world.run_task(eid, job, notify=False)
    task = h.world.task(eid)
    data = dm_pb2.JsonResult(object='{"pins":1}')
    data.expiration.FromMicroseconds(h.clock() + 60 * S)
    task.result = dm_pb2.Result(data=data)
    h.world.notify(eid)
    h.settle(max_seconds=1)
    assert h.state(a1) == AttemptState.FINISHED
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[qa].nums.append(1)
    req.include.num_executions = 1
    req.include.execution.data = True
    req.include.execution.result = True
    got = h.service.walk_graph(req, TRUSTED).quests[qa].attempts[1].executions
    assert got[1].data.finished.data.object == '{"pins":1}' and not got[1].data.expired
    h.clock.advance(61)
    assert 1 not in h.service.walk_graph(req, TRUSTED).quests[qa].attempts[1].executions
    req.include.execution.expired = True
    ex = h.service.walk_graph(req, TRUSTED).quests[qa].attempts[1].executions[1]
    assert ex.data.expired and ex.data.finished.data.object == ""
    assert ex.partial.result == EXPIRED
