"""The ``cloudtasks`` TaskQueue adapter: dm tasks as Google Cloud Tasks HTTP tasks.

On Google Cloud, follow-up work goes to Cloud Tasks queues whose tasks POST
to the ``dm_tasks`` function. Each dm :class:`~dmcore.queue.base.Task` becomes:

* one task on one of the adapter's queues. One queue dispatches at most 500
  tasks/s, so a deployment may give several (``DM_TASKS_QUEUES``); a task
  goes to ``queues[sha256(key) mod N]`` where the key is its ``shard_key``
  (the root record a step is about) or else its name. The choice depends on
  the key alone, so a re-sent task meets its earlier copy in the same queue
  and Cloud Tasks' name dedup (per queue) still refuses it.

* URL ``{url}/{target}``: the function routes by path (``/mutation``,
  ``/distributor/<config name>``). Everything after the first ``/`` of the
  target is percent-escaped as one segment, so a config name may hold any
  character (``a/b`` travels as ``a%2Fb``).
* body ``{"name": <dm task name>, "payload": <payload>}`` as JSON. dm's own
  name travels in the body because the Cloud Tasks id is only its hash, and
  the engine derives follow-up names from it.
* Cloud Tasks id ``sha256(dm name)`` in hex: deterministic, so a re-sent task
  is refused by Cloud Tasks' own name dedup (``AlreadyExists`` → ``False``),
  and well spread, as Cloud Tasks asks of ids (sequential ids or shared
  prefixes make hot spots).
* ``schedule_time`` from ``eta_us`` (left out when due already: Cloud Tasks
  then runs it at once), ``dispatch_deadline``, and an OIDC token for the
  invoker service account whose audience is the function's base URL (one
  audience for every target, which is what Cloud Run checks).

A name stays reserved in Cloud Tasks for about an hour after the task ran or
was deleted, the same window as the local queue's tombstones. Every other API
error propagates: the engine keeps the follow-up in its outbox and the sweep
re-dispatches it.

:func:`decode_request` is the other half, used by the ``dm_tasks`` function.

Google client libraries are imported only here (and in the other Google
adapters), so the engine and its tests do not need them.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped,unused-ignore]
from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2, timestamp_pb2

from dmcore.queue.base import TASK_NAME_RE, InvalidTask, Task, TaskQueue

Clock = Callable[[], int]
"""Returns now in integer microseconds since the Unix epoch."""

RETRY_COUNT_HEADER = "X-CloudTasks-TaskRetryCount"

MIN_DISPATCH_DEADLINE_S = 15
MAX_DISPATCH_DEADLINE_S = 30 * 60
"""Cloud Tasks' bounds on an HTTP task's dispatch deadline."""

DEFAULT_MAX_WORKERS = 8
"""Parallel CreateTask calls in :meth:`CloudTasksQueue.enqueue_many`."""

_US = 1_000_000


_QUEUE_PATH = re.compile(r"^projects/([^/]+)/locations/([^/]+)/queues/([^/]+)$")


def task_id(name: str) -> str:
    """The Cloud Tasks task id of dm task ``name``: its SHA-256 in hex (64 chars)."""
    return hashlib.sha256(name.encode()).hexdigest()


def shard_of(key: str, count: int) -> int:
    """Which of ``count`` queues takes the tasks of shard key ``key`` (0 .. count-1).

    The first 8 bytes of the key's SHA-256, mod ``count``: depends on the key
    alone (a re-sent task meets its earlier copy) and spreads keys evenly.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1: {count}")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def target_path(target: str) -> str:
    """The URL path (no leading slash) for ``target``.

    The first segment (the kind: ``mutation``, ``distributor``) is kept; the
    rest is escaped as a single segment so that it may contain ``/``.
    """
    kind, sep, rest = target.partition("/")
    path = urllib.parse.quote(kind, safe="")
    if sep:
        path += "/" + urllib.parse.quote(rest, safe="")
    return path


def _target_ok(target: str) -> bool:
    """A target decode_request can give back: ``kind`` or ``kind/rest``, both non-empty."""
    kind, sep, rest = target.partition("/")
    return bool(kind) and not (sep and not rest)


def _body(task: Task) -> bytes:
    """Validates ``task`` and returns its HTTP body; raises InvalidTask before any call."""
    if not isinstance(task.name, str) or not TASK_NAME_RE.match(task.name):
        raise InvalidTask(f"task name must match {TASK_NAME_RE.pattern}: {task.name!r}")
    if not isinstance(task.target, str) or not _target_ok(task.target):
        raise InvalidTask(
            f"task {task.name}: target must be <kind> or <kind>/<rest>, both non-empty"
        )
    if not isinstance(task.eta_us, int) or isinstance(task.eta_us, bool) or task.eta_us < 0:
        raise InvalidTask(f"task {task.name}: eta_us must be an int >= 0: {task.eta_us!r}")
    if not isinstance(task.payload, dict):
        raise InvalidTask(f"task {task.name}: payload must be a dict")
    try:
        body = json.dumps(
            {"name": task.name, "payload": task.payload}, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as e:
        raise InvalidTask(f"task {task.name}: payload is not JSON: {e}") from e
    return body.encode()


class CloudTasksQueue(TaskQueue):
    """A TaskQueue on Cloud Tasks queues (one, or shards) whose HTTP tasks call ``dm_tasks``."""

    def __init__(
        self,
        client: tasks_v2.CloudTasksClient,
        *,
        project: str,
        location: str,
        queue: str | Sequence[str],
        url: str,
        service_account_email: str | None,
        audience: str | None = None,
        dispatch_deadline_s: int = 600,
        clock: Clock,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> None:
        """``url`` is the dm_tasks function's base URL (its run.app URI).

        ``queue`` is one queue id, or several (sharding, see the module doc),
        all in ``project`` / ``location``. ``service_account_email`` (the
        invoker) turns on the OIDC token, whose audience is ``audience`` or
        else ``url``.
        """
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"url must be http(s): {url!r}")
        if not MIN_DISPATCH_DEADLINE_S <= dispatch_deadline_s <= MAX_DISPATCH_DEADLINE_S:
            raise ValueError(
                f"dispatch_deadline_s must be in [{MIN_DISPATCH_DEADLINE_S}, "
                f"{MAX_DISPATCH_DEADLINE_S}]: {dispatch_deadline_s}"
            )
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.queues = [queue] if isinstance(queue, str) else list(queue)
        if not self.queues or len(set(self.queues)) != len(self.queues):
            raise ValueError(f"expected one or more distinct queue ids, got {self.queues!r}")
        self.client = client
        self.project = project
        self.location = location
        self.queue = self.queues[0]
        self.parents = [client.queue_path(project, location, q) for q in self.queues]
        self.parent = self.parents[0]
        self.url = url.rstrip("/")
        self.service_account_email = service_account_email
        self.audience = audience or self.url
        self.dispatch_deadline_s = dispatch_deadline_s
        self.clock = clock
        self.max_workers = max_workers

    @classmethod
    def from_queue_path(
        cls,
        queue_path: str | Sequence[str],
        *,
        url: str,
        service_account_email: str | None,
        clock: Clock,
        emulator_host: str | None = None,
        dispatch_deadline_s: int = 600,
    ) -> CloudTasksQueue:
        """A queue on ``projects/P/locations/L/queues/Q`` with its own client.

        ``queue_path`` may also be several such paths (one project and
        location), over which tasks are sharded. ``emulator_host``
        (``host:port``, the ``DM_TASKS_EMULATOR_HOST`` of the backend) talks
        plain gRPC to a local stand-in without credentials, as
        ``FIRESTORE_EMULATOR_HOST`` / ``PUBSUB_EMULATOR_HOST`` do for the other
        clients; otherwise the client uses Application Default Credentials.
        Raises ValueError for a malformed queue path, or paths in more than
        one project and location.
        """
        paths = [queue_path] if isinstance(queue_path, str) else list(queue_path)
        matches = [_QUEUE_PATH.match(p) for p in paths]
        bad = [p for p, m in zip(paths, matches, strict=True) if m is None]
        if bad or not paths:
            raise ValueError(f"expected projects/P/locations/L/queues/Q, got {bad or paths!r}")
        found = [m for m in matches if m is not None]
        places = {(m.group(1), m.group(2)) for m in found}
        if len(places) != 1:
            raise ValueError(f"queues must share one project and location, got {paths!r}")
        ((project, location),) = places
        if emulator_host:
            channel = grpc.insecure_channel(emulator_host)
            client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        else:
            client = tasks_v2.CloudTasksClient()
        return cls(
            client,
            project=project,
            location=location,
            queue=[m.group(3) for m in found],
            url=url,
            service_account_email=service_account_email,
            dispatch_deadline_s=dispatch_deadline_s,
            clock=clock,
        )

    def close(self) -> None:
        """Close the client's channel (the queue cannot be used afterwards)."""
        self.client.transport.close()  # type: ignore[no-untyped-call]

    def shard(self, key: str) -> int:
        """The index in :attr:`queues` of the queue that takes tasks of shard key ``key``."""
        return shard_of(key, len(self.queues))

    def task_path(self, name: str, shard_key: str = "") -> str:
        """The full Cloud Tasks name of dm task ``name`` (on its shard's queue)."""
        queue = self.queues[self.shard(shard_key or name)]
        return self.client.task_path(self.project, self.location, queue, task_id(name))

    def build(self, task: Task) -> tasks_v2.Task:
        """The Cloud Tasks task for ``task`` (raises InvalidTask if it is malformed)."""
        http = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=f"{self.url}/{target_path(task.target)}",
            headers={"Content-Type": "application/json"},
            body=_body(task),
        )
        if self.service_account_email:
            http.oidc_token = tasks_v2.OidcToken(
                service_account_email=self.service_account_email, audience=self.audience
            )
        ct = tasks_v2.Task(
            name=self.task_path(task.name, task.shard_key),
            http_request=http,
            dispatch_deadline=duration_pb2.Duration(seconds=self.dispatch_deadline_s),
        )
        if task.eta_us > self.clock():
            ct.schedule_time = timestamp_pb2.Timestamp(
                seconds=task.eta_us // _US, nanos=task.eta_us % _US * 1000
            )
        return ct

    def _create(self, ct: tasks_v2.Task) -> bool:
        parent = ct.name.rsplit("/tasks/", 1)[0]
        try:
            self.client.create_task(request=tasks_v2.CreateTaskRequest(parent=parent, task=ct))
        except gexc.AlreadyExists:
            # Pending, or ran / was deleted within the last hour or so.
            return False
        return True

    def enqueue(self, task: Task) -> bool:
        """Creates the task; False if Cloud Tasks has seen its name recently."""
        return self._create(self.build(task))

    def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        """Creates the tasks, one CreateTask each, up to ``max_workers`` at once.

        (The v2 API's BatchCreateTasks is a long-running operation whose
        per-task AlreadyExists answers are not documented, so it is not used.)

        All tasks are validated first (InvalidTask: nothing is created). A name
        repeated in the batch (on the same shard) is refused after its first
        occurrence without a call. If a call fails, the first error is raised after the others have
        finished; some tasks may have been created, which is harmless since
        the caller re-sends the batch and those are then refused.
        """
        built = [self.build(t) for t in tasks]
        first: dict[str, int] = {}
        for i, ct in enumerate(built):
            first.setdefault(ct.name, i)
        todo = [(i, ct) for i, ct in enumerate(built) if first[ct.name] == i]
        out = [False] * len(built)
        if len(todo) <= 1 or self.max_workers == 1:
            for i, ct in todo:
                out[i] = self._create(ct)
            return out
        with ThreadPoolExecutor(
            max_workers=min(self.max_workers, len(todo)), thread_name_prefix="dm-cloudtasks"
        ) as pool:
            futures = [(i, pool.submit(self._create, ct)) for i, ct in todo]
        errors: list[BaseException] = []
        for i, fut in futures:
            err = fut.exception()
            if err is None:
                out[i] = fut.result()
            else:
                errors.append(err)
        if errors:
            raise errors[0]
        return out


class Headers(Protocol):
    """What decode_request needs of headers: a Mapping[str, str], or werkzeug's Headers."""

    def get(self, key: str, /) -> str | None: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


def _header(headers: Headers, name: str) -> str | None:
    """Case-insensitive header lookup (werkzeug's is already; a plain dict is not)."""
    got = headers.get(name)
    if got is not None:
        return got
    lower = name.lower()
    for k, v in headers.items():
        if k.lower() == lower:
            return v
    return None


def decode_request(
    headers: Headers, body: bytes, path: str
) -> tuple[str, dict[str, Any], int, str]:
    """Decodes a Cloud Tasks delivery to dm_tasks: ``(target, payload, delivery, name)``.

    ``path`` is the request path relative to the function's root as WSGI
    hands it over (Flask's ``request.path``), i.e. already percent-decoded:
    the target is the path without its leading ``/``.

    ``delivery`` is ``X-CloudTasks-TaskRetryCount`` + 1. The retry count
    counts every earlier attempt, including those that failed with a 5xx or
    never reached the handler; ``X-CloudTasks-TaskExecutionCount`` leaves out
    5xx answers, which is exactly how dm_tasks asks for a retry, so it would
    not grow and the engine's "give up after N transient errors" rules would
    never trigger. Over-counting is the safe side: delivery 1 means first.

    Raises ValueError naming what is wrong (dm_tasks answers 400).
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")
    target = path[1:]
    if not _target_ok(target):
        raise ValueError(f"path {path!r} names no target (want /mutation or /distributor/<cfg>)")

    raw = _header(headers, RETRY_COUNT_HEADER)
    if raw is None:
        raise ValueError(f"missing header {RETRY_COUNT_HEADER} (not a Cloud Tasks delivery?)")
    try:
        retries = int(raw.strip())
    except ValueError:
        raise ValueError(f"header {RETRY_COUNT_HEADER} is not an integer: {raw!r}") from None
    if retries < 0:
        raise ValueError(f"header {RETRY_COUNT_HEADER} is negative: {raw!r}")

    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object with 'name' and 'payload'")
    name = doc.get("name")
    if not isinstance(name, str) or not TASK_NAME_RE.match(name):
        raise ValueError(f"body.name must be a task name matching {TASK_NAME_RE.pattern}")
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise ValueError("body.payload must be a JSON object")
    return target, payload, retries + 1, name
