"""A finished attempt reaches its dependers: the forward edge of each inline
depender (the attempt's ``dependers``), and each unpropagated back edge
(``attempts/{aid}/back_deps/{depender}``) and its forward edge, are acked, a
batch per step (``Settings.propagate_batch``), the first in the transaction
that ends the attempt (:func:`~dmcore.engine.records.completion_follow_ups`),
then the step chaining itself until none is left. "Finished" is the attempt's
own state: no document of its own. The ack closing a depender's last open
edge queues its check (:func:`~dmcore.engine.deps.ack_fwd_dep`).
"""

from __future__ import annotations

import logging

from dmcore.engine import docs, steps
from dmcore.engine.base import Ctx, Later, Step, rolls_forward
from dmcore.engine.records import attempt_is_terminal
from dmcore.ids import AttemptID

log = logging.getLogger("dm.engine")


def may_have_back_docs(att: docs.Doc) -> bool:
    """Whether attempt ``att`` may have unpropagated back-edge documents.

    A live attempt's dependers are inline until it has ``INLINE_DEPENDERS``
    (an AddBackDep always finds its dependee: a declaration creates it with its
    depender, ``EnsureAttempt.depender``); those added while it had ended are
    propagated already, until a re-open (``reopened``) un-propagates them. So an
    attempt with fewer and never re-opened has none: its end queries nothing.
    """
    inline = att.get(docs.DEPENDERS, [])
    return len(inline) >= docs.INLINE_DEPENDERS or bool(att.get("reopened"))


@rolls_forward(steps.PropagateCompletion)
def propagate_completion(step: steps.PropagateCompletion, ctx: Ctx) -> list[Step | Later]:
    dependee = AttemptID.decode(step.aid)
    att = ctx.uow.get(docs.attempt_path(dependee))
    if att is None or not attempt_is_terminal(att):
        return []  # late: the attempt was re-opened since; its next end propagates
    batch = ctx.engine.settings.propagate_batch
    rows: list[tuple[str, docs.Doc]] = []
    if step.more or may_have_back_docs(att):
        rows = ctx.uow.query(
            docs.back_deps_collection(dependee), {"propagated": False}, limit=batch
        )
    out: list[Step | Later] = []
    if not step.more:
        # The inline dependers, once: their acks do nothing to a satisfied edge.
        for d in att.get(docs.DEPENDERS, []):
            out.append(Later(steps.AckFwdDep(depender=d, dependee=step.aid), together=True))
    for path, doc in rows:
        ctx.uow.put(path, {**doc, "propagated": True})
        # Each forward edge acked in this transaction (its own document: no hot spot
        # however many dependers); only the dependers' checks are queued.
        ack = steps.AckFwdDep(depender=docs.last_id(path), dependee=step.aid)
        out.append(Later(ack, together=True))
    if len(rows) == batch:
        out.append(steps.PropagateCompletion(aid=step.aid, more=True))
    return out
