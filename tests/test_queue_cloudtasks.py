"""Tests of the Cloud Tasks TaskQueue adapter, over the wire with the official client.

The server is ``tests.fake_cloudtasks.FakeCloudTasksServer`` (a test double:
no faithful Cloud Tasks emulator exists); deliveries go to a small werkzeug
app on 127.0.0.1 that decodes them as the dm_tasks function does. Time is a
fake clock shared by the adapter and the fake; dispatch is driven by
``run_due()``, never by sleeping.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from dmcore.queue.base import InvalidTask, Task
from dmcore.queue.cloudtasks import CloudTasksQueue, decode_request, target_path, task_id
from tests.fake_cloudtasks import Dispatch, FakeCloudTasksServer, FakeTask

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SEC = 1_000_000
T0 = 1_700_000_000 * SEC
PROJECT, LOCATION, QUEUE = "demo", "europe-west1", "dm-tasks"
QUEUE_PATH = f"projects/{PROJECT}/locations/{LOCATION}/queues/{QUEUE}"
SA = "dm-invoker@demo.iam.gserviceaccount.com"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now_us: int = T0) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, us: int) -> None:
        self.now_us += us


@dataclasses.dataclass
class Received:
    """One request the receiver got, and what decode_request made of it."""

    path: str
    headers: dict[str, str]
    body: bytes
    decoded: tuple[str, dict[str, Any], int, str] | None
    error: str | None


class Receiver:
    """A tiny HTTP app standing in for dm_tasks: records and decodes each request.

    It answers with the statuses queued in ``answers`` (then 200), so a test
    can make deliveries fail. ``on_task`` (optional) runs each decoded delivery,
    as dm_tasks hands it to the engine; if it raises, the answer is 500.
    """

    def __init__(
        self, on_task: Callable[[tuple[str, dict[str, Any], int, str]], None] | None = None
    ) -> None:
        self.on_task = on_task
        self.got: list[Received] = []
        self.answers: list[int] = []
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data()
        decoded: tuple[str, dict[str, Any], int, str] | None = None
        error = None
        try:
            decoded = decode_request(request.headers, body, request.path)
        except ValueError as e:
            error = str(e)
        with self._lock:
            self.got.append(Received(request.path, dict(request.headers), body, decoded, error))
            status = self.answers.pop(0) if self.answers else 200
        if decoded is not None and status == 200 and self.on_task is not None:
            try:
                self.on_task(decoded)
            except Exception:
                status = 500
        self.arrived.set()
        if error is not None and status == 200:
            status = 400
        response = Response("ok" if status < 300 else "no", status=status)
        return response(environ, start_response)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=30)
        self._server.server_close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeCloudTasksServer]:
    server = FakeCloudTasksServer(
        clock=clock,
        queues=[QUEUE_PATH],
        max_attempts=5,
        oidc_token_factory=lambda email, aud: f"fake-oidc:{email}:{aud}",
    )
    with server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def client(fake: FakeCloudTasksServer) -> tasks_v2.CloudTasksClient:
    return fake.client()


def make_queue(
    client: tasks_v2.CloudTasksClient, clock: Callable[[], int], url: str, **kw: Any
) -> CloudTasksQueue:
    args: dict[str, Any] = {
        "project": PROJECT,
        "location": LOCATION,
        "queue": QUEUE,
        "url": url,
        "service_account_email": SA,
        "clock": clock,
    }
    args.update(kw)
    return CloudTasksQueue(client, **args)


@pytest.fixture
def q(client: tasks_v2.CloudTasksClient, clock: FakeClock, receiver: Receiver) -> CloudTasksQueue:
    return make_queue(client, clock, receiver.url)


def task(name: str, target: str = "mutation", eta_us: int = 0, **payload: Any) -> Task:
    return Task(name=name, target=target, payload=payload, eta_us=eta_us)


def ids(names: Iterable[str]) -> list[str]:
    return sorted(task_id(n) for n in names)


def pending_ids(fake: FakeCloudTasksServer) -> list[str]:
    return sorted(t.task_id for t in fake.tasks())


# -- creating tasks ----------------------------------------------------------


def test_task_created_with_url_body_headers_oidc_schedule_and_deadline(
    q: CloudTasksQueue, client: tasks_v2.CloudTasksClient, receiver: Receiver
) -> None:
    assert q.enqueue(task("n1", eta_us=T0 + 5 * SEC + 7, a=1))
    name = client.task_path(PROJECT, LOCATION, QUEUE, task_id("n1"))
    got = client.get_task(request={"name": name, "response_view": tasks_v2.Task.View.FULL})
    assert got.name == name
    http = got.http_request
    assert http.url == f"{receiver.url}/mutation"
    assert http.http_method == tasks_v2.HttpMethod.POST
    assert dict(http.headers) == {"Content-Type": "application/json"}
    assert json.loads(http.body) == {"name": "n1", "payload": {"a": 1}}
    assert http.oidc_token.service_account_email == SA
    assert http.oidc_token.audience == receiver.url
    assert tasks_v2.Task.pb(got).schedule_time.seconds == (T0 + 5 * SEC) // SEC
    assert tasks_v2.Task.pb(got).schedule_time.nanos == 7000
    assert tasks_v2.Task.pb(got).dispatch_deadline.seconds == 600
    # The BASIC view (the default) leaves the body out, as Cloud Tasks does.
    assert client.get_task(name=name).http_request.body == b""


def test_task_id_is_hashed_and_valid() -> None:
    tid = task_id("n1")
    assert tid == task_id("n1") != task_id("n2")
    assert len(tid) == 64 and all(c in "0123456789abcdef" for c in tid)
    assert len(task_id("x" * 500)) == 64


def test_distributor_target_is_escaped_as_one_segment(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, receiver: Receiver
) -> None:
    assert target_path("mutation") == "mutation"
    assert target_path("distributor/jobsim") == "distributor/jobsim"
    assert target_path("distributor/a/b c%") == "distributor/a%2Fb%20c%25"
    q.enqueue(task("d1", target="distributor/a/b c%", body_b64="eA=="))
    [rec] = fake.tasks()
    assert rec.created.http_request.url == f"{receiver.url}/distributor/a%2Fb%20c%25"


def test_no_oidc_without_service_account_and_custom_audience(
    client: tasks_v2.CloudTasksClient, clock: FakeClock, fake: FakeCloudTasksServer
) -> None:
    url = "https://dm-tasks-xyz.a.run.app/"
    plain = make_queue(client, clock, url, service_account_email=None, dispatch_deadline_s=30)
    plain.enqueue(task("plain"))
    aud = make_queue(client, clock, url, audience="https://custom-aud")
    aud.enqueue(task("aud"))
    p, a = fake.task(task_id("plain")), fake.task(task_id("aud"))
    assert p is not None and a is not None
    assert "oidc_token" not in p.created.http_request
    assert p.created.http_request.url == "https://dm-tasks-xyz.a.run.app/mutation"
    assert tasks_v2.Task.pb(p.created).dispatch_deadline.seconds == 30
    assert a.created.http_request.oidc_token.audience == "https://custom-aud"


def test_schedule_time_omitted_when_due(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, clock: FakeClock
) -> None:
    q.enqueue_many([task("zero"), task("past", eta_us=T0 - SEC), task("now", eta_us=T0)])
    for rec in fake.tasks():
        assert "schedule_time" not in rec.created
        assert rec.schedule_us == T0


def test_constructor_rejects_bad_settings(
    client: tasks_v2.CloudTasksClient, clock: FakeClock
) -> None:
    with pytest.raises(ValueError, match="dispatch_deadline_s"):
        make_queue(client, clock, "https://x", dispatch_deadline_s=14)
    with pytest.raises(ValueError, match="dispatch_deadline_s"):
        make_queue(client, clock, "https://x", dispatch_deadline_s=1801)
    with pytest.raises(ValueError, match="url"):
        make_queue(client, clock, "ftp://x")


# -- names and dedup ---------------------------------------------------------


def test_duplicate_name_refused_and_no_second_task(
    q: CloudTasksQueue, fake: FakeCloudTasksServer
) -> None:
    assert q.enqueue(task("dup", v=1))
    assert not q.enqueue(task("dup", v=2))
    assert not q.enqueue(task("dup", target="distributor/x", v=3))
    [rec] = fake.tasks(state=None)
    assert json.loads(rec.created.http_request.body)["payload"] == {"v": 1}


def test_enqueue_many_per_task_results(q: CloudTasksQueue, fake: FakeCloudTasksServer) -> None:
    assert q.enqueue(task("old"))
    assert q.enqueue_many([]) == []
    got = q.enqueue_many([task("x", v=1), task("old"), task("x", v=2), task("y")])
    assert got == [True, False, False, True]
    assert pending_ids(fake) == ids(["old", "x", "y"])
    x = fake.task(task_id("x"))
    assert x is not None and json.loads(x.created.http_request.body)["payload"] == {"v": 1}


def test_enqueue_many_in_parallel(q: CloudTasksQueue, fake: FakeCloudTasksServer) -> None:
    names = [f"t{i:02d}" for i in range(40)]
    assert q.enqueue_many([task(n) for n in names[:10]]) == [True] * 10
    assert q.enqueue_many([task(n) for n in names]) == [False] * 10 + [True] * 30
    assert pending_ids(fake) == ids(names)


def test_invalid_task_creates_nothing(q: CloudTasksQueue, fake: FakeCloudTasksServer) -> None:
    bad_payload = Task(name="bad", target="mutation", payload={"x": object()})
    with pytest.raises(InvalidTask):
        q.enqueue_many([task("good"), bad_payload])
    with pytest.raises(InvalidTask):
        q.enqueue(Task(name="nan", target="mutation", payload={"x": float("nan")}))
    for target in ("distributor/", "/mutation"):
        with pytest.raises(InvalidTask, match="target"):
            q.enqueue(task("t", target=target))
    sneaky = task("sneaky")
    object.__setattr__(sneaky, "name", "bad name")
    with pytest.raises(InvalidTask):
        q.enqueue_many([task("good"), sneaky])
    assert fake.tasks(state=None) == []


def test_other_api_errors_propagate(
    q: CloudTasksQueue,
    fake: FakeCloudTasksServer,
    client: tasks_v2.CloudTasksClient,
    clock: FakeClock,
    receiver: Receiver,
) -> None:
    fake.fail_next("CreateTask", "UNAVAILABLE")
    with pytest.raises(gexc.ServiceUnavailable):
        q.enqueue(task("a"))
    assert q.enqueue(task("a"))  # the next call goes through
    fake.fail_next("CreateTask", "PERMISSION_DENIED")
    with pytest.raises(gexc.PermissionDenied):
        q.enqueue_many([task("b"), task("c"), task("d")])
    # The other two were created; re-sending the batch (as the sweep does) refuses them.
    assert sorted(q.enqueue_many([task("b"), task("c"), task("d")])) == [False, False, True]
    other = make_queue(client, clock, receiver.url, queue="missing")
    with pytest.raises(gexc.NotFound):
        other.enqueue(task("e"))


def test_fake_rejects_what_cloud_tasks_rejects(
    q: CloudTasksQueue, client: tasks_v2.CloudTasksClient, clock: FakeClock
) -> None:
    with pytest.raises(gexc.InvalidArgument):
        q.enqueue(task("far", eta_us=T0 + 31 * 24 * 3600 * SEC))
    with pytest.raises(gexc.InvalidArgument):
        q.enqueue(task("big", blob="x" * 100_000))
    with pytest.raises(gexc.InvalidArgument):
        client.create_task(
            parent=QUEUE_PATH,
            task=tasks_v2.Task(
                name=f"{QUEUE_PATH}/tasks/has.dot",
                http_request=tasks_v2.HttpRequest(url="http://127.0.0.1:1/"),
            ),
        )


# -- dispatch ----------------------------------------------------------------


def test_dispatch_posts_headers_and_payload_to_receiver(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, receiver: Receiver
) -> None:
    assert q.enqueue(task("n1", k="v"))
    assert q.enqueue(task("d1", target="distributor/a/b c%", body_b64="eA=="))
    assert fake.run_due() == 2
    assert fake.run_due() == 0
    by_target = {r.decoded[0]: r for r in receiver.got if r.decoded}
    assert [r.error for r in receiver.got] == [None, None]

    m = by_target["mutation"]
    assert m.path == "/mutation"
    assert m.decoded == ("mutation", {"k": "v"}, 1, "n1")
    h = m.headers
    assert h["X-Cloudtasks-Taskname"] == task_id("n1")
    assert h["X-Cloudtasks-Queuename"] == QUEUE
    assert h["X-Cloudtasks-Taskretrycount"] == "0"
    assert h["X-Cloudtasks-Taskexecutioncount"] == "0"
    assert h["X-Cloudtasks-Tasketa"] == f"{T0 // SEC}.000000"
    assert h["Content-Type"] == "application/json"
    assert h["User-Agent"] == "Google-Cloud-Tasks"
    assert h["Authorization"] == f"Bearer fake-oidc:{SA}:{receiver.url}"
    assert "X-Cloudtasks-Taskpreviousresponse" not in h

    # WSGI percent-decodes the path; the config name comes back intact.
    d = by_target["distributor/a/b c%"]
    assert d.decoded == ("distributor/a/b c%", {"body_b64": "eA=="}, 1, "d1")
    assert fake.tasks() == []
    assert [t.state for t in fake.tasks(state=None)] == ["succeeded", "succeeded"]


def test_future_eta_not_dispatched_until_due(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, clock: FakeClock, receiver: Receiver
) -> None:
    q.enqueue(task("later", eta_us=T0 + 10 * SEC))
    q.enqueue(task("now"))
    assert fake.run_due() == 1
    assert [r.decoded[3] for r in receiver.got if r.decoded] == ["now"]
    assert fake.next_due_us() == T0 + 10 * SEC
    clock.advance(10 * SEC - 1)
    assert fake.run_due() == 0
    clock.advance(1)
    assert fake.run_due() == 1
    last = receiver.got[-1]
    assert last.decoded is not None and last.decoded[3] == "later"
    assert last.headers["X-Cloudtasks-Tasketa"] == f"{(T0 + 10 * SEC) // SEC}.000000"
    assert fake.next_due_us() is None


def _retry_headers(d: Dispatch) -> tuple[str, str, str | None, int]:
    h = d.headers
    return (
        h["X-CloudTasks-TaskRetryCount"],
        h["X-CloudTasks-TaskExecutionCount"],
        h.get("X-CloudTasks-TaskPreviousResponse"),
        d.status,
    )


def test_non_2xx_retried_with_backoff_and_growing_retry_count(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.answers = [503, 404, 500]
    q.enqueue(task("flaky"))
    assert fake.run_due() == 1  # 503
    assert fake.run_due() == 0  # the retry waits for its backoff
    assert fake.next_due_us() == T0 + fake.backoff_us(1) == T0 + SEC // 10
    times = [clock()]
    for _ in range(3):
        due = fake.next_due_us()
        assert due is not None
        clock.now_us = due
        times.append(due)
        assert fake.run_due() == 1
    assert [_retry_headers(d) for d in fake.dispatches] == [
        ("0", "0", None, 503),
        ("1", "0", "503", 404),
        ("2", "1", "404", 500),  # a 4xx is an execution, a 5xx is not
        ("3", "1", "500", 200),
    ]
    assert [d.at_us - T0 for d in fake.dispatches] == [t - T0 for t in times]
    assert [t - T0 for t in times] == [0, SEC // 10, 3 * SEC // 10, 7 * SEC // 10]
    # dm's delivery number is the retry count + 1, whatever the earlier answers were.
    assert [r.decoded[2] for r in receiver.got if r.decoded] == [1, 2, 3, 4]
    assert fake.tasks() == []
    assert not q.enqueue(task("flaky"))


def test_gives_up_after_max_attempts_and_keeps_the_name(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.answers = [500] * 10
    q.enqueue(task("doomed"))
    for _ in range(5):
        clock.now_us = fake.next_due_us() or clock.now_us
        assert fake.run_due() == 1
    assert fake.next_due_us() is None
    rec = fake.task(task_id("doomed"))
    assert rec is not None and (rec.state, rec.dispatch_count) == ("failed", 5)
    assert not q.enqueue(task("doomed"))


def test_backoff_doubles_then_grows_linearly_then_caps(clock: FakeClock) -> None:
    fake = FakeCloudTasksServer(
        clock=clock, min_backoff_us=10 * SEC, max_backoff_us=300 * SEC, max_doublings=3
    )
    got = [fake.backoff_us(n) // SEC for n in range(1, 9)]
    assert got == [10, 20, 40, 80, 160, 240, 300, 300]  # the example in Cloud Tasks' docs


def test_unreachable_target_is_retried(
    client: tasks_v2.CloudTasksClient, clock: FakeClock, fake: FakeCloudTasksServer
) -> None:
    closed = Receiver()
    url = closed.url
    closed.close()  # nothing listens there any more
    q = make_queue(client, clock, url)
    q.enqueue(task("lost"))
    assert fake.run_due() == 1
    assert fake.dispatches[-1].status == 0
    rec = fake.task(task_id("lost"))
    assert rec is not None and (rec.state, rec.dispatch_count, rec.execution_count) == (
        "pending",
        1,
        0,
    )


def test_name_tombstoned_after_run_then_reusable(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, clock: FakeClock, receiver: Receiver
) -> None:
    q.enqueue(task("once"))
    assert fake.run_due() == 1
    assert not q.enqueue(task("once"))
    clock.advance(3600 * SEC - 1)
    assert not q.enqueue(task("once"))
    clock.advance(1)
    assert q.enqueue(task("once"))
    assert fake.run_due() == 1
    assert [r.decoded[3] for r in receiver.got if r.decoded] == ["once", "once"]


def test_deleted_task_is_not_dispatched_and_its_name_stays_reserved(
    q: CloudTasksQueue,
    fake: FakeCloudTasksServer,
    client: tasks_v2.CloudTasksClient,
    receiver: Receiver,
) -> None:
    q.enqueue(task("gone"))
    client.delete_task(name=q.task_path("gone"))
    assert fake.run_due() == 0
    assert receiver.got == []
    assert not q.enqueue(task("gone"))
    with pytest.raises(gexc.NotFound):
        client.get_task(name=q.task_path("gone"))
    with pytest.raises(gexc.NotFound):
        client.delete_task(name=q.task_path("gone"))


def test_list_tasks_pages_through_pending_tasks(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, client: tasks_v2.CloudTasksClient
) -> None:
    names = [f"l{i}" for i in range(5)]
    q.enqueue_many([task(n, eta_us=T0 + SEC) for n in names])
    q.enqueue(task("ran"))
    fake.run_due()
    pager = client.list_tasks(request={"parent": QUEUE_PATH, "page_size": 2})
    listed = [t.name.rsplit("/", 1)[1] for t in pager]
    assert listed == ids(names)


def test_background_dispatcher(
    q: CloudTasksQueue, fake: FakeCloudTasksServer, receiver: Receiver
) -> None:
    fake.start_dispatcher()
    try:
        q.enqueue(task("bg", x=1))
        assert receiver.arrived.wait(30)
    finally:
        fake.stop_dispatcher()
    assert receiver.got[0].decoded == ("mutation", {"x": 1}, 1, "bg")


# -- decode_request ----------------------------------------------------------

GOOD_HEADERS = {"X-CloudTasks-TaskRetryCount": "2", "X-CloudTasks-TaskName": "abc"}
GOOD_BODY = b'{"name": "n1", "payload": {"a": [1, 2]}}'


def test_decode_request_round_trip() -> None:
    assert decode_request(GOOD_HEADERS, GOOD_BODY, "/mutation") == (
        "mutation",
        {"a": [1, 2]},
        3,
        "n1",
    )
    lower = {"x-cloudtasks-taskretrycount": "0"}
    assert decode_request(lower, GOOD_BODY, "/distributor/a/b")[0::2] == ("distributor/a/b", 1)
    extra = b'{"name": "n1", "payload": {}, "future": 1}'
    assert decode_request(GOOD_HEADERS, extra, "/mutation")[1] == {}


@pytest.mark.parametrize(
    ("headers", "body", "path", "match"),
    [
        (GOOD_HEADERS, GOOD_BODY, "mutation", "path must start"),
        (GOOD_HEADERS, GOOD_BODY, "/", "names no target"),
        (GOOD_HEADERS, GOOD_BODY, "//x", "names no target"),
        (GOOD_HEADERS, GOOD_BODY, "/distributor/", "names no target"),
        ({}, GOOD_BODY, "/mutation", "missing header X-CloudTasks-TaskRetryCount"),
        ({"X-CloudTasks-TaskRetryCount": "x"}, GOOD_BODY, "/mutation", "not an integer"),
        ({"X-CloudTasks-TaskRetryCount": "-1"}, GOOD_BODY, "/mutation", "negative"),
        (GOOD_HEADERS, b"{not json", "/mutation", "body is not JSON"),
        (GOOD_HEADERS, b"\xff\xfe", "/mutation", "body is not JSON"),
        (GOOD_HEADERS, b"[]", "/mutation", "JSON object"),
        (GOOD_HEADERS, b'{"payload": {}}', "/mutation", "body.name"),
        (GOOD_HEADERS, b'{"name": "a b", "payload": {}}', "/mutation", "body.name"),
        (GOOD_HEADERS, b'{"name": "n", "payload": [1]}', "/mutation", "body.payload"),
        (GOOD_HEADERS, b'{"name": "n"}', "/mutation", "body.payload"),
    ],
)
def test_decode_request_errors(headers: dict[str, str], body: bytes, path: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_request(headers, body, path)


def test_malformed_delivery_answers_400_and_is_retried(
    client: tasks_v2.CloudTasksClient, fake: FakeCloudTasksServer, receiver: Receiver
) -> None:
    # A task not made by the adapter (no dm body) reaches the receiver and is refused.
    client.create_task(
        parent=QUEUE_PATH,
        task=tasks_v2.Task(
            name=f"{QUEUE_PATH}/tasks/foreign",
            http_request=tasks_v2.HttpRequest(url=f"{receiver.url}/mutation", body=b"hi"),
        ),
    )
    assert fake.run_due() == 1
    [got] = receiver.got
    assert got.error is not None and "not JSON" in got.error
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert fake.dispatches[-1].status == 400


# -- the factory the gcp backend uses --------------------------------------------


def test_from_queue_path_with_emulator_host(
    fake: FakeCloudTasksServer, clock: FakeClock, receiver: Receiver
) -> None:
    """``emulator_host`` (DM_TASKS_EMULATOR_HOST): plain gRPC, no credentials needed."""
    q = CloudTasksQueue.from_queue_path(
        QUEUE_PATH,
        url=receiver.url,
        service_account_email=None,
        clock=clock,
        emulator_host=fake.address,
    )
    try:
        assert (q.project, q.location, q.queue) == (PROJECT, LOCATION, QUEUE)
        assert q.enqueue(task("via-factory", a=1))
        assert not q.enqueue(task("via-factory", a=1))  # the fake's name dedup
        assert fake.run_due() == 1
        assert receiver.got[0].decoded == ("mutation", {"a": 1}, 1, "via-factory")
        assert "Authorization" not in receiver.got[0].headers  # no invoker: no OIDC token
    finally:
        q.close()


def test_from_queue_path_refuses_a_malformed_path(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="projects/P/locations/L/queues/Q"):
        CloudTasksQueue.from_queue_path(
            "queues/dm",
            url="https://x.example",
            service_account_email=None,
            clock=clock,
            emulator_host="127.0.0.1:1",
        )


# -- sharding over several queues (DM_TASKS_QUEUES) ---------------------------------


SHARDS = ("dm-tasks-0", "dm-tasks-1", "dm-tasks-2")


@pytest.fixture
def sharded(clock: FakeClock) -> Iterator[FakeCloudTasksServer]:
    paths = [f"projects/{PROJECT}/locations/{LOCATION}/queues/{q}" for q in SHARDS]
    with FakeCloudTasksServer(clock=clock, queues=paths, max_attempts=5) as server:
        yield server


def _queue_of(t: FakeTask) -> str:
    return t.queue.rsplit("/", 1)[1]


def test_tasks_spread_over_shards_by_a_stable_key(
    sharded: FakeCloudTasksServer, clock: FakeClock, receiver: Receiver
) -> None:
    q = make_queue(sharded.client(), clock, receiver.url, queue=list(SHARDS))
    names = [f"step-{i}" for i in range(60)]
    assert q.enqueue_many([task(n, i=i) for i, n in enumerate(names)]) == [True] * 60
    by_queue = {s: 0 for s in SHARDS}
    for t in sharded.tasks():
        by_queue[_queue_of(t)] += 1
        # Every task is on the queue its name picks, and only there.
        assert t.name == q.task_path(t_name := json.loads(t.created.http_request.body)["name"])
        assert _queue_of(t) == SHARDS[q.shard(t_name)]
    assert sum(by_queue.values()) == 60
    assert all(n > 0 for n in by_queue.values()), by_queue  # every shard takes a share

    # Named-task dedup still holds: a re-sent name meets its first copy on the same queue.
    assert q.enqueue_many([task(n) for n in names[:10]]) == [False] * 10
    assert not q.enqueue(task(names[-1]))
    assert len(sharded.tasks()) == 60

    # Delivered with the shard's own queue name, decoded as usual.
    assert sharded.run_due() == 60
    assert {d.headers["X-CloudTasks-QueueName"] for d in sharded.dispatches} == set(SHARDS)
    assert sorted(r.decoded[3] for r in receiver.got if r.decoded) == sorted(names)
    # Tombstones are per queue too: the name stays refused after it ran.
    assert not q.enqueue(task(names[0]))


def test_shard_key_keeps_one_roots_tasks_on_one_queue(
    sharded: FakeCloudTasksServer, clock: FakeClock, receiver: Receiver
) -> None:
    q = make_queue(sharded.client(), clock, receiver.url, queue=list(SHARDS))
    roots = [f"attempts/q{i}|1" for i in range(12)]
    for root in roots:
        for step in range(4):
            t = Task(f"{step}-{task_id(root)[:16]}", "mutation", {"s": step}, shard_key=root)
            assert q.enqueue(t)
            assert not q.enqueue(t)  # the same name with the same key: refused
    per_root: dict[str, set[str]] = {}
    for ft in sharded.tasks():
        name = json.loads(ft.created.http_request.body)["name"]
        per_root.setdefault(name.split("-", 1)[1], set()).add(_queue_of(ft))
    assert len(per_root) == len(roots)
    assert all(len(queues) == 1 for queues in per_root.values())
    assert len({next(iter(v)) for v in per_root.values()}) > 1  # roots spread over shards
    # Without a shard_key, a task is sharded by its name.
    assert q.shard(Task("x", "mutation", {}).key) == q.shard("x")


def test_from_queue_path_with_several_queues(
    sharded: FakeCloudTasksServer, clock: FakeClock, receiver: Receiver
) -> None:
    paths = [f"projects/{PROJECT}/locations/{LOCATION}/queues/{s}" for s in SHARDS]
    q = CloudTasksQueue.from_queue_path(
        paths,
        url=receiver.url,
        service_account_email=None,
        clock=clock,
        emulator_host=sharded.address,
    )
    try:
        assert q.queues == list(SHARDS) and q.parents == paths
        assert q.enqueue(task("one"))
        assert _queue_of(sharded.tasks()[0]) == SHARDS[q.shard("one")]
    finally:
        q.close()
    elsewhere = [*paths[:2], f"projects/{PROJECT}/locations/us-east1/queues/x"]
    with pytest.raises(ValueError, match="one project and location"):
        CloudTasksQueue.from_queue_path(
            elsewhere, url=receiver.url, service_account_email=None, clock=clock
        )
    with pytest.raises(ValueError, match="distinct"):
        make_queue(sharded.client(), clock, receiver.url, queue=["a", "a"])
