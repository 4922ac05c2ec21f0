"""Quests, attempts and an execution's life (spec §4.6, §7.2), with DESIGN.md §3's changes.

An attempt is created SCHEDULING and gets an execution; ``D.run`` is called
by :func:`run_execution` outside any transaction, by one delivery at a time
(:func:`claim_run`), and :func:`record_run` stores the token afterwards (W-8);
transient errors are retried with capped backoff for an outage window
(:func:`run_failed`; docs/behaviour.md, "Distributor outages"). The execution
activates, finishes its attempt (STOPPING until the distributor confirms) and
ends through :func:`finish_execution`, the only way an execution ends, which
applies the retry policy (§1.8). State guards make every step idempotent: a duplicate, or
a stale follow-up delivered after the state moved on, changes nothing.

Differences from DM, on purpose: unknown distributor config -> REJECTED
(W-9); the config is snapshotted on the execution (W-11); results are
normalised (W-13).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from dmcore import distributor as dist
from dmcore import jsonnorm
from dmcore.engine import docs, steps
from dmcore.engine.base import Ctx, Later, Step, executes, rolls_forward, task_name
from dmcore.engine.core import Engine
from dmcore.engine.records import (
    US,
    abnormal,
    arm_expiry,
    arm_stop_timer,
    arm_timer,
    attempt_is_terminal,
    b64,
    completion_follow_ups,
    disarm_poll,
    disarm_timer,
    duration_us,
    json_result,
    load_current,
    open_deps,
    put_execution,
    rearm_stop_at_run,
    schedule_poll,
    set_attempt_state,
    set_execution_state,
    token_hash,
    token_matches,
    unb64,
    verify_running,
)
from dmcore.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.states import (
    AbnormalStatus,
    AttemptState,
    ExecutionState,
    is_retryable,
    is_terminal_execution,
)

log = logging.getLogger("dm.engine")

RETRY_FIELDS = {
    AbnormalStatus.FAILED: "failed",
    AbnormalStatus.CRASHED: "crashed",
    AbnormalStatus.EXPIRED: "expired",
    AbnormalStatus.TIMED_OUT: "timed_out",
}


@rolls_forward(steps.MergeQuest)
def merge_quest(step: steps.MergeQuest, ctx: Ctx) -> list[Step | Later]:
    path = docs.quest_path(step.qid)
    if ctx.uow.get(path) is None:
        ctx.uow.create(path, {"desc": step.desc_b64, "built_by": [], "created": ctx.now_us})
    # The quest's attempts (and back edges) in the same commit: no task each.
    return [Later(Step.from_payload(p), together=True) for p in step.and_then]


@rolls_forward(steps.EnsureGraph)
def ensure_graph(step: steps.EnsureGraph, ctx: Ctx) -> list[Step | Later]:
    # Paths from the encoded IDs as they are: a memoised request's parts find every
    # attempt, and decode none (thousands of them).
    att_paths = {docs.ATTEMPTS + "/" + a: a for a in step.attempts}
    qids = sorted(set(step.quests).union(a.partition("|")[0] for a in step.attempts))
    got: dict[str, Any] = ctx.uow.get_many([docs.quest_path(q) for q in qids])
    # Attempts only for the answer (those found are not written here; those created
    # are read whole by EnsureAttempt: an absence is cached, no second read).
    got.update(ctx.uow.peek_many(list(att_paths), step.ANSWERED))
    step.seen = got
    create: dict[str, list[dict[str, Any]]] = {
        q: [] for q in step.quests if got[docs.quest_path(q)] is None
    }
    for path, encoded in att_paths.items():
        if got[path] is not None:
            continue
        a = AttemptID.decode(encoded)
        if got[docs.quest_path(a.quest)] is None and a.quest not in step.quests:
            raise InvalidArgument(f'cannot create attempts for absent quest "{a.quest}"')
        create.setdefault(a.quest, []).append(steps.EnsureAttempt(aid=a.encoded).to_payload())
    # In this transaction (together), reading from its cache: nothing is read twice.
    merges = [steps.MergeQuest(qid=q, desc_b64=step.quests.get(q, ""), and_then=then)
              for q, then in create.items()]  # fmt: skip
    return [Later(m, together=True) for m in merges]


@rolls_forward(steps.EnsureAttempt)
def ensure_attempt(step: steps.EnsureAttempt, ctx: Ctx) -> list[Step | Later]:
    aid = AttemptID.decode(step.aid)
    path = docs.attempt_path(aid)
    att = ctx.uow.get(path)
    back: list[Step | Later] = []
    if step.depender:
        add = steps.AddBackDep(dependee=step.aid, depender=step.depender, needs_ack=True)
        back.append(Later(add, together=True))
    if att is not None:
        if step.depended and att.get(docs.DEPENDED) is False:
            # Created meanwhile by a call without an execution: its end must reach
            # the depender (whose AddBackDep may have run before the attempt existed).
            if attempt_is_terminal(att):
                # Ended unflagged, so its end looked for no back edge: look now.
                return [Later(steps.PropagateCompletion(aid=step.aid), together=True), *back]
            att[docs.DEPENDED] = True
            ctx.uow.put(path, att)
        return back
    # The quest's document, as MergeQuest read or created it in this commit (no read
    # here: absent from the cache, nothing is copied).
    quest = ctx.uow.cached(docs.quest_path(aid.quest))
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
            docs.DEPENDED: step.depended,
            docs.DECLARED: False,
            **({} if quest is None else {docs.QUEST_CREATED: quest["created"]}),
        },
    )
    return [steps.ScheduleExecution(aid=step.aid), *back]


@rolls_forward(steps.ScheduleExecution)
def schedule_execution(step: steps.ScheduleExecution, ctx: Ctx) -> list[Step | Later]:
    aid = AttemptID.decode(step.aid)
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
    before = att.get(docs.CURRENT)
    if before is not None:
        # The execution ending here moves to the archive: a new execution costs one
        # more write, a leaf's only execution none.
        ctx.uow.put(docs.execution_path(aid.execution(int(before["num"]))), before)

    activation = ctx.engine.rand(32)
    t = desc.meta.timeouts
    eid = aid.execution(num)
    att[docs.CURRENT] = {
        "num": num,
        "state": int(ExecutionState.SCHEDULING),
        "created": ctx.now_us,
        "modified": ctx.now_us,
        "config": snap.to_doc() if snap else None,
        "token_hash": token_hash(activation),
        "token_state": "activation",
        "dist_token": "",
        "poll_timeout_us": 0,
        "run_at_us": 0,
        "timeouts": {
            "start": duration_us(t.start),
            "run": duration_us(t.run),
            "stop": duration_us(t.stop),
        },
        "result": None,
        "abnormal": None,
        "is_abnormal": False,
    }
    ctx.uow.put(docs.attempt_path(aid), att)
    if snap is None:
        return [
            steps.FinishExecution(
                eid=str(eid),
                result=abnormal(AbnormalStatus.REJECTED, f"rejected during scheduling: {reject}"),
            )
        ]
    return [steps.RunExecution(eid=str(eid), activation_b64=b64(activation))]


@executes(steps.RunExecution)
def run_execution(step: steps.RunExecution, engine: Engine, delivery: int) -> None:
    eid = ExecutionID.parse(step.eid)
    # One delivery at a time calls D.run for an execution (a duplicate delivered
    # to another worker meanwhile waits for the claim to be released or expire).
    # The claim's transaction is the only read of the attempt and execution here.
    claim = steps.ClaimRun(
        eid=step.eid, activation_b64=step.activation_b64, claim=b64(engine.rand(12))
    )
    engine.run(claim)
    if claim.outcome != "run":
        return
    if claim.claim:
        _run_claimed(step, eid, engine, claim)
    else:
        with engine.holding_run(step.eid):
            _run_claimed(step, eid, engine, claim)


def _run_claimed(
    step: steps.RunExecution, eid: ExecutionID, engine: Engine, claim: steps.ClaimRun
) -> None:
    """D.run, once claimed; then record how it went."""
    assert claim.config is not None
    desc = engine.quest_desc(eid.quest)
    assert desc is not None
    prev = None
    if claim.last_ok_execution:
        prev_ex = engine.store.get(
            docs.execution_path(eid.attempt_id.execution(claim.last_ok_execution))
        )
        if prev_ex is not None:
            prev = json_result((prev_ex.get("result") or {}).get("data"))
    auth = dm_pb2.Execution.Auth(id=eid.to_proto(), token=unb64(step.activation_b64))
    try:
        d, _ = engine.registry.build(dist.Snapshot.from_doc(claim.config))
        started = d.run(desc, auth, prev)
    except dist.TransientError as e:
        engine.run(
            steps.RunFailed(
                eid=step.eid,
                activation_b64=step.activation_b64,
                claim=claim.claim,
                error=str(e) or type(e).__name__,
            )
        )
        return
    except Exception as e:  # a non-transient error from run: REJECTED, never retried
        reason = f"rejected during scheduling with non-transient error: {e}"
        engine.run(
            steps.FinishExecution(eid=step.eid, result=abnormal(AbnormalStatus.REJECTED, reason))
        )
        return
    poll_us = int(started.poll_timeout.total_seconds() * US)
    interval_us = int(started.poll_interval.total_seconds() * US)
    engine.run(
        steps.RecordRun(
            eid=step.eid,
            dist_token=started.token,
            poll_timeout_us=poll_us,
            poll_interval_us=interval_us,
            claim=claim.claim,
        )
    )


def _runnable(att: docs.Doc | None, ex: docs.Doc | None, eid: ExecutionID) -> bool:
    """The execution is current, not ended and not run yet."""
    return (
        att is not None
        and ex is not None
        and att["cur_execution"] == eid.num
        and not ex["dist_token"]
        and not is_terminal_execution(ExecutionState(ex["state"]))
    )


def _run_later(step: steps.ClaimRun | steps.RunFailed, at_us: int) -> Later:
    """Try D.run again at ``at_us``; named by the time, so that every delivery
    deferring to the same moment queues one task."""
    again = steps.RunExecution(eid=step.eid, activation_b64=step.activation_b64)
    return Later(again, eta_us=at_us, name=task_name("run", step.eid, str(at_us)))


@rolls_forward(steps.ClaimRun)
def claim_run(step: steps.ClaimRun, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    att, ex = load_current(ctx, eid)
    if not _runnable(att, ex, eid):
        step.outcome = "done"
        return []
    assert att is not None and ex is not None
    # A worker that may not call this distributor now (the embedded batch) refuses
    # here, raising: nothing is written, no claim left for this task's own re-run
    # to wait out.
    ctx.engine.registry.check_call(dist.Snapshot.from_doc(ex["config"]))
    step.config = ex["config"]
    step.last_ok_execution = int(att["last_ok_execution"])
    held = ex.get("run_claim")
    if held and held["id"] != step.claim and int(held["until_us"]) > ctx.now_us:
        # Another delivery is calling D.run; look again once its claim runs out (it
        # will have recorded its run by then, unless it died on the way).
        step.outcome = "busy"
        return [_run_later(step, int(held["until_us"]))]
    not_before = int(ex.get("run_not_before_us", 0))
    if not_before > ctx.now_us:
        # A duplicate delivery during the backoff after a transient error: the
        # retry is queued for then already (the same task name).
        step.outcome = "busy"
        return [_run_later(step, not_before)]
    if not held and ctx.engine.batch_holds_run(str(ex["config"].get("kind", ""))):
        # The open batch holds the write lock until the run is recorded, in its
        # commit: no other delivery can claim meanwhile, so nothing is written
        # (RunFailed records the first try's time, should the run fail).
        if ctx.engine.run_held(step.eid):
            # A duplicate delivered from inside that very D.run: as if it found a claim.
            step.outcome = "busy"
            return [_run_later(step, ctx.now_us + ctx.engine.settings.run_lease_us)]
        step.claim = ""
        step.outcome = "run"
        return []
    ex["run_claim"] = {"id": step.claim, "until_us": ctx.now_us + ctx.engine.settings.run_lease_us}
    if not ex.get("run_first_us"):
        ex["run_first_us"] = ctx.now_us  # the outage window counts from here
    put_execution(ctx, eid, ex)
    step.outcome = "run"
    return []


@rolls_forward(steps.RunFailed)
def run_failed(step: steps.RunFailed, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    att, ex = load_current(ctx, eid)
    if not _runnable(att, ex, eid):
        return []
    assert ex is not None
    held = ex.get("run_claim")
    if step.claim:
        if held is None or held["id"] != step.claim:
            return []  # our claim ran out and another delivery took over
        del ex["run_claim"]
    elif held is not None:
        return []  # unreachable while the batch held the run (ClaimRun); never steal
    ex.setdefault("run_first_us", ctx.now_us)  # a held run's claim did not record it
    errors = int(ex.get("run_errors", 0)) + 1
    ex["run_errors"] = errors
    put_execution(ctx, eid, ex)  # the Uow writes ex as it is at the end
    settings = ctx.engine.settings
    first = int(ex.get("run_first_us") or ctx.now_us)
    if ctx.now_us - first >= settings.run_retry_window_us:
        window = datetime.timedelta(microseconds=settings.run_retry_window_us)
        reason = (
            f"rejected after transient errors for {window} ({errors} tries), last: {step.error}"
        )
        return [
            steps.FinishExecution(eid=step.eid, result=abnormal(AbnormalStatus.REJECTED, reason))
        ]
    cap_s = settings.run_retry_cap_us / US
    at_us = ctx.now_us + int(dist.backoff(errors, cap_s=cap_s) * US)
    ex["run_not_before_us"] = at_us
    log.warning("run of %s failed (transient, try %d): %s", eid, errors, step.error)
    return [_run_later(step, at_us)]


@rolls_forward(steps.RecordRun)
def record_run(step: steps.RecordRun, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    _, ex = load_current(ctx, eid)
    if ex is None or ex["dist_token"]:
        return []  # a duplicate run: only the first token counts
    if (ex.get("run_claim") or {}).get("id") == step.claim:
        del ex["run_claim"]
    ex["dist_token"] = step.dist_token
    ex["poll_timeout_us"] = max(0, step.poll_timeout_us)
    ex["run_at_us"] = ctx.now_us
    put_execution(ctx, eid, ex)
    state = ExecutionState(ex["state"])
    if is_terminal_execution(state):
        # Ended (cancelled) between RunExecution's read and D.run: the task the
        # distributor has just started must not be left running.
        return [steps.CancelTask(eid=step.eid)]
    out: list[Step | Later] = []
    if step.poll_interval_us > 0 and state in (ExecutionState.SCHEDULING, ExecutionState.RUNNING):
        poll = {"eid": step.eid, "interval_us": step.poll_interval_us}
        out += schedule_poll(ctx, eid, poll, ctx.now_us + step.poll_interval_us)
    if state == ExecutionState.SCHEDULING:
        out += arm_timer(ctx, eid, ex, ExecutionState.SCHEDULING, ex["timeouts"]["start"])
    # A fast job may have stopped before its run was recorded (defects: its poll
    # timeout was lost and the 12 h hedge applied; a stop timer due meanwhile
    # polled 30 s late).
    out += rearm_stop_at_run(ctx, eid, ex)
    return out


@executes(steps.CancelTask)
def cancel_task(step: steps.CancelTask, engine: Engine, delivery: int) -> None:
    eid = ExecutionID.parse(step.eid)
    ex = docs.read_execution(engine.store, eid)
    if ex is None or not ex["dist_token"] or not ex.get("config"):
        return
    if not is_terminal_execution(ExecutionState(ex["state"])):
        return  # only ever queued for an ended execution; nothing to do otherwise
    desc = engine.quest_desc(eid.quest)
    assert desc is not None
    try:
        d, _ = engine.registry.build(dist.Snapshot.from_doc(ex["config"]))
        d.cancel(desc, ex["dist_token"])
    except dist.TransientError as e:
        if engine.clock() - int(ex["modified"]) < engine.settings.run_retry_window_us:
            raise  # the queue delivers it again, with backoff
        log.error("gave up cancelling the task of ended execution %s: %s", eid, e)
    except Exception as e:
        log.error("distributor refused to cancel the task of ended execution %s: %s", eid, e)


def _activates(att: docs.Doc | None, ex: docs.Doc | None, eid: ExecutionID) -> bool:
    """Execution ``eid`` is current and waits for its activation token."""
    return (
        att is not None
        and ex is not None
        and att["state"] == AttemptState.EXECUTING
        and att["cur_execution"] == eid.num
        and ex["state"] == ExecutionState.SCHEDULING
        and ex["token_state"] == "activation"
    )


@rolls_forward(steps.ActivateExecution)
def activate_execution(step: steps.ActivateExecution, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    att, ex = load_current(ctx, eid)
    denied = PermissionDenied("failed to activate execution: bad or stale auth")
    if (
        att is None
        or ex is None
        or att["state"] != AttemptState.EXECUTING
        or att["cur_execution"] != eid.num
    ):
        raise denied
    new_token = unb64(step.execution_token_b64)
    if _activates(att, ex, eid):
        if not token_matches(ex, unb64(step.activation_b64)):
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
    put_execution(ctx, eid, ex)
    return arm_timer(ctx, eid, ex, ExecutionState.RUNNING, ex["timeouts"]["run"])


@rolls_forward(steps.FinishAttempt)
def finish_attempt(step: steps.FinishAttempt, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    token = unb64(step.token_b64)
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
        prior = docs.read_result(ctx.uow, eid.attempt_id, att)
        if (
            prior is not None
            and prior["object"] == step.object
            and prior.get("execution") == eid.num
        ):
            return []
        raise PermissionDenied("bad execution auth: the attempt already has a result or halted")
    if _activates(att, ex, eid):
        # A job whose first call is FinishAttempt (`Job.activate(lazy=True)`, jobsim): its
        # activation token activates and finishes at once, one write instead of two.
        # The same checks as ActivateExecution: only the activation token dm handed
        # out, and only before any job activated (then the execution is RUNNING with
        # that job's token, and this is refused below).
        assert att is not None and ex is not None
        if not token_matches(ex, token):
            raise PermissionDenied("bad execution auth")
        set_execution_state(ex, ExecutionState.RUNNING, ctx.now_us)
    else:
        att, ex = verify_running(ctx, eid, token, PermissionDenied)
    set_execution_state(ex, ExecutionState.STOPPING, ctx.now_us)
    ex["token_state"] = "revoked"
    put_execution(ctx, eid, ex)
    doc: dict[str, Any] = {"object": step.object, "size": step.size, "execution": eid.num}
    summary: dict[str, Any] = {"size": step.size}
    if step.expiration_us is not None:
        doc["expiration_us"] = summary["expiration_us"] = step.expiration_us
    if len(step.object.encode()) <= docs.INLINE_RESULT_BYTES:
        summary = doc  # on the attempt, written anyway
    else:
        ctx.uow.put(rpath, doc)
    att["result"] = summary
    docs.bump_modified(att, ctx.now_us)
    ctx.uow.put(docs.attempt_path(eid.attempt_id), att)
    return arm_stop_timer(ctx, eid, ex)


@rolls_forward(steps.FinishExecution)
def finish_execution(step: steps.FinishExecution, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
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
    result = dict(step.result)
    if "abnormal" not in result:
        data = dict(result.get("data") or {})
        try:
            data["object"], data["size"] = jsonnorm.normalize_result(str(data.get("object", "")))
            result = {"data": data}
        except jsonnorm.JsonError as e:
            result = abnormal(AbnormalStatus.RESULT_MALFORMED, f"distributor result malformed: {e}")
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
            out.append(steps.ScheduleExecution(aid=aid.encoded))
        else:
            set_attempt_state(att, AttemptState.ABNORMAL_FINISHED, ctx.now_us)
            att["abnormal"] = result["abnormal"]
            att["is_abnormal"] = True
            out += completion_follow_ups(ctx, aid)
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
                out.append(steps.ScheduleExecution(aid=aid.encoded))
        else:
            set_attempt_state(att, AttemptState.FINISHED, ctx.now_us)
            out += arm_expiry(ctx, aid, att)
            out += completion_follow_ups(ctx, aid)
    put_execution(ctx, eid, ex)
    ctx.uow.put(docs.attempt_path(aid), att)
    return out


@rolls_forward(steps.CancelWaiting)
def cancel_waiting(step: steps.CancelWaiting, ctx: Ctx) -> list[Step | Later]:
    aid = AttemptID.decode(step.aid)
    att = ctx.uow.get(docs.attempt_path(aid))
    if att is None or att["state"] not in (AttemptState.SCHEDULING, AttemptState.WAITING):
        return []
    set_attempt_state(att, AttemptState.ABNORMAL_FINISHED, ctx.now_us)
    att["abnormal"] = {"status": int(AbnormalStatus.CANCELLED), "reason": step.reason}
    att["is_abnormal"] = True
    ctx.uow.put(docs.attempt_path(aid), att)
    return completion_follow_ups(ctx, aid)
