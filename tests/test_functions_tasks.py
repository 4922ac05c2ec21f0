"""dm_tasks and dm_sweep through functions-framework: the engine driven by HTTP deliveries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from distributors.fake import quest_desc
from dmcore.engine import docs
from dmcore.engine.core import Engine
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.queue.cloudtasks import target_path, task_id
from dmcore.queue.local import LocalQueue
from dmcore.states import AttemptState
from tests.test_functions_support import (
    DM,
    INVOKER,
    WRITER,
    Oidc,
    assert_clean,
    dm_fixture,  # noqa: F401 - the dm fixture
    oidc_fixture,  # noqa: F401 - the oidc fixture
)


def deliver(dm: DM, *, token: str | None = None, limit: int = 100) -> list[int]:
    """POST the due tasks of the embedded queue to dm_tasks, as Cloud Tasks would."""
    emb = dm.backend.embedded
    assert emb is not None
    queue: LocalQueue = emb.queue
    statuses = []
    done = []
    for lt in queue.lease(limit):
        t = lt.task
        headers = {
            "Content-Type": "application/json",
            "X-CloudTasks-TaskName": task_id(t.name),
            "X-CloudTasks-QueueName": "dm",
            "X-CloudTasks-TaskRetryCount": str(lt.attempt - 1),
        }
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps({"name": t.name, "payload": t.payload})
        rsp = dm.tasks.post("/" + target_path(t.target), data=body, headers=headers)
        statuses.append(rsp.status_code)
        if rsp.status_code == 200:
            done.append(t.name)
        else:
            queue.nack(t.name, 0)  # due again at once
    queue.ack(done)
    return statuses


def task_headers(**extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-CloudTasks-TaskRetryCount": "0", **extra}


def test_tasks_drive_a_quest_to_its_distributor(dm: DM) -> None:
    qid = dm.new_quest("via-tasks")
    for _ in range(20):
        if not deliver(dm):
            break
    eid = ExecutionID(qid, 1, 1)
    assert dm.world.pending() == [eid]
    att = dm.backend.engine.store.get(docs.attempt_path(eid.attempt_id))
    assert att is not None
    assert att["state"] == AttemptState.EXECUTING


def test_redelivered_task_is_harmless(dm: DM) -> None:
    dm.new_quest("twice")
    emb = dm.backend.embedded
    assert emb is not None
    leased = emb.queue.lease(1)
    assert leased
    t = leased[0].task
    body = json.dumps({"name": t.name, "payload": t.payload})
    first = dm.tasks.post("/mutation", data=body, headers=task_headers())
    assert first.status_code == 200
    after_first = dm.docs()
    again = dm.tasks.post(
        "/mutation", data=body, headers=task_headers(**{"X-CloudTasks-TaskRetryCount": "1"})
    )
    assert again.status_code == 200
    assert [d for d in dm.docs() if not d[0].startswith("outbox")] == [
        d for d in after_first if not d[0].startswith("outbox")
    ]


def test_distributor_target(dm: DM) -> None:
    body = json.dumps({"name": "t1", "payload": {"body_b64": ""}})
    rsp = dm.tasks.post("/distributor/fake", data=body, headers=task_headers())
    assert rsp.status_code == 200
    # An unknown config can never be served: the engine logs and drops it.
    rsp = dm.tasks.post("/distributor/gone", data=body, headers=task_headers())
    assert rsp.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "says"),
    [
        ("/mutation", b"not json", task_headers(), 400, "not JSON"),
        ("/mutation", b"[1, 2]", task_headers(), 400, "JSON object"),
        ("/mutation", b'{"name": "t", "payload": 7}', task_headers(), 400, "payload"),
        ("/mutation", b'{"name": "bad name!", "payload": {}}', task_headers(), 400, "name"),
        (
            "/mutation",
            b'{"name": "t", "payload": {}}',
            {"Content-Type": "application/json"},
            400,
            "X-CloudTasks-TaskRetryCount",
        ),
        (
            "/mutation",
            b'{"name": "t", "payload": {}}',
            task_headers(**{"X-CloudTasks-TaskRetryCount": "many"}),
            400,
            "integer",
        ),
        ("/elsewhere", b'{"name": "t", "payload": {}}', task_headers(), 404, "/elsewhere"),
        ("/", b'{"name": "t", "payload": {}}', task_headers(), 404, "target"),
        # Decodable but not runnable: maybe a newer dm's task mid-rollout -> retried.
        (
            "/mutation",
            b'{"name": "t", "payload": {"kind": "FromTheFuture"}}',
            task_headers(),
            500,
            "retried",
        ),
        (
            "/mutation",
            b'{"name": "t", "payload": {"kind": "MergeQuest", "x": 1}}',
            task_headers(),
            500,
            "retried",
        ),
    ],
)
def test_bad_tasks(  # noqa: PLR0917 - parametrized
    dm: DM, path: str, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    dm.new_quest("existing")
    before = dm.docs()
    rsp = dm.tasks.post(path, data=body, headers=headers)
    assert rsp.status_code == status, rsp.data
    assert says in rsp.data.decode()
    assert_clean(rsp.data)
    assert dm.docs() == before


def test_tasks_method_and_size(dm: DM) -> None:
    assert dm.tasks.get("/mutation").status_code == 405
    big = b"{" + b" " * (32 * 1024 * 1024) + b"}"
    assert dm.tasks.post("/mutation", data=big, headers=task_headers()).status_code == 413


def test_engine_failure_is_500_and_logged(
    dm: DM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def down(self: Engine, *a: Any, **kw: Any) -> None:
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(Engine, "handle_task", down)
    capsys.readouterr()
    body = json.dumps({"name": "t", "payload": {"kind": "MergeQuest"}})
    rsp = dm.tasks.post("/mutation", data=body, headers=task_headers())
    assert rsp.status_code == 500
    assert b"unreachable" not in rsp.data
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    failed = next(x for x in lines if "task failed" in x["message"])
    assert failed["severity"] == "ERROR"
    assert failed["task"] == "t"
    assert "store unreachable" in failed["exception"]


def test_sweep(dm: DM) -> None:
    rsp = dm.sweep.post("/")
    assert rsp.status_code == 200
    assert rsp.get_json() == {"outbox": 0, "timers": 0, "polls": 0, "expiries": 0}
    assert dm.sweep.get("/").status_code == 405


def test_sweep_failure_is_500(dm: DM, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(self: Engine) -> dict[str, int]:
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(Engine, "sweep", down)
    rsp = dm.sweep.post("/")
    assert rsp.status_code == 500
    assert_clean(rsp.data)


# -- identity (DM_AUTH=oidc) -------------------------------------------------------------------


def test_oidc_only_the_invoker_may_run_tasks(dm: DM, oidc: Oidc) -> None:
    req_token = oidc.token(WRITER)
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc("oidc-task"))
    req.quest_attempt.add(nums=[1])
    dm.ok(dm.call("EnsureGraphData", req, token=req_token), dm_pb2.EnsureGraphDataRsp)
    before = dm.docs()

    assert set(deliver(dm)) == {401}  # no token
    assert set(deliver(dm, token=oidc.token(WRITER))) == {403}
    assert set(deliver(dm, token=oidc.token(INVOKER, expires_in=-600))) == {401}
    assert set(deliver(dm, token=oidc.token(INVOKER, aud="https://other"))) == {401}
    assert dm.docs() == before
    assert set(deliver(dm, token=oidc.token(INVOKER))) == {200}


def test_oidc_only_the_invoker_may_sweep(dm: DM, oidc: Oidc) -> None:
    assert dm.sweep.post("/").status_code == 401
    writer = {"Authorization": f"Bearer {oidc.token(WRITER)}"}
    rsp = dm.sweep.post("/", headers=writer)
    assert rsp.status_code == 403
    assert rsp.headers["X-Prpc-Grpc-Code"] == "7"
    invoker = {"Authorization": f"Bearer {oidc.token(INVOKER)}"}
    assert dm.sweep.post("/", headers=invoker).status_code == 200
