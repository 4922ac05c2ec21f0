"""dm's errors, each carrying the gRPC status code the API answers with.

Entry points map ``code`` to HTTP (pRPC) or gRPC status; the engine raises
these so that bad input and auth failures never surface as tracebacks.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """gRPC status codes dm uses (values are gRPC's)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class DMError(Exception):
    """An error with a status code; its message is safe to show the caller."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DMError, ValueError):
    """The request is malformed; the message names the field."""

    code = Code.INVALID_ARGUMENT


class NotFound(DMError):
    code = Code.NOT_FOUND


class PermissionDenied(DMError):
    code = Code.PERMISSION_DENIED


class Unauthenticated(DMError):
    code = Code.UNAUTHENTICATED


class FailedPrecondition(DMError):
    code = Code.FAILED_PRECONDITION


class Unimplemented(DMError):
    code = Code.UNIMPLEMENTED


class Unavailable(DMError):
    """A condition that may pass (contention, an outage): try again later."""

    code = Code.UNAVAILABLE


class Internal(DMError):
    code = Code.INTERNAL
