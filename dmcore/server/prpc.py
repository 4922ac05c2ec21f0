"""The dm.Deps service over pRPC (``POST /prpc/dm.Deps/<Method>``), as LUCI's pRPC speaks it.

Codecs (request ``Content-Type``): ``application/json`` and
``application/prpc; encoding=json`` (protobuf JSON), ``application/prpc;
encoding=binary``, ``application/x-protobuf``, ``application/protobuf`` or no
Content-Type (binary), ``application/prpc; encoding=text`` (text format).
``Accept`` picks the response codec; missing or ``*/*`` means the request's
(pRPC answers binary then; answering in kind is friendlier to curl and
changes nothing for pRPC clients, which always send Accept).
JSON responses start with ``)]}'\\n`` (pRPC's anti-XSSI prefix; pRPC clients
strip it). Every answer carries ``X-Prpc-Grpc-Code``; errors are a plain-text
message with the HTTP status pRPC maps the code to.

Deliberate choices:

* JSON requests are parsed strictly: an unknown field is InvalidArgument
  naming it (a typo must not be silently ignored). An empty body is the
  empty message in every codec.
* Unknown service or method: 501 Unimplemented (as pRPC); any path outside
  ``/prpc/``: 404 NotFound; a method other than POST: 405.
* Unsupported Content-Type: 415 (code InvalidArgument); no acceptable
  response codec: 406 (code InvalidArgument); body over 32 MiB: 413 (code
  ResourceExhausted); undecodable body: 400 naming the problem.
* Unexpected exceptions: 500 "internal error", logged with the stack, never
  shown to the caller.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable

from google.protobuf import empty_pb2, json_format, message, text_format

from dmcore import logs
from dmcore.distributor import TransientError
from dmcore.errors import Code, DMError, InvalidArgument, Unauthenticated, Unavailable
from dmcore.proto import dm_pb2
from dmcore.runtime.backend import Backend
from dmcore.server import auth
from dmcore.server.http import GRPC_CODE_HEADER, MAX_BODY, Request, Response
from dmcore.service import Caller, Service
from dmcore.store.base import Contention

log = logs.get("dm.api")

PREFIX = "/prpc/"
SERVICE = "dm.Deps"
JSON_PREFIX = b")]}'\n"


class Format(enum.Enum):
    BINARY = "application/prpc; encoding=binary"
    JSON = "application/json"
    TEXT = "application/prpc; encoding=text"


@dataclasses.dataclass(frozen=True)
class Method:
    request: type[message.Message]
    call: Callable[[Service, message.Message, Caller], message.Message | None]
    by_token: Callable[[message.Message], bool]
    """Whether this request is authorised by an execution token (not by the ACLs)."""


def _m(
    req: type[message.Message],
    call: Callable[[Service, message.Message, Caller], message.Message | None],
    by_token: Callable[[message.Message], bool],
) -> Method:
    return Method(req, call, by_token)


METHODS: dict[str, Method] = {
    "EnsureGraphData": _m(
        dm_pb2.EnsureGraphDataReq,
        lambda s, r, c: s.ensure_graph_data(r, c),  # type: ignore[arg-type]
        lambda r: r.HasField("for_execution"),
    ),
    "ActivateExecution": _m(
        dm_pb2.ActivateExecutionReq,
        lambda s, r, c: s.activate_execution(r),  # type: ignore[arg-type]
        lambda r: True,
    ),
    "FinishAttempt": _m(
        dm_pb2.FinishAttemptReq,
        lambda s, r, c: s.finish_attempt(r),  # type: ignore[arg-type]
        lambda r: True,
    ),
    "WalkGraph": _m(
        dm_pb2.WalkGraphReq,
        lambda s, r, c: s.walk_graph(r, c),  # type: ignore[arg-type]
        lambda r: r.HasField("auth"),
    ),
    "CancelAttempt": _m(
        dm_pb2.CancelAttemptReq,
        lambda s, r, c: s.cancel_attempt(r, c),  # type: ignore[arg-type]
        lambda r: False,
    ),
}


def _media(value: str) -> tuple[str, dict[str, str]]:
    """``type/sub; k=v`` -> (``type/sub``, {k: v}), lower-cased."""
    mt, *rest = value.split(";")
    params: dict[str, str] = {}
    for p in rest:
        k, sep, v = p.partition("=")
        if not sep:
            raise ValueError(f"bad media type parameter {p.strip()!r}")
        params[k.strip().lower()] = v.strip().strip('"').lower()
    return mt.strip().lower(), params


def format_of(mt: str, params: dict[str, str]) -> Format | None:
    """The codec a media type names; None for a wildcard (``*/*``, ``application/*``)."""
    if mt == "application/prpc":
        if set(params) - {"encoding"}:
            raise ValueError(f"unexpected parameter {sorted(set(params) - {'encoding'})[0]!r}")
        enc = params.get("encoding", "")
        if enc in ("", "binary"):
            return Format.BINARY
        if enc == "json":
            return Format.JSON
        if enc == "text":
            return Format.TEXT
        raise ValueError(f"invalid encoding {enc!r} (binary, json or text)")
    if mt == "application/json":
        return Format.JSON
    if mt in ("application/x-protobuf", "application/protobuf"):
        return Format.BINARY
    if mt in ("*/*", "application/*"):
        return None
    raise ValueError(f"unsupported media type {mt!r}")


def request_format(content_type: str) -> Format:
    if not content_type.strip():
        return Format.BINARY  # pRPC: no Content-Type means binary
    mt, params = _media(content_type)
    fmt = format_of(mt, params)
    return Format.BINARY if fmt is None else fmt


def response_format(accept: str, default: Format) -> Format:
    """The best codec in ``Accept`` (q-values honoured); ``default`` for none or ``*/*``."""
    if not accept.strip():
        return default
    best: tuple[float, int, int, Format] | None = None
    for i, part in enumerate(accept.split(",")):
        if not part.strip():
            continue
        try:
            mt, params = _media(part)
            q = float(params.pop("q", "1"))
            fmt = format_of(mt, params)
        except ValueError:
            continue
        if q <= 0:
            continue
        specific = 0 if fmt is None else 1
        cand = (q, specific, -i, fmt or default)
        if best is None or cand[:3] > best[:3]:
            best = cand
    if best is None:
        raise ValueError("no supported media type (application/json, application/prpc)")
    return best[3]


def decode(fmt: Format, body: bytes, msg: message.Message) -> None:
    if not body:
        return
    try:
        if fmt is Format.BINARY:
            msg.ParseFromString(body)
        elif fmt is Format.JSON:
            json_format.Parse(body.decode("utf-8"), msg, ignore_unknown_fields=False)
        else:
            text_format.Parse(body.decode("utf-8"), msg)
    except UnicodeDecodeError:
        raise InvalidArgument("could not decode body: not UTF-8 text") from None
    except (json_format.ParseError, text_format.ParseError) as e:
        raise InvalidArgument(f"could not decode body: {e}") from None
    except RecursionError:
        raise InvalidArgument("could not decode body: nested too deeply") from None
    except Exception as e:  # protobuf's DecodeError and friends
        raise InvalidArgument(f"could not decode body as {msg.DESCRIPTOR.full_name}: {e}") from None


def encode(fmt: Format, msg: message.Message) -> bytes:
    if fmt is Format.BINARY:
        return msg.SerializeToString()
    if fmt is Format.JSON:
        return JSON_PREFIX + json_format.MessageToJson(msg, indent=None).encode()
    return text_format.MessageToString(msg).encode()


def handle(backend: Backend, req: Request) -> Response:
    """Serve one pRPC request (never raises)."""
    started = time.monotonic()
    method_name = req.path.rsplit("/", 1)[-1] if req.path.startswith(PREFIX) else ""
    identity = ""
    try:
        rsp, method_name, identity = _serve(backend, req)
    except DMError as e:
        rsp = _error(e)
    except (Contention, TransientError) as e:
        log.warning("pRPC call hit a transient error", path=req.path, error=str(e))
        rsp = _error(Unavailable("temporarily unavailable; try again"))
    except Exception:
        log.exception("pRPC call failed", path=req.path)
        rsp = Response.error(Code.INTERNAL, "internal error")
    code = Code(int(rsp.headers.get(GRPC_CODE_HEADER, "0")))
    fields = {
        "rpc": method_name or req.path,
        "status": rsp.status,
        "code": code.name,
        "caller": identity,
        "ms": round((time.monotonic() - started) * 1000, 1),
    }
    if rsp.status >= 500 and rsp.status != 501:
        log.error("pRPC call", **fields, error=rsp.body.decode(errors="replace").strip())
    else:
        log.info("pRPC call", **fields)
    return rsp


def _error(e: DMError) -> Response:
    return Response.error(e.code, e.message)


def _serve(backend: Backend, req: Request) -> tuple[Response, str, str]:
    if not req.path.startswith(PREFIX):
        return (
            Response.error(Code.NOT_FOUND, f"no such endpoint {req.path!r} (POST /prpc/...)"),
            "",
            "",
        )
    service, _, name = req.path[len(PREFIX) :].partition("/")
    if req.method != "POST":
        rsp = Response.error(Code.INVALID_ARGUMENT, "only POST is allowed", status=405)
        rsp.headers["Allow"] = "POST"
        return rsp, name, ""
    method = METHODS.get(name) if service == SERVICE else None
    if method is None:
        what = f"method {name!r} of service {service!r}" if service == SERVICE else service
        return Response.error(Code.UNIMPLEMENTED, f"{what!s} is not implemented"), name, ""
    if len(req.body) > MAX_BODY:
        return (
            Response.error(
                Code.RESOURCE_EXHAUSTED, f"request body over {MAX_BODY} bytes", status=413
            ),
            name,
            "",
        )
    try:
        in_fmt = request_format(req.header("Content-Type"))
    except ValueError as e:
        return Response.error(Code.INVALID_ARGUMENT, f"Content-Type: {e}", status=415), name, ""
    try:
        out_fmt = response_format(req.header("Accept"), in_fmt)
    except ValueError as e:
        return Response.error(Code.INVALID_ARGUMENT, f"Accept: {e}", status=406), name, ""
    msg = method.request()
    decode(in_fmt, req.body, msg)
    caller = auth.api_caller(req, backend.auth)
    if caller == Caller.anonymous() and not method.by_token(msg):
        raise Unauthenticated("credentials required (Authorization: Bearer <ID token>)")
    out = method.call(backend.service, msg, caller)
    body = encode(out_fmt, out if out is not None else empty_pb2.Empty())
    headers = {
        "Content-Type": out_fmt.value,
        GRPC_CODE_HEADER: "0",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(200, headers, body), name, caller.identity
