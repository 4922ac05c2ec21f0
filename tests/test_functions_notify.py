"""dm_notify through functions-framework, and end to end through the Pub/Sub emulator."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app
from google.protobuf import empty_pb2
from werkzeug.serving import make_server

from distributors.fake import FakeDistributor, FakeTask
from dmcore.engine import docs
from dmcore.ids import ExecutionID
from dmcore.notify import tokens
from dmcore.proto import dm_pb2
from dmcore.states import AttemptState, ExecutionState
from tests.test_functions_support import (
    DM,
    MAIN,
    SECRET,
    assert_clean,
    dm_fixture,  # noqa: F401 - the dm fixture
)

NOW_US = int(time.time() * 1_000_000)


def running(dm: DM, name: str) -> FakeTask:
    """An execution that has finished its attempt and waits for its distributor's word."""
    task = dm.scheduled(name)
    exe = dm.activate(task)
    finish = dm_pb2.FinishAttemptReq(auth=exe, data=dm_pb2.JsonResult(object='{"v": 1}'))
    dm.ok(dm.call("FinishAttempt", finish), empty_pb2.Empty)
    task.result = dm_pb2.Result(data=dm_pb2.JsonResult(object='{"exit": 0}'))
    return task


def execution_state(dm: DM, eid: ExecutionID) -> ExecutionState:
    doc = dm.backend.engine.store.get(docs.execution_path(eid))
    assert doc is not None
    return ExecutionState(doc["state"])


def attempt_state(dm: DM, eid: ExecutionID) -> AttemptState:
    doc = dm.backend.engine.store.get(docs.attempt_path(eid.attempt_id))
    assert doc is not None
    return AttemptState(doc["state"])


def attrs_of(dm: DM, task: FakeTask, **extra: str) -> dict[str, str]:
    return {"token": dm.world.token_of(task.eid), "auth_token": task.auth_token, **extra}


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]


def test_notification_finishes_the_execution(dm: DM) -> None:
    task = running(dm, "done")
    rsp = dm.push(b'{"status": "done"}', attrs_of(dm, task))
    assert rsp.status_code == 200
    assert execution_state(dm, task.eid) == ExecutionState.FINISHED
    dm.drain()
    assert attempt_state(dm, task.eid) == AttemptState.FINISHED
    # A redelivery of the same message changes nothing.
    before = dm.docs()
    assert dm.push(b'{"status": "done"}', attrs_of(dm, task)).status_code == 200
    assert dm.docs() == before


def test_structured_and_raw_push_forms(dm: DM) -> None:
    task = running(dm, "forms")
    event = CloudEvent(
        {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": "//pubsub.googleapis.com/projects/demo/topics/dm-distributor-notify",
        },
        {"message": {"data": "e30=", "attributes": {"auth_token": "x.y"}, "messageId": "9"}},
    )
    headers, body = to_structured(event)
    assert dm.notify.post("/", headers=headers, data=body).status_code == 200
    raw = {
        "message": {
            "data": base64.b64encode(b"{}").decode(),
            "attributes": attrs_of(dm, task),
            "messageId": "m-3",
        },
        "subscription": "projects/demo/subscriptions/push",
    }
    rsp = dm.notify.post("/projects/demo/topics/dm-distributor-notify", json=raw)
    assert rsp.status_code == 200
    assert execution_state(dm, task.eid) == ExecutionState.FINISHED


def other_secret_token(task: FakeTask) -> str:
    return tokens.mint(b"another deployment's secret", task.eid, "fake", NOW_US)


@pytest.mark.parametrize(
    ("case", "attrs", "reason"),
    [
        ("forged", lambda dm, t: attrs_of(dm, t, auth_token=other_secret_token(t)), "signature"),
        (
            "expired",
            lambda dm, t: attrs_of(
                dm,
                t,
                auth_token=tokens.mint(
                    SECRET.encode(), t.eid, "fake", NOW_US - tokens.LIFETIME_US - 10_000_000
                ),
            ),
            "expired",
        ),
        ("garbage", lambda dm, t: attrs_of(dm, t, auth_token="garbage"), "malformed"),
        ("missing", lambda dm, t: {"token": dm.world.token_of(t.eid)}, "no auth_token"),
        (
            "unknown-execution",
            lambda dm, t: attrs_of(
                dm,
                t,
                auth_token=tokens.mint(
                    SECRET.encode(), ExecutionID("b" * 43, 1, 1), "fake", NOW_US
                ),
            ),
            "",
        ),
        (
            "foreign-config",
            lambda dm, t: attrs_of(
                dm, t, auth_token=tokens.mint(SECRET.encode(), t.eid, "other", NOW_US)
            ),
            "",
        ),
    ],
)
def test_bad_notifications_are_acknowledged_and_dropped(
    dm: DM, capsys: pytest.CaptureFixture[str], case: str, attrs: Any, reason: str
) -> None:
    task = running(dm, f"bad-{case}")
    before = dm.docs()
    capsys.readouterr()
    rsp = dm.push(b"{}", attrs(dm, task))
    assert rsp.status_code == 200  # acknowledged: redelivery cannot help
    assert dm.docs() == before
    assert execution_state(dm, task.eid) == ExecutionState.STOPPING
    lines = log_lines(capsys)
    if reason:
        dropped = next(x for x in lines if x["message"] == "notification dropped")
        assert dropped["severity"] == "WARNING"
        assert reason in dropped["reason"]
        assert "auth_token" not in dropped["attributes"]
    else:
        assert any(x["severity"] == "WARNING" and "dropped" in x["message"] for x in lines)


@pytest.mark.parametrize(
    "data",
    [
        {"message": {"data": "!!not base64!!", "messageId": "1"}},
        {"message": {"data": "e30=", "attributes": {"n": 1}, "messageId": "1"}},
        {"message": "hello"},
        {"nothing": True},
        [1, 2, 3],
    ],
)
def test_malformed_envelopes_are_acknowledged(
    dm: DM, capsys: pytest.CaptureFixture[str], data: Any
) -> None:
    dm.new_quest("existing")
    before = dm.docs()
    event = CloudEvent(
        {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub/test"}, data
    )
    headers, body = to_structured(event)
    capsys.readouterr()
    rsp = dm.notify.post("/", headers=headers, data=body)
    assert rsp.status_code == 200
    assert dm.docs() == before
    dropped = next(x for x in log_lines(capsys) if x["message"] == "notification dropped")
    assert dropped["severity"] == "ERROR"
    assert "malformed" in dropped["reason"]


@pytest.mark.parametrize(
    "body",
    [
        {"message": {"attributes": {"auth_token": "x"}, "messageId": "1"}, "subscription": "s"},
        {"message": {"data": "e30="}, "subscription": "s"},
        {"foo": 1},
    ],
    ids=["no-data", "no-message-id", "not-pubsub"],
)
def test_raw_push_without_data_is_400_from_functions_framework(
    dm: DM, body: dict[str, Any]
) -> None:
    dm.new_quest("existing")
    before = dm.docs()
    rsp = dm.notify.post("/projects/demo/topics/dm-distributor-notify", json=body)
    assert rsp.status_code == 400
    assert_clean(rsp.data)
    assert dm.docs() == before


def test_processing_error_is_500_for_redelivery(
    dm: DM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    task = running(dm, "flaky")

    def outage(*a: Any, **kw: Any) -> None:
        raise ConnectionError("distributor backend unreachable")

    monkeypatch.setattr(FakeDistributor, "handle_notification", outage)
    before = dm.docs()
    capsys.readouterr()
    rsp = dm.push(b"{}", attrs_of(dm, task))
    assert rsp.status_code == 500
    assert b"unreachable" not in rsp.data
    assert_clean(rsp.data)
    assert dm.docs() == before
    failed = next(x for x in log_lines(capsys) if "Pub/Sub will redeliver" in x["message"])
    assert failed["severity"] == "ERROR"
    monkeypatch.undo()
    # The redelivery, once the outage is over, goes through.
    assert dm.push(b"{}", attrs_of(dm, task)).status_code == 200
    assert execution_state(dm, task.eid) == ExecutionState.FINISHED


def test_get_is_405(dm: DM) -> None:
    assert dm.notify.get("/").status_code == 405


# -- end to end through the Pub/Sub emulator -------------------------------------------------


@pytest.fixture
def notify_url(dm: DM) -> Iterator[str]:
    """dm_notify served over real HTTP on 127.0.0.1 (werkzeug in a thread)."""
    app = create_app("dm_notify", MAIN)  # type: ignore[no-untyped-call]
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        thread.join(5)


@pytest.mark.emulator
def test_pubsub_push_reaches_dm_notify(dm: DM, pubsub_emulator: str, notify_url: str) -> None:
    from dmcore.notify import pubsub

    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator
    project = f"dm-fn-{uuid.uuid4().hex[:8]}"
    topic = pubsub.topic_path(project, "dm-distributor-notify")
    sub = pubsub.subscription_path(project, "dm-notify-push")
    assert pubsub.ensure_topic(topic)
    assert not pubsub.ensure_topic(topic)
    endpoint = f"{notify_url}/projects/{project}/topics/dm-distributor-notify"
    # First as an earlier server left it (a port nobody serves), then ensured again:
    # not created anew but re-pointed, or nothing below would arrive.
    gone = f"http://127.0.0.1:9/projects/{project}/topics/dm-distributor-notify"
    assert pubsub.ensure_push_subscription(sub, topic, gone)
    assert not pubsub.ensure_push_subscription(sub, topic, endpoint)

    publisher = pubsub.PubSubPublisher(topic)
    try:
        # A forged message first: acknowledged (not redelivered forever), nothing happens.
        task = running(dm, "emulated")
        forged = attrs_of(dm, task, auth_token=other_secret_token(task))
        assert publisher.publish(b'{"n": 0}', forged)
        # Then the real one: the fake distributor's notification, published for real.
        mid = publisher.publish(b'{"n": 1}', attrs_of(dm, task))
        assert mid
        deadline = time.monotonic() + 30
        while execution_state(dm, task.eid) != ExecutionState.FINISHED:
            assert time.monotonic() < deadline, "the push never reached dm_notify"
            time.sleep(0.1)
        dm.drain()
        assert attempt_state(dm, task.eid) == AttemptState.FINISHED
    finally:
        publisher.close()


@pytest.mark.emulator
def test_publisher_refuses_empty_messages(pubsub_emulator: str) -> None:
    from dmcore.notify import pubsub

    project = f"dm-fn-{uuid.uuid4().hex[:8]}"
    topic = pubsub.topic_path(project, "dm-topic")
    pubsub.ensure_topic(topic)
    publisher = pubsub.PubSubPublisher(topic)
    try:
        with pytest.raises(ValueError, match="data or attributes"):
            publisher.publish(b"", {})
        with pytest.raises(ValueError, match="publishes to"):
            publisher("projects/x/topics/y", b"x", {})
        publisher(topic, b"x", {"a": "b"})
    finally:
        publisher.close()
    with pytest.raises(ValueError, match="projects/P/topics/T"):
        pubsub.PubSubPublisher("dm-distributor-notify")
