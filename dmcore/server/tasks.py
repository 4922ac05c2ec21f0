"""``dm_tasks`` (Cloud Tasks deliveries) and ``dm_sweep`` (Cloud Scheduler ticks).

dm_tasks answers, by design:

* 200 "ok": the task ran (or the engine decided it has nothing to do).
* 400: the delivery cannot be decoded (body not ``{"name", "payload"}``, no
  ``X-CloudTasks-TaskRetryCount``). Cloud Tasks retries 4xx like 5xx, up to
  the queue's ``max_attempts``: we accept that instead of acknowledging
  (200) a task we cannot read, because during a rolling deploy it may come
  from a newer dm that the next revision understands. The queue's retry
  limit bounds the cost; the error is logged.
* 404: a path that is no target (``/mutation``, ``/distributor/<cfg>``).
* 500: the engine raised (contention, a distributor outage, an unknown step
  kind from a newer version): Cloud Tasks delivers it again.
* 401 / 403 (``DM_AUTH=oidc``): no / a bad token, or an identity other than
  ``DM_INVOKER_SERVICE_ACCOUNT``. 405: not POST. 413: body over 32 MiB.

dm_sweep: POST -> 200 with the sweep's counts as JSON; 500 if it failed.
"""

from __future__ import annotations

import json

from dmcore import logs
from dmcore.errors import Code, DMError
from dmcore.runtime.backend import Backend
from dmcore.server import auth
from dmcore.server.http import MAX_BODY, Request, Response

log = logs.get("dm.tasks")

TARGET_KINDS = ("mutation", "distributor")


def _gate(backend: Backend, req: Request) -> Response | None:
    """Method, size and invoker checks shared by dm_tasks and dm_sweep."""
    if req.method != "POST":
        rsp = Response.error(Code.INVALID_ARGUMENT, "only POST is allowed", status=405)
        rsp.headers["Allow"] = "POST"
        return rsp
    if len(req.body) > MAX_BODY:
        return Response.error(
            Code.RESOURCE_EXHAUSTED, f"request body over {MAX_BODY} bytes", status=413
        )
    try:
        auth.require_invoker(req, backend.auth)
    except DMError as e:
        log.warning("caller refused", path=req.path, reason=e.message)
        return Response.error(e.code, e.message)
    return None


def handle_task(backend: Backend, req: Request) -> Response:
    """Run one Cloud Tasks delivery on the engine (never raises)."""
    from dmcore.queue.cloudtasks import decode_request

    refused = _gate(backend, req)
    if refused is not None:
        return refused
    kind = req.path.lstrip("/").partition("/")[0]
    if kind not in TARGET_KINDS:
        return Response.error(
            Code.NOT_FOUND, f"no task target at {req.path!r} (/mutation or /distributor/<cfg>)"
        )
    try:
        target, payload, delivery, name = decode_request(req.headers, req.body, req.path)
    except ValueError as e:
        log.error("undecodable task refused", path=req.path, reason=str(e))
        return Response.error(Code.INVALID_ARGUMENT, f"bad task: {e}")
    with logs.request_context({}, task=name, target=target, delivery=delivery):
        try:
            backend.engine.handle_task(target, payload, delivery, name)
        except Exception:
            log.exception("task failed; Cloud Tasks will retry")
            return Response.error(Code.INTERNAL, "task failed; will be retried")
    return Response.text(200, "ok")


def handle_sweep(backend: Backend, req: Request) -> Response:
    """Re-dispatch stale outbox records and fire due timers (never raises)."""
    refused = _gate(backend, req)
    if refused is not None:
        return refused
    try:
        counts = backend.engine.sweep()
    except Exception:
        log.exception("sweep failed")
        return Response.error(Code.INTERNAL, "sweep failed")
    log.info("sweep", **counts)
    return Response(200, {"Content-Type": "application/json"}, json.dumps(counts).encode())
