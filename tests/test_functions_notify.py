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

from distributors.fake import FakeDistributor, FakeTask, quest_desc
from dmcore.engine import docs
from dmcore.ids import ExecutionID
from dmcore.notify import tokens
from dmcore.proto import dm_pb2
from dmcore.server import auth
from dmcore.states import AttemptState, ExecutionState
from tests.test_functions_support import (
    DM,
    INVOKER,
    MAIN,
    PUSHER,
    SECRET,
    WRITER,
    Oidc,
    assert_clean,
    dm_fixture,  # noqa: F401 - the dm fixture
    oidc_fixture,  # noqa: F401 - the oidc fixture
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
    doc = docs.read_execution(dm.backend.engine.store, eid)
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


# -- identity (DM_AUTH=oidc): only the push subscription's account may push -------------------


def running_as_writer(dm: DM, oidc: Oidc, name: str) -> FakeTask:
    """As :func:`running`, with the quest created by a writer (DM_AUTH=oidc)."""
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc(name))
    req.quest_attempt.add(nums=[1])
    rsp = dm.ok(
        dm.call("EnsureGraphData", req, token=oidc.token(WRITER)), dm_pb2.EnsureGraphDataRsp
    )
    dm.drain()
    task = dm.world.task(ExecutionID(rsp.quest_ids[0].id, 1, 1))
    exe = dm.activate(task)  # execution calls are authorised by their own tokens
    finish = dm_pb2.FinishAttemptReq(auth=exe, data=dm_pb2.JsonResult(object='{"v": 1}'))
    dm.ok(dm.call("FinishAttempt", finish), empty_pb2.Empty)
    task.result = dm_pb2.Result(data=dm_pb2.JsonResult(object='{"exit": 0}'))
    return task


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (lambda o: None, 401),  # no Authorization header
        (lambda o: o.token(WRITER), 403),  # a valid token, of the wrong identity
        (lambda o: o.token(INVOKER), 403),
        (lambda o: o.token(PUSHER, aud="https://elsewhere.example"), 401),
        (lambda o: o.token(PUSHER, iss="https://issuer.example"), 401),
        (lambda o: o.token(PUSHER, expires_in=-600), 401),
        (lambda o: o.token(PUSHER, email_verified=False), 401),
        (lambda o: "not-a-jwt", 401),
    ],
)
def test_oidc_push_refused_unless_from_the_push_account(
    dm: DM, oidc: Oidc, token: Any, status: int
) -> None:
    task = running_as_writer(dm, oidc, "refused")
    before = dm.docs()
    rsp = dm.push(b"{}", attrs_of(dm, task), token=token(oidc))
    assert rsp.status_code == status, rsp.data
    assert dm.docs() == before  # refused before anything was read or written
    assert execution_state(dm, task.eid) == ExecutionState.STOPPING


def test_oidc_push_from_the_push_account_is_processed(dm: DM, oidc: Oidc) -> None:
    task = running_as_writer(dm, oidc, "pushed")
    rsp = dm.push(b"{}", attrs_of(dm, task), token=oidc.token(PUSHER))
    assert rsp.status_code == 200, rsp.data
    assert execution_state(dm, task.eid) == ExecutionState.FINISHED


def test_oidc_push_when_google_certs_are_down_is_retried(dm: DM, oidc: Oidc) -> None:
    task = running_as_writer(dm, oidc, "later")
    auth.set_http_request(oidc)  # a fresh cache: the certificates must be fetched now
    oidc.down = True
    try:
        rsp = dm.push(b"{}", attrs_of(dm, task), token=oidc.token(PUSHER))
    finally:
        oidc.down = False
    assert rsp.status_code == 503  # Pub/Sub delivers it again
    assert execution_state(dm, task.eid) == ExecutionState.STOPPING
