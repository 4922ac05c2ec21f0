"""dm_api: the dm.Deps service, pRPC over HTTPS (``POST /prpc/dm.Deps/<Method>``)."""

from __future__ import annotations

import flask
import functions_framework
from werkzeug.wrappers import Response

from dmcore import server
from dmcore.server import wsgi


@functions_framework.http
def dm_api(request: flask.Request) -> Response:
    return wsgi.serve(request, server.api)
