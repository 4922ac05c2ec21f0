"""Results that expire (DESIGN.md §3: "marked expired and shown as such, never
reused silently"; docs/behaviour.md).

A finished attempt whose result carries an expiration is marked ``is_expired``
once it has passed: at once if it already had when the attempt finished, else
by :class:`~dmcore.engine.steps.ExpireResult`, queued when due (by the sweep,
or as a delayed task when due within the hour). Reads do not wait for the
mark (:func:`~dmcore.engine.records.attempt_expired`). The attempt stays
FINISHED: a finished result is immutable, never re-run; dm just stops serving
it, and a new attempt computes a fresh one.
"""

from __future__ import annotations

from dmcore.engine import docs, steps
from dmcore.engine.base import Ctx, Later, Step, rolls_forward
from dmcore.engine.records import result_expired
from dmcore.ids import AttemptID
from dmcore.states import AttemptState


@rolls_forward(steps.ExpireResult)
def expire_result(step: steps.ExpireResult, ctx: Ctx) -> list[Step | Later]:
    aid = AttemptID.decode(step.aid)
    apath = docs.attempt_path(aid)
    att = ctx.uow.get(apath)
    if att is None:
        return []
    done = att["state"] != AttemptState.FINISHED or bool(att.get("is_expired"))
    if not done:
        if not result_expired(att.get("result"), ctx.now_us):
            return []  # early (a clock behind the queue's): the sweep fires it again
        att["is_expired"] = True
        docs.bump_modified(att, ctx.now_us)
        ctx.uow.put(apath, att)
    if docs.EXPIRY_DUE in att:
        del att[docs.EXPIRY_DUE]  # nothing left for the sweep
        ctx.uow.put(apath, att)
    return []
