"""Who is calling: Google-signed OIDC ID tokens, checked in the function itself.

Cloud Run already rejects unauthenticated calls to a private function; we
verify again (defence in depth) because the ACLs need the caller's email:
``DM_WRITERS`` may create and cancel, ``DM_READERS`` (and writers) may walk
the graph, only ``DM_INVOKER_SERVICE_ACCOUNT`` (Cloud Tasks, Cloud
Scheduler) may run tasks and sweeps, and only ``DM_PUSH_SERVICE_ACCOUNT``
(the Pub/Sub push subscription) may deliver notifications. Each token must be
signed by Google (issuer ``accounts.google.com``), for one of
``DM_OIDC_AUDIENCE``, unexpired, with a verified email. Execution calls carry their own tokens
and are authorised by them, so the API lets an unidentified caller reach the
service for those.

google-auth's verifier fetches Google's certificates on every call; the
transport here caches that response for a few minutes. Tests inject a fake
transport with :func:`set_http_request`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dmcore.errors import PermissionDenied, Unauthenticated, Unavailable
from dmcore.runtime.backend import AUTH_NONE, AuthConfig
from dmcore.server.http import Request
from dmcore.service import Caller

CERTS_CACHE_S = 300.0
CLOCK_SKEW_S = 10

HttpRequest = Callable[..., Any]
"""google-auth's transport shape: ``request(url, method="GET", **kw) -> response``."""

_transport: dict[str, HttpRequest] = {}
_transport_lock = threading.Lock()


def set_http_request(request: HttpRequest | None) -> None:
    """Use ``request`` to fetch Google's certificates (tests); None = the real one."""
    with _transport_lock:
        _transport.clear()
        if request is not None:
            _transport["request"] = _CachingRequest(request)


def _http_request() -> HttpRequest:
    with _transport_lock:
        if "request" not in _transport:
            import google.auth.transport.requests

            _transport["request"] = _CachingRequest(google.auth.transport.requests.Request())
        return _transport["request"]


class _CachingRequest:
    """Caches successful GETs (Google's certificates) for :data:`CERTS_CACHE_S`."""

    def __init__(self, inner: HttpRequest) -> None:
        self.inner = inner
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str, method: str = "GET", **kw: Any) -> Any:
        if method != "GET":
            return self.inner(url, method=method, **kw)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(url)
        if hit is not None and now - hit[0] < CERTS_CACHE_S:
            return hit[1]
        rsp = self.inner(url, method=method, **kw)
        if getattr(rsp, "status", None) == 200:
            with self._lock:
                self._cache[url] = (now, rsp)
        return rsp


def bearer_token(req: Request) -> str | None:
    """The ``Authorization: Bearer`` token, None if there is no Authorization header."""
    return bearer(req.header("Authorization"))


def bearer(authorization: str) -> str | None:
    """The token of an ``Authorization`` header's value, None if it is empty."""
    value = authorization.strip()
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization: expected 'Bearer <Google ID token>'")
    return token.strip()


def verify_id_token(token: str, audiences: tuple[str, ...]) -> str:
    """The verified email in a Google ID token for one of ``audiences``.

    Raises Unauthenticated for a bad, expired or foreign token (the reason
    is kept short: the caller learns what to fix, not our configuration) and
    Unavailable when Google's certificates cannot be fetched.
    """
    import google.auth.exceptions
    from google.oauth2 import id_token

    try:
        claims = id_token.verify_oauth2_token(  # type: ignore[no-untyped-call]
            token,
            _http_request(),
            audience=list(audiences),
            clock_skew_in_seconds=CLOCK_SKEW_S,
        )
    except google.auth.exceptions.TransportError:
        raise Unavailable("cannot fetch Google's token certificates; try again") from None
    except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
        text = str(e).lower()
        if "expired" in text:
            why = "ID token expired"
        elif "audience" in text:
            why = "ID token has the wrong audience"
        elif "issuer" in text:
            why = "ID token is not issued by Google"
        else:
            why = "invalid ID token"
        raise Unauthenticated(why) from None
    email = str(claims.get("email") or "").strip().lower()
    if not email:
        raise Unauthenticated("ID token has no email claim")
    if claims.get("email_verified") not in (True, "true"):
        raise Unauthenticated("ID token's email is not verified")
    return email


def identify(req: Request, cfg: AuthConfig) -> str | None:
    """The caller's verified email, None if the request carries no credentials.

    With ``DM_AUTH=none`` nobody is identified (everyone is trusted instead).
    """
    if cfg.mode == AUTH_NONE:
        return None
    token = bearer_token(req)
    if token is None:
        return None
    return verify_id_token(token, cfg.audiences)


def api_caller(req: Request, cfg: AuthConfig) -> Caller:
    """The ACL view of a dm_api caller (spec §3.7)."""
    if cfg.mode == AUTH_NONE:
        return Caller("anonymous (auth off)", True, True)
    email = identify(req, cfg)
    if email is None:
        return Caller.anonymous()
    writer = email in cfg.writers
    return Caller(email, writer or email in cfg.readers, writer)


def require_invoker(req: Request, cfg: AuthConfig) -> None:
    """dm_tasks / dm_sweep: only the configured invoker service account."""
    _require(req.header("Authorization"), cfg, cfg.invoker)


def require_push(authorization: str, cfg: AuthConfig) -> None:
    """dm_notify: only the push subscription's service account (``Authorization`` value)."""
    _require(authorization, cfg, cfg.push)


def _require(authorization: str, cfg: AuthConfig, allowed: str) -> None:
    if cfg.mode == AUTH_NONE:
        return
    token = bearer(authorization)
    if token is None:
        raise Unauthenticated("credentials required (Authorization: Bearer <ID token>)")
    email = verify_id_token(token, cfg.audiences)
    if email != allowed.lower():
        raise PermissionDenied(f"{email} may not call this function")
