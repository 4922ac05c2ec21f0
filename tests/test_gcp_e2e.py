"""End to end on the Google Cloud path, on the emulators: a jobsim graph through dm_api.

The backend is ``DM_BACKEND=gcp`` built from the environment as a deployed
function builds it: Firestore on its emulator, Cloud Tasks through the
official client (``DM_TASKS_EMULATOR_HOST``) on
:class:`~tests.fake_cloudtasks.FakeCloudTasksServer` (a TEST DOUBLE: no
faithful Cloud Tasks emulator exists), notifications on the Pub/Sub emulator.
The four functions are the entry points of ``functions/main.py`` served over
real HTTP on 127.0.0.1, one werkzeug server each:

* the graph (``examples/jobsim_fanout.yaml``: 6 leaves of value 3, root
  6 x 3 + 1 = 19) is submitted with ``POST /prpc/dm.Deps/EnsureGraphData``;
* follow-ups become Cloud Tasks tasks, which the fake POSTs to dm_tasks
  (``/mutation``, ``/distributor/jobsim``) when the test calls ``run_due()``;
* jobsim's end-of-job notifications are published to the topic and pushed by
  the emulator to dm_notify (a push subscription, as Eventarc would);
* the test plays Cloud Scheduler by POSTing to dm_sweep, and watches the root
  attempt with ``WalkGraph`` over HTTP.

The loop is bounded in rounds and by a generous wall-clock safety limit;
nothing asserts on timing. The servers are single-threaded and the fake
dispatches one task at a time: the Firestore emulator settles conflicting
transactions only after a 2 s lock timeout, so concurrency is kept low.
Firestore's billed reads and writes per execution (``FirestoreStore.stats``)
are printed; the test's own WalkGraph polls and the sweeps are counted apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from functions_framework import create_app
from google.protobuf import json_format, message
from werkzeug.serving import BaseWSGIServer, make_server

from dmcore import logs, server
from dmcore.cli.runfile import parse_run_file
from dmcore.engine import docs
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2
from dmcore.runtime import backend as backends
from dmcore.runtime.embedded import wall_clock_us
from dmcore.store.firestore import FirestoreStats, FirestoreStore
from tests.emulator_fixtures import firestore_per_execution, firestore_reset
from tests.fake_cloudtasks import FakeCloudTasksServer, FakeTask
from tests.test_functions_support import JSON_PREFIX, MAIN, ROOT, SECRET, clean_env

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

pytestmark = pytest.mark.emulator

FANOUT = ROOT / "examples" / "jobsim_fanout.yaml"
LOCATION, QUEUE = "europe-west1", "dm-tasks"
TOPIC, SUBSCRIPTION = "dm-distributor-notify", "dm-notify-push"
CONFIG = {"distributor_configs": {"jobsim": {"jobsim": {"pool": "e2e"}}}}
EXECUTIONS = 8  # the root twice (halted on its deps, then resumed) + 6 leaves
MAX_ROUNDS = 3000
SAFETY_S = 240.0
"""Wall-clock safety limit of the drive loop (a hang fails, it is no timing assertion)."""
SWEEP_EVERY_S = 1.0
IDLE_S = 0.05
QUIET_S = 60.0
"""Done means no queued task due sooner than this (later ones: timers of finished work)."""


# -- serving the functions -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hit:
    """One request a function received."""

    method: str
    path: str
    status: int
    message_id: str = ""


class Counted:
    """WSGI middleware recording every request and its status.

    With a :class:`Meter`, the Firestore counts of a request for which
    ``bucket_of(path)`` names a bucket go to that bucket (the test's own
    WalkGraph polls, the sweeps), so the figures per execution count only
    what dm does for the graph.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        self.meter: Meter | None = None
        self.bucket_of: Callable[[str], str | None] = lambda path: None
        self.hits: list[Hit] = []
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        method = str(environ.get("REQUEST_METHOD", ""))
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        mid = ""
        with contextlib.suppress(ValueError, LookupError, TypeError):
            mid = str(json.loads(body)["message"]["messageId"])
        status: list[int] = []

        def recording_start(st: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(int(st.split(maxsplit=1)[0]))
            return start_response(st, headers, exc_info)

        bucket = self.bucket_of(path)
        with (
            self.meter.diverted(bucket)
            if self.meter is not None and bucket is not None
            else contextlib.nullcontext()
        ):
            out = list(self.app(environ, recording_start))
        with self._lock:
            self.hits.append(Hit(method, path, status[0] if status else 0, mid))
        return out


class Meter:
    """Splits ``FirestoreStats`` by who caused the reads and writes.

    Everything is counted on the store as usual, except while a thread runs
    inside :meth:`diverted`: then its counts go to a separate bucket. The
    servers are single-threaded, so a thread is one request at a time.
    """

    def __init__(self, store: FirestoreStore) -> None:
        self.store = store
        self.buckets: dict[str, FirestoreStats] = {}
        self._local = threading.local()
        self._add = store.stats.add
        store.stats.add = self._route  # type: ignore[method-assign]

    def _route(self, **counts: int) -> None:
        bucket = getattr(self._local, "bucket", None)
        (self._add if bucket is None else self.buckets[bucket].add)(**counts)

    @contextlib.contextmanager
    def diverted(self, bucket: str) -> Iterator[None]:
        self.buckets.setdefault(bucket, FirestoreStats())
        self._local.bucket = bucket
        try:
            yield
        finally:
            self._local.bucket = None

    def close(self) -> None:
        self.store.stats.add = self._add  # type: ignore[method-assign]


class Served:
    """One function on its own single-threaded werkzeug server on 127.0.0.1."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.counted = Counted(create_app(target, MAIN))  # type: ignore[no-untyped-call]
        self.httpd: BaseWSGIServer = make_server("127.0.0.1", 0, self.counted, threaded=False)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"serve-{target}",
            daemon=True,
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join(10)
        self.httpd.server_close()

    @property
    def hits(self) -> list[Hit]:
        return list(self.counted.hits)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as rsp:
            return int(rsp.status), rsp.read()
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code), e.read()


def prpc(api_url: str, method: str, req: message.Message, out: message.Message) -> Any:
    """Call dm_api's ``method`` at ``api_url`` over HTTP with protobuf JSON; the decoded answer."""
    status, body = _post(
        f"{api_url}/prpc/dm.Deps/{method}",
        json_format.MessageToJson(req).encode(),
        {"Content-Type": "application/json", "Accept": "application/json"},
    )
    assert status == 200, (method, status, body[:500])
    assert body.startswith(JSON_PREFIX)
    json_format.Parse(body[len(JSON_PREFIX) :].decode(), out)
    return out


def walk(api_url: str, aid: AttemptID) -> dm_pb2.Attempt:
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[aid.quest].nums.append(aid.num)
    req.include.attempt.data = True
    req.include.attempt.result = True
    graph = prpc(api_url, "WalkGraph", req, dm_pb2.GraphData())
    att: dm_pb2.Attempt = graph.quests[aid.quest].attempts[aid.num]
    return att


# -- the bench -------------------------------------------------------------------------------


@dataclasses.dataclass
class GcpBench:
    project: str
    fake: FakeCloudTasksServer
    fns: dict[str, Served]
    backend: backends.Backend
    store: FirestoreStore
    meter: Meter

    def acked(self) -> set[str]:
        """Message ids of the pushes dm_notify acknowledged."""
        return {h.message_id for h in self.fns["dm_notify"].hits if 200 <= h.status < 300}

    def notified(self) -> int:
        return len(self.acked())

    def soon(self) -> list[FakeTask]:
        """Pending tasks due within :data:`QUIET_S` (not the far timers of finished work)."""
        horizon = wall_clock_us() + int(QUIET_S * 1_000_000)
        return [t for t in self.fake.tasks("pending") if t.schedule_us <= horizon]

    def sweep(self) -> None:
        """Cloud Scheduler's tick."""
        status, body = _post(f"{self.fns['dm_sweep'].url}/", b"", {})
        assert status == 200, body


@pytest.fixture
def gcp(
    firestore_emulator: str, pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GcpBench]:
    from dmcore.notify import pubsub

    clean_env(monkeypatch)
    project = f"dm-e2e-{uuid.uuid4().hex[:10]}"
    queue_path = f"projects/{project}/locations/{LOCATION}/queues/{QUEUE}"
    topic = pubsub.topic_path(project, TOPIC)
    sub = pubsub.subscription_path(project, SUBSCRIPTION)
    with contextlib.ExitStack() as stack:
        fake = FakeCloudTasksServer(clock=wall_clock_us, queues=[queue_path]).start()
        stack.callback(fake.stop)
        fns: dict[str, Served] = {}
        monkeypatch.setenv("DM_BACKEND", "gcp")  # main.py refuses an embedded load without worker
        for target in ("dm_api", "dm_tasks", "dm_notify", "dm_sweep"):
            fns[target] = Served(target)
            stack.callback(fns[target].close)
        env = {
            "DM_BACKEND": "gcp",
            "GOOGLE_CLOUD_PROJECT": project,
            "DM_TASKS_QUEUE": queue_path,
            "DM_TASKS_URL": fns["dm_tasks"].url,
            "DM_TASKS_EMULATOR_HOST": fake.address,
            "DM_NOTIFY_TOPIC": topic,
            "DM_NOTIFY_SECRET": SECRET,
            "DM_CONFIG": json.dumps(CONFIG),
            "DM_AUTH": "none",  # OIDC is covered by the functions' own tests
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        backends.reset()
        stack.callback(logs.unconfigure)
        stack.callback(backends.reset)
        b = server.start()  # as a cold start: the functions share this process's backend
        assert b.kind == "gcp" and b.engine.publish is not None
        store = b.engine.store
        assert isinstance(store, FirestoreStore)
        stack.callback(firestore_reset, firestore_emulator, project)

        assert pubsub.ensure_topic(topic)
        endpoint = f"{fns['dm_notify'].url}/projects/{project}/topics/{TOPIC}"
        assert pubsub.ensure_push_subscription(sub, topic, endpoint)
        stack.callback(_delete_pubsub, topic, sub)

        meter = Meter(store)
        stack.callback(meter.close)
        for fn in fns.values():
            fn.counted.meter = meter
        fns["dm_api"].counted.bucket_of = lambda path: (
            "poll" if path.endswith("/WalkGraph") else None
        )
        fns["dm_sweep"].counted.bucket_of = lambda path: "sweep"
        yield GcpBench(project, fake, fns, b, store, meter)


def _delete_pubsub(topic: str, sub: str) -> None:
    """Remove the push subscription first, so the emulator stops pushing to a closed port."""
    from dmcore.notify import pubsub

    subscriber = pubsub.pubsub_v1.SubscriberClient()
    publisher = pubsub.pubsub_v1.PublisherClient()
    try:
        subscriber.delete_subscription(request={"subscription": sub})
        publisher.delete_topic(request={"topic": topic})
    finally:
        subscriber.close()


def _executions(store: FirestoreStore) -> int:
    return sum(int(doc["cur_execution"]) for _, doc in store.query(docs.ATTEMPTS))


# -- the test ----------------------------------------------------------------------------------


def test_jobsim_fanout_on_gcp_emulators(
    gcp: GcpBench, record_property: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    run = parse_run_file(FANOUT)
    (root,) = run.attempts
    api = gcp.fns["dm_api"]
    rsp = prpc(api.url, "EnsureGraphData", run.request, dm_pb2.EnsureGraphDataRsp())
    assert rsp.accepted
    assert rsp.quest_ids[0].id == root.quest

    # Drive: Cloud Tasks (run_due) and Cloud Scheduler (dm_sweep) by hand; Pub/Sub
    # pushes on its own. Poll the root through dm_api whenever nothing is due, and
    # go on until it is finished and the system is quiet (every execution's
    # notification acknowledged, no queued task due soon).
    deadline = time.monotonic() + SAFETY_S
    last_sweep = -SWEEP_EVERY_S  # the first quiet round sweeps
    rounds = polls = 0
    state = "not walked yet"
    while rounds < MAX_ROUNDS:
        rounds += 1
        assert time.monotonic() < deadline, f"safety limit hit: root attempt {state}"
        if gcp.fake.run_due():
            continue
        if time.monotonic() - last_sweep >= SWEEP_EVERY_S:
            gcp.sweep()
            last_sweep = time.monotonic()
        if state != "finished":
            att = walk(api.url, root)
            polls += 1
            state = att.data.WhichOneof("attempt_type") or "unknown"
            assert state != "abnormal_finish", att
        if state == "finished" and not gcp.soon() and gcp.notified() >= EXECUTIONS:
            break
        time.sleep(IDLE_S)
    else:
        pytest.fail(
            f"not done after {MAX_ROUNDS} rounds: root attempt {state}, "
            f"{gcp.notified()} notifications, {len(gcp.soon())} tasks due soon"
        )
    elapsed = time.monotonic() - started
    stats = gcp.store.stats.snapshot()  # before the checks below read the store

    # The answer: 6 leaves x 3 + 1, through dm_api.
    final = walk(api.url, root)
    assert json.loads(final.data.finished.data.object) == {"success": True, "value": 19}

    # dm_tasks got Cloud Tasks deliveries of both kinds, all eventually answered 2xx.
    task_hits = gcp.fns["dm_tasks"].hits
    mutations = [h for h in task_hits if h.path == "/mutation"]
    distributor = [h for h in task_hits if h.path == "/distributor/jobsim"]
    assert len(mutations) + len(distributor) == len(task_hits) == len(gcp.fake.dispatches)
    assert len(distributor) >= EXECUTIONS  # one jobsim worker task per execution
    assert mutations
    assert not gcp.fake.tasks("failed")
    # Nothing that runs is left (the stopping executions' 12 h hedge timers, W-10,
    # are beyond the queueing horizon: only the sweep would fire them, and they
    # were disarmed when their executions finished).
    left = [json.loads(bytes(t.created.http_request.body)) for t in gcp.fake.tasks("pending")]
    assert {d["payload"]["kind"] for d in left} <= {"TimeoutExecution"}
    assert all(d.headers["X-CloudTasks-QueueName"] == QUEUE for d in gcp.fake.dispatches)

    # Cloud Scheduler's part: dm_sweep answered (nothing was left behind to re-dispatch).
    sweep_hits = gcp.fns["dm_sweep"].hits
    assert sweep_hits and all(h.status == 200 for h in sweep_hits)

    # dm_notify got every execution's notification pushed by the Pub/Sub emulator.
    notify_hits = gcp.fns["dm_notify"].hits
    acked = gcp.acked()
    assert all(h.path == f"/projects/{gcp.project}/topics/{TOPIC}" for h in notify_hits)
    assert len(acked) >= EXECUTIONS
    n = _executions(gcp.store)
    assert n == EXECUTIONS

    firestore = firestore_per_execution(n, stats, record_property)
    sweeps = gcp.meter.buckets.get("sweep", FirestoreStats()).snapshot()
    walks = gcp.meter.buckets.get("poll", FirestoreStats()).snapshot()
    retried = [h for h in task_hits if not 200 <= h.status < 300]
    print(
        f"\ngcp e2e (jobsim fan-out, root = {json.loads(final.data.finished.data.object)}): "
        f"{elapsed:.1f}s, {rounds} rounds\n"
        f"  dm_tasks: {len(task_hits)} deliveries ({len(mutations)} /mutation, "
        f"{len(distributor)} /distributor/jobsim, {len(retried)} non-2xx)\n"
        f"  dm_notify: {len(notify_hits)} pushes ({len(acked)} distinct messages acknowledged)\n"
        f"  dm_api: {len(api.hits)} calls ({polls} WalkGraph polls)\n"
        f"  firestore: {firestore}\n"
        f"  not counted above: {len(sweep_hits)} sweeps ({sweeps['reads']} reads, "
        f"{sweeps['writes'] + sweeps['deletes']} writes), test polls ({walks['reads']} reads)"
    )
    record_property("dm_tasks_deliveries", len(task_hits))
    record_property("dm_notify_pushes", len(notify_hits))
