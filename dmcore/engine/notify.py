"""Distributor notifications and the tasks a distributor queues for itself."""

from __future__ import annotations

import logging

from dmcore import distributor as dist
from dmcore.engine import docs, steps
from dmcore.engine.base import executes
from dmcore.engine.core import Engine
from dmcore.engine.records import (
    b64,
    result_doc_from_proto,
    unb64,
)
from dmcore.ids import ExecutionID
from dmcore.states import (
    ExecutionState,
    is_terminal_execution,
)

log = logging.getLogger("dm.engine")


@executes(steps.NotifyExecution)
def notify_execution(step: steps.NotifyExecution, engine: Engine, delivery: int) -> None:
    eid = ExecutionID.parse(step.eid)
    ex = docs.read_execution(engine.store, eid)
    if ex is None:
        log.warning("notification for unknown execution %s dropped", eid)
        return
    if is_terminal_execution(ExecutionState(ex["state"])) or not ex.get("config"):
        return
    if step.config_name and ex["config"]["name"] != step.config_name:
        log.warning("notification for %s from foreign config %r dropped", eid, step.config_name)
        return
    try:
        d, _ = engine.registry.build(dist.Snapshot.from_doc(ex["config"]))
    except dist.UnknownConfig as e:
        # Final for this notification: raising would have it delivered again forever.
        log.error("notification for %s dropped: %s", eid, e)
        return
    desc = engine.quest_desc(eid.quest)
    assert desc is not None
    note = dist.Notification(eid, unb64(step.data_b64), dict(step.attrs))
    res = d.handle_notification(desc, note)
    if res is not None:
        engine.run(steps.FinishExecution(eid=step.eid, result=result_doc_from_proto(res)))


@executes(steps.HandleDistributorTask)
def handle_distributor_task(
    step: steps.HandleDistributorTask, engine: Engine, delivery: int
) -> None:
    try:
        if step.config is not None:
            d, _ = engine.registry.build(dist.Snapshot.from_doc(step.config))
        else:
            d, _ = engine.registry.build_named(step.config_name)
    except dist.UnknownConfig as e:
        log.error("task for distributor config %r dropped: %s", step.config_name, e)
        return
    notes = d.handle_task_queue_task(dist.TaskRequest(unb64(step.body_b64)))
    if engine.publish is not None:
        # Through the notification topic, as any external distributor reports. A
        # failure fails the task: redelivered, jobsim (and any distributor
        # following the contract) hands the same notifications back.
        for n in notes:
            engine.publish(
                n.data, engine.notification_attrs(step.config_name, n.execution_id, n.attrs)
            )
        return
    for n in notes:
        try:
            if step.config is not None:
                _end_as_notified(engine, d, n)
            else:
                # A task queued before tasks carried their config: the distributor
                # was built from the config as it is now, not the execution's
                # snapshot (W-11); the execution's own record decides, as for any
                # notification (and drops one from a foreign config).
                notify_execution(
                    steps.NotifyExecution(
                        eid=str(n.execution_id),
                        data_b64=b64(n.data),
                        attrs=dict(n.attrs),
                        config_name=step.config_name,
                    ),
                    engine,
                    delivery,
                )
        except Exception:
            # Keep the notification: queue it to be retried on its own.
            log.exception("notification for %s failed; queued for retry", n.execution_id)
            engine.enqueue(
                steps.NotifyExecution(
                    eid=str(n.execution_id), data_b64=b64(n.data), attrs=dict(n.attrs)
                )
            )


def _end_as_notified(engine: Engine, d: dist.D, note: dist.Notification) -> None:
    """A notification the distributor's own task handed back, handled by that same
    distributor (built from the task's config: the execution's snapshot, W-11).

    Unlike :func:`notify_execution` it does not read the execution first (one read
    of the attempt less per execution): FinishExecution reads it in its transaction
    and ignores an execution that is unknown, not current or ended already.
    """
    desc = engine.quest_desc(note.execution_id.quest)
    if desc is None:
        log.warning("notification for unknown execution %s dropped", note.execution_id)
        return
    res = d.handle_notification(desc, note)
    if res is not None:
        engine.run(
            steps.FinishExecution(eid=str(note.execution_id), result=result_doc_from_proto(res))
        )
