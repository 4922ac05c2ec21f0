"""A finished attempt reaches its dependers: marked terminal on its back-edge
group, then each unpropagated back edge and
its forward edge are acked, a batch per step (``Settings.propagate_batch``),
the step chaining itself until none is left; each depender's check is queued.
"""

from __future__ import annotations

import logging

from dmcore.engine import docs, steps
from dmcore.engine.base import Ctx, Later, Step, rolls_forward
from dmcore.engine.records import attempt_is_terminal
from dmcore.ids import AttemptID

log = logging.getLogger("dm.engine")


@rolls_forward(steps.RecordCompletion)
def record_completion(step: steps.RecordCompletion, ctx: Ctx) -> list[Step | Later]:
    aid = AttemptID.decode(step.aid)
    gpath = docs.back_dep_group_path(aid)
    got = ctx.uow.get_many([gpath, docs.attempt_path(aid)])
    group = got[gpath]
    if (
        group is None
        or group["attempt_finished"]
        or not attempt_is_terminal(got[docs.attempt_path(aid)])
    ):
        # Done, or late: the attempt was re-opened since (dmcore.engine.reopen). No
        # group: no back edge yet, and the first AddBackDep finds the attempt ended
        # (a group made here would outlive a re-open with no depended flag to end it).
        return []
    ctx.uow.put(gpath, {"attempt_finished": True})
    # In a later transaction, so AddBackDeps that read the group before this
    # write either committed first (and are seen) or retry and see it.
    return [steps.PropagateCompletion(aid=step.aid)]


@rolls_forward(steps.PropagateCompletion)
def propagate_completion(step: steps.PropagateCompletion, ctx: Ctx) -> list[Step | Later]:
    dependee = AttemptID.decode(step.aid)
    group = ctx.uow.get(docs.back_dep_group_path(dependee))
    if group is None or not group["attempt_finished"]:
        return []  # late: the attempt was re-opened since; its next end propagates
    batch = ctx.engine.settings.propagate_batch
    rows = ctx.uow.query(docs.back_deps_collection(dependee), {"propagated": False}, limit=batch)
    out: list[Step | Later] = []
    for path, doc in rows:
        ctx.uow.put(path, {**doc, "propagated": True})
        # Each forward edge acked in this transaction (its own document: no hot spot
        # however many dependers); only the dependers' checks are queued.
        ack = steps.AckFwdDep(depender=docs.last_id(path), dependee=step.aid)
        out.append(Later(ack, together=True))
    if len(rows) == batch:
        out.append(steps.PropagateCompletion(aid=step.aid))
    return out
