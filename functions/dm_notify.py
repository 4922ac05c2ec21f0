"""dm_notify: distributor notifications from the Pub/Sub topic, as CloudEvents.

Returning acknowledges the message (also when it is dropped: a bad token
stays bad); raising makes functions-framework answer 500, so Pub/Sub
delivers it again. A refused caller (``DM_AUTH=oidc``: the push's OIDC
token) gets the refusal's own status (401, 403, or 503).
"""

from __future__ import annotations

import flask
import functions_framework
from cloudevents.http import CloudEvent

from dmcore import server
from dmcore.errors import DMError
from dmcore.server import Response, wsgi


@functions_framework.cloud_event
def dm_notify(event: CloudEvent) -> None:
    try:
        server.notify(
            event.get_data(),
            event.get_attributes(),
            authorization=flask.request.headers.get("Authorization", ""),
        )
    except DMError as e:
        flask.abort(wsgi.write(Response.error(e.code, e.message)))
