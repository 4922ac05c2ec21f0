"""Re-opening an attempt that ended abnormally (``dm retry``), and its dependers.

Not in DM, where ABNORMAL_FINISHED is final (docs/behaviour.md, "Retrying what
failed"). A re-open gives the attempt a new execution on the same attempt:
its executions are kept, its retry counters start again, its last normal
execution's state is handed on as after a halt. FINISHED attempts are never
re-opened: a finished result is immutable.

The edges must look as if the re-opened attempt had never ended, so that the
engine's usual handshake (spec §2.2) resumes its dependers when it ends again:

1. :func:`reopen_attempt` (one transaction): the attempt goes SCHEDULING, so
   nothing acks its edges until it ends again (the completion steps ack only
   for an attempt that is over).
2. :func:`reopen_dependers` walks its back edges, 64 per step: each goes back
   to unpropagated (the next completion acks it again; a depender whose edge
   is still satisfied ignores that ack) and :func:`unack_fwd_dep` opens the
   depender's edge again, for the depender's current execution (a halt of it
   waits for the re-run, whichever execution declared the dependee), unless
   the depender is FINISHED (its result stands).
   A depender that ended abnormally after being told of the end (a satisfied
   edge), and was not cancelled, is re-opened in turn: the same steps, down
   the graph. Only after the last back edge does the attempt get its new
   execution, so it cannot end again before its dependers are reset; that
   last step closes the walk (:data:`WALK`), so a duplicate of it yields
   nothing (follow-ups are named by position: a duplicate yielding other work
   would take the names of the original's).

Duplicates and late deliveries change nothing: a re-open names the execution
it re-opens after (``after_execution``) and does nothing once the attempt has
moved on; the walk stops once the new execution exists; and the completion
steps ack only a dependee that is over (guards in :mod:`~dmcore.engine.deps`
and :mod:`~dmcore.engine.completion`), so a late ack from before the re-open
cannot satisfy an edge again.
"""

from __future__ import annotations

from dmcore.engine import docs, steps
from dmcore.engine.base import Ctx, Later, Step, rolls_forward
from dmcore.engine.records import attempt_is_terminal
from dmcore.ids import AttemptID
from dmcore.states import AbnormalStatus, AttemptState, check_attempt_transition

REOPEN_BATCH = 64
"""Back edges reset per step; the step chains itself until none is left."""
WALK = "reopen_walk"
"""On the attempt: the execution it was re-opened after, while its back edges are walked."""


@rolls_forward(steps.ReopenAttempt)
def reopen_attempt(step: steps.ReopenAttempt, ctx: Ctx) -> list[Step | Later]:
    aid = AttemptID.decode(step.aid)
    path = docs.attempt_path(aid)
    att = ctx.uow.get(path)
    if (
        att is None
        or att["state"] != AttemptState.ABNORMAL_FINISHED
        or int(att["cur_execution"]) != step.after_execution
    ):
        return []  # a duplicate, or the attempt has moved on since
    ended = dict(att.get("abnormal") or {})
    if step.cause and ended.get("status") == AbnormalStatus.CANCELLED:
        return []  # a user's cancel stands; only a user re-opens it
    check_attempt_transition(AttemptState(att["state"]), AttemptState.SCHEDULING, reopen=True)
    att["state"] = int(AttemptState.SCHEDULING)
    docs.bump_modified(att, ctx.now_us)
    att["reopened"] = [
        *att.get("reopened", []),
        {
            "at_us": ctx.now_us,
            "after_execution": step.after_execution,
            "abnormal": ended,
            "cause": step.cause,
        },
    ]
    att["abnormal"] = None
    att["is_abnormal"] = False
    att["deps_execution"] = 0
    att["retry"] = {k: 0 for k in att["retry"]}
    att[WALK] = step.after_execution
    # A depender that came while it was over acked its own edge and left the flag
    # as it was (an ended attempt is not written): its next end must look.
    att[docs.DEPENDED] = True
    ctx.uow.put(path, att)
    return [steps.ReopenDependers(aid=step.aid, after_execution=step.after_execution)]


@rolls_forward(steps.ReopenDependers)
def reopen_dependers(step: steps.ReopenDependers, ctx: Ctx) -> list[Step | Later]:
    aid = AttemptID.decode(step.aid)
    path = docs.attempt_path(aid)
    att = ctx.uow.get(path)
    if (
        att is None
        or att["state"] != AttemptState.SCHEDULING
        or int(att["cur_execution"]) != step.after_execution
        or att.get(WALK, step.after_execution) != step.after_execution
    ):
        return []  # the walk is over or the attempt moved on
    rows = ctx.uow.query(docs.back_deps_collection(aid), {"propagated": True}, limit=REOPEN_BATCH)
    out: list[Step | Later] = []
    if step.first:
        # The inline dependers, once (an un-ack of an open edge does nothing).
        out += [
            steps.UnackFwdDep(depender=d, dependee=step.aid) for d in att.get(docs.DEPENDERS, [])
        ]
    for bpath, doc in rows:
        ctx.uow.put(bpath, {**doc, "propagated": False})
        out.append(steps.UnackFwdDep(depender=docs.last_id(bpath), dependee=step.aid))
    if len(rows) == REOPEN_BATCH:
        out.append(
            steps.ReopenDependers(aid=step.aid, after_execution=step.after_execution, first=False)
        )
    else:
        # Over: a duplicate of this step now yields nothing, so its follow-ups cannot
        # take the names (or the outbox record) of this one's (they are positional).
        att[WALK] = None
        ctx.uow.put(path, att)
        out.append(steps.ScheduleExecution(aid=step.aid))
    return out


@rolls_forward(steps.UnackFwdDep)
def unack_fwd_dep(step: steps.UnackFwdDep, ctx: Ctx) -> list[Step | Later]:
    depender = AttemptID.decode(step.depender)
    dependee = AttemptID.decode(step.dependee)
    got = ctx.uow.get_many([step.root(), docs.attempt_path(dependee), docs.attempt_path(depender)])
    edge, dee, der = (
        got[step.root()],
        got[docs.attempt_path(dependee)],
        got[docs.attempt_path(depender)],
    )
    if edge is None or dee is None or der is None:
        return []
    told = bool(edge["satisfied"])
    if attempt_is_terminal(dee):
        # It ended again before this step ran: its new completion acks the edge
        # (or has). Re-open the depender only if that end was a success.
        if dee["state"] != AttemptState.FINISHED:
            return []
    elif der["state"] != AttemptState.FINISHED:
        # Open for the depender's current execution, whichever one declared it: a
        # halt of that execution (made, or to come) waits for the re-run (W-2).
        opened = {**edge, "satisfied": False, "for_execution": int(der["cur_execution"])}
        if opened != edge:
            ctx.uow.put(step.root(), opened)
    if (
        told
        and der["state"] == AttemptState.ABNORMAL_FINISHED
        and (der.get("abnormal") or {}).get("status") != AbnormalStatus.CANCELLED
    ):
        return [steps.reopen_later(step.depender, int(der["cur_execution"]), step.dependee)]
    return []
