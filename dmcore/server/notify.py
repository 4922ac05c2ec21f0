"""``dm_notify``: distributor notifications arriving from Pub/Sub as CloudEvents.

The event's data is Pub/Sub's ``{"message": {"data": base64, "attributes":
{...}, "messageId": ...}, "subscription": ...}``. What we answer (the
function returns -> 200; raises -> functions-framework answers 500):

* processed, or dropped by the engine (no / bad / expired / foreign
  ``auth_token``, unknown execution): acknowledged, logged. Dropping is
  final: redelivery cannot make a bad token good (DESIGN §6).
* an envelope that is not a Pub/Sub message (no ``message``, data not
  base64, attributes not strings): acknowledged and logged as an error,
  since no retry can fix it.
* the engine raised (store contention, a distributor outage): raise, so
  Pub/Sub delivers again (bound it with the subscription's dead-letter policy).
* a raw push body without ``message.data`` or ``messageId`` never reaches
  us: functions-framework answers 400 itself (it cannot build a CloudEvent).
* ``DM_AUTH=oidc``: the push must carry a Google ID token of
  ``DM_PUSH_SERVICE_ACCOUNT`` for one of ``DM_OIDC_AUDIENCE``; otherwise
  :class:`~dmcore.errors.Unauthenticated` / ``PermissionDenied`` (401 / 403:
  Pub/Sub retries, then dead-letters) before anything is read, or
  ``Unavailable`` (503) when Google's certificates cannot be fetched.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from dmcore import logs
from dmcore.errors import DMError
from dmcore.runtime.backend import Backend
from dmcore.server import auth

log = logs.get("dm.notify")

MALFORMED = "dropped: malformed Pub/Sub message"


def decode_message(data: Any) -> tuple[bytes, dict[str, str], str]:
    """``(data, attributes, message id)`` of a Pub/Sub CloudEvent's data.

    Raises ValueError naming what is malformed.
    """
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError:
            raise ValueError("event data is not JSON") from None
    if not isinstance(data, Mapping):
        raise ValueError("event data is not a JSON object")
    msg = data.get("message")
    if not isinstance(msg, Mapping):
        raise ValueError("event data has no 'message' object")
    raw = msg.get("data") or ""
    if not isinstance(raw, str):
        raise ValueError("message.data is not a base64 string")
    try:
        body = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("message.data is not valid base64") from None
    attrs = msg.get("attributes") or {}
    if not isinstance(attrs, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
    ):
        raise ValueError("message.attributes is not a map of strings")
    mid = msg.get("messageId") or msg.get("message_id") or ""
    return body, dict(attrs), str(mid)


def handle(
    backend: Backend, data: Any, ce_attributes: Mapping[str, Any], authorization: str = ""
) -> str:
    """Process one notification; returns "ok" or why it was dropped; raises to be retried.

    ``authorization`` is the push request's ``Authorization`` header (checked
    with ``DM_AUTH=oidc``; a refusal raises a DMError).
    """
    trace = {"traceparent": str(ce_attributes.get("traceparent", ""))}
    with logs.request_context(trace, event_id=str(ce_attributes.get("id", ""))):
        try:
            auth.require_push(authorization, backend.auth)
        except DMError as e:
            log.warning("push refused", reason=e.message, event_id=str(ce_attributes.get("id")))
            raise
        try:
            body, attrs, mid = decode_message(data)
        except ValueError as e:
            log.error("notification dropped", reason=f"malformed Pub/Sub message: {e}")
            return MALFORMED
        shown = {k: v for k, v in attrs.items() if k != "auth_token"}
        try:
            outcome = backend.engine.receive_notification(body, attrs)
        except Exception:
            log.exception("notification failed; Pub/Sub will redeliver", message_id=mid)
            raise
        if outcome == "ok":
            log.info("notification processed", message_id=mid, attributes=shown)
        else:
            log.warning("notification dropped", message_id=mid, reason=outcome, attributes=shown)
        return outcome
