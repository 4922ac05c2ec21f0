"""``dm serve``: the four functions on one local port over real HTTP, with the queue worker.

The emulator tests run ``dm serve --emulators`` twice: on the session's
emulators (reused, with a project of the test's own, wiped afterwards) and on
emulators the server starts itself (hidden from the session's, so its default
project is private to the test; they must be gone after ``close()``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import pathlib
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from distributors.fake import FakeWorld, Job, quest_desc
from dmcore.cli.runfile import parse_run_file
from dmcore.engine import docs
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.runtime import backend as backends
from dmcore.runtime import emulators
from dmcore.runtime.procs import group_alive
from dmcore.runtime.serve import EMULATOR_PROJECT, LocalServer
from dmcore.states import AttemptState
from tests.emulator_fixtures import firestore_reset
from tests.test_functions_support import CONFIG, JSON_PREFIX, clean_env

SAFETY_S = 120.0
"""Bound of the waits on the emulators (a hang fails; nothing asserts on timing)."""


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
    req.include.attempt.result = True
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
    # The worker thread runs the queued steps: the fake is asked to run it.
    world: FakeWorld = local.world  # type: ignore[attr-defined]
    wait_for(lambda: world.pending() == [ExecutionID(qid, 1, 1)], "the fake to be asked to run")
    assert attempt_data(local, qid).HasField("executing")

    for path in ("/dm_sweep", "/dm_sweep/"):
        status, body = post(local.base_url + path, b"")
        assert status == 200
        assert set(json.loads(body)) == {"outbox", "timers", "polls", "expiries"}
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
def test_serve_on_running_emulators(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    firestore_emulator: str,
    pubsub_emulator: str,
) -> None:
    from dmcore.notify import pubsub
    from dmcore.store.firestore import FirestoreStore

    clean_env(monkeypatch)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator)
    project = f"dm-serve-{uuid.uuid4().hex[:10]}"
    lines: list[str] = []
    srv = LocalServer(0, tmp_path / "home", True, config=CONFIG, out=lines.append, project=project)
    with srv, contextlib.ExitStack() as cleanup:
        cleanup.callback(firestore_reset, firestore_emulator, project)
        assert not srv.emulators  # the session's, reused
        assert srv.hosts == {"Firestore": firestore_emulator, "Pub/Sub": pubsub_emulator}
        world = FakeWorld()
        b = backends.get()
        world.install(b.engine.registry)
        world.service = b.service
        assert isinstance(b.engine.store, FirestoreStore)
        assert b.engine.store.client.project == project
        topic = b.engine.settings.notify_topic
        assert topic == f"projects/{project}/topics/dm-distributor-notify"
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
        assert any("using the Pub/Sub emulator" in line for line in lines)
        assert any("using the Firestore emulator" in line for line in lines)
    from dmcore import logs

    logs.unconfigure()


LOCAL_JOB = """\
from dmcore.job import Job

job = Job.from_env()
job.activate()
job.finish({"local": True})
"""


def _graph(tmp_path: pathlib.Path) -> pathlib.Path:
    """A run file: a jobsim root over 2 leaves returning 3 each (7), and a local job."""
    job = tmp_path / "job.py"
    job.write_text(LOCAL_JOB)
    leaves = {
        "shards": 2,
        "attempts": {"items": [{"single": 1}]},
        "mix_seed": True,
        "phrase": {"name": "leaf", "return_stage": {"retval": 3}},
    }
    quests = [
        {
            "distributor_config_name": "jobsim",
            "parameters": {"name": "root", "stages": [{"deps": {"deps": [leaves]}}]},
        },
        {
            "distributor_config_name": "local",
            "parameters": {"name": "local-job"},
            "distributor_parameters": {"command": [sys.executable, str(job)]},
        },
    ]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"quests": quests}))
    return path


@pytest.mark.emulator
def test_serve_starts_the_emulators_and_keeps_the_store_in_firestore(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmcore.store.firestore import FirestoreStore

    for kind in (emulators.FIRESTORE, emulators.PUBSUB):
        try:
            emulators.launcher(kind)
        except emulators.NotInstalled as e:
            pytest.skip(str(e))
    clean_env(monkeypatch)
    for kind in (emulators.FIRESTORE, emulators.PUBSUB):
        monkeypatch.setenv(kind.env_var, "")  # so that what the server sets is undone
        monkeypatch.delenv(kind.env_var)
    home = tmp_path / "home"
    run = parse_run_file(_graph(tmp_path))
    lines: list[str] = []
    srv = LocalServer(0, home, True, sweep_every_s=0.5, out=lines.append)
    with srv:
        started = list(srv.emulators)
        assert sorted(e.kind.name for e in started) == ["Firestore", "Pub/Sub"]
        banner = "\n".join(lines)
        assert f"Firestore  {srv.hosts['Firestore']} (project {EMULATOR_PROJECT})" in banner
        assert "no faithful Cloud Tasks emulator exists" in banner

        rsp = rpc(srv, "EnsureGraphData", run.request, dm_pb2.EnsureGraphDataRsp())
        assert rsp.accepted

        def finished(aid: AttemptID) -> bool:
            data = attempt_data(srv, aid.quest)
            assert not data.HasField("abnormal_finish"), data
            return data.HasField("finished")

        for aid in run.attempts:
            wait_for(functools.partial(finished, aid), f"attempt {aid} to finish", SAFETY_S)
        root, local_job = run.attempts
        results = [
            json.loads(attempt_data(srv, a.quest).finished.data.object) for a in run.attempts
        ]
        assert results == [{"success": True, "value": 7}, {"local": True}]

        # The documents are in the Firestore emulator, not in the home.
        store = FirestoreStore(project=EMULATOR_PROJECT)
        try:
            for aid in (root, local_job):
                doc = store.get(docs.attempt_path(aid))
                assert doc is not None
                assert AttemptState(doc["state"]) == AttemptState.FINISHED
        finally:
            store.close()
        assert not (home / "dm.sqlite").exists()

    for emu in started:  # stopped with the server, whole process group
        assert emu.proc.poll() is not None
        assert not group_alive(emu.proc.pid)
        assert not emulators.answers_ok(emu.host)
    from dmcore import logs

    logs.unconfigure()
