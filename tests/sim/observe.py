"""What the simulation looks at after (and during) a run.

Two views, so that the invariants outlive a change of dm's data layout:

* :class:`Observed`: the graph as the dm.Deps API shows it to a trusted reader
  (one WalkGraph over every attempt of the quests named). Layout-free: most
  invariants are stated on this and on what the fake distributor saw.
* :class:`Internals`: the few engine records the API does not show (back edges
  propagated, a completion recorded, work left armed, the expiry mark, which
  execution wrote a result). This is the only place the simulation reads dm's
  documents: a change of layout (issue 11: execution data on the attempt,
  timers and polls as fields, no back-edge groups) is adapted here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from dmcore.engine import docs
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller, Service
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState
from dmcore.store.base import Store, Transaction
from tests.harness import follow_ups_left

_ATTEMPT_STATES = {
    "scheduling": AttemptState.SCHEDULING,
    "executing": AttemptState.EXECUTING,
    "waiting": AttemptState.WAITING,
    "finished": AttemptState.FINISHED,
    "abnormal_finish": AttemptState.ABNORMAL_FINISHED,
}
_EXECUTION_STATES = {
    "scheduling": ExecutionState.SCHEDULING,
    "running": ExecutionState.RUNNING,
    "stopping": ExecutionState.STOPPING,
    "finished": ExecutionState.FINISHED,
    "abnormal_finish": ExecutionState.ABNORMAL_FINISHED,
}


@dataclasses.dataclass(frozen=True)
class ExecutionView:
    """One execution as the API shows it."""

    num: int
    state: ExecutionState
    status: AbnormalStatus | None  # set when ABNORMAL_FINISHED
    reason: str
    token: str  # the distributor's token dm recorded ("" if none)
    result: str  # the distributor's result object (FINISHED)
    modified_us: int  # when it last changed (when it ended, for an ended one)


@dataclasses.dataclass(frozen=True)
class AttemptView:
    """One attempt as the API shows it."""

    aid: AttemptID
    state: AttemptState
    status: AbnormalStatus | None
    reason: str
    num_executions: int
    result: str  # the attempt's result object ("" unless FINISHED and not expired)
    result_size: int
    expiration_us: int | None
    expired: bool
    modified_us: int
    executions: dict[int, ExecutionView]
    fwd: frozenset[AttemptID]
    back: frozenset[AttemptID]

    @property
    def terminal(self) -> bool:
        return self.state in (AttemptState.FINISHED, AttemptState.ABNORMAL_FINISHED)


def _walk_all(
    service: Service, quests: Iterable[str], *, abnormal: bool = True
) -> dm_pb2.GraphData:
    req = dm_pb2.WalkGraphReq()
    for q in quests:
        req.query.attempt_list.to[q].SetInParent()  # every attempt of the quest
    req.limit.max_depth = 0
    req.limit.max_data_size = 30 * 1024 * 1024
    inc = req.include
    inc.attempt.ids = inc.attempt.data = inc.attempt.result = True
    inc.attempt.abnormal = abnormal
    inc.attempt.expired = True
    inc.execution.ids = inc.execution.data = inc.execution.result = True
    inc.execution.abnormal = inc.execution.expired = True
    inc.num_executions = 100_000
    inc.fwd_deps = inc.back_deps = True
    return service.walk_graph(req, Caller.trusted())


def _attempt_list(al: dm_pb2.AttemptList) -> frozenset[AttemptID]:
    return frozenset(AttemptID(q, n) for q, nums in al.to.items() for n in nums.nums)


def _execution(num: int, e: dm_pb2.Execution) -> ExecutionView:
    kind = e.data.WhichOneof("execution_type")
    ab = e.data.abnormal_finish
    return ExecutionView(
        num=num,
        state=_EXECUTION_STATES[str(kind)],
        status=AbnormalStatus(int(ab.status)) if kind == "abnormal_finish" else None,
        reason=ab.reason if kind == "abnormal_finish" else "",
        token=e.data.distributor_info.token,
        result=e.data.finished.data.object if kind == "finished" else "",
        modified_us=e.data.modified.ToMicroseconds(),
    )


def _attempt(aid: AttemptID, a: dm_pb2.Attempt) -> AttemptView:
    kind = a.data.WhichOneof("attempt_type")
    ab = a.data.abnormal_finish
    fin = a.data.finished.data
    return AttemptView(
        aid=aid,
        state=_ATTEMPT_STATES[str(kind)],
        status=AbnormalStatus(int(ab.status)) if kind == "abnormal_finish" else None,
        reason=ab.reason if kind == "abnormal_finish" else "",
        num_executions=int(a.data.num_executions),
        result=fin.object if kind == "finished" else "",
        result_size=int(fin.size) if kind == "finished" else 0,
        expiration_us=fin.expiration.ToMicroseconds() if fin.HasField("expiration") else None,
        expired=bool(a.data.expired),
        modified_us=a.data.modified.ToMicroseconds(),
        executions={int(n): _execution(int(n), e) for n, e in a.executions.items()},
        fwd=_attempt_list(a.fwd_deps),
        back=_attempt_list(a.back_deps),
    )


class Observed:
    """Every attempt of ``quests`` as the API shows it (WalkGraph, trusted reader)."""

    def __init__(self, service: Service, quests: Iterable[str]) -> None:
        qs = sorted(set(quests))
        graph = _walk_all(service, qs)
        self.attempts: dict[AttemptID, AttemptView] = {
            AttemptID(q, int(n)): _attempt(AttemptID(q, int(n)), a)
            for q, quest in graph.quests.items()
            for n, a in quest.attempts.items()
            if not a.DNE
        }
        # Without include.attempt.abnormal, the attempts dm flags abnormal are left
        # out of a quest's listing (W-7: exactly the ABNORMAL_FINISHED ones).
        shown = _walk_all(service, qs, abnormal=False)
        visible = {
            AttemptID(q, int(n))
            for q, quest in shown.quests.items()
            for n, a in quest.attempts.items()
            if not a.DNE and a.HasField("data")
        }
        self.flagged_abnormal: set[AttemptID] = set(self.attempts) - visible


def _walk_one(service: Service, aid: AttemptID) -> dm_pb2.Attempt:
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[aid.quest].nums.append(aid.num)
    inc = req.include
    inc.attempt.data = inc.attempt.abnormal = inc.attempt.expired = True
    inc.execution.data = inc.execution.abnormal = inc.execution.expired = True
    inc.num_executions = 100_000
    return service.walk_graph(req, Caller.trusted()).quests[aid.quest].attempts[aid.num]


def look(service: Service, eid: ExecutionID) -> ExecutionView | None:
    """Execution ``eid`` as the API shows it now (None if it does not exist)."""
    att = _walk_one(service, eid.attempt_id)
    if eid.num not in att.executions:
        return None
    return _execution(eid.num, att.executions[eid.num])


def attempt_now(service: Service, aid: AttemptID) -> AttemptView | None:
    """Attempt ``aid`` as the API shows it now (None if it does not exist)."""
    att = _walk_one(service, aid)
    return None if att.DNE else _attempt(aid, att)


class Internals:
    """dm's own records the API does not show; the one place that knows the layout."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def result_writer(self, aid: AttemptID) -> int | None:
        """The execution that wrote ``aid``'s result (None: no result)."""
        doc = docs.read_result(self.store, aid)
        return None if doc is None else int(doc["execution"])

    def reopens(self, aid: AttemptID) -> list[tuple[int, int]]:
        """Each re-open of the attempt (dm retry): (after which execution, when)."""
        doc = self.store.get(docs.attempt_path(aid))
        return [
            (int(r["after_execution"]), int(r["at_us"])) for r in (doc or {}).get("reopened", [])
        ]

    def reopened_after(self, aid: AttemptID) -> set[int]:
        """The executions after which the attempt was re-opened (dm retry)."""
        return {after for after, _ in self.reopens(aid)}

    def marked_expired(self, aid: AttemptID) -> bool:
        """Whether dm has marked the attempt's result expired (not just due)."""
        doc = self.store.get(docs.attempt_path(aid))
        return bool(doc and doc.get("is_expired"))

    def edge_satisfied(self, depender: AttemptID, dependee: AttemptID) -> bool | None:
        """The forward edge's "satisfied" mark (None: no forward edge)."""
        doc = self.store.get(docs.fwd_dep_path(depender, dependee))
        return None if doc is None else bool(doc["satisfied"])

    def back_edge_propagated(self, dependee: AttemptID, depender: AttemptID) -> bool | None:
        """Whether the dependee's completion reached this back edge (None: no back edge)."""
        doc = self.store.get(docs.back_dep_path(dependee, depender))
        if doc is not None:
            return bool(doc["propagated"])
        # Inline on the dependee: no mark of its own (its forward edge tells).
        att = self.store.get(docs.attempt_path(dependee)) or {}
        return True if depender.encoded in att.get(docs.DEPENDERS, []) else None

    def completion_recorded(self, aid: AttemptID) -> bool:
        """Whether the end of ``aid`` reached every back edge recorded under it
        (none left unpropagated; no back edge: nothing to reach)."""
        return not self.store.query(docs.back_deps_collection(aid), {"propagated": False}, limit=1)

    def claim(self, aid: AttemptID) -> dict[str, Any] | None:
        """The claim of a declaration in parts under way on ``aid`` (None: none)."""
        doc = self.store.get(docs.attempt_path(aid)) or {}
        claim = doc.get(docs.DECLARING)
        return dict(claim) if claim else None

    def open_edges(self, aid: AttemptID, execution: int) -> int:
        """Edges of ``aid``'s execution ``execution`` not satisfied yet (diagnostics)."""
        return len(
            self.store.query(
                docs.fwd_deps_collection(aid), {"for_execution": execution, "satisfied": False}
            )
        )

    def leftovers(self, now_us: int) -> list[str]:
        """Work dm left armed: outbox records, timers, polls, and expiries due by now."""
        out = [f"outbox record left: {p}" for p, _ in self.store.query(docs.OUTBOX)]
        out += [
            f"follow-ups left pending: {p}"
            for p, d in self.store.query(docs.ATTEMPTS, order_by=docs.PENDING_DUE)
            if int(d[docs.PENDING_DUE]) <= now_us
        ]
        out += [
            f"timer left armed: {p}"
            for p, _ in self.store.query(docs.ATTEMPTS, order_by=docs.TIMER_DUE)
        ]
        out += [
            f"poll left scheduled: {p}"
            for p, _ in self.store.query(docs.ATTEMPTS, order_by=docs.POLL_DUE)
        ]
        out += [
            f"expiry due but not applied: {p}"
            for p, d in self.store.query(docs.ATTEMPTS, order_by=docs.EXPIRY_DUE)
            if int(d[docs.EXPIRY_DUE]) <= now_us
        ]
        return out

    def pending_outbox(self, now_us: int | None = None) -> bool:
        """Outbox records left, or (``now_us`` given) follow-ups pending on an attempt
        that are due to be re-sent by then."""
        if self.store.query(docs.OUTBOX, limit=1):
            return True
        if now_us is None:
            return False
        return follow_ups_left(self.store, now_us)

    def _armed(self) -> list[int]:
        """Due times of everything armed that the sweep fires (timers, polls, expiries)."""
        return [
            int(d[field])
            for field in (docs.TIMER_DUE, docs.POLL_DUE, docs.EXPIRY_DUE)
            for _, d in self.store.query(docs.ATTEMPTS, order_by=field)
        ]

    def next_armed_us(self, now_us: int) -> int | None:
        """When the next armed timer, poll or expiry falls due after ``now_us`` (a timely
        sweep fires it then, also those too far ahead to be queued as delayed tasks)."""
        return min((t for t in self._armed() if t > now_us), default=None)

    def due_armed(self, now_us: int) -> bool:
        """Whether something armed is due by ``now_us`` (not fired yet, or its task not run)."""
        return any(t <= now_us for t in self._armed())

    # -- planting faults for the checker's own test --------------------------------------

    def tamper(
        self, *, drop_back_edge: tuple[AttemptID, AttemptID], wrong_result: AttemptID
    ) -> None:
        """Delete a back edge, add 1 to a result's value, plant an outbox record."""
        import json

        dependee, depender = drop_back_edge
        apath = docs.attempt_path(wrong_result)
        att = self.store.get(apath)
        result = docs.read_result(self.store, wrong_result, att)
        assert att is not None and result is not None
        obj = json.loads(result["object"])
        obj["v"] += 1
        text = json.dumps(obj, separators=(",", ":"))

        def fn(tx: Transaction) -> None:
            tx.delete(docs.back_dep_path(dependee, depender))
            dee_path = docs.attempt_path(dependee)
            dee = self.store.get(dee_path) if dee_path != apath else att
            if dee is not None and depender.encoded in dee.get(docs.DEPENDERS, []):
                # Inline on the dependee: dropped there.
                dee[docs.DEPENDERS] = [d for d in dee[docs.DEPENDERS] if d != depender.encoded]
                if dee_path != apath:
                    tx.set(dee_path, dee)
            if result is att["result"]:  # inline on the attempt
                tx.set(apath, {**att, "result": {**result, "object": text}})
            else:
                tx.set(docs.result_path(wrong_result), {**result, "object": text})
            tx.set(docs.outbox_path("planted"), {"tasks": [], "created_us": 0})

        self.store.transaction(fn)
