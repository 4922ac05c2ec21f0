"""dm_tasks: Cloud Tasks deliveries (``POST /mutation``, ``/distributor/<config name>``)."""

from __future__ import annotations

import flask
import functions_framework
from werkzeug.wrappers import Response

from dmcore import server
from dmcore.server import wsgi


@functions_framework.http
def dm_tasks(request: flask.Request) -> Response:
    return wsgi.serve(request, server.tasks)
