"""The logic behind dm's Cloud Functions, independent of any web framework.

Each handler takes a :class:`~dmcore.server.http.Request` (or a CloudEvent's
data) and returns a :class:`~dmcore.server.http.Response`, using the
process's backend (:func:`dmcore.runtime.backend.get`) unless one is passed. The
entry points in ``functions/`` only convert Flask's request and response.

=============  ==========================================================
``api``        dm.Deps over pRPC (:mod:`dmcore.server.prpc`)
``tasks``      Cloud Tasks deliveries (:mod:`dmcore.server.tasks`)
``sweep``      Cloud Scheduler's tick (:mod:`dmcore.server.tasks`)
``notify``     Pub/Sub notifications (:mod:`dmcore.server.notify`)
=============  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dmcore import logs
from dmcore.engine.layout import LayoutMismatch
from dmcore.errors import Code
from dmcore.runtime import backend as backends
from dmcore.server import notify as _notify
from dmcore.server import prpc as _prpc
from dmcore.server import tasks as _tasks
from dmcore.server.http import Request, Response

__all__ = [
    "DRIVER_VAR",
    "NoWorker",
    "Request",
    "Response",
    "api",
    "check_standalone",
    "notify",
    "start",
    "sweep",
    "tasks",
]

log = logs.get("dm.server")


def start() -> backends.Backend:
    """Configure logs and build the backend now (a cold start refuses a bad config)."""
    logs.configure()
    return backends.get()


DRIVER_VAR = "DM_EMBEDDED_DRIVER"
"""Set by whoever runs the embedded task queue of a process that serves the functions
(``dm serve``'s worker thread, tests that drain the queue themselves)."""

NO_WORKER = (
    "dm: the embedded backend (DM_BACKEND unset or 'embedded') queues its work for a worker "
    "that a bare functions-framework process does not have: requests would be accepted and "
    "never run. Use `dm serve` (the four functions in one process, with a worker) or "
    "`dm dev` (each function in its own functions-framework process, on the gcp backend "
    "against local emulators), or set DM_BACKEND=gcp."
)


class NoWorker(RuntimeError):
    """The functions were loaded on the embedded backend with nothing to run its queue."""


def check_standalone(env: Mapping[str, str]) -> None:
    """Refuse to load the functions where work would be accepted and never run.

    A process that serves them (functions-framework) on the embedded backend
    has no worker unless someone says they run the queue (:data:`DRIVER_VAR`).
    """
    if env.get("K_SERVICE"):
        return  # Cloud Run: the backend is built (and checked) at start-up
    kind = env.get("DM_BACKEND", "").strip() or "embedded"
    if kind == "embedded" and not env.get(DRIVER_VAR, "").strip():
        raise NoWorker(NO_WORKER)


def _backend() -> backends.Backend | Response:
    try:
        return start()
    except backends.ConfigError as e:
        log.critical("dm is misconfigured", reason=str(e))
        return Response.error(Code.INTERNAL, "internal error (dm is misconfigured; see logs)")


def _ready(b: backends.Backend) -> Response | None:
    """None when ``b``'s store holds this dm's record layout, else the answer saying not."""
    try:
        b.ready()
    except LayoutMismatch as e:
        log.critical("the store holds another record layout", reason=e.message)
        return Response.error(e.code, e.message)
    return None


def _http(req: Request, fn: Any, backend: backends.Backend | None) -> Response:
    b = backend or _backend()
    if isinstance(b, Response):
        return b
    if (refused := _ready(b)) is not None:
        return refused
    with logs.request_context(req.headers):
        out: Response = fn(b, req)
        return out


def api(req: Request, backend: backends.Backend | None = None) -> Response:
    """dm_api: ``POST /prpc/dm.Deps/<Method>``."""
    return _http(req, _prpc.handle, backend)


def tasks(req: Request, backend: backends.Backend | None = None) -> Response:
    """dm_tasks: ``POST /mutation`` or ``/distributor/<config name>``."""
    return _http(req, _tasks.handle_task, backend)


def sweep(req: Request, backend: backends.Backend | None = None) -> Response:
    """dm_sweep: ``POST /``."""
    return _http(req, _tasks.handle_sweep, backend)


def notify(
    data: Any,
    ce_attributes: Mapping[str, Any],
    backend: backends.Backend | None = None,
    *,
    authorization: str = "",
) -> str:
    """dm_notify: one Pub/Sub message; raises when it should be delivered again.

    ``authorization``: the push's ``Authorization`` header. A refused caller
    raises a :class:`~dmcore.errors.DMError` (the entry point answers its status).
    """
    b = backend or start()
    b.ready()  # LayoutMismatch: a DMError, answered with its status
    return _notify.handle(b, data, ce_attributes, authorization)
