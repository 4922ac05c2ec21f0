"""The http worker (dmcore.job.run_order) when dm is busy: a job function that met
UNAVAILABLE past its client's retries is answered 503, so the queue delivers the
task again, and it is not counted as the worker raising, even on the last delivery
its order allows (no CRASHED report). Run against an embedded dm (a Harness) whose
execution C holds a declaration claim, and a local HTTP endpoint taking the reports.
"""

from __future__ import annotations

import base64
import http.server
import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from distributors.fake import quest_desc
from dmcore import remote
from dmcore.client import LocalClient
from dmcore.ids import ExecutionID
from dmcore.job import Job, run_order
from dmcore.states import ExecutionState
from tests.harness import Harness
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


def test_unavailable_past_the_client_retries_is_redelivered_not_crashed(
    tmp_path: pathlib.Path, reports: tuple[str, list[remote.Report]]
) -> None:
    url, got = reports
    h = Harness(tmp_path)
    try:
        _redelivered_not_crashed(h, url, got)
    finally:
        h.close()


def _redelivered_not_crashed(h: Harness, url: str, got: list[remote.Report]) -> None:
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
        max_attempts=2,
    )

    def job_fn(job: Job) -> None:
        if job.depend([json_format.MessageToDict(c)]).should_halt:
            return
        job.finish({"done": True})

    answers: list[tuple[int, str]] = []

    def deliveries(eid: ExecutionID, part: int) -> None:
        # C's declaration in parts holds its claim: A's walk through C is told to wait.
        h.service.between_parts = None
        for delivery in (1, 2):
            answers.append(run_order(order, job_fn, delivery, LocalClient(h.service)))

    h.service.between_parts = deliveries
    assert declare(h, c1.execution(1), tc, *(aid_of(x) for x in xs), quests=tuple(xs)).should_halt
    assert [status for status, _ in answers] == [503, 503]
    assert all("recording a declaration in parts" in text for _, text in answers)
    assert got == []  # nothing reported: not a crash
    assert h.exec_state(a1.execution(1)) == ExecutionState.RUNNING
    # The queue's next delivery (past max_attempts: the queue decides) goes through.
    status, _ = run_order(order, job_fn, 3, LocalClient(h.service))
    assert status == 200
    assert [r.kind for r in got] == [remote.REPORT_STOPPED]
