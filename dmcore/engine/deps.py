"""Dependency edges: an execution declares what it depends on, and an attempt
waiting on them resumes once the last one is satisfied.

Fan-in without a hot document (DESIGN.md §3): each edge is satisfied on its
own forward-edge record (:func:`ack_fwd_dep`), and "all done" is a short check
on the attempt (:func:`check_deps`), so a fan-in of thousands never queues
its writes on one document. A dependency that ended abnormally unblocks its
dependers too (W-1).
"""

from __future__ import annotations

import logging
from typing import Any

from dmcore.engine import docs, steps
from dmcore.engine.base import Ctx, Later, Step, rolls_forward
from dmcore.engine.records import (
    arm_stop_timer,
    attempt_is_terminal,
    load_current,
    open_deps,
    put_execution,
    set_attempt_state,
    set_execution_state,
    token_matches,
    unb64,
    verify_running,
)
from dmcore.errors import Unauthenticated
from dmcore.ids import AttemptID, ExecutionID
from dmcore.states import (
    AttemptState,
    ExecutionState,
)

log = logging.getLogger("dm.engine")


@rolls_forward(steps.DeclareDeps)
def declare_deps(step: steps.DeclareDeps, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    me = eid.attempt_id
    token = unb64(step.token_b64)
    step.halted = False
    dependees = [AttemptID.decode(d) for d in step.deps]
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
        finished = set(step.terminal)
        if step.part or all(
            e is not None
            and (e["satisfied"] or e["for_execution"] == eid.num or d.encoded in finished)
            for d, e in zip(dependees, (edges[p] for p in paths), strict=True)
        ):
            step.halted = True
            return []
    att, ex = verify_running(ctx, eid, token, Unauthenticated)

    edges = ctx.uow.get_many(paths)
    terminal = set(step.terminal)  # a set: a fan-in's resume names 10,000 of them
    # Which dependees are over, read here: what the caller saw over, or a satisfied
    # edge says is over, may have been re-opened since (dm retry, dmcore.engine.reopen).
    check = [
        d
        for d, p in zip(dependees, paths, strict=True)
        if d.encoded in terminal or bool((edges[p] or {}).get("satisfied"))
    ]
    now = ctx.uow.get_many([docs.attempt_path(d) for d in check])
    over = {d.encoded for d in check if attempt_is_terminal(now[docs.attempt_path(d)])}
    follow: list[Step | Later] = []
    halt = any(d.encoded not in over for d in dependees)
    for d, p in zip(dependees, paths, strict=True):
        e = edges[p]
        done = d.encoded in over
        if e is not None and done:
            if not e["satisfied"]:
                # The dependee ended before its completion reached this edge:
                # mark it now (its back edge exists and will ack harmlessly).
                ctx.uow.put(p, {**e, "for_execution": eid.num, "satisfied": True})
            continue
        if e is not None and not e["satisfied"] and e["for_execution"] == eid.num:
            continue  # armed for this execution already
        ctx.uow.put(
            p,
            {"quest": d.quest, "num": d.num, "for_execution": eid.num, "satisfied": done},
        )
        follow.append(steps.AddBackDep(dependee=d.encoded, depender=me.encoded, needs_ack=not done))

    # Create what is missing first: quest, then attempts, then the back edges.
    ensure = [steps.EnsureAttempt(aid=a, depended=True).to_payload() for a in step.new_attempts]
    chained: list[Step | Later] = []
    by_quest: dict[str, list[dict[str, Any]]] = {q: [] for q in step.new_quests}
    for a in ensure:
        q = AttemptID.decode(a["aid"]).quest
        if q in by_quest:
            by_quest[q].append(a)
        else:
            chained.append(Step.from_payload(a))
    for back in follow:
        assert isinstance(back, steps.AddBackDep)
        q = AttemptID.decode(back.dependee).quest
        if q in by_quest:
            by_quest[q].append(back.to_payload())
        else:
            chained.append(back)
    for q, then in by_quest.items():
        chained.insert(0, steps.MergeQuest(qid=q, desc_b64=step.new_quests[q], and_then=then))

    if step.part:
        # The edges of execution eid.num stay inert (the attempt's deps_execution is
        # not set) until the DeclareDeps over every edge decides.
        return chained
    if halt:
        set_execution_state(ex, ExecutionState.STOPPING, ctx.now_us)
        ex["token_state"] = "revoked"
        put_execution(ctx, eid, ex)
        att["deps_execution"] = eid.num
        docs.bump_modified(att, ctx.now_us)
        ctx.uow.put(docs.attempt_path(me), att)
        chained += arm_stop_timer(ctx, eid, ex)
        step.halted = True
    return chained


@rolls_forward(steps.AddBackDep)
def add_back_dep(step: steps.AddBackDep, ctx: Ctx) -> list[Step | Later]:
    dependee, depender = AttemptID.decode(step.dependee), AttemptID.decode(step.depender)
    apath = docs.attempt_path(dependee)
    att = ctx.uow.get(apath)
    # The dependee's end either committed before this read (seen here: the edge is
    # acked here) or after this back edge (its propagation finds the edge).
    ended = attempt_is_terminal(att)
    inline: list[str] = [] if att is None else list(att.get(docs.DEPENDERS, []))
    if att is not None and (
        step.depender in inline or (not ended and len(inline) < docs.INLINE_DEPENDERS)
    ):
        # Inline on the attempt (written with it when this rides with its creation):
        # no document; an ack or an un-ack is guarded by the forward edge's state.
        # Never added to an ended attempt: its record stays as it ended.
        if step.depender not in inline:
            # The flag in the same write: its end must look for its dependers. Past
            # the inline ones it is set already; absent, the attempt is created
            # flagged (the declaration's EnsureAttempt); ended, the edge is acked here.
            att[docs.DEPENDERS] = [*inline, step.depender]
            att[docs.DEPENDED] = True
            ctx.uow.put(apath, att)
        if not step.needs_ack and not ended:
            return [steps.UnackFwdDep(depender=step.depender, dependee=step.dependee)]
        if step.needs_ack and ended:
            return [steps.AckFwdDep(depender=step.depender, dependee=step.dependee)]
        return []
    bpath = docs.back_dep_path(dependee, depender)
    back = ctx.uow.get(bpath)
    if not step.needs_ack and not ended:
        # The declaration found the dependee over and told the depender at once,
        # but it was re-opened (dm retry) since, maybe before this edge existed for
        # the re-open to find: open the edge as the re-open would have.
        if back is None or back["propagated"]:
            ctx.uow.put(bpath, {"created": ctx.now_us, **(back or {}), "propagated": False})
        return [steps.UnackFwdDep(depender=step.depender, dependee=step.dependee)]
    if back is None or (ended and not back["propagated"]):
        ctx.uow.put(bpath, {"propagated": ended, "created": ctx.now_us})
    if step.needs_ack and ended:
        return [steps.AckFwdDep(depender=step.depender, dependee=step.dependee)]
    return []


@rolls_forward(steps.AckFwdDep)
def ack_fwd_dep(step: steps.AckFwdDep, ctx: Ctx) -> list[Step | Later]:
    path = step.root()
    dee = docs.attempt_path(AttemptID.decode(step.dependee))
    got = ctx.uow.get_many([path, dee])
    edge = got[path]
    if edge is None or edge["satisfied"] or not attempt_is_terminal(got[dee]):
        return []  # done, or late: the dependee was re-opened since (dmcore.engine.reopen)
    execution = int(edge["for_execution"])
    # Read before the write: the open edges of that execution, this one among them.
    # Only the ack that closes the last one queues the waiter's check, so a fan-in
    # of thousands reads the waiter once, not once per dependency. Two acks racing
    # each read the other's edge open: serializable transactions retry one of them,
    # which then finds its edge the last.
    still_open = open_deps(ctx, AttemptID.decode(step.depender), execution, 2)
    ctx.uow.put(path, {**edge, "satisfied": True})
    if still_open > 1:
        return []  # another edge is open: its ack checks the waiter
    return [steps.CheckDeps(aid=step.depender, execution=execution)]


@rolls_forward(steps.CheckDeps)
def check_deps(step: steps.CheckDeps, ctx: Ctx) -> list[Step | Later]:
    aid = AttemptID.decode(step.aid)
    att = ctx.uow.get(docs.attempt_path(aid))
    if (
        att is None
        or att["state"] != AttemptState.WAITING
        or att["cur_execution"] != step.execution
    ):
        return []
    if open_deps(ctx, aid, step.execution, 1):
        return []
    set_attempt_state(att, AttemptState.SCHEDULING, ctx.now_us)
    att["deps_execution"] = 0
    ctx.uow.put(docs.attempt_path(aid), att)
    return [steps.ScheduleExecution(aid=step.aid)]
