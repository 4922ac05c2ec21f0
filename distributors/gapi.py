"""Google API errors in the distributor contract's words (transient or final).

Shared by the distributors that call Google APIs (``http``: Cloud Tasks,
``cloud_run_jobs``: Cloud Run). What may pass is a :class:`TransientError`
(dm retries): unavailability, deadlines, quota and rate limits, internal
errors, aborted calls, a broken connection, a credentials refresh that
failed in transport (the metadata server did not answer). What will not pass
without a person (permissions, a bad request, a missing resource, no
credentials at all) is final.
"""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from dmcore.distributor import TransientError

TRANSIENT: tuple[type[BaseException], ...] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.TooManyRequests,  # RESOURCE_EXHAUSTED: quota, rate limits
    gexc.Aborted,
    gexc.Unknown,
    gexc.GatewayTimeout,
    gexc.RetryError,
    ConnectionError,
    TimeoutError,
    auth_exc.TransportError,
)


class GoogleApiError(ValueError):
    """A final error from a Google API (permissions, bad request, missing resource)."""


def classify(e: BaseException, what: str) -> Exception:
    """The exception to raise for ``e`` met while doing ``what``."""
    text = f"{what}: {type(e).__name__}: {getattr(e, 'message', None) or e}"
    if isinstance(e, TRANSIENT) or (isinstance(e, auth_exc.GoogleAuthError) and e.retryable):
        return TransientError(text)
    return GoogleApiError(text)
