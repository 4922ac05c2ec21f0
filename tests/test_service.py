"""The dm.Deps operations (spec §2, §3; DESIGN.md §3, §6) through :class:`Service`.

A. bad input -> ``InvalidArgument`` naming the field, and nothing written;
B. wrong tokens and ACLs; C. idempotent client retries (W-6);
D. dependency edge cases (self, cycles, finished / abnormal dependees, W-1, W-2);
E. WalkGraph semantics (§3.5/§3.6); F. CancelAttempt.

"Nothing written" is checked on every row of the store's ``docs`` table plus
the task queue's pending count and the fake distributor's run count.
Scenarios about engine behaviour use the ``h`` fixture (local queue and
ChaosQueue); pure validation runs on one local harness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import pathlib
import re
import sqlite3
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from google.protobuf import unknown_fields

from distributors.fake import Crash, FakeDistributor, Job, quest_desc
from dmcore import distributor as dist
from dmcore import service as service_mod
from dmcore.engine import docs, steps
from dmcore.engine.base import Uow
from dmcore.errors import (
    Code,
    DMError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState
from dmcore.store.base import Transaction
from dmcore.store.sqlite import LockTimeout, SqliteStore
from tests.harness import Harness, qid_of

FORWARDS = dm_pb2.WalkGraphReq.Mode.FORWARDS
BACKWARDS = dm_pb2.WalkGraphReq.Mode.BACKWARDS
BOTH = dm_pb2.WalkGraphReq.Mode.BOTH
NOT_AUTHORIZED = dm_pb2.Attempt.Partial.NOT_AUTHORIZED
DATA_SIZE_LIMIT = dm_pb2.Attempt.Partial.DATA_SIZE_LIMIT
TRUSTED = Caller.trusted()
MISSING_QID = "Z" * 43  # well-formed, never created

# -- helpers -----------------------------------------------------------------------------

StoreSnapshot = tuple[list[tuple[str, str, str]], int, int, int]


def snapshot(h: Harness) -> StoreSnapshot:
    """Every document in the store, the queue's pending count and the fake's runs."""
    uri = f"file:{h.store.path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("SELECT collection, id, body FROM docs ORDER BY collection, id")
        docs_rows = [(str(c), str(i), str(b)) for c, i, b in rows.fetchall()]
    if h.local is not None:
        pending = h.local.pending_count()
    else:
        assert h.chaos is not None
        pending = len(h.chaos.pending)
    return docs_rows, pending, h.world.runs, len(h.world.tasks)


def rejected(h: Harness, exc: type[DMError], match: str, call: Callable[[], object]) -> DMError:
    """``call`` raises ``exc`` whose message contains ``match``, and writes nothing."""
    before = snapshot(h)
    with pytest.raises(DMError) as info:
        call()
    err = info.value
    assert type(err) is exc or (exc is InvalidArgument and isinstance(err, InvalidArgument)), (
        f"expected {exc.__name__}, got {type(err).__name__}: {err}"
    )
    assert err.code == exc.code
    assert re.search(re.escape(match), err.message), f"{match!r} not in {err.message!r}"
    assert snapshot(h) == before, "a rejected request wrote something"
    return err


def token_for(eid: ExecutionID, salt: str = "") -> bytes:
    """A deterministic 32-byte execution token."""
    return hashlib.sha256(f"{eid}{salt}".encode()).digest()


def exec_auth(eid: ExecutionID, token: bytes) -> dm_pb2.Execution.Auth:
    return dm_pb2.Execution.Auth(id=eid.to_proto(), token=token)


def start(h: Harness, *descs: dm_pb2.Quest.Desc, attempts: tuple[int, ...] = (1,)) -> None:
    """Create quests (as a trusted user) and let the engine hand them to the fake."""
    h.ensure(*descs, attempts=attempts)
    h.settle()


def aid_of(desc: dm_pb2.Quest.Desc, num: int = 1) -> AttemptID:
    return AttemptID(qid_of(desc), num)


def current(h: Harness, aid: AttemptID) -> ExecutionID:
    return aid.execution(int(h.attempt(aid)["cur_execution"]))


def activate(h: Harness, eid: ExecutionID, salt: str = "") -> bytes:
    token = token_for(eid, salt)
    h.service.activate_execution(
        dm_pb2.ActivateExecutionReq(auth=h.world.task(eid).auth, execution_token=token)
    )
    return token


def finish(h: Harness, eid: ExecutionID, token: bytes, result: Any) -> None:
    text = result if isinstance(result, str) else json.dumps(result)
    h.service.finish_attempt(
        dm_pb2.FinishAttemptReq(auth=exec_auth(eid, token), data=dm_pb2.JsonResult(object=text))
    )


def end(h: Harness, eid: ExecutionID, state: dict[str, Any] | None = None) -> dm_pb2.Result:
    """The fake reports the execution's end (its distributor result: ``state``)."""

    def job(j: Job) -> None:
        j.state.update(state or {})

    r = h.play(eid, job)
    h.settle()
    return r


def crash(h: Harness, eid: ExecutionID) -> None:
    def job(j: Job) -> None:
        raise Crash("boom")

    h.play(eid, job)
    h.settle()


def fail(h: Harness, eid: ExecutionID) -> None:
    def job(j: Job) -> None:
        raise RuntimeError("broken")

    h.play(eid, job)
    h.settle()


def complete(h: Harness, aid: AttemptID, result: Any, state: dict[str, Any] | None = None) -> None:
    """Run the attempt's current execution to a normal end with ``result``."""
    eid = current(h, aid)
    token = activate(h, eid)
    finish(h, eid, token, result)
    end(h, eid, state)
    assert h.state(aid) == AttemptState.FINISHED


def deps_req(
    *aids: AttemptID, quests: tuple[dm_pb2.Quest.Desc, ...] = (), result: bool = True
) -> dm_pb2.EnsureGraphDataReq:
    """Like the fake's ``Job.dep_on``: quests given are created, others are raw attempts."""
    req = dm_pb2.EnsureGraphDataReq()
    req.include.attempt.result = result
    by_quest: dict[str, list[int]] = {}
    for a in aids:
        by_quest.setdefault(a.quest, []).append(a.num)
    for q in quests:
        req.quest.append(q)
        req.quest_attempt.add(nums=by_quest.pop(qid_of(q), [1]))
    for qid, nums in by_quest.items():
        req.raw_attempts.to[qid].nums.extend(nums)
    return req


def declare(
    h: Harness,
    eid: ExecutionID,
    token: bytes,
    *aids: AttemptID,
    quests: tuple[dm_pb2.Quest.Desc, ...] = (),
) -> dm_pb2.EnsureGraphDataRsp:
    req = deps_req(*aids, quests=quests)
    req.for_execution.CopyFrom(exec_auth(eid, token))
    return h.service.ensure_graph_data(req, Caller.anonymous())


def attempt_msg(g: dm_pb2.GraphData, aid: AttemptID) -> dm_pb2.Attempt:
    assert aid.quest in g.quests, f"quest of {aid} not in the graph"
    assert aid.num in g.quests[aid.quest].attempts, f"{aid} not in the graph"
    return g.quests[aid.quest].attempts[aid.num]


def walk_req(
    *aids: AttemptID,
    depth: int = 0,
    direction: dm_pb2.WalkGraphReq.Mode.Direction = FORWARDS,
) -> dm_pb2.WalkGraphReq:
    req = dm_pb2.WalkGraphReq()
    for a in aids:
        req.query.attempt_list.to[a.quest].nums.append(a.num)
    req.limit.max_depth = depth
    req.mode.direction = direction
    return req


def nums(al: dm_pb2.AttemptList) -> dict[str, list[int]]:
    return {q: sorted(n.nums) for q, n in al.to.items()}


# -- A. bad input ------------------------------------------------------------------------------


@dataclasses.dataclass
class Live:
    """A harness with a finished attempt F|1 and a running (activated) attempt A|1."""

    h: Harness
    a1: AttemptID
    eid: ExecutionID
    token: bytes
    f1: AttemptID

    @property
    def auth(self) -> dm_pb2.Execution.Auth:
        return exec_auth(self.eid, self.token)


@pytest.fixture
def live(tmp_path: pathlib.Path) -> Iterator[Live]:
    h = Harness(tmp_path)
    a, f = quest_desc("A"), quest_desc("F")
    start(h, a, f)
    f1 = aid_of(f)
    complete(h, f1, {"f": 1})
    a1 = aid_of(a)
    eid = a1.execution(1)
    token = activate(h, eid)
    yield Live(h, a1, eid, token, f1)
    h.close()


def _good_quest(name: str = "good") -> dm_pb2.Quest.Desc:
    return quest_desc(name)


def _ensure(lv: Live, *descs: dm_pb2.Quest.Desc, attempts: list[int] | None = None) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    for d in descs:
        req.quest.append(d)
        req.quest_attempt.add(nums=[1] if attempts is None else attempts)
    lv.h.service.ensure_graph_data(req, TRUSTED)


def _with(**fields: Any) -> dm_pb2.Quest.Desc:
    d = quest_desc("bad")
    for k, v in fields.items():
        setattr(d, k, v)
    return d


def _negative_timeout() -> dm_pb2.Quest.Desc:
    d = quest_desc("bad")
    d.meta.timeouts.start.seconds = -5
    return d


def _raw(lv: Live, qid: str, ns: list[int]) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.raw_attempts.to[qid].nums.extend(ns)
    lv.h.service.ensure_graph_data(req, TRUSTED)


def _length_mismatch(lv: Live) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.extend([_good_quest("x"), _good_quest("y")])
    req.quest_attempt.add(nums=[1])
    lv.h.service.ensure_graph_data(req, TRUSTED)


def _templates(lv: Live) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.template_quest.add(project="proj").specifier.template_name = "t"
    req.template_attempt.add(nums=[1])
    lv.h.service.ensure_graph_data(req, TRUSTED)


def _batch_one_bad(lv: Live) -> None:
    _ensure(lv, _good_quest("x"), _good_quest("y"), _with(parameters="[1]"), _good_quest("z"))


def _good_quest_bad_raw(lv: Live) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(_good_quest("x"))
    req.quest_attempt.add(nums=[1])
    req.raw_attempts.to[MISSING_QID].nums.append(1)
    lv.h.service.ensure_graph_data(req, TRUSTED)


def _for_execution(lv: Live, auth: dm_pb2.Execution.Auth) -> None:
    req = deps_req(lv.f1)
    req.for_execution.CopyFrom(auth)
    lv.h.service.ensure_graph_data(req, Caller.anonymous())


def _activate(lv: Live, auth: dm_pb2.Execution.Auth, token: bytes) -> None:
    lv.h.service.activate_execution(dm_pb2.ActivateExecutionReq(auth=auth, execution_token=token))


def _finish_raw(lv: Live, obj: str, auth: dm_pb2.Execution.Auth | None = None) -> None:
    lv.h.service.finish_attempt(
        dm_pb2.FinishAttemptReq(auth=auth or lv.auth, data=dm_pb2.JsonResult(object=obj))
    )


def _walk(lv: Live, req: dm_pb2.WalkGraphReq) -> None:
    lv.h.service.walk_graph(req, TRUSTED)


def _walk_with(build: Callable[[dm_pb2.WalkGraphReq], object]) -> Callable[[Live], None]:
    def call(lv: Live) -> None:
        req = walk_req(lv.f1)
        build(req)
        _walk(lv, req)

    return call


def _range(quest: str, low: int, high: int) -> Callable[[dm_pb2.WalkGraphReq], object]:
    return lambda r: r.query.attempt_range.add(quest=quest, low=low, high=high)


def _set_include_quest(opt: str) -> Callable[[dm_pb2.WalkGraphReq], object]:
    return lambda r: setattr(r.include.quest, opt, True)


def _cancel(lv: Live, req: dm_pb2.CancelAttemptReq) -> None:
    lv.h.service.cancel_attempt(req, TRUSTED)


def _bad_eid_proto(quest: str = "", attempt: int = 1, num: int = 1) -> dm_pb2.Execution.ID:
    return dm_pb2.Execution.ID(quest=quest, attempt=attempt, id=num)


def lv_f1_qid() -> str:
    """F's quest ID (the ``live`` fixture's finished quest), for expected messages."""
    return qid_of(quest_desc("F"))


BIG_PARAMS = json.dumps({"x": "y" * 262_144})
BAD_INPUT: list[Any] = [
    # EnsureGraphData
    pytest.param(_length_mismatch, "quest_attempt", id="ensure-length-mismatch"),
    pytest.param(
        lambda lv: lv.h.service.ensure_graph_data(dm_pb2.EnsureGraphDataReq(), TRUSTED),
        "raw_attempts",
        id="ensure-empty",
    ),
    pytest.param(lambda lv: _ensure(lv, _good_quest(), attempts=[0]), "quest_attempt[0]", id="a0"),
    pytest.param(lambda lv: _ensure(lv, _good_quest(), attempts=[]), "quest_attempt[0]", id="a-"),
    pytest.param(
        lambda lv: _ensure(lv, _good_quest(), attempts=[2, 0, 1]),
        "quest_attempt[0]",
        id="ensure-attempt-0-mixed",
    ),
    pytest.param(
        lambda lv: _ensure(lv, _good_quest("x"), _good_quest("y"), attempts=[0]),
        "quest_attempt[0]",
        id="ensure-attempt-0-two-quests",
    ),
    pytest.param(
        lambda lv: _ensure(lv, _with(parameters="[1, 2]")),
        "quest[0].parameters",
        id="params-not-object",
    ),
    pytest.param(
        lambda lv: _ensure(lv, _with(parameters='{"a": 1} junk')),
        "quest[0].parameters",
        id="params-trailing-junk",
    ),
    pytest.param(
        lambda lv: _ensure(lv, _with(parameters="")), "quest[0].parameters", id="params-empty"
    ),
    pytest.param(
        lambda lv: _ensure(lv, _with(parameters=BIG_PARAMS)),
        "quest[0].parameters",
        id="params-over-256KiB",
    ),
    pytest.param(
        lambda lv: _ensure(lv, _with(distributor_parameters="{nope")),
        "quest[0].distributor_parameters",
        id="dist-params-junk",
    ),
    pytest.param(
        lambda lv: _ensure(lv, _negative_timeout()),
        "quest[0].meta.timeouts.start",
        id="negative-timeout",
    ),
    pytest.param(
        lambda lv: _ensure(lv, _with(distributor_config_name="")),
        "quest[0].distributor_config_name",
        id="no-config-name",
    ),
    pytest.param(
        lambda lv: _ensure(lv, _with(distributor_config_name="no-such-config")),
        "quest[0].distributor_config_name",
        id="unknown-config",
    ),
    pytest.param(
        lambda lv: _raw(lv, MISSING_QID, [1]),
        f'cannot create attempts for absent quest "{MISSING_QID}"',
        id="raw-absent-quest",
    ),
    pytest.param(lambda lv: _raw(lv, "short", [1]), "raw_attempts[short]", id="raw-bad-qid"),
    pytest.param(
        lambda lv: _raw(lv, lv.f1.quest, []), f"raw_attempts[{lv_f1_qid()}]", id="raw-all"
    ),
    pytest.param(
        lambda lv: _raw(lv, lv.f1.quest, [3, 0]), f"raw_attempts[{lv_f1_qid()}]", id="raw-0-mix"
    ),
    pytest.param(_templates, "template_quest", id="templates"),
    pytest.param(_batch_one_bad, "quest[2].parameters", id="batch-one-bad-quest"),
    pytest.param(
        _good_quest_bad_raw,
        f'cannot create attempts for absent quest "{MISSING_QID}"',
        id="good-quest-bad-raw",
    ),
    pytest.param(
        lambda lv: _for_execution(lv, dm_pb2.Execution.Auth(token=lv.token)),
        "for_execution.id",
        id="for-execution-no-id",
    ),
    pytest.param(
        lambda lv: _for_execution(lv, dm_pb2.Execution.Auth(id=_bad_eid_proto("nope"))),
        "for_execution.id.quest",
        id="for-execution-bad-quest",
    ),
    pytest.param(
        lambda lv: _for_execution(
            lv, dm_pb2.Execution.Auth(id=_bad_eid_proto(lv.a1.quest, 1, 0), token=lv.token)
        ),
        "for_execution.id.id",
        id="for-execution-execution-0",
    ),
    # ActivateExecution
    pytest.param(
        lambda lv: _activate(lv, lv.auth, b"x" * 31), "execution_token", id="activate-short-token"
    ),
    pytest.param(lambda lv: _activate(lv, lv.auth, b""), "execution_token", id="activate-no-token"),
    pytest.param(
        lambda lv: _activate(lv, dm_pb2.Execution.Auth(), b"x" * 32), "auth.id", id="activate-no-id"
    ),
    pytest.param(
        lambda lv: _activate(
            lv, dm_pb2.Execution.Auth(id=_bad_eid_proto("not/a/quest")), b"x" * 32
        ),
        "auth.id.quest",
        id="activate-bad-quest",
    ),
    pytest.param(
        lambda lv: _activate(
            lv, dm_pb2.Execution.Auth(id=_bad_eid_proto(lv.a1.quest, 0, 1)), b"x" * 32
        ),
        "auth.id.attempt",
        id="activate-attempt-0",
    ),
    # FinishAttempt
    pytest.param(lambda lv: _finish_raw(lv, ""), "data.object", id="finish-empty"),
    pytest.param(lambda lv: _finish_raw(lv, "[1]"), "data.object", id="finish-not-object"),
    pytest.param(lambda lv: _finish_raw(lv, "null"), "data.object", id="finish-null"),
    pytest.param(lambda lv: _finish_raw(lv, '"text"'), "data.object", id="finish-string"),
    pytest.param(lambda lv: _finish_raw(lv, '{"a":1}}'), "data.object", id="finish-junk"),
    pytest.param(
        lambda lv: _finish_raw(lv, '{"x":"' + "y" * (288_358 - 8) + '"}'),
        "data.object",
        id="finish-raw-over-288358",
    ),
    pytest.param(
        lambda lv: _finish_raw(lv, '{"x":"' + "y" * 270_000 + '"}'),
        "data.object",
        id="finish-normalised-over-256KiB",
    ),
    pytest.param(
        lambda lv: _finish_raw(lv, '{"a":1}', dm_pb2.Execution.Auth(token=lv.token)),
        "auth.id",
        id="finish-no-id",
    ),
    pytest.param(
        lambda lv: _finish_raw(
            lv, '{"a":1}', dm_pb2.Execution.Auth(id=_bad_eid_proto("x" * 44), token=lv.token)
        ),
        "auth.id.quest",
        id="finish-bad-quest",
    ),
    # WalkGraph
    pytest.param(lambda lv: _walk(lv, dm_pb2.WalkGraphReq()), "query", id="walk-no-query"),
    pytest.param(
        _walk_with(lambda r: setattr(r.limit, "max_depth", -2)),
        "limit.max_depth",
        id="walk-depth",
    ),
    pytest.param(
        _walk_with(lambda r: setattr(r.limit.max_time, "seconds", -1)),
        "limit.max_time",
        id="walk-negative-time",
    ),
    pytest.param(
        _walk_with(_set_include_quest("result")), "include.quest.result", id="walk-quest-result"
    ),
    pytest.param(
        _walk_with(_set_include_quest("abnormal")),
        "include.quest.abnormal",
        id="walk-quest-abnormal",
    ),
    pytest.param(
        _walk_with(_set_include_quest("expired")),
        "include.quest.expired",
        id="walk-quest-expired",
    ),
    pytest.param(
        _walk_with(_range(MISSING_QID, 0, 3)), "query.attempt_range[0]", id="walk-range-low-0"
    ),
    pytest.param(
        _walk_with(_range(MISSING_QID, 3, 3)), "query.attempt_range[0]", id="walk-range-empty"
    ),
    pytest.param(
        _walk_with(lambda r: (_range(MISSING_QID, 1, 2)(r), _range(MISSING_QID, 4, 2)(r))),
        "query.attempt_range[1]",
        id="walk-range-second-bad",
    ),
    pytest.param(
        _walk_with(_range(MISSING_QID, 1, 2**32 - 1)),
        "query.attempt_range[0]",
        id="walk-range-absurd",
    ),
    pytest.param(
        _walk_with(lambda r: [_range(MISSING_QID, 1, 60_001)(r) for _ in range(2)]),
        "query.attempt_range[1]",
        id="walk-ranges-absurd-together",
    ),
    pytest.param(
        _walk_with(_range("bad", 1, 2)), "query.attempt_range[0].quest", id="walk-range-qid"
    ),
    pytest.param(
        _walk_with(lambda r: r.query.attempt_list.to["bad"].nums.append(1)),
        "query.attempt_list[bad]",
        id="walk-list-qid",
    ),
    pytest.param(
        _walk_with(lambda r: r.query.attempt_list.to[MISSING_QID].nums.extend([0, 1])),
        f"query.attempt_list[{MISSING_QID}]",
        id="walk-list-0-mixed",
    ),
    pytest.param(_walk_with(lambda r: r.query.search.add()), "query.search", id="walk-search"),
    pytest.param(_walk_with(lambda r: r.auth.SetInParent()), "auth.id", id="walk-auth-without-id"),
    # CancelAttempt
    pytest.param(lambda lv: _cancel(lv, dm_pb2.CancelAttemptReq()), "attempt", id="cancel-empty"),
    pytest.param(
        lambda lv: _cancel(
            lv, dm_pb2.CancelAttemptReq(attempt=dm_pb2.Attempt.ID(quest="bad", id=1))
        ),
        "attempt.quest",
        id="cancel-bad-quest",
    ),
    pytest.param(
        lambda lv: _cancel(
            lv, dm_pb2.CancelAttemptReq(attempt=dm_pb2.Attempt.ID(quest=lv.a1.quest, id=0))
        ),
        "attempt.id",
        id="cancel-attempt-0",
    ),
    pytest.param(
        lambda lv: _cancel(
            lv, dm_pb2.CancelAttemptReq(attempt=dm_pb2.Attempt.ID(quest=MISSING_QID, id=1))
        ),
        "does not exist",
        id="cancel-missing-attempt",
    ),
]


@pytest.mark.parametrize(("call", "field"), BAD_INPUT)
def test_bad_input_names_the_field_and_writes_nothing(
    live: Live, call: Callable[[Live], object], field: str
) -> None:
    rejected(live.h, InvalidArgument, field, lambda: call(live))
    # The live execution is untouched: its token still works.
    rsp = declare(live.h, live.eid, live.token, live.f1)
    assert rsp.accepted and not rsp.should_halt


def test_distributor_validate_failure(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    def validate(self: FakeDistributor, distributor_parameters: str) -> None:
        if "red" in distributor_parameters:
            raise ValueError("knob must be blue")

    monkeypatch.setattr(FakeDistributor, "validate", validate)
    red = _with(distributor_parameters='{"knob": "red"}')
    err = rejected(
        live.h,
        InvalidArgument,
        "quest[1].distributor_parameters",
        lambda: _ensure(live, _good_quest("x"), red),
    )
    assert "knob must be blue" in err.message
    # Also for an execution declaring a new quest as a dependency.
    rejected(
        live.h,
        InvalidArgument,
        "quest[0].distributor_parameters",
        lambda: declare(live.h, live.eid, live.token, aid_of(red), quests=(red,)),
    )


def test_bad_input_is_not_a_partial_write_of_a_valid_prefix(live: Live) -> None:
    """A batch with one bad quest writes none of the good ones (also checked by BAD_INPUT)."""
    h = live.h
    with pytest.raises(InvalidArgument):
        _batch_one_bad(live)
    h.settle()
    for name in ("x", "y", "z"):
        assert h.store.get(docs.quest_path(qid_of(quest_desc(name)))) is None
    _ensure(live, _good_quest("x"), _good_quest("y"))  # the good ones alone are fine
    h.settle()
    assert h.state(aid_of(quest_desc("x"))) == AttemptState.EXECUTING


def test_first_ensure_reports_the_graph_before_the_change(live: Live) -> None:
    """Spec §3.2 step 3: the response is the state before; new things appear with DNE."""
    h = live.h
    x = quest_desc("x")
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(x)
    req.quest_attempt.add(nums=[1, 2])
    req.raw_attempts.to[live.f1.quest].nums.append(1)
    req.include.attempt.result = True
    rsp = h.service.ensure_graph_data(req, TRUSTED)
    assert rsp.accepted and not rsp.should_halt
    assert [q.id for q in rsp.quest_ids] == [qid_of(x)]
    gx = rsp.result.quests[qid_of(x)]
    assert gx.DNE and gx.attempts[1].DNE and gx.attempts[2].DNE
    f = attempt_msg(rsp.result, live.f1)
    assert not f.DNE and f.data.finished.data.object == '{"f":1}'
    h.settle()
    assert h.state(aid_of(x, 2)) == AttemptState.EXECUTING
    # Again: now everything exists, nothing new is written.
    before = snapshot(h)
    rsp = h.service.ensure_graph_data(req, TRUSTED)
    assert not rsp.result.quests[qid_of(x)].DNE
    assert attempt_msg(rsp.result, aid_of(x, 2)).data.HasField("executing")
    h.settle()
    assert snapshot(h) == before


def test_ensure_answers_each_supplied_quest_with_its_stored_description(live: Live) -> None:
    """EnsureGraphData's answer shows a supplied quest's description from what the
    request named (its normalised wire bytes), not read back: it must be the one
    stored, which WalkGraph decodes; with meta or without, unknown fields and
    unnormalised parameters in the request."""
    h = live.h
    plain = quest_desc("plain")
    plain.parameters = '{ "name" : "plain", "b": [1, 2], "a": {} }'
    with_meta = quest_desc("meta", failed=3)
    with_meta.meta.timeouts.start.seconds = 7
    unknown = quest_desc("unknown")
    unknown.MergeFromString(b"\xf8\x3f\x01")  # field 1023 (varint 1): not in Quest.Desc
    descs = (plain, with_meta, unknown)
    req = dm_pb2.EnsureGraphDataReq()
    for d in descs:
        req.quest.append(d)
        req.quest_attempt.add(nums=[1])
    req.include.attempt.result = True
    for _ in range(2):  # created, then all there (memoised)
        rsp = h.service.ensure_graph_data(req, TRUSTED)
        walk = walk_req(*(aid_of(d) for d in descs), depth=0)
        walk.include.quest.data = True
        stored = h.service.walk_graph(walk, TRUSTED)
        for d in descs:
            answered = rsp.result.quests[qid_of(d)]
            got = stored.quests[qid_of(d)].data.desc
            assert got.distributor_config_name == "fake" and got.HasField("meta")
            assert len(unknown_fields.UnknownFieldSet(got)) == 0
            if not answered.DNE:
                assert answered.data.desc == got
                assert answered.data.desc.SerializeToString(deterministic=True) == (
                    got.SerializeToString(deterministic=True)
                )
        h.settle()
    assert rsp.result.quests[qid_of(plain)].data.desc.parameters == (
        '{"a":{},"b":[1,2],"name":"plain"}'
    )


# -- B. wrong tokens and ACLs ----------------------------------------------------------------


def test_activate_with_wrong_activation_token(h: Harness) -> None:
    a = quest_desc("A")
    start(h, a)
    eid = aid_of(a).execution(1)
    wrong = dm_pb2.Execution.Auth(id=eid.to_proto(), token=b"\x00" * 32)
    rejected(
        h,
        PermissionDenied,
        "activate",
        lambda: h.service.activate_execution(
            dm_pb2.ActivateExecutionReq(auth=wrong, execution_token=token_for(eid))
        ),
    )
    assert h.exec_state(eid) == ExecutionState.SCHEDULING
    # Before activation the activation token is no execution token.
    activation = h.world.task(eid).auth.token
    rejected(h, Unauthenticated, "", lambda: declare(h, eid, activation, aid_of(a, 2)))
    req = walk_req(aid_of(a))
    req.auth.CopyFrom(exec_auth(eid, activation))
    rejected(h, Unauthenticated, "", lambda: h.service.walk_graph(req, TRUSTED))
    activate(h, eid)
    assert h.exec_state(eid) == ExecutionState.RUNNING


@pytest.mark.parametrize("size", [100, docs.INLINE_RESULT_BYTES + 1000])
def test_small_results_live_on_their_attempt_large_ones_apart(h: Harness, size: int) -> None:
    a = quest_desc(f"result-{size}")
    start(h, a)
    eid = aid_of(a).execution(1)
    token = activate(h, eid)
    value = {"pad": "x" * size}
    finish(h, eid, token, value)
    end(h, eid)
    att = h.attempt(aid_of(a))
    assert att["state"] == AttemptState.FINISHED
    inline = size <= docs.INLINE_RESULT_BYTES
    assert ("object" in att["result"]) is inline
    assert (h.store.get(docs.result_path(aid_of(a))) is None) is inline
    assert h.result(aid_of(a)) == value
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[aid_of(a).quest].nums.append(1)
    req.include.attempt.data = True
    req.include.attempt.result = True
    req.limit.max_data_size = 1024 * 1024
    g = h.service.walk_graph(req, Caller.trusted())
    got = g.quests[aid_of(a).quest].attempts[1].data.finished.data.object
    assert json.loads(got) == value


def test_activation_is_idempotent_for_the_same_token_only(h: Harness) -> None:
    a = quest_desc("A")
    a.meta.timeouts.run.seconds = 600
    start(h, a)
    eid = aid_of(a).execution(1)
    first = activate(h, eid)
    timer = docs.timer_of(h.attempt(eid.attempt_id), eid)
    assert timer is not None and timer["state"] == ExecutionState.RUNNING
    assert timer["deadline_us"] == h.clock() + 600_000_000

    rejected(h, PermissionDenied, "activate", lambda: activate(h, eid, salt="other"))

    h.clock.advance(100)
    assert activate(h, eid) == first  # the same client retrying: fine
    timer = docs.timer_of(h.attempt(eid.attempt_id), eid)
    assert timer is not None and timer["deadline_us"] == h.clock() + 600_000_000  # re-armed
    assert h.exec_state(eid) == ExecutionState.RUNNING
    finish(h, eid, first, {"ok": True})  # the first token is still the execution's
    end(h, eid)
    assert h.result(aid_of(a)) == {"ok": True}
    # After the end, activating again is refused.
    rejected(h, PermissionDenied, "activate", lambda: activate(h, eid))


def test_finish_attempt_with_the_activation_token_activates_and_finishes(h: Harness) -> None:
    a = quest_desc("A")
    start(h, a)
    eid = aid_of(a).execution(1)
    activation = h.world.task(eid).auth.token
    # Only the activation token dm handed out finishes an execution not yet activated.
    rejected(h, PermissionDenied, "", lambda: finish(h, eid, b"\x00" * 32, {"x": 1}))
    assert h.exec_state(eid) == ExecutionState.SCHEDULING
    finish(h, eid, activation, {"x": 1})  # one transaction: SCHEDULING -> RUNNING -> STOPPING
    assert h.exec_state(eid) == ExecutionState.STOPPING
    timer = docs.timer_of(h.attempt(eid.attempt_id), eid)
    assert timer is not None and timer["state"] == ExecutionState.STOPPING
    before = snapshot(h)
    finish(h, eid, activation, {"x": 1})  # the same job retrying after a lost answer (W-6)
    assert snapshot(h) == before
    # A duplicate job instance with the same activation token: another result, or an
    # activation of its own, is refused as a second activation is.
    rejected(h, PermissionDenied, "", lambda: finish(h, eid, activation, {"x": 2}))
    rejected(h, PermissionDenied, "activate", lambda: activate(h, eid, salt="dup"))
    end(h, eid)
    assert h.state(aid_of(a)) == AttemptState.FINISHED
    assert h.result(aid_of(a)) == {"x": 1}


def test_finish_attempt_with_the_activation_token_after_another_job_activated(
    h: Harness,
) -> None:
    a = quest_desc("A")
    start(h, a)
    eid = aid_of(a).execution(1)
    activation = h.world.task(eid).auth.token
    token = activate(h, eid)  # the first job instance activated
    rejected(h, PermissionDenied, "", lambda: finish(h, eid, activation, {"dup": True}))
    assert h.exec_state(eid) == ExecutionState.RUNNING
    finish(h, eid, token, {"first": True})
    end(h, eid)
    assert h.result(aid_of(a)) == {"first": True}


def test_execution_calls_with_bad_tokens(h: Harness) -> None:
    a, f = quest_desc("A"), quest_desc("F")
    start(h, a, f)
    complete(h, aid_of(f), {"f": 1})
    eid = aid_of(a).execution(1)
    token = activate(h, eid)
    activation = h.world.task(eid).auth.token
    for bad in (b"\x01" * 32, activation, token[:-1], b""):
        rejected(
            h,
            Unauthenticated,
            "bad execution auth",
            functools.partial(declare, h, eid, bad, aid_of(f)),
        )
        rejected(
            h,
            PermissionDenied,
            "bad execution auth",
            functools.partial(finish, h, eid, bad, {"x": 1}),
        )
        req = walk_req(aid_of(f))
        req.auth.CopyFrom(exec_auth(eid, bad))
        rejected(
            h,
            Unauthenticated,
            "bad execution auth",
            functools.partial(h.service.walk_graph, req, TRUSTED),
        )
    # The good token works for all three.
    req = walk_req(aid_of(f))
    req.auth.CopyFrom(exec_auth(eid, token))
    assert aid_of(f).num in h.service.walk_graph(req, Caller.anonymous()).quests[qid_of(f)].attempts
    assert not declare(h, eid, token, aid_of(f)).should_halt
    finish(h, eid, token, {"a": 1})
    assert h.exec_state(eid) == ExecutionState.STOPPING


def test_stale_execution_is_rejected(h: Harness) -> None:
    a, f = quest_desc("A", crashed=1), quest_desc("F")
    start(h, a, f)
    complete(h, aid_of(f), {"f": 1})
    a1 = aid_of(a)
    old = a1.execution(1)
    old_activation = h.world.task(old).auth
    old_token = activate(h, old)
    crash(h, old)  # retried: execution 2 is now the current one
    assert h.attempt(a1)["cur_execution"] == 2
    assert h.world.pending() == [a1.execution(2)]

    rejected(h, PermissionDenied, "", lambda: finish(h, old, old_token, {"x": 1}))
    rejected(h, Unauthenticated, "", lambda: declare(h, old, old_token, aid_of(f)))
    req = walk_req(aid_of(f))
    req.auth.CopyFrom(exec_auth(old, old_token))
    rejected(h, Unauthenticated, "", lambda: h.service.walk_graph(req, TRUSTED))
    rejected(
        h,
        PermissionDenied,
        "",
        lambda: h.service.activate_execution(
            dm_pb2.ActivateExecutionReq(auth=old_activation, execution_token=old_token)
        ),
    )
    # The stale token does not work for the new execution either.
    new = a1.execution(2)
    rejected(h, PermissionDenied, "", lambda: finish(h, new, old_token, {"x": 1}))
    token = activate(h, new)
    finish(h, new, token, {"second": True})
    end(h, new)
    assert h.result(a1) == {"second": True}


def test_acls_for_callers_without_an_execution(live: Live) -> None:
    h = live.h
    anon = Caller.anonymous()
    reader = Caller("reader", can_read=True, can_write=False)
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc("new"))
    req.quest_attempt.add(nums=[1])
    cancel = dm_pb2.CancelAttemptReq(attempt=live.a1.to_proto())
    walk = walk_req(live.f1)
    for who in (anon, reader):
        rejected(
            h,
            PermissionDenied,
            "not a writer",
            functools.partial(h.service.ensure_graph_data, req, who),
        )
        rejected(
            h,
            PermissionDenied,
            "not a writer",
            functools.partial(h.service.cancel_attempt, cancel, who),
        )
    rejected(h, PermissionDenied, "not a reader", lambda: h.service.walk_graph(walk, anon))
    assert live.f1.num in h.service.walk_graph(walk, reader).quests[live.f1.quest].attempts
    writer = Caller("writer", can_read=False, can_write=True)
    assert live.f1.num in h.service.walk_graph(walk, writer).quests[live.f1.quest].attempts
    assert h.service.ensure_graph_data(req, writer).accepted


# -- C. idempotent retries (W-6) --------------------------------------------------------------


def test_finish_attempt_retry(h: Harness) -> None:
    a = quest_desc("A")
    start(h, a)
    a1 = aid_of(a)
    eid = a1.execution(1)
    token = activate(h, eid)
    finish(h, eid, token, '{"b": 1, "a": [1, 2]}')
    assert h.exec_state(eid) == ExecutionState.STOPPING
    before = snapshot(h)
    finish(h, eid, token, '{"b": 1, "a": [1, 2]}')  # the response was lost: retry
    finish(h, eid, token, '{"a":[1,2],"b":1}')  # the same result once normalised
    assert snapshot(h) == before
    rejected(h, PermissionDenied, "", lambda: finish(h, eid, token, {"b": 2}))
    end(h, eid)
    assert h.state(a1) == AttemptState.FINISHED
    assert h.result(a1) == {"a": [1, 2], "b": 1}
    before = snapshot(h)
    finish(h, eid, token, '{"a":[1,2],"b":1}')  # even after the attempt finished
    assert snapshot(h) == before
    rejected(h, PermissionDenied, "", lambda: finish(h, eid, token, {"b": 3}))
    assert h.result(a1) == {"a": [1, 2], "b": 1}


def test_halting_ensure_graph_data_retry(h: Harness) -> None:
    a, b = quest_desc("A"), quest_desc("B")
    start(h, a)
    a1, b1 = aid_of(a), aid_of(b)
    eid = a1.execution(1)
    token = activate(h, eid)
    rsp = declare(h, eid, token, b1, quests=(b,))
    assert rsp.accepted and rsp.should_halt and not rsp.HasField("result")
    before = snapshot(h)
    rsp = declare(h, eid, token, b1, quests=(b,))  # retry before anything ran
    assert rsp.accepted and rsp.should_halt and not rsp.HasField("result")
    assert snapshot(h) == before
    h.settle()
    waiting = sorted([a1.execution(1), b1.execution(1)])
    assert sorted(h.world.pending()) == waiting
    before = snapshot(h)
    rsp = declare(h, eid, token, b1, quests=(b,))  # retry after B was created
    assert rsp.should_halt and not rsp.HasField("result")
    h.settle()
    assert snapshot(h) == before
    assert sorted(h.world.pending()) == waiting
    assert h.attempt(b1)["cur_execution"] == 1
    # A retry with other dependencies is not a retry: the token is revoked.
    c = quest_desc("C")
    rejected(h, Unauthenticated, "", lambda: declare(h, eid, token, aid_of(c), quests=(c,)))
    # The rest of the dance still works.
    end(h, eid, {"stage": 1})
    assert h.state(a1) == AttemptState.WAITING
    complete(h, b1, {"b": 1})
    assert h.state(a1) == AttemptState.EXECUTING
    assert h.world.pending() == [a1.execution(2)]


def test_halting_retry_with_a_stale_edge_to_a_just_finished_dependee(
    tmp_path: pathlib.Path,
) -> None:
    h = Harness(tmp_path)
    try:
        a, b, c = quest_desc("A", crashed=1), quest_desc("B"), quest_desc("C")
        start(h, a)
        a1, b1, c1 = aid_of(a), aid_of(b), aid_of(c)
        t1 = activate(h, a1.execution(1))
        assert declare(h, a1.execution(1), t1, b1, quests=(b,)).should_halt
        crash(h, a1.execution(1))  # retried; the edge A|1 -> B|1 is tagged execution 1
        # B finishes, but its completion has not propagated to A's edge yet.
        tb = activate(h, b1.execution(1))
        finish(h, b1.execution(1), tb, {"b": 1})
        h.world.run_task(b1.execution(1), lambda j: None)
        while h.inbox:
            data, attrs = h.inbox.pop(0)
            h.engine.receive_notification(data, attrs)
        assert h.state(b1) == AttemptState.FINISHED
        t2 = activate(h, a1.execution(2))
        assert declare(h, a1.execution(2), t2, b1, c1, quests=(c,)).should_halt
        before = snapshot(h)
        rsp = declare(h, a1.execution(2), t2, b1, c1, quests=(c,))  # the response was lost
        assert rsp.should_halt and snapshot(h) == before
    finally:
        h.close()


# -- D. dependencies ------------------------------------------------------------------------


def test_self_dependency_is_rejected(h: Harness) -> None:
    a = quest_desc("A")
    start(h, a, attempts=(1, 2))
    a1 = aid_of(a)
    eid = a1.execution(1)
    token = activate(h, eid)
    rejected(h, InvalidArgument, "itself", lambda: declare(h, eid, token, a1))
    rejected(h, InvalidArgument, "itself", lambda: declare(h, eid, token, a1, aid_of(a, 2)))
    # Another attempt of the same quest is not the same attempt.
    assert declare(h, eid, token, aid_of(a, 2)).should_halt


def test_cycle_that_can_be_seen_is_rejected(h: Harness) -> None:
    a, b, c = quest_desc("A"), quest_desc("B"), quest_desc("C")
    start(h, a)
    a1, b1, c1 = aid_of(a), aid_of(b), aid_of(c)
    ta = activate(h, a1.execution(1))
    assert declare(h, a1.execution(1), ta, b1, quests=(b,)).should_halt
    h.settle()
    tb = activate(h, b1.execution(1))
    rejected(h, InvalidArgument, "cycle", lambda: declare(h, b1.execution(1), tb, a1))
    # Longer: A -> B -> C, then C's execution wants A.
    assert declare(h, b1.execution(1), tb, c1, quests=(c,)).should_halt
    h.settle()
    tc = activate(h, c1.execution(1))
    rejected(h, InvalidArgument, "cycle", lambda: declare(h, c1.execution(1), tc, a1))
    # C is still running and can finish; everything unwinds.
    finish(h, c1.execution(1), tc, {"c": 1})
    end(h, c1.execution(1))
    end(h, a1.execution(1))
    end(h, b1.execution(1))
    assert h.state(b1) == AttemptState.EXECUTING
    complete(h, b1, {"b": 1})
    assert h.state(a1) == AttemptState.EXECUTING
    complete(h, a1, {"a": 1})


def test_a_cycle_in_a_declaration_in_parts_is_refused_before_any_part(h: Harness) -> None:
    """A declaration too large for one transaction commits in parts (W-14): a cycle
    closed by its last part is refused before the first, so nothing is written."""
    a, b = quest_desc("A"), quest_desc("B")
    others = [quest_desc(f"X{i}") for i in range(4)]
    start(h, a)
    a1, b1 = aid_of(a), aid_of(b)
    ta = activate(h, a1.execution(1))
    assert declare(h, a1.execution(1), ta, b1, quests=(b,)).should_halt
    h.settle()
    tb = activate(h, b1.execution(1))
    h.service.declare_chunk = 2
    rejected(
        h,
        InvalidArgument,
        "cycle",
        lambda: declare(
            h, b1.execution(1), tb, *(aid_of(x) for x in others), a1, quests=(*others, a)
        ),
    )


def test_stale_edge_of_a_crashed_execution_is_no_cycle(h: Harness) -> None:
    """Only the edges of an attempt's current execution make it wait (W-2)."""
    a, b = quest_desc("A", crashed=1), quest_desc("B")
    start(h, a)
    a1, b1 = aid_of(a), aid_of(b)
    t1 = activate(h, a1.execution(1))
    assert declare(h, a1.execution(1), t1, b1, quests=(b,)).should_halt
    crash(h, a1.execution(1))  # A|1|2 runs and has not (yet) declared anything
    assert h.attempt(a1)["cur_execution"] == 2
    tb = activate(h, b1.execution(1))
    rsp = declare(h, b1.execution(1), tb, a1)  # A does not wait for B: no cycle
    assert rsp.should_halt
    end(h, b1.execution(1))
    t2 = activate(h, a1.execution(2))
    # Now A|1|2 declaring B would close a cycle: refused.
    rejected(h, InvalidArgument, "cycle", lambda: declare(h, a1.execution(2), t2, b1))
    finish(h, a1.execution(2), t2, {"a": 2})
    end(h, a1.execution(2))
    assert h.state(a1) == AttemptState.FINISHED
    assert h.state(b1) == AttemptState.EXECUTING  # unblocked by A
    complete(h, b1, {"b": 1})


def test_dependency_on_finished_attempt_does_not_halt(h: Harness) -> None:
    a, f = quest_desc("A"), quest_desc("F")
    start(h, a, f)
    a1, f1 = aid_of(a), aid_of(f)
    complete(h, f1, {"f": "done"})
    eid = a1.execution(1)
    token = activate(h, eid)
    rsp = declare(h, eid, token, f1)
    assert rsp.accepted and not rsp.should_halt
    got = attempt_msg(rsp.result, f1)
    assert got.data.finished.data.object == '{"f":"done"}'
    assert got.data.finished.data.size == len('{"f":"done"}')
    assert h.exec_state(eid) == ExecutionState.RUNNING
    # Results only when asked for, and within limit.max_data_size.
    req = deps_req(f1, result=False)
    req.for_execution.CopyFrom(exec_auth(eid, token))
    got = attempt_msg(h.service.ensure_graph_data(req, Caller.anonymous()).result, f1)
    assert got.data.finished.data.object == "" and got.data.finished.data.size == 12
    req.include.attempt.result = True
    req.limit.max_data_size = 11
    rsp = h.service.ensure_graph_data(req, Caller.anonymous())
    assert not rsp.should_halt
    got = attempt_msg(rsp.result, f1)
    assert got.partial.result == DATA_SIZE_LIMIT
    assert got.data.finished.data.object == "" and got.data.finished.data.size == 12
    h.settle()
    edge = h.store.get(docs.fwd_dep_path(a1, f1))
    assert edge is not None and edge["satisfied"]
    assert docs.list_dependers(h.store, f1, h.store.get(docs.attempt_path(f1))) == [a1]
    finish(h, eid, token, {"a": 1})
    end(h, eid)
    assert h.state(a1) == AttemptState.FINISHED


def test_dependency_on_abnormal_attempt_does_not_halt(h: Harness) -> None:
    """W-1: terminal-abnormal counts as done; the depender sees the abnormal status."""
    a, x = quest_desc("A"), quest_desc("X")
    start(h, a, x)
    a1, x1 = aid_of(a), aid_of(x)
    fail(h, x1.execution(1))
    assert h.state(x1) == AttemptState.ABNORMAL_FINISHED
    eid = a1.execution(1)
    token = activate(h, eid)
    rsp = declare(h, eid, token, x1)
    assert rsp.accepted and not rsp.should_halt
    got = attempt_msg(rsp.result, x1)
    assert got.data.abnormal_finish.status == dm_pb2.AbnormalFinish.FAILED
    assert "broken" in got.data.abnormal_finish.reason
    assert h.exec_state(eid) == ExecutionState.RUNNING
    h.settle()
    assert h.state(a1) == AttemptState.EXECUTING


def test_abnormal_dependency_unblocks_waiting_depender(h: Harness) -> None:
    """W-1: a dependency that ends abnormally while the depender waits unblocks it."""
    a, b = quest_desc("A"), quest_desc("B")
    start(h, a)
    a1, b1 = aid_of(a), aid_of(b)
    token = activate(h, a1.execution(1))
    assert declare(h, a1.execution(1), token, b1, quests=(b,)).should_halt
    end(h, a1.execution(1), {"stage": 1})
    assert h.state(a1) == AttemptState.WAITING
    fail(h, b1.execution(1))
    assert h.state(b1) == AttemptState.ABNORMAL_FINISHED
    assert h.state(a1) == AttemptState.EXECUTING
    assert h.world.pending() == [a1.execution(2)]
    assert h.world.task(a1.execution(2)).state == {"stage": 1}
    token = activate(h, a1.execution(2))
    rsp = declare(h, a1.execution(2), token, b1)
    assert not rsp.should_halt
    assert attempt_msg(rsp.result, b1).data.abnormal_finish.status == dm_pb2.AbnormalFinish.FAILED


def test_redeclared_deps_after_crash_halt_again(h: Harness) -> None:
    """W-2: the retry of a halted-then-crashed execution halts again on unfinished deps."""
    a, b = quest_desc("A", crashed=1), quest_desc("B")
    start(h, a)
    a1, b1 = aid_of(a), aid_of(b)
    t1 = activate(h, a1.execution(1))
    assert declare(h, a1.execution(1), t1, b1, quests=(b,)).should_halt
    crash(h, a1.execution(1))
    assert h.state(a1) == AttemptState.EXECUTING
    assert h.attempt(a1)["cur_execution"] == 2
    assert h.state(b1) == AttemptState.EXECUTING
    t2 = activate(h, a1.execution(2))
    rsp = declare(h, a1.execution(2), t2, b1)
    assert rsp.should_halt
    assert h.exec_state(a1.execution(2)) == ExecutionState.STOPPING
    end(h, a1.execution(2))
    assert h.state(a1) == AttemptState.WAITING
    complete(h, b1, {"b": 7})
    assert h.state(a1) == AttemptState.EXECUTING
    t3 = activate(h, a1.execution(3))
    rsp = declare(h, a1.execution(3), t3, b1)
    assert not rsp.should_halt
    assert attempt_msg(rsp.result, b1).data.finished.data.object == '{"b":7}'


# -- E. WalkGraph ------------------------------------------------------------------------------


@dataclasses.dataclass
class Graph:
    """A|1 -> B|1 -> C|1 (all finished), D|1..3 (D|2 failed), E|1 running and depending on B|1."""

    h: Harness
    ids: dict[str, AttemptID]
    e_token: bytes

    def name(self, aid: AttemptID) -> str:
        return next(n for n, x in self.ids.items() if x == aid)

    def walked(self, g: dm_pb2.GraphData) -> set[str]:
        """Names of the attempts present (not DNE) in ``g``."""
        by_quest = {x.quest: n[0] for n, x in self.ids.items()}
        return {
            f"{by_quest[q]}{num}"
            for q, quest in g.quests.items()
            for num, att in quest.attempts.items()
            if not att.DNE
        }

    @property
    def e_auth(self) -> dm_pb2.Execution.Auth:
        return exec_auth(self.ids["E1"].execution(1), self.e_token)


@pytest.fixture
def graph(tmp_path: pathlib.Path) -> Iterator[Graph]:
    h = Harness(tmp_path)
    descs = {n: quest_desc(n) for n in "ABCDE"}
    start(h, descs["A"], descs["B"], descs["C"], descs["E"])
    start(h, descs["D"], attempts=(1, 2, 3))
    ids = {f"{n}{k}": aid_of(descs[n], k) for n in "ABCDE" for k in (1, 2, 3)}
    complete(h, ids["C1"], {"c": "see"}, state={"n": "c"})
    complete(h, ids["D1"], {"d": 1})
    complete(h, ids["D3"], {"d": 3})
    fail(h, ids["D2"].execution(1))
    for depender, dependee in (("B1", "C1"), ("A1", "B1")):
        eid = ids[depender].execution(1)
        token = activate(h, eid)
        assert not declare(h, eid, token, ids[dependee]).should_halt
        finish(h, eid, token, {depender[0].lower(): 2})
        end(h, eid, {"n": depender})
    e_eid = ids["E1"].execution(1)
    e_token = activate(h, e_eid)
    assert not declare(h, e_eid, e_token, ids["B1"]).should_halt
    h.settle()
    assert h.state(ids["A1"]) == AttemptState.FINISHED
    assert h.state(ids["D2"]) == AttemptState.ABNORMAL_FINISHED
    yield Graph(h, ids, e_token)
    h.close()


@pytest.mark.parametrize(
    ("start_at", "depth", "direction", "expect"),
    [
        ("B1", 0, FORWARDS, {"B1"}),
        ("B1", 1, FORWARDS, {"B1", "C1"}),
        ("B1", 1, BACKWARDS, {"B1", "A1", "E1"}),
        ("B1", 1, BOTH, {"A1", "B1", "C1", "E1"}),
        ("A1", 1, FORWARDS, {"A1", "B1"}),
        ("A1", 2, FORWARDS, {"A1", "B1", "C1"}),
        ("A1", -1, FORWARDS, {"A1", "B1", "C1"}),
        ("A1", -1, BACKWARDS, {"A1"}),
        ("C1", -1, BACKWARDS, {"A1", "B1", "C1", "E1"}),
        ("C1", 1, BACKWARDS, {"B1", "C1"}),
        ("C1", -1, FORWARDS, {"C1"}),
        ("A1", -1, BOTH, {"A1", "B1", "C1", "E1"}),
    ],
)
def test_walk_depth_and_direction(
    graph: Graph,
    start_at: str,
    depth: int,
    direction: dm_pb2.WalkGraphReq.Mode.Direction,
    expect: set[str],
) -> None:
    req = walk_req(graph.ids[start_at], depth=depth, direction=direction)
    got = graph.h.service.walk_graph(req, TRUSTED)
    assert graph.walked(got) == expect
    req.mode.dfs = True
    assert graph.walked(graph.h.service.walk_graph(req, TRUSTED)) == expect
    assert not got.had_more and not got.had_errors


def test_walk_include_flags(graph: Graph) -> None:
    h, ids = graph.h, graph.ids
    a1, b1, c1 = ids["A1"], ids["B1"], ids["C1"]
    bare = h.service.walk_graph(walk_req(b1, depth=1), TRUSTED)
    for aid in (b1, c1):
        att = attempt_msg(bare, aid)
        assert not att.HasField("id") and not att.HasField("data")
        assert not att.executions and not att.fwd_deps.to and not att.back_deps.to
        assert not att.HasField("partial")
        assert not bare.quests[aid.quest].HasField("id")
        assert not bare.quests[aid.quest].HasField("data")

    req = walk_req(b1, depth=1)
    inc = req.include
    inc.quest.ids = inc.quest.data = True
    inc.attempt.ids = inc.attempt.result = True
    inc.execution.ids = inc.execution.data = True
    inc.num_executions = 1
    inc.fwd_deps = inc.back_deps = True
    g = h.service.walk_graph(req, TRUSTED)
    qb = g.quests[b1.quest]
    assert qb.id.id == b1.quest
    assert qb.data.desc.distributor_config_name == "fake"
    assert json.loads(qb.data.desc.parameters) == {"name": "B"}
    assert qb.data.created.ToMicroseconds() > 0
    att = attempt_msg(g, b1)
    assert att.id == b1.to_proto()
    assert att.data.num_executions == 1
    assert att.data.finished.data.object == '{"b":2}'
    assert att.data.finished.data.size == 7
    assert nums(att.fwd_deps) == {c1.quest: [1]}
    assert nums(att.back_deps) == {a1.quest: [1], ids["E1"].quest: [1]}
    assert list(att.executions) == [1]
    ex = att.executions[1]
    eid = b1.execution(1)
    assert ex.id == eid.to_proto()
    info = ex.data.distributor_info
    assert info.config_name == "fake"
    assert info.config_version == "v1"
    assert info.token == f"fakeDistributor:{eid}"
    assert info.url == f"https://info.example.com/fakeDistributor:{eid}"
    assert ex.data.HasField("finished")
    assert ex.data.finished.data.object == ""  # execution results were not asked for
    assert ex.data.finished.data.size > 0
    # C was walked to (depth 1): same flags apply; its back dep is B.
    cat = attempt_msg(g, c1)
    assert cat.data.finished.data.object == '{"c":"see"}'
    assert nums(cat.back_deps) == {b1.quest: [1]}
    assert not cat.fwd_deps.to

    # Execution results when asked for; attempt data without the result object.
    req = walk_req(c1)
    req.include.attempt.data = True
    req.include.num_executions = 5
    req.include.execution.result = True
    g = h.service.walk_graph(req, TRUSTED)
    cat = attempt_msg(g, c1)
    assert cat.data.finished.data.object == ""
    assert cat.data.finished.data.size == len('{"c":"see"}')
    assert json.loads(cat.executions[1].data.finished.data.object) == {"n": "c"}


def test_walk_num_executions_newest_first(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path)
    try:
        a, b = quest_desc("A", crashed=2), quest_desc("B")
        start(h, a)
        a1 = aid_of(a)
        t = activate(h, a1.execution(1))
        assert declare(h, a1.execution(1), t, aid_of(b), quests=(b,)).should_halt
        end(h, a1.execution(1))
        complete(h, aid_of(b), {"b": 1})
        crash(h, a1.execution(2))
        assert h.attempt(a1)["cur_execution"] == 3
        req = walk_req(a1)
        req.include.num_executions = 2
        req.include.execution.ids = True
        req.include.execution.abnormal = True
        req.include.execution.data = True
        att = attempt_msg(h.service.walk_graph(req, TRUSTED), a1)
        assert sorted(att.executions) == [2, 3]  # the latest two
        assert att.executions[3].data.HasField("scheduling")
        st = att.executions[2].data.abnormal_finish.status
        assert st == dm_pb2.AbnormalFinish.CRASHED
        req.include.num_executions = 10
        att = attempt_msg(h.service.walk_graph(req, TRUSTED), a1)
        assert sorted(att.executions) == [1, 2, 3]
    finally:
        h.close()


def test_walk_dne_markers(graph: Graph) -> None:
    h, ids = graph.h, graph.ids
    req = walk_req(AttemptID(MISSING_QID, 1), ids["A1"], AttemptID(ids["A1"].quest, 5))
    req.include.quest.data = True
    req.include.attempt.data = True
    g = h.service.walk_graph(req, TRUSTED)
    assert g.quests[MISSING_QID].DNE
    assert g.quests[MISSING_QID].attempts[1].DNE
    qa = g.quests[ids["A1"].quest]
    assert not qa.DNE and qa.data.desc.distributor_config_name == "fake"
    assert qa.attempts[5].DNE
    assert not qa.attempts[1].DNE and qa.attempts[1].data.HasField("finished")
    # Quest data not asked for: a missing quest is still not invented.
    g = h.service.walk_graph(walk_req(AttemptID(MISSING_QID, 2)), TRUSTED)
    assert g.quests[MISSING_QID].attempts[2].DNE


def test_walk_reads_the_query_in_bulk(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WalkGraph reads the query's attempts and their quests one chunk at a time,
    not one by one; EnsureGraphData answers with what it read to know what exists."""
    h = Harness(tmp_path)
    try:
        descs = [quest_desc(f"bulk{i}") for i in range(600)]
        h.ensure(*descs)
        aids = [aid_of(d) for d in descs]
        store = h.engine.store
        reads: list[str] = []
        get, get_many = store.get, store.get_many

        def one(path: str) -> docs.Doc | None:
            reads.append(path)
            return get(path)

        def many(paths: list[str]) -> dict[str, docs.Doc | None]:
            reads.append(f"{len(paths)} at once")
            return get_many(paths)

        def query(collection: str, *args: Any, **kwargs: Any) -> list[tuple[str, docs.Doc]]:
            reads.append(f"query {collection}")
            return store_query(collection, *args, **kwargs)

        def edges(collections: list[str]) -> dict[str, list[tuple[str, docs.Doc]]]:
            reads.append(f"{len(collections)} collections at once")
            return query_collections(collections)

        store_query, query_collections = store.query, store.query_collections
        monkeypatch.setattr(store, "get", one)
        monkeypatch.setattr(store, "get_many", many)
        monkeypatch.setattr(store, "query", query)
        monkeypatch.setattr(store, "query_collections", edges)
        req = walk_req(*aids, AttemptID(MISSING_QID, 1))
        req.include.quest.data = True
        req.include.attempt.data = True
        g = h.service.walk_graph(req, TRUSTED)
        # 601 attempts and their 601 quests: 500 attempts and their quests, then
        # the other 101 and theirs; no edges (depth 0: nothing to follow or show).
        assert reads == ["1000 at once", "202 at once"]
        for a in aids:
            assert g.quests[a.quest].data.desc.distributor_config_name == "fake"
            assert g.quests[a.quest].attempts[1].data.WhichOneof("attempt_type") is not None
        assert g.quests[MISSING_QID].DNE and g.quests[MISSING_QID].attempts[1].DNE

        # What the walk leaves out is not read ahead: an excluded attempt, the
        # data of an excluded quest.
        reads.clear()
        req = walk_req(*aids[:3])
        req.include.quest.data = True
        req.include.attempt.data = True
        req.exclude.attempts.to[aids[1].quest].nums.append(1)
        req.exclude.quests.append(aids[2].quest)
        g = h.service.walk_graph(req, TRUSTED)
        assert reads == ["3 at once"]  # attempts 0 and 2, quest 0
        assert aids[1].quest not in g.quests
        assert not g.quests[aids[2].quest].HasField("data")
        assert g.quests[aids[2].quest].attempts[1].data.WhichOneof("attempt_type")

        reads.clear()
        again = dm_pb2.EnsureGraphDataReq()
        for d in descs:
            again.quest.append(d)
            again.quest_attempt.add(nums=[1])
        rsp = h.service.ensure_graph_data(again, TRUSTED)
        # Its EnsureGraph steps read them in their transactions; the answer is made
        # of what they read, and of the forward edges of each chunk read at once
        # (depth 1: the answer shows direct dependencies), here of none: these
        # attempts never declared any (docs.DECLARED).
        assert reads == []
        assert len(rsp.result.quests) == 600
        for a in aids:
            assert rsp.result.quests[a.quest].data.desc.distributor_config_name == "fake"
            assert rsp.result.quests[a.quest].attempts[1].data.WhichOneof("attempt_type")
    finally:
        h.close()


def test_ensure_creates_everything_even_when_its_answer_runs_out_of_time(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EnsureGraphData ensures each chunk as its answer reaches it: a walk out of
    time (had_more) must not leave the rest of the request uncreated."""
    h = Harness(tmp_path)
    try:
        descs = [quest_desc(f"late{i}") for i in range(3)]
        monkeypatch.setattr(service_mod, "MAX_WALK_TIME_US", -1)  # over before it starts
        monkeypatch.setattr(service_mod._ReadAhead, "LOAD_CHUNK", 2)  # its first chunk of 3
        req = dm_pb2.EnsureGraphDataReq()
        for d in descs:
            req.quest.append(d)
            req.quest_attempt.add(nums=[1, 2])
        rsp = h.service.ensure_graph_data(req, TRUSTED)
        assert rsp.accepted and rsp.result.had_more
        assert not rsp.result.quests  # nothing answered ...
        monkeypatch.undo()
        got = h.service.walk_graph(
            walk_req(*(aid_of(d, n) for d in descs for n in (1, 2))), TRUSTED
        )
        for d in descs:  # ... and everything created
            assert [got.quests[aid_of(d).quest].attempts[n].DNE for n in (1, 2)] == [False, False]
    finally:
        h.close()


@pytest.mark.parametrize("results", [True, False])
def test_memoised_answer_from_parts_is_the_answer_from_whole_documents(
    tmp_path: pathlib.Path, results: bool
) -> None:
    """EnsureGraphData's answer reads only steps.EnsureGraph.ANSWERED of each attempt
    (Transaction.peek_many): it must be the answer made from whole documents, for
    attempts in every state (a field missing from ANSWERED would show here)."""
    h = Harness(tmp_path)
    try:
        q = {n: quest_desc(f"parts-{n}") for n in ("small", "large", "bad", "run", "wait", "new")}
        start(h, *q.values())
        aids = {n: aid_of(d) for n, d in q.items()}
        complete(h, aids["small"], {"s": 1}, state={"n": 1})
        complete(h, aids["large"], {"pad": "x" * (docs.INLINE_RESULT_BYTES + 100)})
        fail(h, aids["bad"].execution(1))
        activate(h, aids["run"].execution(1))
        wait_eid = aids["wait"].execution(1)
        assert declare(h, wait_eid, activate(h, wait_eid), aids["run"]).should_halt
        end(h, wait_eid, {"stage": 1})
        assert h.state(aids["wait"]) == AttemptState.WAITING
        assert h.state(aids["new"]) == AttemptState.EXECUTING  # never activated
        # Whole documents have more than the answer reads (the current execution).
        assert docs.CURRENT in h.attempt(aids["run"])
        assert docs.CURRENT not in steps.EnsureGraph.ANSWERED

        req = dm_pb2.EnsureGraphDataReq()
        req.include.attempt.result = results
        for d in q.values():
            req.quest.append(d)
            req.quest_attempt.add(nums=[1])
        before = snapshot(h)
        got = h.service.ensure_graph_data(req, TRUSTED)
        assert snapshot(h) == before  # memoised: nothing written
        whole = service_mod.Service(h.engine)._snapshot_graph(
            [aids[n] for n in q], results, service_mod.MAX_DATA_SIZE_DEFAULT
        )
        assert got.result == whole
        small = attempt_msg(got.result, aids["small"])
        obj = small.data.finished.data.object
        assert (json.loads(obj) == {"s": 1}) if results else obj == ""
        assert attempt_msg(got.result, aids["wait"]).data.waiting.num_waiting == 1

        # The step's parts: the answered fields of each attempt; quests whole.
        step = steps.EnsureGraph(quests={}, attempts=[a.encoded for a in aids.values()])
        h.engine.run(step)
        for a in aids.values():
            assert set(step.seen[docs.attempt_path(a)]) == set(steps.EnsureGraph.ANSWERED)
            assert step.seen[docs.quest_path(a.quest)] == h.store.get(docs.quest_path(a.quest))
    finally:
        h.close()


def _impatient_store(tmp_path: pathlib.Path) -> SqliteStore:
    """As the harness's store, but a write gives up on the write lock at once."""
    return SqliteStore(
        tmp_path / "dm.sqlite",
        indexed_fields=docs.INDEXED_FIELDS,
        ordered_fields=docs.SWEPT,
        durable=False,
        lock_wait=0.05,
        busy_timeout=0.01,
    )


def test_memoised_ensure_takes_no_write_lock(tmp_path: pathlib.Path) -> None:
    """A memoised EnsureGraphData (every quest and asked attempt there) answers from
    a read-only snapshot on SQLite: it answers while another connection holds the
    write lock (the writing path would wait for it: LockTimeout here), with the
    answer the writing path gave, and sees nothing that connection did not commit."""
    h = Harness(tmp_path, store=_impatient_store(tmp_path))
    try:
        descs = [quest_desc(f"nolock-{i}") for i in range(3)]
        start(h, *descs)
        complete(h, aid_of(descs[0]), {"r": 1})
        req = dm_pb2.EnsureGraphDataReq()
        req.include.attempt.result = True
        for d in descs:
            req.quest.append(d)
            req.quest_attempt.add(nums=[1])
        whole = service_mod.Service(h.engine)._snapshot_graph(
            [aid_of(d) for d in descs], True, service_mod.MAX_DATA_SIZE_DEFAULT
        )
        before = snapshot(h)
        with contextlib.closing(sqlite3.connect(h.store.path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            other.execute("DELETE FROM docs WHERE collection = ?", (docs.ATTEMPTS,))
            got = h.service.ensure_graph_data(req, TRUSTED)
            other.execute("ROLLBACK")
        assert got.accepted and got.result == whole
        assert [q.id for q in got.quest_ids] == [qid_of(d) for d in descs]
        assert snapshot(h) == before
        # The store's transactions are free again afterwards.
        h.ensure(quest_desc("nolock-after"))
    finally:
        h.close()


@pytest.mark.parametrize("chunk", [1, service_mod._ReadAhead.LOAD_CHUNK])
def test_ensure_with_one_absent_creates_it_and_answers_as_before(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """A request whose quests are there but for one (or but one asked attempt) is no
    memoised request: it takes the writing path, which creates what is absent in its
    transactions (it waits for the write lock: refused while another holds it, with
    nothing written) and answers with the state before. With chunks of one attempt
    the read-only try has answered for others before it finds the absent one: the
    answer is still the writing path's, every quest and attempt once."""
    monkeypatch.setattr(service_mod._ReadAhead, "LOAD_CHUNK", chunk)
    h = Harness(tmp_path, store=_impatient_store(tmp_path))
    try:
        there = [quest_desc(f"some-{i}") for i in range(3)]
        start(h, *there)
        new = quest_desc("some-new")
        for asked in ((new, 1), (there[1], 2)):
            req = dm_pb2.EnsureGraphDataReq()
            for d in there:
                req.quest.append(d)
                req.quest_attempt.add(nums=[1])
            req.quest.append(asked[0])
            req.quest_attempt.add(nums=[asked[1]])
            aid = aid_of(*asked)
            before = snapshot(h)
            with contextlib.closing(sqlite3.connect(h.store.path, isolation_level=None)) as other:
                other.execute("BEGIN IMMEDIATE")
                with pytest.raises(LockTimeout):
                    h.service.ensure_graph_data(req, TRUSTED)
                other.execute("ROLLBACK")
            assert snapshot(h) == before
            got = h.service.ensure_graph_data(req, TRUSTED)
            assert got.accepted
            assert got.result.quests[aid.quest].attempts[aid.num].DNE
            assert sorted(got.result.quests) == sorted({qid_of(d) for d in [*there, asked[0]]})
            assert all(len(q.attempts) == 1 + (k == aid.quest and aid.num == 2)
                       for k, q in got.result.quests.items()), got.result  # fmt: skip
            for d in there:
                assert not attempt_msg(got.result, aid_of(d)).DNE
            assert h.state(aid) in (AttemptState.SCHEDULING, AttemptState.EXECUTING)
            h.settle()
    finally:
        h.close()


class _SlowReader:
    """A read-only view whose reads of several documents take ``seconds`` of the clock."""

    def __init__(self, view: Transaction, clock: Callable[[float], None], seconds: float) -> None:
        self._view, self._advance, self._seconds = view, clock, seconds

    def get_many(self, paths: Any) -> Any:
        self._advance(self._seconds)
        return self._view.get_many(paths)

    def peek_many(self, paths: Any, fields: Any) -> Any:
        self._advance(self._seconds)
        return self._view.peek_many(paths, fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


def _read_only_try_then(
    h: Harness,
    monkeypatch: pytest.MonkeyPatch,
    then: Callable[[], None] = lambda: None,
    *,
    slow_s: float = 0,
) -> list[str]:
    """EnsureGraphData's read-only try (Store.read_view), its reads taking ``slow_s``
    each, and ``then`` (another caller's work) once it is over, before the writing
    path reads again. Returns the tries made (the caller asserts there was one)."""
    real_view = h.store.read_view
    tries: list[str] = []

    @contextlib.contextmanager
    def view() -> Iterator[Transaction]:
        opened = real_view()
        assert opened is not None
        try:
            with opened as reader:
                yield cast(Transaction, _SlowReader(reader, h.clock.advance, slow_s))
        finally:
            tries.append("read-only")
            then()

    monkeypatch.setattr(h.store, "read_view", view)
    return tries


def _ensure_req(*descs: dm_pb2.Quest.Desc, max_size: int = 0) -> dm_pb2.EnsureGraphDataReq:
    req = dm_pb2.EnsureGraphDataReq()
    req.include.attempt.result = True
    req.limit.max_data_size = max_size
    for d in descs:
        req.quest.append(d)
        req.quest_attempt.add(nums=[1])
    return req


def test_a_memoised_try_given_up_leaves_nothing_in_the_answer(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-only try answers for W (running) and X (finished, its result within
    the size limit), then finds Z absent and gives up; before the writing path reads
    again, another caller finishes W. The writing path's answer spends the size limit
    on W's result, so X's is left out (DATA_SIZE_LIMIT): nothing of the try's answer
    may stay, or X would show its result too, over the limit."""
    monkeypatch.setattr(service_mod._ReadAhead, "LOAD_CHUNK", 1)  # W, X answered before Z
    h = Harness(tmp_path)
    try:
        w, x, z = sorted((quest_desc(f"given-up-{i}") for i in range(3)), key=qid_of)
        start(h, w, x)
        w1, x1, z1 = aid_of(w), aid_of(x), aid_of(z)
        complete(h, x1, {"x": "x" * 40})
        limit = 80  # W's result, or X's, not both
        tries = _read_only_try_then(h, monkeypatch, lambda: complete(h, w1, {"w": "w" * 40}))
        got = h.service.ensure_graph_data(_ensure_req(w, x, z, max_size=limit), TRUSTED).result
        assert tries == ["read-only"]
        assert attempt_msg(got, z1).DNE  # the writing path's answer: the state before
        assert json.loads(attempt_msg(got, w1).data.finished.data.object) == {"w": "w" * 40}
        xm = attempt_msg(got, x1)
        assert xm.partial.result == DATA_SIZE_LIMIT
        assert xm.data.finished.data.object == ""
        shown = sum(len(a.data.finished.data.object) for q in got.quests.values()
                    for a in q.attempts.values())  # fmt: skip
        assert shown <= limit
    finally:
        h.close()


def test_a_memoised_try_out_of_time_then_given_up_leaves_no_had_more(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-only try runs out of time (its reads are slow) after its first chunk,
    says so (had_more), reads the rest all the same and finds Z absent: the writing
    path answers in time, so the answer is whole and says nothing of more."""
    monkeypatch.setattr(service_mod._ReadAhead, "LOAD_CHUNK", 1)
    h = Harness(tmp_path)
    try:
        descs = sorted((quest_desc(f"slow-{i}") for i in range(3)), key=qid_of)
        start(h, *descs[:2])
        slow = service_mod.MAX_WALK_TIME_US / 1e6 + 1
        tries = _read_only_try_then(h, monkeypatch, slow_s=slow)
        got = h.service.ensure_graph_data(_ensure_req(*descs), TRUSTED).result
        assert tries == ["read-only"]
        assert not got.had_more
        assert [attempt_msg(got, aid_of(d)).DNE for d in descs] == [False, False, True]
    finally:
        h.close()


def test_a_step_reads_whole_what_it_peeked(h: Harness) -> None:
    """Uow.peek_many keeps parts out of the step's cache: a step that then reads a
    document (to write it) gets it whole; an absence is kept."""
    whole = {"v": 1, docs.CURRENT: {"num": 1, "pad": "x"}}
    h.store.transaction(lambda tx: tx.set("c/a", whole))

    def fn(tx: Transaction) -> None:
        uow = Uow(tx)
        assert uow.peek_many(["c/a", "c/b"], ("v",)) == {"c/a": {"v": 1}, "c/b": None}
        assert uow.cached("c/a") is None and uow.get("c/b") is None
        assert uow.get("c/a") == whole
        assert uow.peek_many(["c/a"], ("v", "w")) == {"c/a": {"v": 1, "w": None}}

    h.store.transaction(fn)


def test_walk_attempt_range(graph: Graph) -> None:
    h, ids = graph.h, graph.ids
    d = ids["D1"].quest
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_range.add(quest=d, low=1, high=6)
    req.include.attempt.data = True
    g = h.service.walk_graph(req, TRUSTED)
    atts = g.quests[d].attempts
    assert sorted(atts) == [1, 2, 3, 4, 5]
    assert [n for n in sorted(atts) if atts[n].DNE] == [4, 5]
    assert atts[1].data.HasField("finished") and atts[3].data.HasField("finished")
    # D|2 ended abnormally: a placeholder unless abnormal attempts are included.
    assert not atts[2].DNE and not atts[2].HasField("data")
    req.include.attempt.abnormal = True
    atts = h.service.walk_graph(req, TRUSTED).quests[d].attempts
    assert atts[2].data.abnormal_finish.status == dm_pb2.AbnormalFinish.FAILED
    # [low, high): high itself is not included.
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_range.add(quest=d, low=2, high=3)
    req.include.attempt.abnormal = True
    assert sorted(h.service.walk_graph(req, TRUSTED).quests[d].attempts) == [2]


def test_walk_attempt_list_all_attempts(graph: Graph) -> None:
    h, ids = graph.h, graph.ids
    d = ids["D1"].quest
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[d].SetInParent()  # empty nums = all attempts
    req.include.attempt.data = True
    g = h.service.walk_graph(req, TRUSTED)
    assert sorted(g.quests[d].attempts) == [1, 3]  # D|2 is abnormal: hidden
    req.include.attempt.abnormal = True
    g = h.service.walk_graph(req, TRUSTED)
    assert sorted(g.quests[d].attempts) == [1, 2, 3]
    assert g.quests[d].attempts[2].data.HasField("abnormal_finish")
    req.query.attempt_list.to[d].nums.append(0)  # [0] means all too
    assert sorted(h.service.walk_graph(req, TRUSTED).quests[d].attempts) == [1, 2, 3]
    # An explicitly listed abnormal attempt is a placeholder (present, nothing filled).
    req = walk_req(ids["D2"])
    req.include.attempt.data = True
    att = attempt_msg(h.service.walk_graph(req, TRUSTED), ids["D2"])
    assert not att.DNE and not att.HasField("data")


def test_walk_abnormal_attempts_are_not_walked_through(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path)
    try:
        a, b, c = quest_desc("A"), quest_desc("B"), quest_desc("C")
        start(h, a, c)
        a1, b1, c1 = aid_of(a), aid_of(b), aid_of(c)
        complete(h, c1, {"c": 1})
        ta = activate(h, a1.execution(1))
        assert declare(h, a1.execution(1), ta, b1, quests=(b,)).should_halt
        h.settle()
        tb = activate(h, b1.execution(1))
        assert not declare(h, b1.execution(1), tb, c1).should_halt
        h.service.cancel_attempt(dm_pb2.CancelAttemptReq(attempt=b1.to_proto()), TRUSTED)
        h.settle()
        req = walk_req(a1, depth=-1)
        g = h.service.walk_graph(req, TRUSTED)
        assert b1.num in g.quests[b1.quest].attempts
        assert c1.quest not in g.quests  # not reached through the hidden B|1
        req.include.attempt.abnormal = True
        g = h.service.walk_graph(req, TRUSTED)
        assert c1.num in g.quests[c1.quest].attempts
    finally:
        h.close()


def test_walk_exclude(graph: Graph) -> None:
    h, ids = graph.h, graph.ids
    a1, b1 = ids["A1"], ids["B1"]
    req = walk_req(a1, depth=-1)
    req.include.quest.data = True
    req.exclude.attempts.to[b1.quest].nums.append(1)
    g = h.service.walk_graph(req, TRUSTED)
    assert graph.walked(g) == {"A1"}  # B|1 skipped and not walked through
    req.exclude.attempts.to[b1.quest].ClearField("nums")  # the whole quest
    assert graph.walked(h.service.walk_graph(req, TRUSTED)) == {"A1"}
    req = walk_req(a1, depth=-1)
    req.include.quest.data = True
    req.exclude.quests.append(a1.quest)  # only suppresses the quest's data
    g = h.service.walk_graph(req, TRUSTED)
    assert graph.walked(g) == {"A1", "B1", "C1"}
    assert not g.quests[a1.quest].HasField("data")
    assert g.quests[b1.quest].data.desc.distributor_config_name == "fake"


def test_walk_result_size_budget(graph: Graph) -> None:
    h, ids = graph.h, graph.ids
    c1, b1 = ids["C1"], ids["B1"]
    c_obj, b_obj = '{"c":"see"}', '{"b":2}'
    req = walk_req(c1)
    req.include.attempt.result = True
    req.limit.max_data_size = 5
    att = attempt_msg(h.service.walk_graph(req, TRUSTED), c1)
    assert att.partial.result == DATA_SIZE_LIMIT
    assert att.data.finished.data.object == ""
    assert att.data.finished.data.size == len(c_obj)
    req.limit.max_data_size = len(c_obj)  # exactly enough
    att = attempt_msg(h.service.walk_graph(req, TRUSTED), c1)
    assert att.data.finished.data.object == c_obj
    assert att.partial.result != DATA_SIZE_LIMIT
    # Room for one of the two: the first loaded gets in, the second is cut.
    req = walk_req(b1, c1)
    req.include.attempt.result = True
    req.limit.max_data_size = len(c_obj) + len(b_obj) - 1
    g = h.service.walk_graph(req, TRUSTED)
    got = {n: attempt_msg(g, ids[n]) for n in ("B1", "C1")}
    loaded = [n for n, a in got.items() if a.data.finished.data.object]
    cut = [n for n, a in got.items() if a.partial.result == DATA_SIZE_LIMIT]
    assert len(loaded) == 1 and len(cut) == 1 and set(loaded) | set(cut) == {"B1", "C1"}
    assert got[cut[0]].data.finished.data.size > 0


def test_walk_execution_results_count_against_the_budget(graph: Graph) -> None:
    h, c1 = graph.h, graph.ids["C1"]
    req = walk_req(c1)
    req.include.num_executions = 1
    req.include.execution.result = True
    req.limit.max_data_size = 3  # less than the execution's result {"n":"c"}
    ex = attempt_msg(h.service.walk_graph(req, TRUSTED), c1).executions[1]
    assert ex.data.finished.data.object == ""
    assert ex.data.finished.data.size == len('{"n":"c"}')
    assert ex.partial.result == DATA_SIZE_LIMIT


def test_walk_time_budget(graph: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    h, ids = graph.h, graph.ids
    req = walk_req(ids["A1"], depth=-1)
    req.limit.max_time.seconds = 2
    g = h.service.walk_graph(req, TRUSTED)
    assert not g.had_more and graph.walked(g) == {"A1", "B1", "C1"}

    now = [h.clock()]

    def ticking() -> int:
        now[0] += 1_000_000  # every look at the clock costs a second
        return now[0]

    monkeypatch.setattr(h.engine, "clock", ticking)
    g = h.service.walk_graph(req, TRUSTED)
    assert g.had_more
    assert not g.had_errors
    walked = graph.walked(g)
    assert "A1" in walked and "C1" not in walked
    # Unset / over 55 s means 55 s: a walk of three nodes still fits.
    req.limit.ClearField("max_time")
    g = h.service.walk_graph(req, TRUSTED)
    assert not g.had_more and graph.walked(g) == {"A1", "B1", "C1"}


def test_walk_time_budget_bounds_a_wide_attempt_range(
    graph: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt range is walked lazily: a budget that runs out after a few attempts
    stops the walk before the rest of the range costs time or memory."""
    h, ids = graph.h, graph.ids
    d = ids["D1"].quest
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_range.add(quest=d, low=1, high=100_001)
    req.include.attempt.data = True
    req.limit.max_time.seconds = 3
    now = [h.clock()]

    def ticking() -> int:
        now[0] += 1_000_000  # every look at the clock costs a second
        return now[0]

    monkeypatch.setattr(h.engine, "clock", ticking)
    tracemalloc.start()
    try:
        g = h.service.walk_graph(req, TRUSTED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert g.had_more and not g.had_errors
    assert 0 < len(g.quests[d].attempts) < 10
    assert peak < 2 * 1024 * 1024  # a range expanded up front takes tens of MiB


def test_ensure_graph_data_answers_with_the_direct_dependencies(graph: Graph) -> None:
    """Spec §2.1 / §3.2: the answer holds the named attempts and their direct
    dependencies (an internal walk of depth 1), for users and executions alike."""
    h, ids = graph.h, graph.ids
    req = deps_req(ids["A1"])
    rsp = h.service.ensure_graph_data(req, TRUSTED)
    assert graph.walked(rsp.result) == {"A1", "B1"}  # A|1 -> B|1, not B|1 -> C|1
    assert attempt_msg(rsp.result, ids["B1"]).data.finished.data.object == '{"b":2}'

    rsp = declare(h, ids["E1"].execution(1), graph.e_token, ids["B1"])
    assert not rsp.should_halt
    assert graph.walked(rsp.result) == {"B1", "C1"}
    assert attempt_msg(rsp.result, ids["C1"]).data.finished.data.object == '{"c":"see"}'


def test_walk_execution_caller_result_visibility(graph: Graph) -> None:
    """§3.5: an execution sees results of attempts it depends on (or walked to from itself)."""
    h, ids = graph.h, graph.ids
    b1, c1, d1, e1 = ids["B1"], ids["C1"], ids["D1"], ids["E1"]

    def walk(*aids: AttemptID, depth: int = 0) -> dm_pb2.GraphData:
        req = walk_req(*aids, depth=depth)
        req.auth.CopyFrom(graph.e_auth)
        req.include.attempt.result = True
        req.include.num_executions = 1
        req.include.execution.result = True
        return h.service.walk_graph(req, Caller.anonymous())

    # From B (a FwdDep of E): B visible; C reached through B only, not from E.
    g = walk(b1, d1, depth=1)
    b = attempt_msg(g, b1)
    assert b.data.finished.data.object == '{"b":2}'
    assert b.partial.result != NOT_AUTHORIZED
    assert json.loads(b.executions[1].data.finished.data.object) == {"n": "B1"}
    for hidden in (c1, d1):
        att = attempt_msg(g, hidden)
        assert att.partial.result == NOT_AUTHORIZED
        assert att.data.finished.data.object == ""
        assert att.data.finished.data.size > 0  # the size is kept
        ex = att.executions[1]
        assert ex.data.finished.data.object == ""
        assert ex.partial.result == NOT_AUTHORIZED
    # From E itself: everything reached forwards is visible.
    g = walk(e1, depth=-1)
    assert attempt_msg(g, c1).data.finished.data.object == '{"c":"see"}'
    assert attempt_msg(g, b1).data.finished.data.object == '{"b":2}'
    # A non-execution reader sees everything.
    req = walk_req(b1, d1, depth=1)
    req.include.attempt.result = True
    g = h.service.walk_graph(req, TRUSTED)
    assert attempt_msg(g, c1).data.finished.data.object == '{"c":"see"}'
    assert attempt_msg(g, d1).data.finished.data.object == '{"d":1}'


# -- F. CancelAttempt ----------------------------------------------------------------------------


def _cancel_req(aid: AttemptID, reason: str = "") -> dm_pb2.CancelAttemptReq:
    return dm_pb2.CancelAttemptReq(attempt=aid.to_proto(), reason=reason)


def test_cancel_waiting_attempt_unblocks_dependers(h: Harness) -> None:
    x, a, b = quest_desc("X"), quest_desc("A"), quest_desc("B")
    start(h, x)
    x1, a1, b1 = aid_of(x), aid_of(a), aid_of(b)
    tx = activate(h, x1.execution(1))
    assert declare(h, x1.execution(1), tx, a1, quests=(a,)).should_halt
    end(h, x1.execution(1))
    ta = activate(h, a1.execution(1))
    assert declare(h, a1.execution(1), ta, b1, quests=(b,)).should_halt
    end(h, a1.execution(1))
    assert h.state(x1) == AttemptState.WAITING
    assert h.state(a1) == AttemptState.WAITING

    h.service.cancel_attempt(_cancel_req(a1, "no longer needed"), TRUSTED)
    h.settle()
    att = h.attempt(a1)
    assert att["state"] == AttemptState.ABNORMAL_FINISHED
    assert att["abnormal"] == {"status": AbnormalStatus.CANCELLED, "reason": "no longer needed"}
    assert h.state(x1) == AttemptState.EXECUTING  # unblocked
    assert h.attempt(x1)["cur_execution"] == 2
    assert h.state(b1) == AttemptState.EXECUTING  # not touched
    tx2 = activate(h, x1.execution(2))
    rsp = declare(h, x1.execution(2), tx2, a1)
    assert not rsp.should_halt
    ab = attempt_msg(rsp.result, a1).data.abnormal_finish
    assert ab.status == dm_pb2.AbnormalFinish.CANCELLED and ab.reason == "no longer needed"
    # B finishing later does not revive the cancelled attempt.
    complete(h, b1, {"b": 1})
    assert h.state(a1) == AttemptState.ABNORMAL_FINISHED
    assert h.attempt(a1)["cur_execution"] == 1


def test_cancel_executing_attempt_cancels_the_task(h: Harness) -> None:
    a, w = quest_desc("A", failed=3, crashed=3, timed_out=3, expired=3), quest_desc("W")
    start(h, w)
    w1, a1 = aid_of(w), aid_of(a)
    tw = activate(h, w1.execution(1))
    assert declare(h, w1.execution(1), tw, a1, quests=(a,)).should_halt
    end(h, w1.execution(1))
    eid = a1.execution(1)
    token = activate(h, eid)

    h.service.cancel_attempt(_cancel_req(a1), Caller("alice", True, True))
    task = h.world.task(eid)
    assert task.result is not None
    assert task.result.abnormal_finish.status == dm_pb2.AbnormalFinish.CANCELLED
    h.settle()
    att = h.attempt(a1)
    assert att["state"] == AttemptState.ABNORMAL_FINISHED
    assert att["abnormal"]["status"] == AbnormalStatus.CANCELLED
    assert "alice" in att["abnormal"]["reason"]
    assert att["cur_execution"] == 1  # not retried
    assert h.exec_state(eid) == ExecutionState.ABNORMAL_FINISHED
    assert docs.timer_of(h.attempt(eid.attempt_id), eid) is None
    assert eid not in h.world.pending()
    assert h.state(w1) == AttemptState.EXECUTING  # the depender was unblocked
    assert h.world.pending() == [w1.execution(2)]
    # The job, still running somewhere, can no longer report a result.
    rejected(h, PermissionDenied, "", lambda: finish(h, eid, token, {"late": True}))


def test_cancel_executing_before_activation(h: Harness) -> None:
    a = quest_desc("A", failed=3)
    start(h, a)
    a1 = aid_of(a)
    h.service.cancel_attempt(_cancel_req(a1, "stop"), TRUSTED)
    h.settle()
    assert h.state(a1) == AttemptState.ABNORMAL_FINISHED
    assert h.world.pending() == []
    rejected(h, PermissionDenied, "", lambda: activate(h, a1.execution(1)))


def test_cancel_finished_attempt_is_a_no_op(h: Harness) -> None:
    a, x = quest_desc("A"), quest_desc("X")
    start(h, a, x)
    a1, x1 = aid_of(a), aid_of(x)
    complete(h, a1, {"a": 1})
    fail(h, x1.execution(1))
    for aid in (a1, x1):
        before = snapshot(h)
        h.service.cancel_attempt(_cancel_req(aid), TRUSTED)
        h.settle()
        assert snapshot(h) == before
    assert h.state(a1) == AttemptState.FINISHED
    assert h.result(a1) == {"a": 1}
    assert h.attempt(x1)["abnormal"]["status"] == AbnormalStatus.FAILED


def test_cancel_when_the_distributor_cannot_cancel_yet(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cancel(self: FakeDistributor, desc: dm_pb2.Quest.Desc, token: str) -> None:
        raise dist.TransientError("try later")

    monkeypatch.setattr(FakeDistributor, "cancel", cancel)
    err = rejected(live.h, Unavailable, "try later", lambda: _cancel(live, _cancel_req(live.a1)))
    assert err.code == Code.UNAVAILABLE
    assert live.h.state(live.a1) == AttemptState.EXECUTING


def test_cancel_when_the_distributor_refuses_still_cancels(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-transient D.cancel error does not make the attempt uncancellable: the
    execution ends CANCELLED, the error logged and kept in its reason."""
    refused: list[str] = []

    def cancel(self: FakeDistributor, desc: dm_pb2.Quest.Desc, token: str) -> None:
        refused.append(token)
        raise ValueError("no such task on the distributor")

    monkeypatch.setattr(FakeDistributor, "cancel", cancel)
    a = quest_desc("A", failed=3)
    start(h, a)
    a1 = aid_of(a)
    activate(h, a1.execution(1))
    h.service.cancel_attempt(_cancel_req(a1, "enough"), TRUSTED)
    h.settle()
    assert refused == [h.world.token_of(a1.execution(1))]
    att = h.attempt(a1)
    assert att["state"] == AttemptState.ABNORMAL_FINISHED
    assert att["abnormal"]["status"] == AbnormalStatus.CANCELLED
    assert att["abnormal"]["reason"].startswith("enough")
    assert "no such task on the distributor" in att["abnormal"]["reason"]
    ex = h.execution(a1.execution(1))
    assert ex["abnormal"] == att["abnormal"]
    assert att["cur_execution"] == 1  # CANCELLED is not retried


def _cancel_inside_run(h: Harness, monkeypatch: pytest.MonkeyPatch, aid: AttemptID) -> None:
    """Make D.run cancel ``aid`` first: the cancel lands between RunExecution's read
    and the task's start, so the execution ends before it has a token."""
    real_run = FakeDistributor.run

    def racing(
        self: FakeDistributor,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        h.service.cancel_attempt(_cancel_req(aid, "raced"), TRUSTED)
        return real_run(self, desc, auth, prev_result)

    monkeypatch.setattr(FakeDistributor, "run", racing)


def test_cancel_racing_the_run_still_cancels_the_distributors_task(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel between RunExecution's read and D.run ends the execution before it has
    a token; the token recorded afterwards must be cancelled on the distributor."""
    a = quest_desc("A", failed=3)
    a1 = aid_of(a)
    _cancel_inside_run(h, monkeypatch, a1)
    start(h, a)
    h.settle()
    eid = a1.execution(1)
    assert h.state(a1) == AttemptState.ABNORMAL_FINISHED
    assert h.attempt(a1)["abnormal"]["status"] == AbnormalStatus.CANCELLED
    assert h.execution(eid)["dist_token"] == h.world.token_of(eid)
    task = h.world.task(eid)
    assert task.result is not None, "the distributor's task was left running"
    assert task.result.abnormal_finish.status == dm_pb2.AbnormalFinish.CANCELLED
    assert h.world.pending() == []


def test_cancel_of_a_raced_run_retried_for_the_outage_window_then_given_up(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/behaviour.md (Cancellation): the task of a run that a cancel raced is
    cancelled by a queued CancelTask; a distributor answering "try later" is asked
    again through the queue for the outage window, then dm gives up (logged)."""
    window_s = 600
    h.engine.settings.run_retry_window_us = window_s * 1_000_000
    a = quest_desc("A", failed=3)
    a1 = aid_of(a)
    _cancel_inside_run(h, monkeypatch, a1)
    tries: list[int] = []

    def busy(self: FakeDistributor, desc: dm_pb2.Quest.Desc, token: str) -> None:
        tries.append(h.clock())
        raise dist.TransientError("try later")

    monkeypatch.setattr(FakeDistributor, "cancel", busy)
    start(h, a)
    h.settle(max_seconds=6 * 3600)
    assert h.attempt(a1)["abnormal"]["status"] == AbnormalStatus.CANCELLED
    assert len(tries) >= 3  # retried through the queue
    assert tries[-1] - tries[0] >= window_s * 1_000_000  # for the window
    assert tries[-1] - tries[0] < 2 * window_s * 1_000_000  # then given up
    assert h.next_due_us() is None  # nothing left queued
