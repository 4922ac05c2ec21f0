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
from collections.abc import Callable, Mapping, Sequence
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
from dmcore.errors import InvalidArgument, Unauthenticated, Unavailable
from dmcore.ids import AttemptID, ExecutionID
from dmcore.states import (
    AttemptState,
    ExecutionState,
)

log = logging.getLogger("dm.engine")


MAX_CYCLE_WALK = 10_000
"""Attempts a cycle check walks at most (a graph deeper than this is not searched further)."""

DECLARING_LEASE_US = 120_000_000
"""How long a declaration in parts holds its claim (docs.DECLARING) without a part:
a call that died between parts blocks others' cycle checks through its attempt at
most this long. Each part renews it once half has passed."""


def declaring(att: docs.Doc | None, now_us: int) -> bool:
    """Whether attempt ``att``'s current execution is recording a declaration in parts
    (its claim, docs.DECLARING, holds): its edges are not all recorded yet."""
    claim = (att or {}).get(docs.DECLARING)
    return (
        att is not None
        and claim is not None
        and att["state"] == AttemptState.EXECUTING
        and claim["execution"] == att["cur_execution"]
        and claim["until_us"] > now_us
    )


class ClaimLost(Unavailable):
    """A part of a declaration in parts found its claim gone: its lease ran out
    between parts (another declaration of the execution may have claimed since),
    or the same declaration made again meanwhile (a client's retry while this call
    still ran) recorded it whole and dropped the claim. The caller checks the whole
    declaration again under a new claim and records it again, or gives up."""


def _claim_holds(att: docs.Doc, eid: ExecutionID, call: str, now_us: int) -> bool:
    """Whether call ``call`` of execution ``eid`` still holds its attempt's claim."""
    claim = att.get(docs.DECLARING) or {}
    return (
        claim.get("execution") == eid.num
        and claim.get("call") == call
        and int(claim.get("until_us", 0)) > now_us
    )


def reject_cycles(
    get: Callable[[str], docs.Doc | None],
    query: Callable[[str, Mapping[str, Any]], Sequence[tuple[str, docs.Doc]]],
    me: AttemptID,
    dependees: Sequence[AttemptID],
    *,
    claims_at_us: int | None,
) -> None:
    """Refuse an edge that would close a cycle through unfinished attempts.

    ``get`` and ``query`` read the store (in a transaction, or not). An attempt
    waits only on the open edges of its current execution; edges left by an
    earlier execution that ended abnormally (W-2) are stale.

    ``claims_at_us``: the time at which another attempt's claim (a declaration in
    parts under way, :func:`declaring`) is looked at: the walk cannot tell where
    that attempt's edges yet to come lead, so the caller is told to try again
    (Unavailable). None: the caller holds a claim of its own and checked the
    whole declaration after taking it, so what a claim would hide cannot close a
    cycle through this one (each edge of such a cycle recorded since was checked
    by a walk that met this claim).
    """
    seen: set[AttemptID] = set()
    todo = list(dependees)
    while todo and len(seen) < MAX_CYCLE_WALK:
        a = todo.pop()
        if a in seen:
            continue
        seen.add(a)
        att = get(docs.attempt_path(a))
        if att is None or attempt_is_terminal(att):
            continue
        if claims_at_us is not None and a != me and declaring(att, claims_at_us):
            raise Unavailable(
                f"attempt {a} is recording a declaration in parts: its edges may close"
                " a cycle with this one; try again once it is done"
            )
        open_edges = {"satisfied": False, "for_execution": int(att["cur_execution"])}
        for path, _ in query(docs.fwd_deps_collection(a), open_edges):
            nxt = AttemptID.decode(docs.last_id(path))
            if nxt == me:
                raise InvalidArgument(
                    f"depending on {dependees[0] if len(dependees) == 1 else 'these attempts'}"
                    f" would close a cycle through {a}"
                )
            todo.append(nxt)


def _reopened_since(att: docs.Doc | None, at_us: int) -> bool:
    """Whether attempt ``att`` was re-opened (:mod:`dmcore.engine.reopen`) at ``at_us`` or later."""
    reopens = (att or {}).get("reopened") or []
    return bool(reopens) and int(reopens[-1]["at_us"]) >= at_us


def _declared_before(
    ctx: Ctx, eid: ExecutionID, dependees: list[AttemptID], paths: list[str], token: bytes
) -> bool:
    """Whether this declaration repeats one that halted execution ``eid`` already, its
    answer lost (W-6): every edge recorded then (or its dependee over since).

    An edge an earlier execution left satisfied, its dependee over, is not written
    again when this one names it; if the dependee was re-opened (``dm retry``)
    since this execution began, the re-open opened that edge again (still the
    earlier execution's): it counts as named. (So does such an edge a different
    declaration names: the execution halted all the same.)"""
    att, ex = load_current(ctx, eid)
    if not (
        att is not None
        and ex is not None
        and att["cur_execution"] == eid.num
        and ex.get("token_state") == "revoked"
        and att.get("deps_execution") == eid.num
        and token_matches(ex, token)
    ):
        return False
    edges = ctx.uow.get_many(paths)
    now = ctx.uow.get_many([docs.attempt_path(d) for d in dependees])
    began = int(ex["created"])
    return all(
        e is not None
        and (
            e["satisfied"]
            or e["for_execution"] == eid.num
            or attempt_is_terminal(a)
            or _reopened_since(a, began)
        )
        for e, a in zip(
            (edges[p] for p in paths),
            (now[docs.attempt_path(d)] for d in dependees),
            strict=True,
        )
    )


@rolls_forward(steps.DeclareDeps)
def declare_deps(step: steps.DeclareDeps, ctx: Ctx) -> list[Step | Later]:
    eid = ExecutionID.parse(step.eid)
    me = eid.attempt_id
    token = unb64(step.token_b64)
    step.halted = False
    if step.unclaim:
        return _unclaim(ctx, eid, token, step.call)
    dependees = [AttemptID.decode(d) for d in step.deps]
    paths = [docs.fwd_dep_path(me, d) for d in dependees]
    if _declared_before(ctx, eid, dependees, paths, token):
        # A part of it too: the parts of a retried call each check their own edges.
        # (Its claim too: the declaration was decided, nothing to claim.)
        step.halted = True
        return []
    att, ex = verify_running(ctx, eid, token, Unauthenticated)
    if not (step.claimed or step.claim) and declaring(att, ctx.now_us):
        # Another call of this execution (a second thread, a retry while the first
        # still runs) is recording a declaration in parts: wait, like anyone else.
        raise Unavailable(
            f"execution {eid} is recording a declaration in parts in another call;"
            " try again once it is done"
        )
    if step.claim:
        if declaring(att, ctx.now_us) and not _claim_holds(att, eid, step.call, ctx.now_us):
            raise Unavailable(
                f"execution {eid} is recording a declaration in parts in another call;"
                " try again once it is done"
            )
        # Before the whole declaration's cycle check: any edge recorded after this
        # commit by a walk through this attempt meets the claim (reject_cycles). The
        # call is named by what it declares, so that only it drops or renews the
        # claim, and the same declaration made again (its retry) takes it over.
        step.took_over = declaring(att, ctx.now_us)
        att[docs.DECLARING] = {
            "execution": eid.num,
            "call": step.call,
            "until_us": ctx.now_us + DECLARING_LEASE_US,
        }
        ctx.uow.put(docs.attempt_path(me), att)
        step.seen = {docs.attempt_path(me): att}
        return []
    if step.claimed:
        if not _claim_holds(att, eid, step.call, ctx.now_us):
            # Refused before writing: what was checked under the claim may no
            # longer hold (edges into this attempt recorded since it lapsed).
            raise ClaimLost(
                f"execution {eid}: the claim of this declaration in parts lapsed"
                " between its parts; try again"
            )
        claim = att[docs.DECLARING]
        if step.part and claim["until_us"] - ctx.now_us < DECLARING_LEASE_US // 2:
            # Renewed at most once per half lease: a long declaration (thousands of
            # parts) writes its attempt a few times, not once per part.
            claim["until_us"] = ctx.now_us + DECLARING_LEASE_US
            ctx.uow.put(docs.attempt_path(me), att)

    # Each dependee read once, here; the answer is made of what was read (seen).
    apaths = [docs.attempt_path(d) for d in dependees]
    now = ctx.uow.get_many(apaths)
    step.seen = dict(now)
    # An absent dependee (created below) has no edges: only live ones are walked.
    live = [d for d, p in zip(dependees, apaths, strict=True) if now[p] is not None]
    # A quest the caller did not describe must exist to get a new attempt: refused
    # before anything is written (MergeQuest creates only what was described).
    raw = sorted({d.quest for d in dependees} - set(step.quests) - {d.quest for d in live})
    got = ctx.uow.get_many([docs.quest_path(q) for q in raw])
    for q in raw:
        if got[docs.quest_path(q)] is None:
            raise InvalidArgument(f'cannot create attempts for absent quest "{q}"')
    reject_cycles(
        ctx.uow.get,
        ctx.uow.query,
        me,
        [d for d in live if not attempt_is_terminal(now[docs.attempt_path(d)])],
        claims_at_us=None if step.claimed else ctx.now_us,
    )
    # Edges not read: an absent dependee's (written open, whatever it held), and
    # an over one's that lists this depender inline (its edge exists: written
    # before the AddBackDep that listed it; acked, or its ack is under way).
    known_over = {
        d
        for d in live
        if attempt_is_terminal(dee := now[docs.attempt_path(d)])
        and me.encoded in (dee or {}).get(docs.DEPENDERS, [])
    }
    edges = ctx.uow.get_many([docs.fwd_dep_path(me, d) for d in live if d not in known_over])
    follow: list[steps.AddBackDep] = []
    create: dict[str, list[dict[str, Any]]] = {}
    halt = False
    for d, p, ap in zip(dependees, paths, apaths, strict=True):
        open_edge = {"quest": d.quest, "num": d.num, "for_execution": eid.num, "satisfied": False}
        back = steps.AddBackDep(dependee=d.encoded, depender=me.encoded, needs_ack=True)
        if now[ap] is None:
            # Created flagged, its back edge in the same commit after it: an AddBackDep
            # never finds its dependee absent.
            halt = True
            ctx.uow.put(p, open_edge)
            ensure = steps.EnsureAttempt(aid=d.encoded, depended=True, depender=me.encoded)
            create.setdefault(d.quest, []).append(ensure.to_payload())
            continue
        if d in known_over:
            continue
        done = attempt_is_terminal(now[ap])
        halt = halt or not done
        e = edges[p]
        if e is not None and done:
            if not e["satisfied"]:
                # The dependee ended before its completion reached this edge:
                # mark it now (its back edge exists and will ack harmlessly).
                ctx.uow.put(p, {**e, "for_execution": eid.num, "satisfied": True})
            continue
        if e is not None and not e["satisfied"] and e["for_execution"] == eid.num:
            continue  # armed for this execution already
        ctx.uow.put(p, {**open_edge, "satisfied": done})
        back.needs_ack = not done
        follow.append(back)

    # A supplied quest is created with its first new attempt; one none of whose
    # named attempts exists is merged (created if absent) even with none to create.
    named = {d.quest for d, ap in zip(dependees, apaths, strict=True) if now[ap] is not None}
    for q in step.quests:
        if q not in named:
            create.setdefault(q, [])
    # In this transaction (together), reading from its cache: a new dependee is read
    # once, and created with no task of its own (queued past the write budget).
    merges = [steps.MergeQuest(qid=q, desc_b64=step.quests.get(q, ""), and_then=then)
              for q, then in create.items()]  # fmt: skip
    chained: list[Step | Later] = [Later(m, together=True) for m in merges]
    # The reverse edges too: an edge into a live attempt flags it (docs.DEPENDED) in
    # the commit that writes the edge (a declaration in parts relies on it).
    chained += [Later(back, together=True) for back in follow]

    if step.part:
        # The edges of execution eid.num stay inert (the attempt's deps_execution is
        # not set) until the last part decides, told whether this one halts.
        step.halted = halt
        return chained
    if att.get(docs.DECLARED) is False or docs.DECLARING in att:
        # Its forward edges exist now (of this part and those before): walks look.
        # Its claim dropped: every edge is recorded, walks see them all. (A claim
        # here is its own, or one lapsed: another call's live claim refused it above.)
        att[docs.DECLARED] = True
        att.pop(docs.DECLARING, None)
        ctx.uow.put(docs.attempt_path(me), att)
    if halt or step.parts_halt:
        set_execution_state(ex, ExecutionState.STOPPING, ctx.now_us)
        ex["token_state"] = "revoked"
        put_execution(ctx, eid, ex)
        att["deps_execution"] = eid.num
        docs.bump_modified(att, ctx.now_us)
        ctx.uow.put(docs.attempt_path(me), att)
        chained += arm_stop_timer(ctx, eid, ex)
        step.halted = True
    return chained


def _unclaim(ctx: Ctx, eid: ExecutionID, token: bytes, call: str) -> list[Step | Later]:
    """Drop the claim of call ``call`` of execution ``eid``'s declaration, refused
    before its first part (another call's claim stays)."""
    att, ex = load_current(ctx, eid)
    claim = (att or {}).get(docs.DECLARING) or {}
    if (
        att is not None
        and ex is not None
        and att["cur_execution"] == eid.num
        and claim.get("execution") == eid.num
        and claim.get("call") == call
        and token_matches(ex, token)
    ):
        del att[docs.DECLARING]
        ctx.uow.put(docs.attempt_path(eid.attempt_id), att)
    return []


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
