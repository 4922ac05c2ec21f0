"""The http worker (dmcore.job.run_order, dmcore.job.worker) when dm is busy: a call
that met UNAVAILABLE past its client's retries is answered 503, so the queue delivers
the task again, and it is not counted as the worker raising; on the last delivery
its order allows, the worker reports the execution CRASHED (dm retries it under
meta.retry.crashed) rather than leave dm to find the task gone and end it FAILED.

Run against an embedded dm (a Harness) whose execution C holds a declaration claim
(dm's own UNAVAILABLE), and through functions-framework's test client against a
front answering UNAVAILABLE; reports go to a local HTTP endpoint. The end to end
(dm's side: the execution CRASHED, retried) is in test_http_distributor.py.
"""

from __future__ import annotations

import base64
import http.server
import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import flask.testing
import pytest
from functions_framework import create_app
from google.protobuf import json_format

from distributors.fake import quest_desc
from dmcore import remote
from dmcore.client import LocalClient
from dmcore.errors import Code
from dmcore.ids import ExecutionID
from dmcore.job import RETRY_COUNT_HEADER, Job, run_order
from dmcore.states import ExecutionState
from tests import remote_support as rs
from tests.harness import Harness
from tests.http_sink import Answer, HttpSink
from tests.test_service import activate, aid_of, declare, start


@pytest.fixture
def reports() -> Iterator[tuple[str, list[remote.Report]]]:
    """A push endpoint on a free port; the reports it took, in order."""
    got: list[remote.Report] = []

    class Take(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            got.append(remote.Report.parse(base64.b64decode(body["message"]["data"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Take)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/dm_notify/", got
    finally:
        srv.shutdown()
        srv.server_close()


def test_dm_unavailable_is_redelivered_then_crashed_on_the_last_delivery(
    tmp_path: pathlib.Path, reports: tuple[str, list[remote.Report]]
) -> None:
    url, got = reports
    h = Harness(tmp_path)
    try:
        _redelivered_then_crashed(h, url, got)
    finally:
        h.close()


def _redelivered_then_crashed(h: Harness, url: str, got: list[remote.Report]) -> None:
    h.service.declare_chunk = 2
    a, c = quest_desc("A"), quest_desc("C")
    xs = [quest_desc(f"X{i}") for i in range(3)]
    start(h, a, c)
    a1, c1 = aid_of(a), aid_of(c)
    tc = activate(h, c1.execution(1))
    order = remote.WorkOrder(
        auth=h.world.task(a1.execution(1)).auth,
        dm_api_url="http://127.0.0.1:9/not-used",  # the job talks to the harness's dm
        quest_id=a1.quest,
        notify=remote.Notify(auth_token="report-token", url=url),
        max_attempts=3,
    )
    endless = remote.WorkOrder(**{**vars(order), "max_attempts": 0})  # an order of old

    def job_fn(job: Job) -> None:
        if job.depend([json_format.MessageToDict(c)]).should_halt:
            return
        job.finish({"done": True})

    answers: list[tuple[int, str, int]] = []

    def deliveries(eid: ExecutionID, part: int) -> None:
        # C's declaration in parts holds its claim: A's walk through C is told to wait.
        h.service.between_parts = None
        for o, delivery in ((order, 1), (order, 2), (endless, 9), (order, 3)):
            status, text = run_order(o, job_fn, delivery, LocalClient(h.service))
            answers.append((status, text, len(got)))

    h.service.between_parts = deliveries
    assert declare(h, c1.execution(1), tc, *(aid_of(x) for x in xs), quests=tuple(xs)).should_halt
    # Before the last delivery: 503 and nothing reported (not the worker's crash);
    # an order naming no max_attempts has no last delivery.
    assert [(status, n) for status, _, n in answers] == [(503, 0), (503, 0), (503, 0), (200, 1)]
    assert all("recording a declaration in parts" in text for _, text, _ in answers[:3])
    assert [r.kind for r in got] == [remote.REPORT_CRASHED]
    assert got[0].reason.startswith("dm unavailable on delivery 3 of 3: ")
    assert "recording a declaration in parts" in got[0].reason
    # The report goes to the distributor (here a sink); dm's record is untouched.
    assert h.exec_state(a1.execution(1)) == ExecutionState.RUNNING


# -- through functions-framework, a front that answers UNAVAILABLE ---------------------------

WORKER = """
from dmcore.errors import Unavailable
from dmcore.job import Job, worker


@worker
def main(job: Job) -> None:
    if job.parameters.get("depend"):
        job.state = {"step": "depending"}
        other = {"distributor_config_name": "x", "parameters": {}, "distributor_parameters": {}}
        if job.depend([other]).should_halt:
            return
    job.state = {"step": "finishing"}
    try:
        job.finish({"ran": True})
    except Unavailable:
        # A job that handles the failure itself: gives up quietly, or raises its own.
        if job.parameters.get("on_unavailable") == "return":
            return
        if job.parameters.get("on_unavailable") == "raise":
            raise RuntimeError("could not finish") from None
        raise
"""

UNAVAILABLE: Answer = (503, {remote.GRPC_CODE_HEADER: str(int(Code.UNAVAILABLE))}, b"busy")


@pytest.fixture
def busy_worker(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[flask.testing.FlaskClient, HttpSink]]:
    """The worker as functions-framework serves it, and a dm_api that is always busy.

    The budget is shorter than the first pause (0.5 s): one try per call, no wait."""
    monkeypatch.setenv(remote.RETRY_BUDGET_ENV, "0.1")
    source = tmp_path / "busy_worker.py"
    source.write_text(WORKER)
    with HttpSink(lambda seen: UNAVAILABLE) as dm_api:
        app = create_app("main", str(source))  # type: ignore[no-untyped-call]
        yield app.test_client(), dm_api


def _order(dm_api: str, report_url: str, max_attempts: int, parameters: str = "{}") -> bytes:
    return remote.WorkOrder(
        auth=rs.auth(),
        dm_api_url=dm_api,
        quest_id="q" * 43,
        parameters=parameters,
        state={},
        notify=remote.Notify(auth_token="report-token", url=report_url),
        max_attempts=max_attempts,
    ).to_bytes()


def test_the_worker_counts_deliveries_from_cloud_tasks_retry_count_header(
    busy_worker: tuple[flask.testing.FlaskClient, HttpSink],
    reports: tuple[str, list[remote.Report]],
) -> None:
    client, dm_api = busy_worker
    url, got = reports
    body = _order(dm_api.url, url, max_attempts=2)
    rsp = client.post("/", data=body, headers={RETRY_COUNT_HEADER: "0"})
    assert rsp.status_code == 503 and "dm is unavailable" in rsp.text
    assert got == []
    rsp = client.post("/", data=body, headers={RETRY_COUNT_HEADER: "1"})  # delivery 2 of 2
    assert rsp.status_code == 200, rsp.text
    assert [r.kind for r in got] == [remote.REPORT_CRASHED]
    assert got[0].reason.startswith(
        f"dm unavailable on delivery 2 of 2: {dm_api.url}/prpc/dm.Deps/ActivateExecution "
        "answered 503: busy (after 1 attempts in "
    )
    # Both deliveries stopped at the activation: the job function never ran.
    assert [s.path for s in dm_api.seen] == ["/prpc/dm.Deps/ActivateExecution"] * 2


def test_a_report_that_cannot_go_on_the_last_delivery_is_redelivered(
    busy_worker: tuple[flask.testing.FlaskClient, HttpSink],
) -> None:
    """Then dm finds the task gone without a report (FAILED): nothing better is left."""
    client, dm_api = busy_worker
    with HttpSink(lambda seen: (500, {}, b"down")) as notify:
        body = _order(dm_api.url, notify.url + "/dm_notify/", max_attempts=1)
        rsp = client.post("/", data=body, headers={RETRY_COUNT_HEADER: "0"})
    assert rsp.status_code == 503
    assert rsp.text.startswith("cannot deliver the report: ")
    assert len(notify.seen) == 1


OK: Answer = (200, {remote.GRPC_CODE_HEADER: "0"}, b"")
FRONT_502: Answer = (502, {}, b"bad gateway")  # no pRPC code: not dm's word


@pytest.mark.parametrize(
    ("finish_answer", "reported"),
    [
        (FRONT_502, (remote.REPORT_STOPPED, {"step": "finishing"}, "")),
        (UNAVAILABLE, (remote.REPORT_CRASHED, None, "dm unavailable on delivery 1 of 1: ")),
    ],
    ids=["no-word-from-dm", "dm-said-unavailable"],
)
def test_a_finish_without_dms_word_on_the_last_delivery_is_reported_stopped_not_crashed(
    busy_worker: tuple[flask.testing.FlaskClient, HttpSink],
    reports: tuple[str, list[remote.Report]],
    finish_answer: Answer,
    reported: tuple[str, Any, str],
) -> None:
    """FinishAttempt may have been done when no word of it came back: a CRASHED report
    would throw the result away, so the worker reports "stopped" with the state (dm
    ends it FINISHED if it did stop, else FAILED). dm's own UNAVAILABLE says nothing
    was done: CRASHED."""
    client, dm_api = busy_worker
    url, got = reports
    dm_api.answer = lambda seen: OK if seen.path.endswith("/ActivateExecution") else finish_answer
    body = _order(dm_api.url, url, max_attempts=1)
    rsp = client.post("/", data=body, headers={RETRY_COUNT_HEADER: "0"})
    assert rsp.status_code == 200, rsp.text
    assert [s.path.rsplit("/", 1)[-1] for s in dm_api.seen] == [
        "ActivateExecution",
        "FinishAttempt",
    ]
    kind, state, reason = reported
    assert [(r.kind, r.state) for r in got] == [(kind, state)]
    assert got[0].reason.startswith(reason)


def test_a_declaration_without_dms_word_on_the_last_delivery_is_reported_stopped(
    busy_worker: tuple[flask.testing.FlaskClient, HttpSink],
    reports: tuple[str, list[remote.Report]],
) -> None:
    """A declaration may halt the execution: no word of it, no CRASHED either."""
    client, dm_api = busy_worker
    url, got = reports
    dm_api.answer = lambda seen: OK if seen.path.endswith("/ActivateExecution") else FRONT_502
    body = _order(dm_api.url, url, max_attempts=3, parameters='{"depend": true}')
    rsp = client.post("/", data=body, headers={RETRY_COUNT_HEADER: "2"})
    assert rsp.status_code == 200, rsp.text
    assert [s.path.rsplit("/", 1)[-1] for s in dm_api.seen] == [
        "ActivateExecution",
        "EnsureGraphData",
    ]
    assert [(r.kind, r.state) for r in got] == [(remote.REPORT_STOPPED, {"step": "depending"})]


@pytest.mark.parametrize("handled", ["return", "raise"])
def test_a_job_that_handles_a_finish_without_dms_word_is_still_reported_stopped(
    busy_worker: tuple[flask.testing.FlaskClient, HttpSink],
    reports: tuple[str, list[remote.Report]],
    handled: str,
) -> None:
    """The job catches the failure of its finish (no word from dm: dm may have
    recorded it) and returns, or raises its own error on the last delivery: the
    report is "stopped" with the state, not FAILED "returned without finishing" or
    CRASHED, either of which would throw a recorded result away."""
    client, dm_api = busy_worker
    url, got = reports
    dm_api.answer = lambda seen: OK if seen.path.endswith("/ActivateExecution") else FRONT_502
    params = json.dumps({"on_unavailable": handled})
    body = _order(dm_api.url, url, max_attempts=2, parameters=params)
    rsp = client.post("/", data=body, headers={RETRY_COUNT_HEADER: "1"})
    assert rsp.status_code == 200, rsp.text
    assert [(r.kind, r.state) for r in got] == [(remote.REPORT_STOPPED, {"step": "finishing"})]
