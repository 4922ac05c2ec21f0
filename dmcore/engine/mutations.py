"""dm's mutations (spec §7.2) and actions, with DESIGN.md §3's deliberate changes.

State guards make every step idempotent; a step delivered twice, or a stale
follow-up delivered after the state moved on, changes nothing.

Differences from DM, on purpose:
* ``D.run`` is called by the :class:`RunExecution` action outside any
  transaction; :class:`RecordRun` stores the token afterwards (W-8).
* Fan-in without a hot document: an edge is satisfied on its own FwdDep record
  (:class:`AckFwdDep`); :class:`CheckDeps` decides "all done" on the attempt.
* Terminal-abnormal dependencies unblock their dependers (W-1).
* Unknown distributor config -> REJECTED (W-9); STOPPING gets a 12 h hedge
  when no stop or poll timeout is set (W-10); the config is snapshotted on
  the execution (W-11); polled results are normalised (W-13).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from dmcore import distributor as dist
from dmcore import jsonnorm
from dmcore.engine import docs
from dmcore.engine.core import Action, Ctx, Engine, Later, Mutation, Step, task_name
from dmcore.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.states import (
    AbnormalStatus,
    AttemptState,
    ExecutionState,
    check_attempt_transition,
    check_execution_transition,
    is_retryable,
    is_terminal_attempt,
    is_terminal_execution,
)

log = logging.getLogger("dm.engine")

RETRY_FIELDS = {
    AbnormalStatus.FAILED: "failed",
    AbnormalStatus.CRASHED: "crashed",
    AbnormalStatus.EXPIRED: "expired",
    AbnormalStatus.TIMED_OUT: "timed_out",
}
PROPAGATE_BATCH = 64
US = 1_000_000

TIMER_QUEUE_HORIZON_US = 3600 * US
"""Timers due within this are queued as delayed tasks when armed; later ones
(the 12 h STOPPING hedge, long run timeouts) only by the sweep once due: they
usually end disarmed, a queued task for each would outlive its execution, and
Cloud Tasks refuses schedule times more than 30 days ahead. The sweep runs
every minute or so, which is precision enough for a deadline an hour away."""


# -- small helpers ----------------------------------------------------------------


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


def arm_timer(
    ctx: Ctx, eid: ExecutionID, ex: docs.Doc, state: ExecutionState, after_us: int
) -> list[Step | Later]:
    """Arm the execution's single timer (``after_us`` <= 0 disarms it); ``ex`` is written."""
    path = docs.timer_path(eid)
    ctx.uow.put(docs.execution_path(eid), ex)
    if after_us <= 0:
        disarm_timer(ctx, eid, ex)
        return []
    ex["timer_armed"] = True
    deadline = ctx.now_us + after_us
    timer = {"eid": str(eid), "state": int(state), "deadline_us": deadline, "polls": 0}
    ctx.uow.put(path, timer)
    if after_us > TIMER_QUEUE_HORIZON_US:
        return []  # the sweep fires it when due (Engine.sweep reads the timers)
    return [timer_later(timer)]


def disarm_timer(ctx: Ctx, eid: ExecutionID, ex: docs.Doc) -> None:
    """Delete the execution's timer record, unless ``ex`` says there is none.

    Executions note whether a timer (and a poll) record may exist, so that the
    usual case, none, costs no delete (a billed write on Firestore). Older
    execution records without the note get the delete.
    """
    if ex.get("timer_armed", True):
        ctx.uow.delete(docs.timer_path(eid))
        ex["timer_armed"] = False


def disarm_poll(ctx: Ctx, eid: ExecutionID, ex: docs.Doc) -> None:
    """Delete the execution's poll record, unless ``ex`` says there is none (as timers)."""
    if ex.get("poll_armed", True):
        ctx.uow.delete(docs.poll_path(eid))
        ex["poll_armed"] = False


def timer_later(timer: Mapping[str, Any]) -> Later:
    step, name = timer_step(timer)
    return Later(step, eta_us=int(timer["deadline_us"]), name=name)


def timer_step(timer: Mapping[str, Any]) -> tuple[Step, str]:
    """The task that fires ``timer`` and its name (shared by arming and the sweep)."""
    step = TimeoutExecution(
        eid=str(timer["eid"]), state=int(timer["state"]), deadline_us=int(timer["deadline_us"])
    )
    name = task_name("timer", step.eid, str(step.state), str(step.deadline_us))
    return step, name


def stop_timeout_us(ex: Mapping[str, Any]) -> int:
    poll = int(ex.get("poll_timeout_us", 0))
    if poll > 0:
        return poll
    stop = int(ex["timeouts"]["stop"])
    return stop if stop > 0 else int(dist.DEFAULT_STOP_HEDGE.total_seconds() * US)


def load_current(ctx: Ctx, eid: ExecutionID) -> tuple[docs.Doc | None, docs.Doc | None]:
    """The attempt and execution docs (either may be None)."""
    got = ctx.uow.get_many([docs.attempt_path(eid.attempt_id), docs.execution_path(eid)])
    return got[docs.attempt_path(eid.attempt_id)], got[docs.execution_path(eid)]


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


# -- quests and attempts --------------------------------------------------------------


@dataclasses.dataclass
class MergeQuest(Mutation):
    """Create the quest if absent (merge ``built_by``), then run ``and_then``."""

    KIND = "MergeQuest"
    qid: str
    desc_b64: str
    and_then: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def root(self) -> str:
        return docs.quest_path(self.qid)

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        path = docs.quest_path(self.qid)
        if ctx.uow.get(path) is None:
            ctx.uow.create(path, {"desc": self.desc_b64, "built_by": [], "created": ctx.now_us})
        return [Step.from_payload(p) for p in self.and_then]


@dataclasses.dataclass
class EnsureAttempt(Mutation):
    """Create attempt ``aid`` (SCHEDULING) if absent and schedule its first execution."""

    KIND = "EnsureAttempt"
    aid: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        aid = AttemptID.decode(self.aid)
        path = docs.attempt_path(aid)
        if ctx.uow.get(path) is not None:
            return []
        ctx.uow.create(
            path,
            {
                "quest": aid.quest,
                "num": aid.num,
                "state": int(AttemptState.SCHEDULING),
                "created": ctx.now_us,
                "modified": ctx.now_us,
                "cur_execution": 0,
                "last_ok_execution": 0,
                "deps_execution": 0,
                "retry": {"failed": 0, "crashed": 0, "expired": 0, "timed_out": 0},
                "is_abnormal": False,
                "is_expired": False,
                "result": None,
                "abnormal": None,
            },
        )
        return [ScheduleExecution(aid=self.aid)]


@dataclasses.dataclass
class ScheduleExecution(Mutation):
    """SCHEDULING attempt -> EXECUTING with a new execution; D.run follows outside."""

    KIND = "ScheduleExecution"
    aid: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        aid = AttemptID.decode(self.aid)
        att = ctx.uow.get(docs.attempt_path(aid))
        if att is None or att["state"] != AttemptState.SCHEDULING:
            return []
        quest_doc = ctx.uow.get(docs.quest_path(aid.quest))
        desc = ctx.engine.quest_desc(aid.quest, quest_doc)
        if desc is None:
            raise FailedPrecondition(f"quest {aid.quest} of attempt {aid} is missing")
        snap: dist.Snapshot | None
        try:
            snap = ctx.engine.registry.snapshot(desc.distributor_config_name)
            reject = ""
        except dist.UnknownConfig as e:
            snap, reject = None, str(e)

        num = int(att["cur_execution"]) + 1
        set_attempt_state(att, AttemptState.EXECUTING, ctx.now_us)
        att["cur_execution"] = num
        att["deps_execution"] = 0
        ctx.uow.put(docs.attempt_path(aid), att)

        activation = ctx.engine.rand(32)
        t = desc.meta.timeouts
        eid = aid.execution(num)
        ctx.uow.create(
            docs.execution_path(eid),
            {
                "num": num,
                "state": int(ExecutionState.SCHEDULING),
                "created": ctx.now_us,
                "modified": ctx.now_us,
                "config": snap.to_doc() if snap else None,
                "token_hash": token_hash(activation),
                "token_state": "activation",
                "dist_token": "",
                "poll_timeout_us": 0,
                "timer_armed": False,
                "poll_armed": False,
                "run_at_us": 0,
                "timeouts": {
                    "start": duration_us(t.start),
                    "run": duration_us(t.run),
                    "stop": duration_us(t.stop),
                },
                "result": None,
                "abnormal": None,
                "is_abnormal": False,
            },
        )
        if snap is None:
            return [
                FinishExecution(
                    eid=str(eid),
                    result=abnormal(
                        AbnormalStatus.REJECTED, f"rejected during scheduling: {reject}"
                    ),
                )
            ]
        return [RunExecution(eid=str(eid), activation_b64=b64(activation))]


@dataclasses.dataclass
class RunExecution(Action):
    """Call D.run for a new execution, outside any transaction (W-8)."""

    KIND = "RunExecution"
    eid: str
    activation_b64: str

    def execute(self, engine: Engine, delivery: int) -> None:
        eid = ExecutionID.parse(self.eid)
        got = engine.store.get_many([docs.attempt_path(eid.attempt_id), docs.execution_path(eid)])
        att, ex = got[docs.attempt_path(eid.attempt_id)], got[docs.execution_path(eid)]
        if (
            att is None
            or ex is None
            or ex["dist_token"]
            or is_terminal_execution(ExecutionState(ex["state"]))
        ):
            return
        if att["cur_execution"] != eid.num:
            return
        desc = engine.quest_desc(eid.quest)
        assert desc is not None
        prev = None
        if att["last_ok_execution"]:
            prev_ex = engine.store.get(
                docs.execution_path(eid.attempt_id.execution(att["last_ok_execution"]))
            )
            if prev_ex is not None:
                prev = json_result((prev_ex.get("result") or {}).get("data"))
        auth = dm_pb2.Execution.Auth(id=eid.to_proto(), token=unb64(self.activation_b64))
        try:
            d, _ = engine.registry.build(dist.Snapshot.from_doc(ex["config"]))
            started = d.run(desc, auth, prev)
        except dist.TransientError as e:
            if delivery < dist.RUN_TRANSIENT_RETRIES:
                raise
            reason = f"rejected after {delivery} transient errors, last: {e}"
            engine.run(
                FinishExecution(eid=self.eid, result=abnormal(AbnormalStatus.REJECTED, reason))
            )
            return
        except Exception as e:  # a non-transient error from run: REJECTED, never retried
            reason = f"rejected during scheduling with non-transient error: {e}"
            engine.run(
                FinishExecution(eid=self.eid, result=abnormal(AbnormalStatus.REJECTED, reason))
            )
            return
        poll_us = int(started.poll_timeout.total_seconds() * US)
        interval_us = int(started.poll_interval.total_seconds() * US)
        engine.run(
            RecordRun(
                eid=self.eid,
                dist_token=started.token,
                poll_timeout_us=poll_us,
                poll_interval_us=interval_us,
            )
        )


@dataclasses.dataclass
class RecordRun(Mutation):
    """Store the distributor's token; arm the start timer."""

    KIND = "RecordRun"
    eid: str
    dist_token: str
    poll_timeout_us: int
    poll_interval_us: int = 0

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        eid = ExecutionID.parse(self.eid)
        _, ex = load_current(ctx, eid)
        if ex is None or ex["dist_token"]:
            return []  # a duplicate run: only the first token counts
        ex["dist_token"] = self.dist_token
        ex["poll_timeout_us"] = max(0, self.poll_timeout_us)
        ex["run_at_us"] = ctx.now_us
        ctx.uow.put(docs.execution_path(eid), ex)
        out: list[Step | Later] = []
        if self.poll_interval_us > 0 and not is_terminal_execution(ExecutionState(ex["state"])):
            poll = {"eid": self.eid, "interval_us": self.poll_interval_us}
            ex["poll_armed"] = True
            out += schedule_poll(ctx, eid, poll, ctx.now_us + self.poll_interval_us)
        if ex["state"] == ExecutionState.SCHEDULING:
            out += arm_timer(ctx, eid, ex, ExecutionState.SCHEDULING, ex["timeouts"]["start"])
        return out


def schedule_poll(
    ctx: Ctx, eid: ExecutionID, poll: Mapping[str, Any], due_us: int
) -> list[Step | Later]:
    """(Re)write the execution's poll record and queue the poll at ``due_us``."""
    doc = {**poll, "due_us": due_us}
    ctx.uow.put(docs.poll_path(eid), doc)
    return [poll_later(doc)]


def poll_later(poll: Mapping[str, Any]) -> Later:
    step = PollExecution(eid=str(poll["eid"]), due_us=int(poll["due_us"]))
    return Later(step, eta_us=step.due_us, name=task_name("poll", step.eid, str(step.due_us)))


@dataclasses.dataclass
class PollExecution(Action):
    """Ask the distributor how a scheduled or running execution is doing."""

    KIND = "PollExecution"
    eid: str
    due_us: int

    def execute(self, engine: Engine, delivery: int) -> None:
        eid = ExecutionID.parse(self.eid)
        got = engine.store.get_many([docs.poll_path(eid), docs.execution_path(eid)])
        poll, ex = got[docs.poll_path(eid)], got[docs.execution_path(eid)]
        if poll is None or poll["due_us"] != self.due_us:
            return  # a newer poll is scheduled, or polling ended
        step = PollDone(eid=self.eid, due_us=self.due_us)
        if ex is not None and ex["state"] in (ExecutionState.SCHEDULING, ExecutionState.RUNNING):
            res: dm_pb2.Result | None = None
            try:
                d, _ = engine.registry.build(dist.Snapshot.from_doc(ex["config"]))
                desc = engine.quest_desc(eid.quest)
                assert desc is not None
                res = d.get_status(desc, ex["dist_token"])
            except dist.TransientError as e:
                log.warning("polling %s failed (transient): %s; polling again later", eid, e)
            except Exception as e:  # non-transient: MISSING once 30 s have passed since run
                grace = int(dist.GET_STATUS_GRACE.total_seconds() * US)
                if ex["run_at_us"] and engine.clock() - int(ex["run_at_us"]) > grace:
                    res = dm_pb2.Result(
                        abnormal_finish=dm_pb2.AbnormalFinish(
                            status=dm_pb2.AbnormalFinish.MISSING, reason=f"get_status: {e}"
                        )
                    )
                else:
                    log.warning("polling %s failed within 30 s of run: %s", eid, e)
            if res is not None:
                step.result = result_doc_from_proto(res)
            else:
                step.again = True
        engine.run(step)


@dataclasses.dataclass
class PollDone(Mutation):
    """Apply a poll: end the execution, poll again later, or stop polling."""

    KIND = "PollDone"
    eid: str
    due_us: int
    result: dict[str, Any] | None = None
    again: bool = False

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        eid = ExecutionID.parse(self.eid)
        path = docs.poll_path(eid)
        poll = ctx.uow.get(path)
        if poll is None or poll["due_us"] != self.due_us:
            return []
        if self.result is not None:
            return [FinishExecution(eid=self.eid, result=self.result)]
        if self.again:
            return schedule_poll(ctx, eid, poll, ctx.now_us + int(poll["interval_us"]))
        ctx.uow.delete(path)
        return []


# -- the execution's own calls (synchronous RPC mutations) ---------------------------------


@dataclasses.dataclass
class ActivateExecution(Mutation):
    """SCHEDULING -> RUNNING, swapping the activation token for the execution's own."""

    KIND = "ActivateExecution"
    eid: str
    activation_b64: str
    execution_token_b64: str

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        eid = ExecutionID.parse(self.eid)
        att, ex = load_current(ctx, eid)
        denied = PermissionDenied("failed to activate execution: bad or stale auth")
        if (
            att is None
            or ex is None
            or att["state"] != AttemptState.EXECUTING
            or att["cur_execution"] != eid.num
        ):
            raise denied
        new_token = unb64(self.execution_token_b64)
        if ex["state"] == ExecutionState.SCHEDULING and ex["token_state"] == "activation":
            if not token_matches(ex, unb64(self.activation_b64)):
                raise denied
            set_execution_state(ex, ExecutionState.RUNNING, ctx.now_us)
            ex["token_hash"] = token_hash(new_token)
            ex["token_state"] = "execution"
        elif not (
            ex["state"] == ExecutionState.RUNNING
            and ex["token_state"] == "execution"
            and token_matches(ex, new_token)
        ):
            raise denied
        ctx.uow.put(docs.execution_path(eid), ex)
        return arm_timer(ctx, eid, ex, ExecutionState.RUNNING, ex["timeouts"]["run"])


@dataclasses.dataclass
class FinishAttempt(Mutation):
    """Record the attempt's result; the execution goes STOPPING until its distributor confirms."""

    KIND = "FinishAttempt"
    eid: str
    token_b64: str
    object: str
    size: int
    expiration_us: int | None = None

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        eid = ExecutionID.parse(self.eid)
        token = unb64(self.token_b64)
        att, ex = load_current(ctx, eid)
        rpath = docs.result_path(eid.attempt_id)
        if (
            att is not None
            and ex is not None
            and att["cur_execution"] == eid.num
            and ex.get("token_state") == "revoked"
            and token_matches(ex, token)
        ):
            # A retry after a lost response: the same result is fine (W-6).
            prior = ctx.uow.get(rpath)
            if (
                prior is not None
                and prior["object"] == self.object
                and prior.get("execution") == eid.num
            ):
                return []
            raise PermissionDenied("bad execution auth: the attempt already has a result or halted")
        att, ex = verify_running(ctx, eid, token, PermissionDenied)
        set_execution_state(ex, ExecutionState.STOPPING, ctx.now_us)
        ex["token_state"] = "revoked"
        ctx.uow.put(docs.execution_path(eid), ex)
        doc: dict[str, Any] = {"object": self.object, "size": self.size, "execution": eid.num}
        summary: dict[str, Any] = {"size": self.size}
        if self.expiration_us is not None:
            doc["expiration_us"] = summary["expiration_us"] = self.expiration_us
        ctx.uow.put(rpath, doc)
        att["result"] = summary
        docs.bump_modified(att, ctx.now_us)
        ctx.uow.put(docs.attempt_path(eid.attempt_id), att)
        return arm_timer(ctx, eid, ex, ExecutionState.STOPPING, stop_timeout_us(ex))


@dataclasses.dataclass
class DeclareDeps(Mutation):
    """An execution's dependencies (EnsureGraphData with for_execution, spec §2.1).

    ``deps`` are encoded dependee attempt IDs; ``terminal`` those the caller
    saw finished (FINISHED or ABNORMAL_FINISHED); ``new_quests`` maps quest ID
    -> desc (base64 wire) for quests to create; ``new_attempts`` attempts to
    create. Sets ``halted`` (and keeps the execution RUNNING when False).
    """

    KIND = "DeclareDeps"
    eid: str
    token_b64: str
    deps: list[str]
    terminal: list[str]
    new_quests: dict[str, str]
    new_attempts: list[str]
    halted: bool = False

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        eid = ExecutionID.parse(self.eid)
        me = eid.attempt_id
        token = unb64(self.token_b64)
        self.halted = False
        dependees = [AttemptID.decode(d) for d in self.deps]
        paths = [docs.fwd_dep_path(me, d) for d in dependees]

        att, ex = load_current(ctx, eid)
        if (
            att is not None
            and ex is not None
            and att["cur_execution"] == eid.num
            and ex.get("token_state") == "revoked"
            and att.get("deps_execution") == eid.num
            and token_matches(ex, token)
        ):
            # A retry of the halting call after a lost response (W-6).
            edges = ctx.uow.get_many(paths)
            finished = set(self.terminal)
            if all(
                e is not None
                and (e["satisfied"] or e["for_execution"] == eid.num or d.encoded in finished)
                for d, e in zip(dependees, (edges[p] for p in paths), strict=True)
            ):
                self.halted = True
                return []
        att, ex = verify_running(ctx, eid, token, Unauthenticated)

        edges = ctx.uow.get_many(paths)
        terminal = set(self.terminal)
        open_edges = [
            d
            for d, p in zip(dependees, paths, strict=True)
            if d.encoded not in terminal and not bool((edges[p] or {}).get("satisfied"))
        ]
        follow: list[Step | Later] = []
        halt = bool(open_edges)
        for d, p in zip(dependees, paths, strict=True):
            e = edges[p]
            done = d.encoded in terminal or (e is not None and bool(e["satisfied"]))
            if e is not None and (e["satisfied"] or (e["for_execution"] == eid.num and not done)):
                continue  # recorded already (and satisfied, or armed for this execution)
            if e is not None and done:
                # The dependee ended before its completion reached this edge:
                # mark it now (its back edge exists and will ack harmlessly).
                ctx.uow.put(p, {**e, "for_execution": eid.num, "satisfied": True})
                continue
            ctx.uow.put(
                p,
                {"quest": d.quest, "num": d.num, "for_execution": eid.num, "satisfied": done},
            )
            follow.append(AddBackDep(dependee=d.encoded, depender=me.encoded, needs_ack=not done))

        # Create what is missing first: quest, then attempts, then the back edges.
        ensure = [EnsureAttempt(aid=a).to_payload() for a in self.new_attempts]
        chained: list[Step | Later] = []
        by_quest: dict[str, list[dict[str, Any]]] = {q: [] for q in self.new_quests}
        for a in ensure:
            q = AttemptID.decode(a["aid"]).quest
            if q in by_quest:
                by_quest[q].append(a)
            else:
                chained.append(Step.from_payload(a))
        for step in follow:
            assert isinstance(step, AddBackDep)
            q = AttemptID.decode(step.dependee).quest
            if q in by_quest:
                by_quest[q].append(step.to_payload())
            else:
                chained.append(step)
        for q, then in by_quest.items():
            chained.insert(0, MergeQuest(qid=q, desc_b64=self.new_quests[q], and_then=then))

        if halt:
            set_execution_state(ex, ExecutionState.STOPPING, ctx.now_us)
            ex["token_state"] = "revoked"
            ctx.uow.put(docs.execution_path(eid), ex)
            att["deps_execution"] = eid.num
            docs.bump_modified(att, ctx.now_us)
            ctx.uow.put(docs.attempt_path(me), att)
            chained += arm_timer(ctx, eid, ex, ExecutionState.STOPPING, stop_timeout_us(ex))
            self.halted = True
        return chained


# -- dependency edges ------------------------------------------------------------------------


@dataclasses.dataclass
class AddBackDep(Mutation):
    """Record the reverse edge on the dependee's group; ack at once if it already ended."""

    KIND = "AddBackDep"
    dependee: str
    depender: str
    needs_ack: bool

    def root(self) -> str:
        return f"{docs.BACK_DEP_GROUPS}/{self.dependee}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        dependee, depender = AttemptID.decode(self.dependee), AttemptID.decode(self.depender)
        gpath = docs.back_dep_group_path(dependee)
        bpath = docs.back_dep_path(dependee, depender)
        got = ctx.uow.get_many([gpath, bpath])
        group, back = got[gpath], got[bpath]
        if group is None:
            group = {"attempt_finished": False}
            ctx.uow.create(gpath, group)  # only created, never rewritten here (no hot document)
        finished = bool(group["attempt_finished"])
        if back is None or (finished and not back["propagated"]):
            ctx.uow.put(bpath, {"propagated": finished, "created": ctx.now_us})
        if self.needs_ack and finished:
            return [AckFwdDep(depender=self.depender, dependee=self.dependee)]
        return []


@dataclasses.dataclass
class RecordCompletion(Mutation):
    """Mark attempt ``aid`` terminal on its group, then propagate to dependers."""

    KIND = "RecordCompletion"
    aid: str

    def root(self) -> str:
        return f"{docs.BACK_DEP_GROUPS}/{self.aid}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        gpath = docs.back_dep_group_path(AttemptID.decode(self.aid))
        group = ctx.uow.get(gpath)
        if group is not None and group["attempt_finished"]:
            return []
        ctx.uow.put(gpath, {"attempt_finished": True})
        # In a later transaction, so AddBackDeps that read the group before this
        # write either committed first (and are seen) or retry and see it.
        return [PropagateCompletion(aid=self.aid)]


@dataclasses.dataclass
class PropagateCompletion(Mutation):
    """Ack up to 64 unpropagated back edges per step, chaining until none are left."""

    KIND = "PropagateCompletion"
    aid: str

    def root(self) -> str:
        return f"{docs.BACK_DEP_GROUPS}/{self.aid}#propagate"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        dependee = AttemptID.decode(self.aid)
        rows = ctx.uow.query(
            docs.back_deps_collection(dependee), {"propagated": False}, limit=PROPAGATE_BATCH
        )
        out: list[Step | Later] = []
        for path, doc in rows:
            ctx.uow.put(path, {**doc, "propagated": True})
            out.append(AckFwdDep(depender=docs.last_id(path), dependee=self.aid))
        if len(rows) == PROPAGATE_BATCH:
            out.append(PropagateCompletion(aid=self.aid))
        return out


@dataclasses.dataclass
class AckFwdDep(Mutation):
    """Mark one edge satisfied on its own record, then check the depender."""

    KIND = "AckFwdDep"
    depender: str
    dependee: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.depender}/fwd_deps/{self.dependee}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        path = self.root()
        edge = ctx.uow.get(path)
        if edge is None or edge["satisfied"]:
            return []
        ctx.uow.put(path, {**edge, "satisfied": True})
        return [CheckDeps(aid=self.depender, execution=int(edge["for_execution"]))]


@dataclasses.dataclass
class CheckDeps(Mutation):
    """WAITING -> SCHEDULING once no edge of the execution that halted is open."""

    KIND = "CheckDeps"
    aid: str
    execution: int

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        aid = AttemptID.decode(self.aid)
        att = ctx.uow.get(docs.attempt_path(aid))
        if (
            att is None
            or att["state"] != AttemptState.WAITING
            or att["cur_execution"] != self.execution
        ):
            return []
        if open_deps(ctx, aid, self.execution, 1):
            return []
        set_attempt_state(att, AttemptState.SCHEDULING, ctx.now_us)
        att["deps_execution"] = 0
        ctx.uow.put(docs.attempt_path(aid), att)
        return [ScheduleExecution(aid=self.aid)]


def open_deps(ctx: Ctx, aid: AttemptID, execution: int, limit: int | None) -> int:
    rows = ctx.uow.query(
        docs.fwd_deps_collection(aid), {"for_execution": execution, "satisfied": False}, limit=limit
    )
    return len(rows)


# -- ending executions -------------------------------------------------------------------------


@dataclasses.dataclass
class FinishExecution(Mutation):
    """The only way an execution ends (spec §4.6), with the retry policy (§1.8)."""

    KIND = "FinishExecution"
    eid: str
    result: dict[str, Any]

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        eid = ExecutionID.parse(self.eid)
        aid = eid.attempt_id
        att, ex = load_current(ctx, eid)
        if (
            att is None
            or ex is None
            or att["state"] != AttemptState.EXECUTING
            or att["cur_execution"] != eid.num
            or is_terminal_execution(ExecutionState(ex["state"]))
        ):
            return []  # duplicate or stale report
        result = dict(self.result)
        if "abnormal" not in result:
            data = dict(result.get("data") or {})
            try:
                data["object"], data["size"] = jsonnorm.normalize_result(
                    str(data.get("object", ""))
                )
                result = {"data": data}
            except jsonnorm.JsonError as e:
                result = abnormal(
                    AbnormalStatus.RESULT_MALFORMED, f"distributor result malformed: {e}"
                )
        if "abnormal" not in result and ex["state"] != ExecutionState.STOPPING:
            state = ExecutionState(ex["state"]).name
            result = abnormal(
                AbnormalStatus.FAILED,
                f"distributor finished execution while it was in the {state} state.",
            )
        disarm_timer(ctx, eid, ex)
        disarm_poll(ctx, eid, ex)
        out: list[Step | Later] = []
        if "abnormal" in result:
            ex["abnormal"] = result["abnormal"]
            ex["is_abnormal"] = True
            set_execution_state(ex, ExecutionState.ABNORMAL_FINISHED, ctx.now_us)
            status = AbnormalStatus(result["abnormal"]["status"])
            field = RETRY_FIELDS.get(status)
            retry = False
            if field is not None and is_retryable(status):
                quest = ctx.engine.quest_desc(aid.quest, ctx.uow.get(docs.quest_path(aid.quest)))
                limit = getattr(quest.meta.retry, field) if quest is not None else 0
                cur = int(att["retry"][field])
                att["retry"][field] = cur + 1
                retry = cur < limit
            if retry:
                set_attempt_state(att, AttemptState.SCHEDULING, ctx.now_us)
                att["deps_execution"] = 0
                out.append(ScheduleExecution(aid=aid.encoded))
            else:
                set_attempt_state(att, AttemptState.ABNORMAL_FINISHED, ctx.now_us)
                att["abnormal"] = result["abnormal"]
                att["is_abnormal"] = True
                out.append(RecordCompletion(aid=aid.encoded))
        else:
            ex["result"] = result
            set_execution_state(ex, ExecutionState.FINISHED, ctx.now_us)
            att["last_ok_execution"] = eid.num
            att["retry"] = {k: 0 for k in att["retry"]}
            if att.get("deps_execution") == eid.num:
                if open_deps(ctx, aid, eid.num, 1):
                    set_attempt_state(att, AttemptState.WAITING, ctx.now_us)
                else:
                    set_attempt_state(att, AttemptState.SCHEDULING, ctx.now_us)
                    att["deps_execution"] = 0
                    out.append(ScheduleExecution(aid=aid.encoded))
            else:
                set_attempt_state(att, AttemptState.FINISHED, ctx.now_us)
                out.append(RecordCompletion(aid=aid.encoded))
        ctx.uow.put(docs.execution_path(eid), ex)
        ctx.uow.put(docs.attempt_path(aid), att)
        return out


@dataclasses.dataclass
class CancelWaiting(Mutation):
    """Cancel an attempt with no live execution (SCHEDULING or WAITING)."""

    KIND = "CancelWaiting"
    aid: str
    reason: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        aid = AttemptID.decode(self.aid)
        att = ctx.uow.get(docs.attempt_path(aid))
        if att is None or att["state"] not in (AttemptState.SCHEDULING, AttemptState.WAITING):
            return []
        set_attempt_state(att, AttemptState.ABNORMAL_FINISHED, ctx.now_us)
        att["abnormal"] = {"status": int(AbnormalStatus.CANCELLED), "reason": self.reason}
        att["is_abnormal"] = True
        ctx.uow.put(docs.attempt_path(aid), att)
        return [RecordCompletion(aid=self.aid)]


# -- timers ---------------------------------------------------------------------------------


@dataclasses.dataclass
class TimerFired(Mutation):
    """Apply a timer's outcome if the timer is still the armed one.

    ``result`` ends the execution; otherwise the STOPPING poll is re-armed
    ``STOPPING_REPOLL_INTERVAL`` later with one more poll counted.
    """

    KIND = "TimerFired"
    eid: str
    state: int
    deadline_us: int
    result: dict[str, Any] | None = None

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        eid = ExecutionID.parse(self.eid)
        tpath = docs.timer_path(eid)
        timer = ctx.uow.get(tpath)
        if (
            timer is None
            or timer["state"] != self.state
            or timer["deadline_us"] != self.deadline_us
        ):
            return []
        if self.result is not None:
            return [FinishExecution(eid=self.eid, result=self.result)]
        interval = int(dist.STOPPING_REPOLL_INTERVAL.total_seconds() * US)
        nxt = {
            **timer,
            "deadline_us": self.deadline_us + interval,
            "polls": int(timer["polls"]) + 1,
        }
        ctx.uow.put(tpath, nxt)
        return [timer_later(nxt)]


@dataclasses.dataclass
class TimeoutExecution(Action):
    """A timer is due: time the execution out, or (STOPPING) poll get_status first."""

    KIND = "TimeoutExecution"
    eid: str
    state: int
    deadline_us: int

    def execute(self, engine: Engine, delivery: int) -> None:
        eid = ExecutionID.parse(self.eid)
        got = engine.store.get_many([docs.timer_path(eid), docs.execution_path(eid)])
        timer, ex = got[docs.timer_path(eid)], got[docs.execution_path(eid)]
        if (
            timer is None
            or ex is None
            or timer["state"] != self.state
            or timer["deadline_us"] != self.deadline_us
        ):
            return
        if ex["state"] != self.state:
            return
        state = ExecutionState(self.state)
        fired = TimerFired(eid=self.eid, state=self.state, deadline_us=self.deadline_us)
        if state != ExecutionState.STOPPING:
            fired.result = abnormal(AbnormalStatus.TIMED_OUT, f"DM timeout ({state.name})")
            engine.run(fired)
            return
        error = ""
        try:
            if not ex["dist_token"]:
                raise dist.TransientError("no distributor token recorded")
            d, _ = engine.registry.build(dist.Snapshot.from_doc(ex["config"]))
            desc = engine.quest_desc(eid.quest)
            assert desc is not None
            res = d.get_status(desc, ex["dist_token"])
            if res is not None:
                fired.result = result_doc_from_proto(res)
        except dist.TransientError as e:
            error = str(e) or type(e).__name__
        except Exception as e:  # non-transient: MISSING once 30 s have passed since run
            error = str(e) or type(e).__name__
            grace = int(dist.GET_STATUS_GRACE.total_seconds() * US)
            if ex["run_at_us"] and engine.clock() - int(ex["run_at_us"]) > grace:
                fired.result = abnormal(AbnormalStatus.MISSING, f"get_status: {error}")
        if fired.result is None and int(timer["polls"]) >= dist.STOPPING_REPOLLS:
            reason = "DM timeout (STOPPING)" + (f" w/ error: {error}" if error else "")
            fired.result = abnormal(AbnormalStatus.TIMED_OUT, reason)
        engine.run(fired)


# -- notifications and distributor tasks ---------------------------------------------------------


@dataclasses.dataclass
class NotifyExecution(Action):
    """Let the execution's distributor interpret a notification; end the execution if it says so."""

    KIND = "NotifyExecution"
    eid: str
    data_b64: str
    attrs: dict[str, str]
    config_name: str = ""

    def execute(self, engine: Engine, delivery: int) -> None:
        eid = ExecutionID.parse(self.eid)
        ex = engine.store.get(docs.execution_path(eid))
        if ex is None:
            log.warning("notification for unknown execution %s dropped", eid)
            return
        if is_terminal_execution(ExecutionState(ex["state"])) or not ex.get("config"):
            return
        if self.config_name and ex["config"]["name"] != self.config_name:
            log.warning("notification for %s from foreign config %r dropped", eid, self.config_name)
            return
        d, _ = engine.registry.build(dist.Snapshot.from_doc(ex["config"]))
        desc = engine.quest_desc(eid.quest)
        assert desc is not None
        note = dist.Notification(eid, unb64(self.data_b64), dict(self.attrs))
        res = d.handle_notification(desc, note)
        if res is not None:
            engine.run(FinishExecution(eid=self.eid, result=result_doc_from_proto(res)))


@dataclasses.dataclass
class HandleDistributorTask(Action):
    """A task a distributor queued for itself (Config.enqueue_task)."""

    KIND = "HandleDistributorTask"
    config_name: str
    body_b64: str

    def execute(self, engine: Engine, delivery: int) -> None:
        try:
            d, _ = engine.registry.build_named(self.config_name)
        except dist.UnknownConfig:
            log.error("task for unknown distributor config %r dropped", self.config_name)
            return
        notes = d.handle_task_queue_task(dist.TaskRequest(unb64(self.body_b64)))
        if engine.publish is not None:
            # Through the notification topic, as any external distributor reports. A
            # failure fails the task: redelivered, jobsim (and any distributor
            # following the contract) hands the same notifications back.
            for n in notes:
                engine.publish(
                    n.data, engine.notification_attrs(self.config_name, n.execution_id, n.attrs)
                )
            return
        for n in notes:
            step = NotifyExecution(
                eid=str(n.execution_id), data_b64=b64(n.data), attrs=dict(n.attrs)
            )
            try:
                step.execute(engine, 1)
            except Exception:
                # Keep the notification: queue it to be retried on its own.
                log.exception("notification for %s failed; queued for retry", n.execution_id)
                engine.enqueue(step)


def attempt_is_terminal(doc: Mapping[str, Any] | None) -> bool:
    return doc is not None and is_terminal_attempt(AttemptState(doc["state"]))
