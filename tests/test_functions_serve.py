"""``dm serve``: the four functions on one local port over real HTTP, with the queue worker."""

from __future__ import annotations

import base64
import json
import pathlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from distributors.fake import FakeWorld, Job, quest_desc
from dmcore import backend as backends
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.serve import LocalServer
from tests.test_functions_support import CONFIG, JSON_PREFIX, clean_env


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return int(rsp.status), rsp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def rpc(srv: LocalServer, method: str, msg: Any, out: Any) -> Any:
    status, body = post(
        f"{srv.base_url}/prpc/dm.Deps/{method}",
        json_format.MessageToJson(msg).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200, body
    assert body.startswith(JSON_PREFIX)
    return json_format.Parse(body[len(JSON_PREFIX) :].decode(), out)


def wait_for(cond: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def attempt_data(srv: LocalServer, qid: str) -> dm_pb2.Attempt.Data:
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[qid].nums.append(1)
    req.include.attempt.data = True
    graph = rpc(srv, "WalkGraph", req, dm_pb2.GraphData())
    return graph.quests[qid].attempts[1].data  # type: ignore[no-any-return]


@pytest.fixture
def local(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    clean_env(monkeypatch)
    lines: list[str] = []
    srv = LocalServer(
        0, tmp_path / "home", config=CONFIG, sweep_every_s=0.5, out=lines.append
    ).start()
    srv.banner = lines  # type: ignore[attr-defined]
    world = FakeWorld()
    b = backends.get()
    world.install(b.engine.registry)
    world.service = b.service
    srv.world = world  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.close()
        from dmcore import logs

        logs.unconfigure()


def start_quest(srv: LocalServer, name: str) -> str:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc(name))
    req.quest_attempt.add(nums=[1])
    rsp = rpc(srv, "EnsureGraphData", req, dm_pb2.EnsureGraphDataRsp())
    return str(rsp.quest_ids[0].id)


def test_serve_runs_the_functions_and_the_worker(local: LocalServer) -> None:
    banner = "\n".join(local.banner)  # type: ignore[attr-defined]
    assert "IDENTITY CHECKS ARE OFF" in banner
    assert f"{local.base_url}/prpc/dm.Deps/<Method>" in banner
    qid = start_quest(local, "served")
    # The worker thread runs the queued mutations: the fake is asked to run it.
    wait_for(lambda: attempt_data(local, qid).HasField("executing"), "the execution to start")
    world: FakeWorld = local.world  # type: ignore[attr-defined]
    assert world.pending() == [ExecutionID(qid, 1, 1)]

    for path in ("/dm_sweep", "/dm_sweep/"):
        status, body = post(local.base_url + path, b"")
        assert status == 200
        assert set(json.loads(body)) == {"outbox", "timers", "polls"}
    raw = {
        "message": {
            "data": base64.b64encode(b"{}").decode(),
            "attributes": {"auth_token": "forged"},
            "messageId": "1",
        },
        "subscription": "projects/dm-local/subscriptions/s",
    }
    status, _ = post(
        f"{local.base_url}/dm_notify/projects/dm-local/topics/dm-distributor-notify",
        json.dumps(raw).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200  # a forged notification is acknowledged and dropped
    status, body = post(
        f"{local.base_url}/dm_tasks/mutation", b"{}", {"X-CloudTasks-TaskRetryCount": "0"}
    )
    assert status == 400
    assert b"name" in body
    status, _ = post(
        f"{local.base_url}/prpc/dm.Deps/Nope", b"{}", {"Content-Type": "application/json"}
    )
    assert status == 501


@pytest.mark.emulator
def test_serve_with_the_pubsub_emulator(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, pubsub_emulator: str
) -> None:
    from dmcore.notify import pubsub

    clean_env(monkeypatch)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    lines: list[str] = []
    srv = LocalServer(0, tmp_path / "home", True, config=CONFIG, out=lines.append)
    with srv:
        world = FakeWorld()
        b = backends.get()
        world.install(b.engine.registry)
        world.service = b.service
        topic = b.engine.settings.notify_topic
        assert topic == "projects/dm-local/topics/dm-distributor-notify"
        publisher = pubsub.PubSubPublisher(topic)
        world.publish = publisher  # the fake publishes empty data + attributes
        try:
            qid = start_quest(srv, "over-pubsub")
            wait_for(lambda: bool(world.pending()), "the fake to be asked to run")
            (eid,) = world.pending()

            def job(j: Job) -> None:
                j.activate()
                j.finish({"ok": True})

            world.run_task(eid, job)
            wait_for(
                lambda: attempt_data(srv, qid).HasField("finished"),
                "the notification to travel through Pub/Sub",
            )
        finally:
            publisher.close()
        assert any("Pub/Sub" in line for line in lines)
    from dmcore import logs

    logs.unconfigure()
