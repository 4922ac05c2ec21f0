"""Converting werkzeug (Flask) requests and responses at the functions' edge."""

from __future__ import annotations

from collections.abc import Callable

from werkzeug.wrappers import Request as WRequest
from werkzeug.wrappers import Response as WResponse

from dmcore.errors import Code
from dmcore.server.http import MAX_BODY, Request, Response


def read(request: WRequest) -> Request | Response:
    """The request as a :class:`Request`, or a 413 answer if the body is too large.

    A body without Content-Length (chunked) is read up to ``MAX_BODY + 1``
    bytes only, so an oversized body is never buffered whole.
    """
    too_big = Response.error(
        Code.RESOURCE_EXHAUSTED, f"request body over {MAX_BODY} bytes", status=413
    )
    if request.content_length is not None:
        if request.content_length > MAX_BODY:
            return too_big
        body = request.get_data()
    else:
        body = request.stream.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return too_big
    return Request(request.method, request.path, dict(request.headers.items()), body)


def write(rsp: Response) -> WResponse:
    return WResponse(rsp.body, status=rsp.status, headers=rsp.headers)


def serve(request: WRequest, handler: Callable[[Request], Response]) -> WResponse:
    """``write(handler(read(request)))``, answering 413 without calling the handler."""
    got = read(request)
    return write(got if isinstance(got, Response) else handler(got))
