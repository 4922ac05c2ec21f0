"""Reading and writing dm's records, shared by the steps' behaviour modules.

Tokens are stored hashed; states change only through the transition tables
(:mod:`dmcore.states`); an execution's single timer and its poll record are
armed and disarmed here, so every step does it the same way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from dmcore import distributor as dist
from dmcore.engine import docs, steps
from dmcore.engine.base import Ctx, Later, Step
from dmcore.engine.steps import expiry_later, poll_later, timer_later
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.states import (
    AbnormalStatus,
    AttemptState,
    ExecutionState,
    check_attempt_transition,
    check_execution_transition,
    is_terminal_attempt,
)

US = 1_000_000

TIMER_QUEUE_HORIZON_US = 3600 * US
"""Timers due within this are queued as delayed tasks when armed; later ones
(the 12 h STOPPING hedge, long run timeouts) only by the sweep once due: they
usually end disarmed, a queued task for each would outlive its execution, and
Cloud Tasks refuses schedule times more than 30 days ahead. The sweep runs
every minute or so, which is precision enough for a deadline an hour away."""


# -- tokens and encodings ---------------------------------------------------------------


def token_hash(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


def token_matches(doc: Mapping[str, Any], token: bytes) -> bool:
    return hmac.compare_digest(str(doc.get("token_hash", "")), token_hash(token))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def duration_us(d: Any) -> int:
    return int(d.seconds) * US + int(d.nanos) // 1000


# -- states and results -----------------------------------------------------------------


def set_attempt_state(doc: docs.Doc, to: AttemptState, now_us: int) -> None:
    check_attempt_transition(AttemptState(doc["state"]), to)
    doc["state"] = int(to)
    docs.bump_modified(doc, now_us)


def set_execution_state(doc: docs.Doc, to: ExecutionState, now_us: int) -> None:
    check_execution_transition(ExecutionState(doc["state"]), to)
    doc["state"] = int(to)
    docs.bump_modified(doc, now_us)


def result_doc_from_proto(r: dm_pb2.Result) -> dict[str, Any]:
    """A distributor Result as stored in a mutation payload / execution doc."""
    if r.HasField("abnormal_finish"):
        return {
            "abnormal": {
                "status": int(r.abnormal_finish.status),
                "reason": r.abnormal_finish.reason,
            }
        }
    data: dict[str, Any] = {"object": r.data.object, "size": r.data.size}
    if r.data.HasField("expiration"):
        data["expiration_us"] = r.data.expiration.ToMicroseconds()
    return {"data": data}


def abnormal(status: AbnormalStatus, reason: str) -> dict[str, Any]:
    return {"abnormal": {"status": int(status), "reason": reason}}


def json_result(d: Mapping[str, Any] | None) -> dm_pb2.JsonResult | None:
    if not d:
        return None
    r = dm_pb2.JsonResult(object=str(d.get("object", "")), size=int(d.get("size", 0)))
    if d.get("expiration_us") is not None:
        ts = timestamp_pb2.Timestamp()
        ts.FromMicroseconds(int(d["expiration_us"]))
        r.expiration.CopyFrom(ts)
    return r


def load_current(ctx: Ctx, eid: ExecutionID) -> tuple[docs.Doc | None, docs.Doc | None]:
    """The attempt and execution docs (either may be None); one read when ``eid`` is
    the current execution (it lives on its attempt), two for an archived one."""
    att = ctx.uow.get(docs.attempt_path(eid.attempt_id))
    return att, docs.read_execution(ctx.uow, eid, att) if att is not None else None


def put_execution(ctx: Ctx, eid: ExecutionID, ex: docs.Doc) -> None:
    """Write execution ``ex`` where it lives: its attempt's document if it is the
    current one (as :func:`load_current` returned it), else its archived record."""
    apath = docs.attempt_path(eid.attempt_id)
    att = ctx.uow.get(apath)
    if att is not None and att.get(docs.CURRENT) is ex:
        ctx.uow.put(apath, att)
    else:
        ctx.uow.put(docs.execution_path(eid), ex)


def verify_running(
    ctx: Ctx, eid: ExecutionID, token: bytes, err: type[Exception]
) -> tuple[docs.Doc, docs.Doc]:
    """Check "current execution, attempt EXECUTING, execution RUNNING, token matches"."""
    att, ex = load_current(ctx, eid)
    if (
        att is None
        or ex is None
        or att["state"] != AttemptState.EXECUTING
        or att["cur_execution"] != eid.num
        or ex["state"] != ExecutionState.RUNNING
        or ex.get("token_state") != "execution"
        or not token_matches(ex, token)
    ):
        raise err("bad execution auth")
    return att, ex


def result_expired(data: Mapping[str, Any] | None, now_us: int) -> bool:
    """Whether a stored result (attempt summary or execution data) has expired at ``now_us``."""
    due = (data or {}).get("expiration_us")
    return due is not None and int(due) <= now_us


def attempt_expired(att: Mapping[str, Any], now_us: int) -> bool:
    """Whether attempt ``att`` is expired: marked so, or finished with a result due
    to expire by ``now_us`` (reads agree from that moment on, before the sweep marks it)."""
    if att.get("is_expired"):
        return True
    return att["state"] == AttemptState.FINISHED and result_expired(att.get("result"), now_us)


def execution_expired(ex: Mapping[str, Any], now_us: int) -> bool:
    """Whether execution ``ex`` finished with a distributor result that has expired."""
    return ex["state"] == ExecutionState.FINISHED and result_expired(
        (ex.get("result") or {}).get("data"), now_us
    )


def arm_expiry(ctx: Ctx, aid: AttemptID, att: docs.Doc) -> list[Step | Later]:
    """``att`` has just FINISHED: mark it expired now if its result already is, else
    record when it will be (the sweep, or a delayed task if soon, marks it then)."""
    due = (att.get("result") or {}).get("expiration_us")
    if due is None:
        return []
    if int(due) <= ctx.now_us:
        att["is_expired"] = True
        return []
    record = {"aid": aid.encoded, "due_us": int(due)}
    att[docs.EXPIRY_DUE] = int(due)  # the caller writes att
    if int(due) - ctx.now_us > TIMER_QUEUE_HORIZON_US:
        return []  # Engine.sweep reads the expiries
    return [expiry_later(record)]


def completion_follow_ups(ctx: Ctx, aid: AttemptID) -> list[Step | Later]:
    """What the end of attempt ``aid`` (in this transaction) does for its dependers.

    Nothing when no depender ever declared an edge on it (the attempt's
    ``docs.DEPENDED`` flag, read with the attempt: a leaf pays no read and no
    task). Else its propagation, run in this very transaction (``together``): it
    queries the attempt's unpropagated back edges and acks them, so a dependee
    with a few dependers pays no task either. An AddBackDep racing this
    transaction reads the attempt, so it either sees it terminal and acks its
    own edge, or it flagged the attempt and wrote its back edge first, and this
    transaction, retried, sees both (Firestore's transactions are serializable,
    queries included: tests/test_store_firestore.py).
    """
    att = ctx.uow.get(docs.attempt_path(aid))
    if att is not None and att.get(docs.DEPENDED) is False:
        return []
    return [Later(steps.PropagateCompletion(aid=aid.encoded), together=True)]


def attempt_is_terminal(doc: Mapping[str, Any] | None) -> bool:
    return doc is not None and is_terminal_attempt(AttemptState(doc["state"]))


def open_deps(ctx: Ctx, aid: AttemptID, execution: int, limit: int | None) -> int:
    """Open edges of ``aid``'s execution (up to ``limit``): counted, not read (an ack's
    "is another one open?" costs one read on Firestore, not one per edge found)."""
    where = {"for_execution": execution, "satisfied": False}
    return ctx.uow.count(docs.fwd_deps_collection(aid), where, limit)


# -- the execution's timer and poll ----------------------------------------------------


def arm_timer(
    ctx: Ctx, eid: ExecutionID, ex: docs.Doc, state: ExecutionState, after_us: int
) -> list[Step | Later]:
    """Arm the execution's single timer (``after_us`` <= 0 disarms it); ``ex`` is written.

    The timer is a field of the attempt, which holds the current execution:
    arming costs no write of its own. An archived execution has ended: no timer.
    """
    put_execution(ctx, eid, ex)
    att = ctx.uow.get(docs.attempt_path(eid.attempt_id))
    if after_us <= 0 or att is None or att.get(docs.CURRENT) is not ex:
        disarm_timer(ctx, eid, ex)
        return []
    deadline = ctx.now_us + after_us
    timer = {"eid": str(eid), "state": int(state), "deadline_us": deadline, "polls": 0}
    set_timer(att, timer)
    if after_us > TIMER_QUEUE_HORIZON_US:
        return []  # the sweep fires it when due (Engine.sweep reads the timers)
    return [timer_later(timer)]


def set_timer(att: docs.Doc, timer: docs.Doc) -> None:
    """(Re)arm ``timer`` on attempt ``att`` (the caller writes ``att``)."""
    att["timer"] = timer
    att[docs.TIMER_DUE] = int(timer["deadline_us"])


def disarm_timer(ctx: Ctx, eid: ExecutionID, ex: docs.Doc) -> None:
    """Remove execution ``eid``'s timer from its attempt, if armed (the attempt is
    written then: it is, anyway, by every step that disarms)."""
    _disarm(ctx, eid, "timer", docs.TIMER_DUE)


def disarm_poll(ctx: Ctx, eid: ExecutionID, ex: docs.Doc) -> None:
    """Remove execution ``eid``'s poll from its attempt, if scheduled (as timers)."""
    _disarm(ctx, eid, "poll", docs.POLL_DUE)


def _disarm(ctx: Ctx, eid: ExecutionID, field: str, due: str) -> None:
    apath = docs.attempt_path(eid.attempt_id)
    att = ctx.uow.get(apath)
    armed = (att or {}).get(field)
    if att is not None and armed is not None and armed["eid"] == str(eid):
        del att[field]
        att.pop(due, None)
        ctx.uow.put(apath, att)


def arm_stop_timer(ctx: Ctx, eid: ExecutionID, ex: docs.Doc) -> list[Step | Later]:
    """The execution has just gone STOPPING: note when, and arm the stop timer.

    The time is kept because the poll timeout may only become known later:
    ``D.run`` runs outside any transaction, so a fast job can stop before its
    run is recorded; :func:`rearm_stop_at_run` then sets the phase.
    """
    ex["stopping_us"] = ctx.now_us
    return arm_timer(ctx, eid, ex, ExecutionState.STOPPING, stop_timeout_us(ex))


def rearm_stop_at_run(ctx: Ctx, eid: ExecutionID, ex: docs.Doc) -> list[Step | Later]:
    """The run is recorded after the execution stopped: its stop phase, counted from
    when it stopped, lasts the poll timeout run gave (spec §4.5, longer or shorter
    than the stop timeout), else the stop timeout. Unless a poll was made already,
    the stop timer is set to that: one that fell due before the run was recorded
    had nothing to ask and was put off a re-poll interval (timers.timer_fired),
    while the phase may be over by now."""
    if ex["state"] != ExecutionState.STOPPING:
        return []
    timer = docs.timer_of(ctx.uow.get(docs.attempt_path(eid.attempt_id)), eid)
    if timer is None or timer["state"] != ExecutionState.STOPPING or int(timer["polls"]) > 0:
        return []
    due = int(ex.get("stopping_us", ctx.now_us)) + stop_timeout_us(ex)
    if due == int(timer["deadline_us"]):
        return []
    return arm_timer(ctx, eid, ex, ExecutionState.STOPPING, max(1, due - ctx.now_us))


def stop_timeout_us(ex: Mapping[str, Any]) -> int:
    poll = int(ex.get("poll_timeout_us", 0))
    if poll > 0:
        return poll
    stop = int(ex["timeouts"]["stop"])
    return stop if stop > 0 else int(dist.DEFAULT_STOP_HEDGE.total_seconds() * US)


def schedule_poll(
    ctx: Ctx, eid: ExecutionID, poll: Mapping[str, Any], due_us: int
) -> list[Step | Later]:
    """(Re)schedule the execution's poll (on its attempt) and queue it at ``due_us``."""
    apath = docs.attempt_path(eid.attempt_id)
    att = ctx.uow.get(apath)
    if att is None or docs.current_execution(att, eid) is None:
        return []  # an archived execution has ended: nothing to poll
    doc = {**poll, "due_us": due_us}
    att["poll"] = doc
    att[docs.POLL_DUE] = due_us
    ctx.uow.put(apath, att)
    return [poll_later(doc)]
