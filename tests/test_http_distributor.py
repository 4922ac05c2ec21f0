"""The http distributor over the wire: the official Cloud Tasks client against the
fake Cloud Tasks server (a test double; no faithful emulator exists), then end to
end: dm under ``dm serve``, a real functions-framework worker, the fake
dispatching the tasks over HTTP.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from distributors import gapi
from distributors.http import distributor as httpd
from dmcore import distributor as dist
from dmcore import remote
from dmcore.errors import Code, InvalidArgument
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from tests import remote_support as rs
from tests.fake_cloudtasks import FakeCloudTasksServer
from tests.http_sink import Answer, HttpSink, Seen

QUEUE = "projects/demo/locations/us-central1/queues/dm-http"
WORKER = "https://worker-abc.a.run.app/"
INVOKER = "dm-worker-invoker@demo.iam.gserviceaccount.com"
Abnormal = dm_pb2.AbnormalFinish


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloudTasksServer]:
    with FakeCloudTasksServer(clock=now_us) as fake:
        monkeypatch.setenv(httpd.EMULATOR_ENV, fake.address)
        yield fake


def config(**over: Any) -> dict[str, Any]:
    cfg = {
        "url": WORKER,
        "service_account_email": INVOKER,
        "queue": QUEUE,
        "max_attempts": 4,
        "deadline": "120s",
    }
    return {"remote": {"http": {**cfg, **over}}}


def make(tmp_path: pathlib.Path, **over: Any) -> httpd.HttpDistributor:
    d, _, _ = rs.build(tmp_path, "remote", config(**over))
    assert isinstance(d, httpd.HttpDistributor)
    return d


# -- run ------------------------------------------------------------------------------------


def test_run_creates_one_named_task_carrying_the_work_order(
    tmp_path: pathlib.Path, tasks: FakeCloudTasksServer
) -> None:
    d = make(tmp_path)
    prev = dm_pb2.JsonResult(object='{"state":{"stage":2}}')
    started = d.run(rs.desc({"n": 3}), rs.auth(), prev)
    again = d.run(rs.desc({"n": 3}), rs.auth(), prev)  # a retried run(): same task, same token
    assert again == started
    [task] = tasks.tasks()
    assert started.token == f"{'q' * 43}|1|1 {task.name}"
    assert task.queue == QUEUE and task.task_id.startswith("dm-")
    http = task.created.http_request
    assert http.url == WORKER
    assert http.oidc_token.service_account_email == INVOKER
    assert http.oidc_token.audience == WORKER
    order = remote.WorkOrder.from_bytes(http.body)
    assert order.auth == rs.auth()
    assert order.dm_api_url == "https://dm-api.example.run.app"
    assert json.loads(order.parameters or "") == {"n": 3}
    assert order.state == {"stage": 2}
    assert order.max_attempts == 4
    assert order.notify is not None
    assert order.notify.topic == "projects/demo/topics/dm-distributor-notify"
    assert order.notify.auth_token
    assert started.poll_interval > dist.GET_STATUS_GRACE * 0  # dm polls while it runs


def test_large_parameters_are_left_for_the_api(
    tmp_path: pathlib.Path, tasks: FakeCloudTasksServer
) -> None:
    d = make(tmp_path)
    big = {"blob": "x" * 200_000}
    d.run(rs.desc(big), rs.auth(), dm_pb2.JsonResult(object=json.dumps({"state": big})))
    [task] = tasks.tasks()
    order = remote.WorkOrder.from_bytes(task.created.http_request.body)
    assert order.parameters is None and order.state is None  # the worker reads them via the API
    assert order.auth == rs.auth()


def test_run_errors_are_classified(tmp_path: pathlib.Path, tasks: FakeCloudTasksServer) -> None:
    d = make(tmp_path)
    for code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL"):
        tasks.fail_next("CreateTask", code)
        with pytest.raises(dist.TransientError, match="creating Cloud Task"):
            d.run(rs.desc(), rs.auth(), None)
    for code in ("PERMISSION_DENIED", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED"):
        tasks.fail_next("CreateTask", code)
        with pytest.raises(gapi.GoogleApiError) as e:
            d.run(rs.desc(), rs.auth(), None)
        assert not isinstance(e.value, dist.TransientError)
    assert tasks.tasks() == []
    d.run(rs.desc(), rs.auth(), None)  # after all that, it works
    assert len(tasks.tasks()) == 1


def test_run_refuses_what_cannot_work(tmp_path: pathlib.Path, tasks: FakeCloudTasksServer) -> None:
    local_dm, _, _ = rs.build(tmp_path, "remote", config(), dm_host="file:///home")
    with pytest.raises(ValueError, match="dm_api_url"):
        local_dm.run(rs.desc(), rs.auth(), None)
    no_topic, _, _ = rs.build(tmp_path / "b", "remote", config(), topic="dm-distributor-notify")
    with pytest.raises(ValueError, match="report_url"):
        no_topic.run(rs.desc(), rs.auth(), None)
    with pytest.raises(ValueError, match="deadline"):
        make(tmp_path / "c").run(rs.desc(dist_params={"deadline": "soon"}), rs.auth(), None)
    assert tasks.tasks() == []


# -- get_status, cancel, notifications -------------------------------------------------------


def test_get_status_follows_the_task_then_waits_for_a_report_then_ends_it(
    tmp_path: pathlib.Path, tasks: FakeCloudTasksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make(tmp_path)
    token = d.run(rs.desc(), rs.auth(), None).token
    assert d.get_status(rs.desc(), token) is None  # queued
    tasks.fail_next("GetTask", "UNAVAILABLE")
    with pytest.raises(dist.TransientError):
        d.get_status(rs.desc(), token)
    tasks.fail_next("GetTask", "PERMISSION_DENIED")
    with pytest.raises(gapi.GoogleApiError):
        d.get_status(rs.desc(), token)  # final: dm says MISSING once 30 s have passed
    d._client().delete_task(name=token.split(" ")[1])  # gone, as after its last delivery
    clock = [now_us()]
    monkeypatch.setattr(httpd.HttpDistributor, "clock", staticmethod(lambda: clock[0]))
    assert d.get_status(rs.desc(), token) is None  # a report may be on its way
    clock[0] += int(httpd.REPORT_GRACE.total_seconds() * 1e6) - 1
    assert d.get_status(rs.desc(), token) is None
    clock[0] += 1
    got = d.get_status(rs.desc(), token)
    # A normal end without state: dm makes it FINISHED if the job stopped, FAILED if not.
    assert got is not None and not got.HasField("abnormal_finish")
    assert json.loads(got.data.object) == {"state": {}}


def test_cancel_deletes_the_task_and_calls_the_cancel_url(
    tmp_path: pathlib.Path, tasks: FakeCloudTasksServer
) -> None:
    with HttpSink() as worker:
        d = make(tmp_path, url=worker.url + "/", cancel_url=worker.url + "/cancel")
        token = d.run(rs.desc(), rs.auth(), None).token
        d.cancel(rs.desc(), token)
        d.cancel(rs.desc(), token)  # again: idempotent
        assert tasks.tasks() == []
        got = d.get_status(rs.desc(), token)
        assert got is not None and got.abnormal_finish.status == Abnormal.CANCELLED
        assert [(s.method, s.path, json.loads(s.body)) for s in worker.seen] == [
            ("POST", "/cancel", {"execution": f"{'q' * 43}|1|1"})
        ] * 2
    tasks.fail_next("DeleteTask", "UNAVAILABLE")
    with pytest.raises(dist.TransientError):
        make(tmp_path / "b").cancel(rs.desc(), token)


def test_the_status_url_is_asked_first(tmp_path: pathlib.Path, tasks: FakeCloudTasksServer) -> None:
    answers = {
        "done": (200, b'{"report": "stopped", "state": {"k": 1}}'),
        "unknown": (404, b"no such execution"),
        "broken": (500, b"oops"),
    }
    mode = ["done"]

    def answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        status, body = answers[mode[0]]
        return status, {}, body

    with HttpSink(answer) as worker:
        d = make(tmp_path, url=worker.url + "/", status_url=worker.url + "/status")
        token = d.run(rs.desc(), rs.auth(), None).token
        got = d.get_status(rs.desc(), token)
        assert got is not None and json.loads(got.data.object) == {"state": {"k": 1}}
        assert worker.seen[0].path == "/status?execution=" + "q" * 43 + "%7C1%7C1"
        mode[0] = "unknown"
        assert d.get_status(rs.desc(), token) is None  # then the task: still queued
        mode[0] = "broken"
        with pytest.raises(dist.TransientError, match="status_url"):
            d.get_status(rs.desc(), token)


def test_every_call_walks_each_error_class(
    tmp_path: pathlib.Path, tasks: FakeCloudTasksServer
) -> None:
    """Transient (dm retries) or final, at every call the distributor makes."""
    answers: list[int] = []

    def answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        return (answers.pop(0) if answers else 200), {}, b"{}"

    with HttpSink(answer) as worker:
        d, _, _ = rs.build(
            tmp_path,
            "remote",
            config(
                url=worker.url + "/",
                status_url=worker.url + "/status",
                cancel_url=worker.url + "/cancel",
            ),
            busy_timeout=0.05,
        )
        token = d.run(rs.desc(), rs.auth(), None).token

        def final(call: Callable[[], object]) -> None:
            with pytest.raises(Exception) as e:
                call()
            assert not isinstance(e.value, dist.TransientError), e.value

        def status() -> object:
            return d.get_status(rs.desc(), token)

        def cancel() -> None:
            d.cancel(rs.desc(), token)

        # The worker's status_url: an outage, then a refusal.
        answers[:] = [503, 503]
        with pytest.raises(dist.TransientError, match="status_url"):
            status()
        answers[:] = [403]
        final(status)
        # Cloud Tasks' DeleteTask.
        tasks.fail_next("DeleteTask", "UNAVAILABLE")
        with pytest.raises(dist.TransientError, match="deleting Cloud Task"):
            cancel()
        tasks.fail_next("DeleteTask", "PERMISSION_DENIED")
        final(cancel)
        # dm's store, held by another writer: transient.
        with rs.write_locked(tmp_path), pytest.raises(dist.TransientError, match="store busy"):
            cancel()
        # The worker's cancel_url: an outage, then a refusal (404: nothing to cancel, fine).
        answers[:] = [503, 503]
        with pytest.raises(dist.TransientError, match="cancel_url"):
            cancel()
        answers[:] = [403]
        final(cancel)
        answers[:] = [404]
        cancel()


ErrorKinds = list[tuple[type[BaseException], dict[str, Any]]]


def test_google_api_errors_are_classified() -> None:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    transient: ErrorKinds = [
        (gexc.ServiceUnavailable, {}),
        (gexc.TooManyRequests, {}),  # RESOURCE_EXHAUSTED: quota
        (gexc.DeadlineExceeded, {}),
        (gexc.InternalServerError, {}),
        (gexc.Aborted, {}),
        (ConnectionResetError, {}),
        (auth_exc.TransportError, {}),  # the metadata server did not answer
        (auth_exc.RefreshError, {"retryable": True}),
    ]
    final: ErrorKinds = [
        (gexc.PermissionDenied, {}),
        (gexc.NotFound, {}),
        (gexc.InvalidArgument, {}),
        (gexc.FailedPrecondition, {}),
        (auth_exc.RefreshError, {}),  # invalid_grant
        (auth_exc.DefaultCredentialsError, {}),
    ]
    for kind, more in transient:
        got = gapi.classify(kind("x", **more), "doing")
        assert isinstance(got, dist.TransientError), kind
    for kind, more in final:
        got = gapi.classify(kind("x", **more), "doing")
        assert isinstance(got, gapi.GoogleApiError) and str(got).startswith("doing: "), kind


def test_reports_become_results(tmp_path: pathlib.Path, tasks: FakeCloudTasksServer) -> None:
    d = make(tmp_path)
    eid = ExecutionID("q" * 43, 1, 1)

    def note(report: remote.Report) -> dm_pb2.Result | None:
        return d.handle_notification(rs.desc(), dist.Notification(eid, report.to_bytes()))

    stopped = note(remote.Report(remote.REPORT_STOPPED, state={"s": [1]}))
    assert stopped is not None and json.loads(stopped.data.object) == {"state": {"s": [1]}}
    failed = note(remote.Report(remote.REPORT_FAILED, reason="worker returned without finishing"))
    assert failed is not None and failed.abnormal_finish.status == Abnormal.FAILED
    crashed = note(remote.Report(remote.REPORT_CRASHED, reason="boom"))
    assert crashed is not None and crashed.abnormal_finish == Abnormal(
        status=Abnormal.CRASHED, reason="boom"
    )
    assert d.handle_notification(rs.desc(), dist.Notification(eid, b"garbage")) is None


def test_info_url_names_the_queue_and_no_secret(
    tmp_path: pathlib.Path, tasks: FakeCloudTasksServer
) -> None:
    d = make(tmp_path)
    token = d.run(rs.desc(), rs.auth(), None).token
    url = d.info_url(token)
    assert url == (
        "https://console.cloud.google.com/cloudtasks/queue/us-central1/dm-http/tasks?project=demo"
    )
    [task] = tasks.tasks()
    order = remote.WorkOrder.from_bytes(task.created.http_request.body)
    assert order.notify is not None
    for secret in (order.notify.auth_token, "QUFB"):  # the auth token; the activation (b64)
        assert secret not in url and secret not in token
    assert d.info_url("nonsense") == ""


# -- config checks (dm config validate) -----------------------------------------------------


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"url": ""}, "url: required"),
        ({"url": "ftp://x"}, "url: must be an http"),
        ({"url": "http://worker.example.com/"}, "url: plain http only on the loopback"),
        ({"queue": "dm-http"}, "queue: expected projects/P/locations/L/queues/Q"),
        ({"service_account_email": ""}, "service_account_email: required"),
        ({"deadline": "5s"}, "deadline: must be within 15s..30m"),
        ({"status_url": "https://u:pw@x.example.com/"}, "status_url: must not carry credentials"),
        ({"max_attempts": 1000}, "max_attempts: at most 100"),
    ],
)
def test_malformed_configs_are_refused(
    tmp_path: pathlib.Path, over: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"distributor_configs.remote.http: {message}"):
        rs.build(tmp_path, "remote", config(**over))


def test_validate_checks_the_distributor_parameters(tmp_path: pathlib.Path) -> None:
    d = make(tmp_path)
    d.validate("{}")
    d.validate('{"deadline": "60s"}')
    with pytest.raises(ValueError, match="colour: unknown field"):
        d.validate('{"colour": "red"}')
    with pytest.raises(ValueError, match="deadline: must be within"):
        d.validate('{"deadline": "3600s"}')


def test_a_bad_work_order_is_refused_by_the_worker(tmp_path: pathlib.Path) -> None:
    from functions_framework import create_app

    source = tmp_path / "w.py"
    source.write_text("from dmcore.job import worker\n\n@worker\ndef main(job):\n    pass\n")
    client = create_app("main", str(source)).test_client()  # type: ignore[no-untyped-call]
    rsp = client.post("/", data=b"{}")
    assert rsp.status_code == 400 and b"bad work order" in rsp.data
    assert client.get("/").status_code == 405
    body = json_format.MessageToDict(rs.auth())
    rsp = client.post("/", data=json.dumps({"auth": body}).encode())
    assert rsp.status_code == 400 and b"dm_api_url: required" in rsp.data
    body["id"]["quest"] = "not-a-quest-id"
    order = {"auth": body, "dm_api_url": "http://127.0.0.1:9", "quest_id": "q"}
    rsp = client.post("/", data=json.dumps(order).encode())
    assert rsp.status_code == 400
    assert rsp.text.startswith("bad work order: work order auth: execution.quest: not a quest ID")


# -- end to end: dm serve + a functions-framework worker + the fake dispatching ---------------

E2E_S = 120.0
"""Bound of the end-to-end waits (a hang fails; nothing asserts on timing)."""

MODES = """
from dmcore.job import Job, worker


@worker
def main(job: Job) -> None:
    mode = job.parameters["mode"]
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "finish":
        job.finish({"mode": mode})
    # "return": returns without finishing
"""

PLAIN = """
import json

import functions_framework
from google.protobuf import json_format

from dmcore import remote
from dmcore.proto import dm_pb2


@functions_framework.http
def main(request):
    # Not dmcore.job.worker: it never reports; it answers 200 either way.
    order = json.loads(request.get_data())
    if json.loads(order["parameters"])["mode"] == "finish":
        auth = json_format.ParseDict(order["auth"], dm_pb2.Execution.Auth())
        client = remote.RemoteClient(order["dm_api_url"])
        own = b"plain-worker-token".ljust(32, b"-")
        client.activate_execution(dm_pb2.ActivateExecutionReq(auth=auth, execution_token=own))
        client.finish_attempt(
            dm_pb2.FinishAttemptReq(
                auth=dm_pb2.Execution.Auth(id=auth.id, token=own),
                data=dm_pb2.JsonResult(object='{"plain": true}'),
            )
        )
    return "ok"
"""


@pytest.fixture
def dm_api_front() -> str:
    """What :func:`stack`'s config ``front`` puts between its worker and dm: a test
    parametrizes it. "busy": a front answering every call UNAVAILABLE; "lossy": one
    that passes each call on to dm and loses the answers to FinishAttempt (a 502, as
    from a front end that timed out after dm did the call). The worker's retry
    budget (0.1 s, shorter than the first pause) gives up at once."""
    return ""


UNAVAILABLE = (503, {remote.GRPC_CODE_HEADER: str(int(Code.UNAVAILABLE))}, b"dm is busy")


def lossy(base: str) -> Callable[[Seen], Answer]:
    """The "lossy" front for the dm_api at ``base`` (see :func:`dm_api_front`)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def answer(seen: Seen) -> Answer:
        keep = ("Content-Type", "Accept")
        headers = {k: v for k, v in seen.headers.items() if k in keep}
        req = urllib.request.Request(base + seen.path, seen.body, headers, method=seen.method)
        try:
            with opener.open(req, timeout=30) as rsp:
                status, got, body = rsp.status, dict(rsp.headers.items()), rsp.read()
        except urllib.error.HTTPError as e:
            status, got, body = e.code, dict(e.headers.items()), e.read()
        if seen.path.endswith("/FinishAttempt"):
            return 502, {}, b"bad gateway"  # dm did it; its answer is lost
        keep = ("Content-Type", remote.GRPC_CODE_HEADER)
        return status, {k: v for k, v in got.items() if k in keep}, body

    return answer


@pytest.fixture
def stack(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    tasks: FakeCloudTasksServer,
    dm_api_front: str,
) -> Iterator[dict[str, Any]]:
    from dmcore.runtime import backend as backends
    from dmcore.runtime.serve import LocalServer
    from tests.test_functions_support import clean_env

    clean_env(monkeypatch)
    monkeypatch.setenv(httpd.EMULATOR_ENV, tasks.address)
    modes = tmp_path / "modes.py"
    modes.write_text(MODES)
    plain = tmp_path / "plain.py"
    plain.write_text(PLAIN)
    example = rs.REPO / "examples" / "http" / "worker.py"
    procs = []
    front = HttpSink()
    try:
        p1, sums = rs.start_worker(example, "main", tmp_path / "sums.log")
        procs.append(p1)
        p2, other = rs.start_worker(modes, "main", tmp_path / "modes.log")
        procs.append(p2)
        p3, plain_url = rs.start_worker(plain, "main", tmp_path / "plain.log")
        procs.append(p3)
        port = rs.free_port()
        base = f"http://127.0.0.1:{port}"
        common = {
            "queue": "projects/dm-local/locations/local/queues/dm-http",
            "max_attempts": 2,
            "deadline": "60s",
            "dm_api_url": base,
            "report_url": base + "/dm_notify/",
        }
        configs: dict[str, Any] = {
            "distributor_configs": {
                "http": {"http": {"url": sums, **common}},
                "modes": {"http": {"url": other, **common}},
                "plain": {"http": {"url": plain_url, **common}},
            }
        }
        if dm_api_front:
            front.answer = lossy(base) if dm_api_front == "lossy" else lambda seen: UNAVAILABLE
            budget = {remote.RETRY_BUDGET_ENV: "0.1"}
            p4, url = rs.start_worker(modes, "main", tmp_path / "front.log", env=budget)
            procs.append(p4)
            # lossy: the first delivery is the last, the one whose answer matters here.
            last = 1 if dm_api_front == "lossy" else 2
            configs["distributor_configs"]["front"] = {
                "http": {**common, "url": url, "dm_api_url": front.url, "max_attempts": last}
            }
        srv = LocalServer(
            port, tmp_path / "home", config=configs, sweep_every_s=0.5, out=lambda s: None
        ).start()
        tasks.start_dispatcher()
        try:
            yield {"server": srv, "backend": backends.get(), "tmp": tmp_path}
        finally:
            tasks.stop_dispatcher()
            srv.close()
            from dmcore import logs

            logs.unconfigure()
    finally:
        for p in procs:
            rs.stop(p)
        front.close()


def dispatched(tasks: FakeCloudTasksServer, n: int) -> list[Any]:
    """The fake's dispatches once ``n`` are recorded (a worker reports before it answers)."""
    deadline = time.monotonic() + E2E_S
    while len(tasks.dispatches) < n:
        assert time.monotonic() < deadline, f"only {len(tasks.dispatches)} dispatches"
        time.sleep(0.05)
    return list(tasks.dispatches)


def submit_and_wait(stack: dict[str, Any], q: dict[str, Any]) -> dm_pb2.Attempt:
    from dmcore import ids
    from dmcore.ids import AttemptID
    from dmcore.service import Caller

    service = stack["backend"].service
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(ids.desc_from_json(q))
    req.quest_attempt.add(nums=[1])
    aid = AttemptID(service.ensure_graph_data(req, Caller.trusted()).quest_ids[0].id, 1)

    def logs() -> str:
        return "\n".join(p.read_text() for p in stack["tmp"].glob("*.log"))

    return rs.wait_for(service, [aid], E2E_S, logs)[aid]


def test_end_to_end_the_example_worker_sums_squares_through_dependencies(
    stack: dict[str, Any], tasks: FakeCloudTasksServer, caplog: pytest.LogCaptureFixture
) -> None:
    q = {
        "distributor_config_name": "http",
        "parameters": {"n": 3, "config": "http"},
        "distributor_parameters": {},
    }
    att = submit_and_wait(stack, q)
    assert json.loads(att.data.finished.data.object) == {"sum": 14}  # 9 + 4 + 1 + 0
    # n = 3 halted once for n = 2, then was resumed: two executions, two tasks.
    assert len(att.executions) == 2
    first = att.executions[1].data.finished.data.object
    assert json.loads(first) == {"state": {"waiting_for": 2}}
    dispatches = dispatched(tasks, 7)  # executions: 2 (n=3) + 2 + 2 + 1 (n=0)
    assert len(dispatches) == 7
    assert len({d.url for d in dispatches}) == 1 and all(d.status == 200 for d in dispatches)
    logs = caplog.text + "".join(p.read_text() for p in stack["tmp"].glob("*.log"))
    for d in dispatches:
        assert "X-CloudTasks-TaskName" in d.headers
        order = remote.WorkOrder.from_bytes(d.body)
        assert order.notify is not None
        for secret in (order.notify.auth_token, json_format.MessageToDict(order.auth)["token"]):
            assert secret not in logs  # tokens travel in task bodies only


def test_end_to_end_a_worker_that_returns_without_finishing_fails(
    stack: dict[str, Any], tasks: FakeCloudTasksServer
) -> None:
    q = {
        "distributor_config_name": "modes",
        "parameters": {"mode": "return"},
        "distributor_parameters": {},
    }
    att = submit_and_wait(stack, q)
    assert att.data.abnormal_finish.status == Abnormal.FAILED
    ex = att.executions[1].data.abnormal_finish
    assert ex == Abnormal(status=Abnormal.FAILED, reason="worker returned without finishing")
    assert [d.status for d in dispatched(tasks, 1)] == [200]


def test_end_to_end_a_worker_that_keeps_raising_is_retried_then_crashed(
    stack: dict[str, Any], tasks: FakeCloudTasksServer
) -> None:
    q = {
        "distributor_config_name": "modes",
        "parameters": {"mode": "raise"},
        "distributor_parameters": {},
    }
    att = submit_and_wait(stack, q)
    ex = att.executions[1].data.abnormal_finish
    assert ex.status == Abnormal.CRASHED
    assert ex.reason == "worker raised on delivery 2 of 2: RuntimeError: boom"
    # Delivery 1 answered 500 (Cloud Tasks retried); delivery 2 reported and answered 200.
    dispatches = dispatched(tasks, 2)
    assert [d.status for d in dispatches] == [500, 200]
    assert [d.headers["X-CloudTasks-TaskRetryCount"] for d in dispatches] == ["0", "1"]


FRONT_QUEST = {
    "distributor_config_name": "front",
    "parameters": {"mode": "finish"},
    "distributor_parameters": {},
    "meta": {"retry": {"crashed": 1}},
}
"""A quest of the worker behind :func:`dm_api_front`; a crash is retried once."""


@pytest.mark.parametrize("dm_api_front", ["busy"])
def test_end_to_end_dm_unavailable_on_the_last_delivery_crashes_and_is_retried(
    stack: dict[str, Any], tasks: FakeCloudTasksServer
) -> None:
    """dm stays unavailable for every delivery: not the job's failure. The last
    delivery reports CRASHED, and dm retries the attempt under meta.retry.crashed
    (once here), where the task gone without a report used to end it FAILED."""
    att = submit_and_wait(stack, FRONT_QUEST)
    assert att.data.abnormal_finish.status == Abnormal.CRASHED
    assert sorted(att.executions) == [1, 2]  # retried once, as meta.retry.crashed allows
    for num in (1, 2):
        ex = att.executions[num].data.abnormal_finish
        assert ex.status == Abnormal.CRASHED
        assert ex.reason.startswith("dm unavailable on delivery 2 of 2: ")
        assert "/prpc/dm.Deps/ActivateExecution answered 503: dm is busy" in ex.reason
    # Per execution: delivery 1 answered 503 (Cloud Tasks retried), delivery 2 reported.
    dispatches = dispatched(tasks, 4)
    assert [d.status for d in dispatches] == [503, 200, 503, 200]
    assert [d.headers["X-CloudTasks-TaskRetryCount"] for d in dispatches] == ["0", "1", "0", "1"]


@pytest.mark.parametrize("dm_api_front", ["lossy"])
def test_end_to_end_a_finish_whose_answer_is_lost_on_the_last_delivery_finishes(
    stack: dict[str, Any], tasks: FakeCloudTasksServer
) -> None:
    """The last delivery's FinishAttempt was done, but no word of it came back: the
    worker must not report CRASHED (dm would throw the result away and run the
    attempt again); it reports "stopped" with the state, and dm ends it FINISHED."""
    att = submit_and_wait(stack, FRONT_QUEST)
    assert not att.data.HasField("abnormal_finish"), att.data.abnormal_finish
    assert json.loads(att.data.finished.data.object) == {"mode": "finish"}
    assert sorted(att.executions) == [1]
    assert json.loads(att.executions[1].data.finished.data.object) == {"state": {}}
    # Delivery 1 of 1 reported and answered 200 (where a 503 had the queue deliver
    # again, to meet a revoked token, and dm find the end by polling a minute later).
    assert [d.status for d in dispatched(tasks, 1)] == [200]
    assert len(tasks.dispatches) == 1


@pytest.fixture
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """dm polls the tasks every second and waits 2 s for a report (dm serve runs here)."""
    monkeypatch.setattr(httpd, "POLL_INTERVAL", datetime.timedelta(seconds=1))
    monkeypatch.setattr(httpd, "POLL_TIMEOUT", datetime.timedelta(seconds=1))
    monkeypatch.setattr(httpd, "REPORT_GRACE", datetime.timedelta(seconds=2))


@pytest.mark.usefixtures("quick_polls")
def test_end_to_end_any_worker_that_answers_2xx_without_finishing_fails(
    stack: dict[str, Any], tasks: FakeCloudTasksServer
) -> None:
    """A worker that is not dmcore.job.worker reports nothing: dm learns from the task."""
    q = {
        "distributor_config_name": "plain",
        "parameters": {"mode": "return"},
        "distributor_parameters": {},
    }
    att = submit_and_wait(stack, q)
    ex = att.executions[1].data.abnormal_finish
    assert ex.status == Abnormal.FAILED
    assert ex.reason == "distributor finished execution while it was in the SCHEDULING state."
    assert [d.status for d in dispatched(tasks, 1)] == [200]


@pytest.mark.usefixtures("quick_polls")
def test_end_to_end_any_worker_that_finishes_without_reporting_finishes(
    stack: dict[str, Any],
) -> None:
    q = {
        "distributor_config_name": "plain",
        "parameters": {"mode": "finish"},
        "distributor_parameters": {},
    }
    att = submit_and_wait(stack, q)
    assert json.loads(att.data.finished.data.object) == {"plain": True}
    assert json.loads(att.executions[1].data.finished.data.object) == {"state": {}}


def test_end_to_end_a_finishing_worker(stack: dict[str, Any]) -> None:
    q = {
        "distributor_config_name": "modes",
        "parameters": {"mode": "finish"},
        "distributor_parameters": {},
    }
    att = submit_and_wait(stack, q)
    assert json.loads(att.data.finished.data.object) == {"mode": "finish"}
    assert json.loads(att.executions[1].data.finished.data.object) == {"state": {}}
