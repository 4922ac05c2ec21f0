"""Framework-neutral HTTP request/response values and dm's status mappings.

The handlers in :mod:`dmcore.server` take a :class:`Request` and return a
:class:`Response`, so the Cloud Functions entry points (Flask) and any other
host only convert at the edge, and the logic is testable without a server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from dmcore.errors import Code

MAX_BODY = 32 * 1024 * 1024
"""Largest request body accepted (above: 413). EnsureGraphData caps results at 30 MiB."""

HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 412,
    Code.ABORTED: 409,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.UNAUTHENTICATED: 401,
}
"""gRPC code -> HTTP status, as pRPC maps them (go.chromium.org/luci/grpc/grpcutil)."""

GRPC_CODE_HEADER = "X-Prpc-Grpc-Code"


@dataclasses.dataclass(frozen=True)
class Request:
    """An HTTP request; header names are matched case-insensitively."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", {k.lower(): v for k, v in self.headers.items()})

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    @classmethod
    def text(cls, status: int, message: str, **headers: str) -> Response:
        """A plain-text answer (errors: the message only, never a traceback)."""
        body = message if message.endswith("\n") else message + "\n"
        return cls(
            status,
            {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}
            | {k.replace("_", "-"): v for k, v in headers.items()},
            body.encode(),
        )

    @classmethod
    def error(cls, code: Code, message: str, status: int | None = None) -> Response:
        """A pRPC-style error: text body, HTTP status and the gRPC code header."""
        rsp = cls.text(HTTP_STATUS.get(code, 500) if status is None else status, message)
        rsp.headers[GRPC_CODE_HEADER] = str(int(code))
        if code == Code.UNAUTHENTICATED:
            rsp.headers["WWW-Authenticate"] = "Bearer"
        return rsp
