"""Notification auth tokens: who may report on an execution, and until when.

A distributor publishes notifications with an ``auth_token`` attribute that dm
minted in ``Config.prepare_topic``. The token is an HMAC-SHA256 (keyed by a
secret from configuration, never from code) over the execution ID, the
distributor config name and an expiry, so a message can only speak for the
execution and config it was issued for, and only for 48 hours (spec §4.3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from dmcore.ids import ExecutionID

VERSION = 1
LIFETIME_US = 48 * 3600 * 1_000_000


class BadToken(Exception):
    """The token is malformed, forged, expired or of an unknown version."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(secret: bytes, eid: ExecutionID, config_name: str, now_us: int) -> str:
    """A token for ``eid`` under ``config_name``, valid for 48 hours from ``now_us``."""
    body = json.dumps(
        {
            "v": VERSION,
            "q": eid.quest,
            "a": eid.attempt,
            "e": eid.num,
            "c": config_name,
            "x": now_us + LIFETIME_US,
        },
        separators=(",", ":"),
    ).encode()
    sig = hmac.new(secret, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(sig)}"


def verify(secret: bytes, token: str, now_us: int) -> tuple[ExecutionID, str]:
    """The execution and config name a valid token speaks for; BadToken otherwise."""
    try:
        body_b64, sig_b64 = token.split(".")
        body, sig = _unb64(body_b64), _unb64(sig_b64)
    except (ValueError, TypeError):
        raise BadToken("malformed auth_token") from None
    if not hmac.compare_digest(sig, hmac.new(secret, body, hashlib.sha256).digest()):
        raise BadToken("auth_token signature does not match")
    try:
        claims = json.loads(body)
        if claims["v"] != VERSION:
            raise BadToken(f"auth_token version {claims['v']} not supported")
        eid = ExecutionID(str(claims["q"]), int(claims["a"]), int(claims["e"]))
        config, expiry = str(claims["c"]), int(claims["x"])
    except (ValueError, KeyError, TypeError):
        raise BadToken("malformed auth_token claims") from None
    if now_us > expiry:
        raise BadToken("auth_token expired")
    return eid, config
