"""dm_notify: distributor notifications from the Pub/Sub topic, as CloudEvents.

Returning acknowledges the message (also when it is dropped: a bad token
stays bad); raising makes functions-framework answer 500, so Pub/Sub
delivers it again.
"""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from dmcore import server


@functions_framework.cloud_event
def dm_notify(event: CloudEvent) -> None:
    server.notify(event.get_data(), event.get_attributes())
