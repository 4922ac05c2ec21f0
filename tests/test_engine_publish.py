"""The engine's ``publish`` hook: distributor-task notifications through the topic.

On Google Cloud (``Engine.publish`` set by the gcp backend) the notifications
that ``handle_task_queue_task`` returns are published with an ``auth_token``
minted by the engine, and come back through ``dm_notify``
(``Engine.receive_notification``); embedded (no hook) they are processed
inline. Here a recording publisher on the embedded harness plays the topic:
what it records is delivered by the harness as Pub/Sub would deliver it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from dmcore.ids import AttemptID, ExecutionID
from dmcore.notify import tokens
from dmcore.states import AttemptState
from tests.harness import SECRET, Chaos, Harness
from tests.test_jobsim import FANOUT, bench, settle, start


class Recorder:
    """A publisher that records every message and hands it to the harness's inbox."""

    def __init__(self, h: Harness, fail_first: int = 0) -> None:
        self.h = h
        self.fail_first = fail_first
        self.calls = 0
        self.published: list[tuple[bytes, dict[str, str]]] = []

    def __call__(self, data: bytes, attrs: dict[str, str]) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("pubsub unavailable")
        self.published.append((data, dict(attrs)))
        self.h.inbox.append((data, dict(attrs)))


@pytest.fixture
def ph(tmp_path: pathlib.Path) -> Iterator[Harness]:
    h = bench(tmp_path)
    yield h
    h.close()


def _root_result(h: Harness, aid: AttemptID) -> object:
    settle(h)
    assert h.state(aid) == AttemptState.FINISHED, h.attempt(aid)
    return h.result(aid)


@pytest.mark.parametrize("config", ["jobsim", "jobsim_alias"])
def test_notifications_are_published_with_auth_tokens(ph: Harness, config: str) -> None:
    rec = Recorder(ph)
    ph.engine.publish = rec
    aid = start(ph, FANOUT, config)
    assert _root_result(ph, aid) == {"success": True, "value": 19}
    # One notification per execution: the root twice (halted on its deps, then
    # resumed), each of the six leaves once; nothing processed inline.
    assert len(rec.published) == 8
    seen: set[ExecutionID] = set()
    for data, attrs in rec.published:
        eid, cfg = tokens.verify(SECRET, attrs["auth_token"], ph.clock())
        assert cfg == config  # the config the execution was started with (an alias stays one)
        assert json.loads(data)["Status"] == "finished"
        seen.add(eid)
    assert len(seen) == 8
    assert ExecutionID(aid.quest, 1, 2) in seen


def test_publish_failure_fails_the_task_for_redelivery(ph: Harness) -> None:
    rec = Recorder(ph, fail_first=2)
    ph.engine.publish = rec
    aid = start(ph, FANOUT)
    assert _root_result(ph, aid) == {"success": True, "value": 19}
    # Both failed publishes were made again (embedded, a task run in the worker's
    # batch that fails is queued rather than failed as a delivery): none lost.
    assert rec.calls == 2 + len(rec.published)
    assert (
        len({tokens.verify(SECRET, a["auth_token"], ph.clock())[0] for _, a in rec.published}) == 8
    )


def test_without_the_hook_notifications_stay_inline(ph: Harness) -> None:
    assert ph.engine.publish is None
    aid = start(ph, FANOUT)
    assert _root_result(ph, aid) == {"success": True, "value": 19}
    assert ph.inbox == []


def test_no_secret_no_publish(ph: Harness) -> None:
    """Without a notification secret no token can be minted: the task fails (retried)."""
    rec = Recorder(ph)
    ph.engine.publish = rec
    ph.engine.settings.notify_secret = b""
    start(ph, FANOUT)
    ph.drain()
    assert rec.published == []
    assert any("no notification secret" in f for f in ph.failures)


def test_a_task_queued_without_its_config_is_notified_through_the_execution(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distributor task queued before tasks carried their config snapshot (an older
    dm's) is handled by the distributor of the config as named now; its notifications
    then go through the execution's own record (its snapshot, W-11, and the foreign
    config check), not the inline shortcut that trusts the task's own snapshot."""
    from dmcore.engine import core, notify

    # Tasks through the queue (the local queue's batch runs jobsim's inline, with config).
    ph = bench(tmp_path, queue="chaos", chaos=Chaos(duplicate=0.3, delay=0.2))
    real_handle = ph.engine.handle_task

    def as_an_older_dm_queued(target: str, payload: Any, delivery: int = 1, name: str = "") -> None:
        if target.startswith(core.DISTRIBUTOR_TARGET_PREFIX):
            payload = {k: v for k, v in payload.items() if k != "config"}
        real_handle(target, payload, delivery, name)

    through: list[str] = []
    real_notify = notify.notify_execution

    def counted(step: Any, engine: Any, delivery: int) -> None:
        through.append(step.eid)
        real_notify(step, engine, delivery)

    monkeypatch.setattr(ph.engine, "handle_task", as_an_older_dm_queued)
    monkeypatch.setattr(notify, "notify_execution", counted)
    try:
        aid = start(ph, FANOUT)
        assert _root_result(ph, aid) == {"success": True, "value": 19}
    finally:
        ph.close()
    assert len(set(through)) >= 7  # the root's executions and the six leaves'
