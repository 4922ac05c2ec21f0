"""Timeouts and polls of an execution (spec §4.5).

A due timer times the execution out, or, STOPPING, polls ``get_status`` first
and re-polls a few times (W-10's hedge when neither a stop nor a poll timeout
is set). A poll asks the distributor how a scheduled or running execution is
doing, for distributors whose notification can be lost.
"""

from __future__ import annotations

import logging

from dmcore import distributor as dist
from dmcore.engine import docs, steps
from dmcore.engine.base import Ctx, Later, Step, executes, rolls_forward
from dmcore.engine.core import Engine
from dmcore.engine.records import (
    US,
    abnormal,
    disarm_poll,
    result_doc_from_proto,
    schedule_poll,
    set_timer,
)
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.states import (
    AbnormalStatus,
    ExecutionState,
)

log = logging.getLogger("dm.engine")


@rolls_forward(steps.TimerFired)
def timer_fired(step: steps.TimerFired, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    apath = docs.attempt_path(eid.attempt_id)
    att = ctx.uow.get(apath)
    timer = docs.timer_of(att, eid)
    if (
        att is None
        or timer is None
        or timer["state"] != step.state
        or timer["deadline_us"] != step.deadline_us
    ):
        return []
    if step.result is not None:
        return [steps.FinishExecution(eid=step.eid, result=step.result)]
    interval = int(dist.STOPPING_REPOLL_INTERVAL.total_seconds() * US)
    if not step.polled and _recorded_since(ctx, eid, att):
        # Nothing was asked for want of a token, and another delivery recorded the
        # run since (its RecordRun left this timer, not yet fired, as it was): ask now.
        interval = 1
    nxt = {
        **timer,
        # From now, not from the old deadline: a timer that fired late would
        # otherwise poll back to back.
        "deadline_us": max(step.deadline_us, ctx.now_us) + interval,
        "polls": int(timer["polls"]) + (1 if step.polled else 0),
    }
    set_timer(att, nxt)
    ctx.uow.put(apath, att)
    return [steps.timer_later(nxt)]


def _recorded_since(ctx: Ctx, eid: ExecutionID, att: docs.Doc) -> bool:
    """Whether execution ``eid`` has its distributor token by now (its run recorded)."""
    ex = docs.read_execution(ctx.uow, eid, att)
    return ex is not None and bool(ex.get("dist_token"))


@executes(steps.TimeoutExecution)
def timeout_execution(step: steps.TimeoutExecution, engine: Engine, delivery: int) -> None:
    eid = ExecutionID.parse(step.eid)
    att = engine.store.get(docs.attempt_path(eid.attempt_id))
    timer = docs.timer_of(att, eid)
    ex = docs.read_execution(engine.store, eid, att) if att is not None else None
    if (
        timer is None
        or ex is None
        or timer["state"] != step.state
        or timer["deadline_us"] != step.deadline_us
    ):
        return
    if ex["state"] != step.state:
        return
    state = ExecutionState(step.state)
    fired = steps.TimerFired(eid=step.eid, state=step.state, deadline_us=step.deadline_us)
    if state != ExecutionState.STOPPING:
        fired.result = abnormal(AbnormalStatus.TIMED_OUT, f"DM timeout ({state.name})")
        engine.run(fired)
        return
    if not ex["dist_token"]:
        # The job stopped before its run was recorded (D.run outside any
        # transaction): nothing to ask yet. Recording the run sets the timer
        # again, to the end of the stop phase (records.rearm_stop_at_run).
        fired.polled = False
        engine.run(fired)
        return
    error = ""
    try:
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


@executes(steps.PollExecution)
def poll_execution(step: steps.PollExecution, engine: Engine, delivery: int) -> None:
    eid = ExecutionID.parse(step.eid)
    att = engine.store.get(docs.attempt_path(eid.attempt_id))
    poll = docs.poll_of(att, eid)
    ex = docs.read_execution(engine.store, eid, att) if att is not None else None
    if poll is None or poll["due_us"] != step.due_us:
        return  # a newer poll is scheduled, or polling ended
    done = steps.PollDone(eid=step.eid, due_us=step.due_us)
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
            done.result = result_doc_from_proto(res)
        else:
            done.again = True
    engine.run(done)


@rolls_forward(steps.PollDone)
def poll_done(step: steps.PollDone, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    att = ctx.uow.get(docs.attempt_path(eid.attempt_id))
    poll = docs.poll_of(att, eid)
    if att is None or poll is None or poll["due_us"] != step.due_us:
        return []
    if step.result is not None:
        return [steps.FinishExecution(eid=step.eid, result=step.result)]
    if step.again:
        return schedule_poll(ctx, eid, poll, ctx.now_us + int(poll["interval_us"]))
    ex = docs.current_execution(att, eid)
    if ex is not None:
        disarm_poll(ctx, eid, ex)
    return []
