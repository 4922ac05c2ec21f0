"""A local STAND-IN for Google Cloud Tasks: a small Cloud Tasks v2 gRPC server.

This is not Cloud Tasks. No faithful Cloud Tasks emulator exists (the PyPI
one does not dedupe task names, which is the feature dm relies on), so the
Cloud Tasks adapter (:mod:`dmcore.queue.cloudtasks`) is tested through the
official client against this stand-in, and ``dm dev`` runs it in place of
Cloud Tasks (``DM_TASKS_EMULATOR_HOST``). It implements what dm and the
client need of ``google.cloud.tasks.v2.CloudTasks`` for HTTP tasks, after
Cloud Tasks' documented behaviour:

* ``CreateTask`` with Cloud Tasks' name dedup: a name that is pending, or that
  ran, failed for good or was deleted less than ``tombstone_us`` ago, answers
  ``ALREADY_EXISTS``. Also the documented checks (id charset, schedule time at
  most 30 days ahead, dispatch deadline in [15 s, 30 min], 100 KB size).
* ``GetTask``, ``DeleteTask``, ``ListTasks`` (pending tasks only, paged), with
  the BASIC view leaving out the HTTP body as the real one does.
* Dispatch: :meth:`CloudTasksStandIn.run_due` POSTs every due task to its URL
  synchronously (the deterministic way for tests);
  :meth:`~CloudTasksStandIn.start_dispatcher` does the same from a background
  thread, one task at a time. Headers as real Cloud Tasks sends them:
  ``X-CloudTasks-QueueName`` (short queue id), ``-TaskName`` (short task id),
  ``-TaskRetryCount`` (earlier attempts), ``-TaskExecutionCount`` (earlier
  attempts that got a non-5xx answer), ``-TaskETA`` (the attempt's schedule
  time, seconds since the epoch), ``-TaskPreviousResponse`` on retries that
  follow an answer, ``User-Agent: Google-Cloud-Tasks``.
* No OIDC token is minted unless ``oidc_token_factory`` is given; then
  ``Authorization: Bearer <factory(service account, audience)>`` is sent for
  tasks that ask for one (a test can plug in a locally signed JWT).
* Non-2xx answers (and no answer) are retried with Cloud Tasks' backoff
  (``min_backoff`` doubling ``max_doublings`` times, then growing linearly, capped
  at ``max_backoff``) until ``max_attempts`` (-1 = unlimited); then the task
  is dropped, its name kept as a tombstone.

Time comes only from the injected ``clock`` (microseconds since the epoch);
:meth:`next_due_us` tells a test how far to move a fake clock. The HTTP call
itself uses real time only for its timeout (the task's dispatch deadline).
Not modelled: rate limits, queue pause/purge, App Engine tasks, RunTask,
Retry-After.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2

SEC = 1_000_000
SERVICE = "google.cloud.tasks.v2.CloudTasks"
TOMBSTONE_US = 3600 * SEC
MAX_TASK_BYTES = 100_000
MAX_SCHEDULE_AHEAD_US = 30 * 24 * 3600 * SEC
DEFAULT_DEADLINE_S = 600
PRUNE_AT = 10_000
"""Records kept before expired tombstones are dropped."""

_QUEUE_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/queues/([A-Za-z0-9-]{1,100})$")
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
_BODY_METHODS = {tasks_v2.HttpMethod.POST, tasks_v2.HttpMethod.PUT, tasks_v2.HttpMethod.PATCH}

Clock = Callable[[], int]
OidcTokenFactory = Callable[[str, str], str]
"""(service account email, audience) -> bearer token."""


@dataclasses.dataclass
class StandInTask:
    """The stand-in's record of one task (a snapshot when handed to a test)."""

    queue: str
    """Full queue path."""
    task_id: str
    created: tasks_v2.Task
    """The task as the client sent it (``schedule_time`` set only if it sent one)."""
    create_us: int
    schedule_us: int
    """When the next attempt is due."""
    dispatch_count: int = 0
    """Attempts made so far (the next attempt's X-CloudTasks-TaskRetryCount)."""
    response_count: int = 0
    execution_count: int = 0
    """Attempts answered with a non-5xx status (X-CloudTasks-TaskExecutionCount)."""
    state: str = "pending"
    """pending, succeeded, failed (attempts exhausted) or deleted."""
    ended_us: int | None = None
    last_status: int | None = None
    in_flight: bool = False

    @property
    def name(self) -> str:
        return f"{self.queue}/tasks/{self.task_id}"


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """One HTTP attempt the stand-in made."""

    task_id: str
    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    at_us: int
    status: int
    """HTTP status, or 0 when no answer came (connection error, deadline)."""


class _Abort(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _ts_us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * SEC + ts.nanos // 1000


def _ts(us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=us // SEC, nanos=us % SEC * 1000)


class CloudTasksStandIn:
    """A STAND-IN for the Cloud Tasks v2 API on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Clock,
        queues: Iterable[str] | None = None,
        max_attempts: int = 100,
        min_backoff_us: int = SEC // 10,
        max_backoff_us: int = 3600 * SEC,
        max_doublings: int = 16,
        tombstone_us: int = TOMBSTONE_US,
        oidc_token_factory: OidcTokenFactory | None = None,
        keep_dispatches: int | None = None,
    ) -> None:
        """``queues``: full queue paths that exist (None: any queue exists);
        ``keep_dispatches``: how many :attr:`dispatches` to remember (None: all)."""
        self.clock = clock
        self.queues = None if queues is None else set(queues)
        self.max_attempts = max_attempts
        self.min_backoff_us = min_backoff_us
        self.max_backoff_us = max_backoff_us
        self.max_doublings = max_doublings
        self.tombstone_us = tombstone_us
        self.oidc_token_factory = oidc_token_factory
        self.dispatches: collections.deque[Dispatch] = collections.deque(maxlen=keep_dispatches)
        self.port = 0
        self._tasks: dict[str, StandInTask] = {}  # full name -> record
        self._prune_at = PRUNE_AT
        self._faults: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channels: list[Any] = []
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._server: Any = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> CloudTasksStandIn:
        """Binds 127.0.0.1 on a free port and serves."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers((self._handlers(),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> tasks_v2.CloudTasksClient:
        """The official client, talking to this stand-in over an insecure channel."""
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))

    def stop(self) -> None:
        self.stop_dispatcher()
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> CloudTasksStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls and introspection -------------------------------------

    def fail_next(self, method: str, code: str, times: int = 1, message: str = "injected") -> None:
        """The next ``times`` calls of ``method`` (e.g. "CreateTask") fail with ``code``."""
        with self._lock:
            self._faults.setdefault(method, []).extend([(code, message)] * times)

    def tasks(self, state: str | None = "pending") -> list[StandInTask]:
        """Snapshots of the records in ``state`` (None: all, tombstones included)."""
        with self._lock:
            return [
                dataclasses.replace(t)
                for _, t in sorted(self._tasks.items())
                if state is None or t.state == state
            ]

    def task(self, task_id: str) -> StandInTask | None:
        """A snapshot of the record with this short id (any queue, any state)."""
        with self._lock:
            for t in self._tasks.values():
                if t.task_id == task_id:
                    return dataclasses.replace(t)
        return None

    def next_due_us(self) -> int | None:
        """When the earliest pending task is due (may be past); None if none is pending."""
        with self._lock:
            due = [t.schedule_us for t in self._tasks.values() if t.state == "pending"]
        return min(due, default=None)

    def backoff_us(self, attempts: int) -> int:
        """Delay after the ``attempts``-th failed attempt, as Cloud Tasks' retry config."""
        k = max(attempts - 1, 0)
        if k <= self.max_doublings:
            delay = self.min_backoff_us << k
        else:
            delay = (self.min_backoff_us << self.max_doublings) * (k - self.max_doublings + 1)
        return min(delay, self.max_backoff_us)

    # -- dispatch ------------------------------------------------------------

    def run_due(self, limit: int | None = None) -> int:
        """Dispatches due tasks one by one until none is due now; returns the attempts made.

        Tasks created by handlers meanwhile are included if due; retries are
        not (their backoff puts them in the future unless the clock moves).
        """
        done = 0
        while limit is None or done < limit:
            rec = self._claim_due()
            if rec is None:
                break
            self._attempt(rec)
            done += 1
        return done

    def start_dispatcher(self, poll_s: float = 0.02) -> None:
        """Runs :meth:`run_due` in a background thread (woken by each CreateTask)."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.clear()
                self.run_due()
                self._wake.wait(poll_s)

        self._thread = threading.Thread(target=loop, name="cloudtasks-standin", daemon=True)
        self._thread.start()

    def stop_dispatcher(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self._thread = None

    def _claim_due(self) -> StandInTask | None:
        with self._lock:
            now = self.clock()
            due = [
                t
                for t in self._tasks.values()
                if t.state == "pending" and not t.in_flight and t.schedule_us <= now
            ]
            if not due:
                return None
            rec = min(due, key=lambda t: (t.schedule_us, t.name))
            rec.in_flight = True
            return rec

    def _attempt(self, rec: StandInTask) -> None:
        http = rec.created.http_request
        queue_id = rec.queue.rsplit("/", 1)[1]
        headers = {k: v for k, v in http.headers.items() if k.lower() not in _REPLACED}
        with self._lock:
            headers.update(
                {
                    "User-Agent": "Google-Cloud-Tasks",
                    "X-CloudTasks-QueueName": queue_id,
                    "X-CloudTasks-TaskName": rec.task_id,
                    "X-CloudTasks-TaskRetryCount": str(rec.dispatch_count),
                    "X-CloudTasks-TaskExecutionCount": str(rec.execution_count),
                    "X-CloudTasks-TaskETA": f"{rec.schedule_us // SEC}.{rec.schedule_us % SEC:06d}",
                }
            )
            if rec.dispatch_count and rec.last_status:
                headers["X-CloudTasks-TaskPreviousResponse"] = str(rec.last_status)
            at_us = self.clock()
        body = bytes(http.body)
        if body and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"
        oidc = http.oidc_token
        if self.oidc_token_factory is not None and oidc.service_account_email:
            token = self.oidc_token_factory(oidc.service_account_email, oidc.audience or http.url)
            headers["Authorization"] = f"Bearer {token}"
        method = tasks_v2.HttpMethod(http.http_method or tasks_v2.HttpMethod.POST).name
        deadline = tasks_v2.Task.pb(rec.created).dispatch_deadline
        timeout_s = deadline.ToTimedelta().total_seconds() or DEFAULT_DEADLINE_S
        req = urllib.request.Request(http.url, data=body or None, headers=headers, method=method)
        status = 0
        try:
            with self._http.open(req, timeout=timeout_s) as resp:
                resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
            e.close()
        except OSError:
            status = 0
        with self._lock:
            self.dispatches.append(
                Dispatch(rec.task_id, http.url, method, headers, body, at_us, status)
            )
            rec.in_flight = False
            if rec.state != "pending":  # deleted while in flight: the answer is ignored
                return
            rec.dispatch_count += 1
            if status:
                rec.response_count += 1
                rec.last_status = status
                if status < 500:
                    rec.execution_count += 1
            now = self.clock()
            if 200 <= status < 300:
                rec.state, rec.ended_us = "succeeded", now
            elif 0 <= self.max_attempts <= rec.dispatch_count:
                rec.state, rec.ended_us = "failed", now
            else:
                rec.schedule_us = now + self.backoff_us(rec.dispatch_count)

    # -- the gRPC service ----------------------------------------------------

    def _handlers(self) -> Any:
        def unary(name: str, fn: Callable[[Any], Any], req_cls: Any, resp_ser: Any) -> Any:

            def handle(request: Any, context: Any) -> Any:
                try:
                    with self._lock:
                        faults = self._faults.get(name)
                        if faults:
                            code, message = faults.pop(0)
                            raise _Abort(code, message)
                        return fn(request)
                except _Abort as e:
                    context.abort(getattr(grpc.StatusCode, e.code), e.message)

            return grpc.unary_unary_rpc_method_handler(
                handle, request_deserializer=req_cls.deserialize, response_serializer=resp_ser
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateTask": unary(
                    "CreateTask",
                    self._create_task,
                    tasks_v2.CreateTaskRequest,
                    tasks_v2.Task.serialize,
                ),
                "GetTask": unary(
                    "GetTask", self._get_task, tasks_v2.GetTaskRequest, tasks_v2.Task.serialize
                ),
                "DeleteTask": unary(
                    "DeleteTask",
                    self._delete_task,
                    tasks_v2.DeleteTaskRequest,
                    empty_pb2.Empty.SerializeToString,
                ),
                "ListTasks": unary(
                    "ListTasks",
                    self._list_tasks,
                    tasks_v2.ListTasksRequest,
                    tasks_v2.ListTasksResponse.serialize,
                ),
            },
        )

    def _queue(self, parent: str) -> str:
        if not _QUEUE_RE.match(parent):
            raise _Abort("INVALID_ARGUMENT", f"bad queue name {parent!r}")
        if self.queues is not None and parent not in self.queues:
            raise _Abort("NOT_FOUND", f"Queue does not exist: {parent}")
        return parent

    def _live(self, name: str) -> StandInTask | None:
        """The record holding ``name``: pending, or ended within the tombstone window."""
        rec = self._tasks.get(name)
        if rec is None:
            return None
        if rec.state != "pending":
            assert rec.ended_us is not None
            if rec.ended_us + self.tombstone_us <= self.clock():
                return None
        return rec

    def _prune(self) -> None:
        """Forget ended tasks whose tombstone has expired (a long ``dm dev`` stays small)."""
        for name in [n for n, t in self._tasks.items() if self._live(n) is None]:
            del self._tasks[name]
        self._prune_at = max(PRUNE_AT, 2 * len(self._tasks))

    def _pending(self, name: str) -> StandInTask:
        rec = self._tasks.get(name)
        if rec is None or rec.state != "pending":
            raise _Abort("NOT_FOUND", f"Requested entity was not found: {name}")
        return rec

    def _view(self, rec: StandInTask, view: int) -> tasks_v2.Task:
        full = view == tasks_v2.Task.View.FULL
        t = tasks_v2.Task(
            name=rec.name,
            http_request=tasks_v2.HttpRequest(rec.created.http_request),
            schedule_time=_ts(rec.schedule_us),
            create_time=_ts(rec.create_us),
            dispatch_deadline=rec.created.dispatch_deadline
            or duration_pb2.Duration(seconds=DEFAULT_DEADLINE_S),
            dispatch_count=rec.dispatch_count,
            response_count=rec.response_count,
            view=tasks_v2.Task.View.FULL if full else tasks_v2.Task.View.BASIC,
        )
        if not full:
            t.http_request.body = b""
        return t

    def _create_task(self, req: tasks_v2.CreateTaskRequest) -> tasks_v2.Task:
        queue = self._queue(req.parent)
        task = tasks_v2.Task(req.task)
        if "app_engine_http_request" in task or "http_request" not in task:
            raise _Abort("UNIMPLEMENTED", "the stand-in supports HTTP tasks only")
        if len(tasks_v2.Task.serialize(task)) > MAX_TASK_BYTES:
            raise _Abort("INVALID_ARGUMENT", "Task size too large")
        http = task.http_request
        if not http.url.startswith(("http://", "https://")):
            raise _Abort("INVALID_ARGUMENT", f"bad url {http.url!r}")
        method = http.http_method or tasks_v2.HttpMethod.POST
        if http.body and method not in _BODY_METHODS:
            raise _Abort("INVALID_ARGUMENT", "a body is only allowed for POST, PUT and PATCH")
        if "dispatch_deadline" in task:
            secs = tasks_v2.Task.pb(task).dispatch_deadline.ToTimedelta().total_seconds()
            if not 15 <= secs <= 1800:
                raise _Abort("INVALID_ARGUMENT", f"dispatch_deadline out of [15s, 30m]: {secs}")
        now = self.clock()
        schedule_us = now
        if "schedule_time" in task:
            schedule_us = max(now, _ts_us(tasks_v2.Task.pb(task).schedule_time))
            if schedule_us > now + MAX_SCHEDULE_AHEAD_US:
                raise _Abort("INVALID_ARGUMENT", "schedule_time is more than 30 days ahead")
        if task.name:
            prefix = queue + "/tasks/"
            tid = task.name[len(prefix) :] if task.name.startswith(prefix) else ""
            if not _TASK_ID_RE.match(tid):
                raise _Abort("INVALID_ARGUMENT", f"bad task name {task.name!r}")
        else:
            tid = uuid.uuid4().hex
        name = f"{queue}/tasks/{tid}"
        if len(self._tasks) >= self._prune_at:
            self._prune()
        if self._live(name) is not None:
            raise _Abort("ALREADY_EXISTS", "Requested entity already exists")
        rec = StandInTask(
            queue=queue, task_id=tid, created=task, create_us=now, schedule_us=schedule_us
        )
        self._tasks[name] = rec
        self._wake.set()
        return self._view(rec, req.response_view)

    def _get_task(self, req: tasks_v2.GetTaskRequest) -> tasks_v2.Task:
        return self._view(self._pending(req.name), req.response_view)

    def _delete_task(self, req: tasks_v2.DeleteTaskRequest) -> empty_pb2.Empty:
        rec = self._pending(req.name)
        rec.state, rec.ended_us = "deleted", self.clock()
        return empty_pb2.Empty()

    def _list_tasks(self, req: tasks_v2.ListTasksRequest) -> tasks_v2.ListTasksResponse:
        queue = self._queue(req.parent)
        pending = sorted(
            (t for t in self._tasks.values() if t.queue == queue and t.state == "pending"),
            key=lambda t: t.task_id,
        )
        try:
            start = int(req.page_token or "0")
        except ValueError:
            raise _Abort("INVALID_ARGUMENT", "bad page_token") from None
        size = min(req.page_size or 1000, 1000)
        page = pending[start : start + size]
        nxt = str(start + size) if start + size < len(pending) else ""
        return tasks_v2.ListTasksResponse(
            tasks=[self._view(t, req.response_view) for t in page], next_page_token=nxt
        )


_REPLACED = {"host", "content-length", "user-agent"}
"""Task headers Cloud Tasks computes or replaces itself."""
