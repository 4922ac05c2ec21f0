"""dm_sweep: Cloud Scheduler's tick (``POST``): re-dispatch the outbox, fire due timers."""

from __future__ import annotations

import flask
import functions_framework
from werkzeug.wrappers import Response

from dmcore import server
from dmcore.server import wsgi


@functions_framework.http
def dm_sweep(request: flask.Request) -> Response:
    return wsgi.serve(request, server.sweep)
