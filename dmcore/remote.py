"""Jobs that run away from dm: the dm.Deps API over pRPC, identity tokens, reports.

A job started by a remote distributor (``http``, ``cloud_run_jobs``,
``swarming_v1``) reaches dm through ``dm_api`` over HTTP; this module is that
side of the wire, used by :mod:`dmcore.job`:

* :class:`RemoteClient`: the four dm.Deps calls as ``POST
  {url}/prpc/dm.Deps/<Method>`` with binary protobuf (the codec of
  :mod:`dmcore.server.prpc`). A pRPC error becomes the :class:`DMError` of its
  ``X-Prpc-Grpc-Code``; Unavailable, 5xx answers and broken connections are
  retried with backoff (every call a job makes is idempotent: activation with
  the same token, identical FinishAttempt, EnsureGraphData) for up to
  ``DM_API_RETRY_BUDGET_S`` seconds (:data:`DEFAULT_RETRY_BUDGET_S`), then
  raise :class:`~dmcore.errors.Unavailable` (:class:`Unanswered` when a try got
  no word from dm that it did nothing: it may have been done).
* :func:`id_token_source`: a Google ID token for a private ``dm_api`` (or a
  private worker), from the metadata server on Google Cloud or from the
  service account file named by ``GOOGLE_APPLICATION_CREDENTIALS``, through
  google-auth; refreshed before it expires.
* :class:`Reporter`: how a job tells its distributor how its execution ended
  (the state to hand to the next execution, or a failure): a notification
  carrying the ``auth_token`` dm minted for the execution, published to dm's
  Pub/Sub topic, or POSTed as a Pub/Sub push body straight to ``dm_notify``
  (``dm serve``, where there is no Pub/Sub).
* :class:`WorkOrder`: what a remote distributor hands a job (the execution's
  auth, dm's address, the quest's parameters, the previous state, where to
  report), as one JSON document.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from google.protobuf import json_format, message

from dmcore.errors import (
    Code,
    DMError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2

PRPC_CONTENT_TYPE = "application/prpc; encoding=binary"
GRPC_CODE_HEADER = "X-Prpc-Grpc-Code"
SERVICE_PATH = "/prpc/dm.Deps/"

CALL_TIMEOUT_S = 60.0
RETRIES = 5
"""Tries of one call of a distributor's own (on a failed answer or a broken
connection): how often, where dm's calls have a time budget."""

RETRY_BUDGET_ENV = "DM_API_RETRY_BUDGET_S"
DEFAULT_RETRY_BUDGET_S = 60.0
"""How long a call to dm (a job's, remote or of an embedded dm, a report pushed to
dm_notify) goes on retrying UNAVAILABLE, 5xx and 429 answers and broken
connections, counted from its first try: no try starts past it (one started before
may run its own timeout). dm answers UNAVAILABLE while another call holds the
declaration it needs (a crashed call's claim: up to 2 min), and giving up costs the
http worker one of its deliveries (``http_max_attempts``, 3 by default, 10 s and
20 s apart); on the last one the worker reports the execution CRASHED (retried by
dm under ``meta.retry.crashed``). 7.5 s (the budget of old) let a dm busy for about
a minute use up every delivery; 60 s rides out a claim of 2 min within two
deliveries and stays well under the http distributor's default dispatch deadline
(10 min). A worker whose config sets a short ``deadline`` wants a budget well
under it."""
BACKOFF_S = (0.5, 8.0)
"""The first pause between tries and the longest (doubled in between)."""

TokenSource = Callable[[], str]
"""Returns a bearer token (a Google ID token) for the next request."""

M = TypeVar("M", bound=message.Message)


_ERRORS: dict[int, type[DMError]] = {
    int(c.code): c
    for c in (
        InvalidArgument,
        NotFound,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        Unimplemented,
        Unavailable,
        Internal,
    )
}


def _error_for(code: int, text: str) -> DMError:
    """The DMError of pRPC code ``code`` (a plain DMError with that code if dm has none)."""
    cls = _ERRORS.get(code)
    if cls is not None:
        return cls(text)
    err = DMError(text)
    try:
        err.code = Code(code)
    except ValueError:
        err.code = Code.UNKNOWN
    return err


def id_token_source(audience: str) -> TokenSource:
    """Google ID tokens for ``audience`` (cached until shortly before they expire).

    google-auth finds the credentials: the metadata server on Google Cloud,
    or ``GOOGLE_APPLICATION_CREDENTIALS`` (a service account key file). A
    missing source raises :class:`Unavailable` naming what to set.
    """
    import google.auth.exceptions
    import google.auth.transport.requests
    from google.oauth2 import id_token

    lock = threading.Lock()
    state: dict[str, Any] = {}

    def token() -> str:
        with lock:
            request = google.auth.transport.requests.Request()
            try:
                creds = state.get("creds")
                if creds is None:
                    creds = state["creds"] = id_token.fetch_id_token_credentials(  # type: ignore[no-untyped-call]
                        audience, request=request
                    )
                if not creds.valid:
                    creds.refresh(request)
            except google.auth.exceptions.DefaultCredentialsError as e:
                raise Unavailable(
                    f"no credentials for an ID token for {audience} (on Google Cloud the "
                    f"metadata server gives one; elsewhere set GOOGLE_APPLICATION_CREDENTIALS "
                    f"to a service account key file): {e}"
                ) from None
            except google.auth.exceptions.GoogleAuthError as e:
                raise Unavailable(f"cannot get an ID token for {audience}: {e}") from None
            return str(creds.token)

    return token


def default_audience(url: str) -> str:
    """The audience a private service at ``url`` expects in an ID token.

    Cloud Run takes its service URL (the origin: ``https://SERVICE-HASH.a.run.app``);
    a Cloud Function at ``https://REGION-PROJECT.cloudfunctions.net/NAME`` takes the
    function's URL, name included (the first path segment).
    """
    parts = urllib.parse.urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    if (parts.hostname or "").endswith(".cloudfunctions.net"):
        name = parts.path.strip("/").split("/", 1)[0]
        return f"{origin}/{name}" if name else origin
    return origin


def default_token_source(url: str, audience: str = "") -> TokenSource | None:
    """ID tokens for an https ``url`` (audience: ``audience`` or
    :func:`default_audience`); None for plain http (a local ``dm serve``, which
    checks no identity)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        return None
    return id_token_source(audience or default_audience(url))


def pause_before_retry(
    tries: int, spent_s: float, *, budget_s: float | None, retries: int | None = None
) -> float | None:
    """How long to wait before asking again after ``tries`` failed tries, the first
    started ``spent_s`` seconds ago (backoff :data:`BACKOFF_S`); None: give up, the
    ``retries`` are used up or the next try would start past ``budget_s``. One rule
    for every caller of dm (:class:`HttpCaller`, ``dmcore.client.RetryingClient``):
    one notion of how long a job waits for a busy dm."""
    if retries is not None and tries >= retries:
        return None
    pause: float = min(BACKOFF_S[1], BACKOFF_S[0] * 2.0 ** (tries - 1))
    if budget_s is not None and spent_s + pause > budget_s:
        return None
    return pause


def retry_budget_from_env(env: Mapping[str, str] = os.environ) -> float:
    """The retry budget ``DM_API_RETRY_BUDGET_S`` sets (seconds, a number > 0), or
    :data:`DEFAULT_RETRY_BUDGET_S`; InvalidArgument names the variable."""
    text = env.get(RETRY_BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_RETRY_BUDGET_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{RETRY_BUDGET_ENV}: expected seconds > 0, got {text!r}")
    return value


class Unanswered(Unavailable):
    """Unavailable where a try got no word from dm that the call did nothing: no
    answer came, or a 5xx/429 answer from something in front of dm (a timeout there
    may come after dm did the call), whatever later tries were told. A call whose
    every try dm itself answered UNAVAILABLE (nothing written) raises plain
    :class:`~dmcore.errors.Unavailable`; a call that stops an execution and ends
    so may have stopped it."""


class HttpCaller:
    """POSTs with an optional bearer token, retrying what may pass.

    How long: ``retries`` tries when given (a distributor's own calls), else for
    ``budget_s`` seconds (default :func:`retry_budget_from_env`: dm's API and
    reports); with both, whichever ends first. ``sleep`` and ``clock`` are
    injected (tests run them on a fake clock).
    """

    def __init__(
        self,
        token: TokenSource | None = None,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        retries: int | None = None,
        budget_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.timeout_s = timeout_s
        self.retries = None if retries is None else max(1, retries)
        if budget_s is None and retries is None:
            budget_s = retry_budget_from_env()
        self.budget_s = budget_s
        self.sleep = sleep
        self.clock = clock
        # Never through a proxy: dm_api is reached directly (and loopback in tests).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange: (status, headers, body); raises OSError when no answer came."""
        h = dict(headers)
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(url, data=body, headers=h, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as rsp:
                return int(rsp.status), dict(rsp.headers.items()), rsp.read()
        except urllib.error.HTTPError as e:
            try:
                return int(e.code), dict(e.headers.items()), e.read()
            finally:
                e.close()

    def retrying(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        again: Callable[[int, Mapping[str, str]], bool | None] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """:meth:`request`, again on no answer and on 5xx/429 answers (backoff 0.5 s,
        1 s, ... 8 s), within the tries or the budget. ``again`` may decide for an
        answer instead: True asks again (the server's own word that the request did
        nothing), False takes it as it is, None keeps the rule. Then raises
        :class:`Unavailable` if every failure was such a True, else
        :class:`Unanswered`: one try without the server's word may have been done
        (an answer lost on the way), whatever the later tries were told."""
        start = self.clock()
        last = ""
        doubt = False  # a failure without the server's word that nothing was done
        tries = 0
        while True:
            if tries:
                pause = pause_before_retry(
                    tries, self.clock() - start, budget_s=self.budget_s, retries=self.retries
                )
                if pause is None:
                    break
                self.sleep(pause)
            tries += 1
            try:
                status, h, data = self.request(method, url, body, headers)
            except OSError as e:
                last, doubt = f"no answer from {url}: {e}", True
                continue
            verdict = None if again is None else again(status, h)
            said = verdict is True
            if verdict is None:
                verdict = status >= 500 or status == 429
            if verdict:
                doubt = doubt or not said
                last = f"{url} answered {status}: {data[:200].decode(errors='replace').strip()}"
                continue
            return status, h, data
        spent = self.clock() - start
        raise (Unanswered if doubt else Unavailable)(
            f"{last} (after {tries} attempts in {spent:.1f} s)"
        )


def _prpc_code(headers: Mapping[str, str]) -> int | None:
    code = {k.lower(): v for k, v in headers.items()}.get(GRPC_CODE_HEADER.lower())
    return None if code is None else int(code)


def _unavailable(status: int, headers: Mapping[str, str]) -> bool | None:
    """Ask again when dm answered UNAVAILABLE, whatever the HTTP status (pRPC's is
    503), and never on dm's other codes: UNIMPLEMENTED (a dm older than the job),
    INTERNAL or RESOURCE_EXHAUSTED would answer the same for the whole budget. An
    answer without a pRPC code (a front end's 502, 429) keeps the 5xx/429 rule."""
    code = _prpc_code(headers)
    return None if code is None else code == int(Code.UNAVAILABLE)


class RemoteClient:
    """The dm.Deps API of the dm at ``url`` (its ``dm_api`` base URL), over pRPC."""

    def __init__(self, url: str, caller: HttpCaller | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidArgument(f"dm API URL must be http(s): {url!r}")
        self.url = url.rstrip("/")
        self.caller = caller or HttpCaller(default_token_source(self.url))

    def call(self, method: str, req: message.Message, out: M) -> M:
        """Call ``method``; parse the answer into ``out`` (DMError on a pRPC error;
        Unavailable once the caller's tries or budget are spent: :class:`Unanswered`
        unless every failed try was answered dm's own UNAVAILABLE)."""
        headers = {"Content-Type": PRPC_CONTENT_TYPE, "Accept": PRPC_CONTENT_TYPE}
        url = self.url + SERVICE_PATH + method
        status, h, body = self.caller.retrying(
            "POST", url, req.SerializeToString(), headers, again=_unavailable
        )
        code = _prpc_code(h)
        if code is None:
            raise Internal(f"{url} answered {status} without a pRPC code (not dm_api?)")
        if code != int(Code.OK):
            raise _error_for(code, body.decode(errors="replace").strip())
        try:
            out.ParseFromString(body)
        except message.DecodeError as e:
            raise Internal(f"{url}: undecodable answer: {e}") from None
        return out

    def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
        return self.call("EnsureGraphData", req, dm_pb2.EnsureGraphDataRsp())

    def activate_execution(self, req: dm_pb2.ActivateExecutionReq) -> None:
        from google.protobuf import empty_pb2

        self.call("ActivateExecution", req, empty_pb2.Empty())

    def finish_attempt(self, req: dm_pb2.FinishAttemptReq) -> None:
        from google.protobuf import empty_pb2

        self.call("FinishAttempt", req, empty_pb2.Empty())

    def walk_graph(self, req: dm_pb2.WalkGraphReq) -> dm_pb2.GraphData:
        return self.call("WalkGraph", req, dm_pb2.GraphData())


# -- reports: how a job tells its distributor how it ended -----------------------------------

REPORT_STOPPED = "stopped"
"""The execution stopped (FinishAttempt, or halted for dependencies); ``state`` follows."""
REPORT_FAILED = "failed"
REPORT_CRASHED = "crashed"
REPORTS = (REPORT_STOPPED, REPORT_FAILED, REPORT_CRASHED)


@dataclasses.dataclass(frozen=True)
class Report:
    """What a job reports; the JSON body of its notification."""

    kind: str
    state: Any = None
    reason: str = ""

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"report": self.kind}
        if self.kind == REPORT_STOPPED:
            doc["state"] = {} if self.state is None else self.state
        else:
            doc["reason"] = self.reason
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Report:
        """Raises ValueError for anything that is not a report."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("report") not in REPORTS:
            raise ValueError("not a dm job report")
        return cls(str(doc["report"]), doc.get("state"), str(doc.get("reason", "")))


@dataclasses.dataclass(frozen=True)
class Notify:
    """Where a job's reports go: a Pub/Sub ``topic`` or a push ``url``, with ``auth_token``."""

    auth_token: str
    topic: str = ""
    url: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Notify:
        n = cls(str(d.get("auth_token", "")), str(d.get("topic", "")), str(d.get("url", "")))
        if not n.auth_token or not (n.topic or n.url):
            raise ValueError("notify: needs auth_token and a topic or a url")
        return n


def push_envelope(
    data: bytes,
    attrs: Mapping[str, str],
    subscription: str = "projects/-/subscriptions/dm-job-report",
) -> bytes:
    """A Pub/Sub push body for one message, as Pub/Sub POSTs it to dm_notify."""
    body = {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": dict(attrs),
            "messageId": uuid.uuid4().hex,
            "publishTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "subscription": subscription,
    }
    return json.dumps(body).encode()


class Reporter:
    """Delivers reports of one execution (see :class:`Notify`)."""

    def __init__(self, notify: Notify, execution: str, caller: HttpCaller | None = None) -> None:
        self.notify = notify
        self.execution = execution
        self.caller = caller

    def send(self, report: Report) -> None:
        """Deliver ``report`` (raises Unavailable if it could not be delivered)."""
        data = report.to_bytes()
        attrs = {"auth_token": self.notify.auth_token, "execution": self.execution}
        if self.notify.url:
            self._push(data, attrs)
            return
        from dmcore.notify.pubsub import PubSubPublisher

        publisher = PubSubPublisher(self.notify.topic)
        try:
            publisher.publish(data, attrs)
        except Exception as e:
            raise Unavailable(f"cannot publish the report to {self.notify.topic}: {e}") from e
        finally:
            publisher.close()

    def _push(self, data: bytes, attrs: Mapping[str, str]) -> None:
        caller = self.caller or HttpCaller(default_token_source(self.notify.url))
        status, _, text = caller.retrying(
            "POST",
            self.notify.url,
            push_envelope(data, attrs),
            {"Content-Type": "application/json"},
        )
        if not 200 <= status < 300:
            raise Unavailable(f"{self.notify.url} refused the report: {status} {text[:200]!r}")


# -- the work order a remote distributor hands a job ----------------------------------------


@dataclasses.dataclass
class WorkOrder:
    """Everything a remote job needs to run one execution (the ``http`` task body).

    ``parameters`` / ``state`` are None when they were left out to fit the
    transport's size limit; the job then reads them through the API.
    """

    auth: dm_pb2.Execution.Auth
    dm_api_url: str
    quest_id: str
    parameters: str | None = None
    distributor_parameters: str = "{}"
    state: Any = None
    notify: Notify | None = None
    max_attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "auth": json_format.MessageToDict(self.auth),
            "dm_api_url": self.dm_api_url,
            "quest_id": self.quest_id,
            "distributor_parameters": self.distributor_parameters,
            "max_attempts": self.max_attempts,
        }
        if self.parameters is not None:
            doc["parameters"] = self.parameters
        if self.state is not None:
            doc["state"] = self.state
        if self.notify is not None:
            doc["notify"] = self.notify.to_dict()
        return doc

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkOrder:
        """Raises ValueError naming what is wrong."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"work order is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise ValueError("work order must be a JSON object")
        auth = dm_pb2.Execution.Auth()
        try:
            json_format.ParseDict(doc.get("auth") or {}, auth)
        except json_format.ParseError as e:
            raise ValueError(f"work order auth: {e}") from None
        if not auth.id.quest or not auth.token:
            raise ValueError("work order auth: needs the execution id and token")
        try:
            ExecutionID.from_proto(auth.id)
        except InvalidArgument as e:
            raise ValueError(f"work order auth: {e.message}") from None
        for key in ("dm_api_url", "quest_id"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise ValueError(f"work order {key}: required")
        params = doc.get("parameters")
        if params is not None and not isinstance(params, str):
            raise ValueError("work order parameters: must be JSON text")
        notify = Notify.from_dict(doc["notify"]) if doc.get("notify") else None
        return cls(
            auth=auth,
            dm_api_url=doc["dm_api_url"],
            quest_id=doc["quest_id"],
            parameters=params,
            distributor_parameters=str(doc.get("distributor_parameters") or "{}"),
            state=doc.get("state"),
            notify=notify,
            max_attempts=int(doc.get("max_attempts") or 0),
        )


def state_of(prev: dm_pb2.JsonResult | None) -> Any:
    """The ``state`` of a remote execution's result (``{"state": ...}``), or None."""
    if prev is None or not prev.object:
        return None
    try:
        obj = json.loads(prev.object)
    except ValueError:
        return None
    return obj.get("state") if isinstance(obj, dict) else None
