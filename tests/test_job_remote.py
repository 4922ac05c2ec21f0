"""The job's side over HTTP: :class:`dmcore.job.Job` on the pRPC client of :mod:`dmcore.remote`.

dm runs under ``dm serve`` (the real functions over real HTTP, embedded
store) with the fake distributor, which hands the test each execution's auth;
the test then plays the job through the remote client, as a job on Cloud Run
would. Reports go to a local HTTP sink.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from distributors.fake import FakeWorld, quest_desc
from dmcore import job as dmjob
from dmcore import remote
from dmcore.engine import docs
from dmcore.errors import Code, Internal, PermissionDenied, Unauthenticated, Unavailable
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.runtime import backend as backends
from dmcore.runtime.serve import LocalServer
from dmcore.service import Caller
from dmcore.states import ExecutionState
from tests import remote_support as rs
from tests.http_sink import HttpSink, Seen
from tests.test_functions_support import CONFIG, clean_env

SAFETY_S = 60.0


@pytest.fixture
def served(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    clean_env(monkeypatch)
    srv = LocalServer(
        0, tmp_path / "home", config=CONFIG, sweep_every_s=0.5, out=lambda s: None
    ).start()
    world = FakeWorld()
    b = backends.get()
    world.install(b.engine.registry)
    world.service = b.service

    def publish(topic: str, data: bytes, attrs: dict[str, str]) -> None:
        b.engine.receive_notification(data, attrs)

    world.publish = publish
    srv.world = world  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.close()
        from dmcore import logs

        logs.unconfigure()


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as s:
        yield s


def start(srv: LocalServer, desc: dm_pb2.Quest.Desc) -> ExecutionID:
    """Submit ``desc`` (attempt 1) and wait until the fake is asked to run it."""
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(desc)
    req.quest_attempt.add(nums=[1])
    rsp = backends.get().service.ensure_graph_data(req, Caller.trusted())
    eid = ExecutionID(rsp.quest_ids[0].id, 1, 1)
    world: FakeWorld = srv.world  # type: ignore[attr-defined]
    deadline = time.monotonic() + SAFETY_S
    while eid not in world.pending():
        assert time.monotonic() < deadline, "the fake was never asked to run"
        time.sleep(0.02)
    return eid


def execution_state(eid: ExecutionID) -> ExecutionState:
    doc = docs.read_execution(backends.get().engine.store, eid)
    assert doc is not None
    return ExecutionState(doc["state"])


def auth_of(srv: LocalServer, eid: ExecutionID) -> dm_pb2.Execution.Auth:
    world: FakeWorld = srv.world  # type: ignore[attr-defined]
    return world.task(eid).auth


def reports(sink: HttpSink) -> list[tuple[dict[str, Any], dict[str, str]]]:
    out = []
    for s in sink.seen:
        msg = json.loads(s.body)["message"]
        out.append((json.loads(base64.b64decode(msg["data"])), msg["attributes"]))
    return out


def test_remote_job_reads_parameters_through_the_api_and_reports_its_state_on_halt(
    served: LocalServer, sink: HttpSink
) -> None:
    desc = quest_desc("remote")
    desc.parameters = json.dumps({"name": "remote", "numbers": [1, 2, 3]}, sort_keys=True)
    eid = start(served, desc)
    notify = remote.Notify("the-auth-token", url=sink.url + "/dm_notify/")
    job = dmjob.Job(
        remote.RemoteClient(served.base_url),
        auth_of(served, eid),
        None,
        reporter=remote.Reporter(notify, str(eid)),
    )
    job.activate(lazy=True)
    assert execution_state(eid) == ExecutionState.SCHEDULING  # lazily: at the first call
    assert job.parameters == {"name": "remote", "numbers": [1, 2, 3]}  # no env: via WalkGraph
    assert execution_state(eid) == ExecutionState.RUNNING  # WalkGraph needs the execution token
    assert job.state == {}  # the first execution: nothing before it
    job.state = {"stage": 1}
    deps = job.depend([json_format.MessageToDict(quest_desc("dep"))])
    assert deps.should_halt and job.stopped
    assert execution_state(eid) == ExecutionState.STOPPING
    [(data, attrs)] = reports(sink)
    assert data == {"report": "stopped", "state": {"stage": 1}}
    assert attrs == {"auth_token": "the-auth-token", "execution": str(eid)}


def test_remote_job_finishes_and_dm_errors_keep_their_codes(
    served: LocalServer, sink: HttpSink
) -> None:
    eid = start(served, quest_desc("finisher"))
    client = remote.RemoteClient(served.base_url)
    bad = dm_pb2.Execution.Auth(id=eid.to_proto(), token=b"not the activation token")
    with pytest.raises(PermissionDenied):
        dmjob.Job(client, bad, None).activate()
    job = dmjob.Job(client, auth_of(served, eid), None, parameters='{"name": "finisher"}')
    job.activate()
    job.activate(job.token)  # the same token again: dm accepts (idempotent)
    job.finish({"answer": 42})
    assert job.stopped and execution_state(eid) == ExecutionState.STOPPING
    with pytest.raises(Unauthenticated) as e:
        job.depend([json_format.MessageToDict(quest_desc("late"))])  # the token is revoked
    assert e.value.code == Code.UNAUTHENTICATED


def test_a_job_whose_first_call_is_finish_never_activates(
    served: LocalServer, sink: HttpSink
) -> None:
    eid = start(served, quest_desc("direct"))
    client = remote.RemoteClient(served.base_url)
    job = dmjob.Job(client, auth_of(served, eid), None, parameters="{}")
    job.activate(lazy=True)
    job.finish({"answer": 42})  # FinishAttempt with the activation token
    assert job.stopped and not job.token and job.refused is None
    assert execution_state(eid) == ExecutionState.STOPPING
    # A second instance of the job (the same task run twice) is refused at its first
    # call, whichever it is; the first one's result stands.
    for call in ("finish", "depend"):
        dup = dmjob.Job(client, auth_of(served, eid), None, parameters="{}")
        dup.activate(lazy=True)
        with pytest.raises(PermissionDenied):
            if call == "finish":
                dup.finish({"answer": 43})
            else:
                dup.depend([json_format.MessageToDict(quest_desc("dep"))])
        assert dup.refused is not None and not dup.stopped
    # By default a job activates at once: a second instance is refused before any work.
    eager = dmjob.Job(client, auth_of(served, eid), None, parameters="{}")
    with pytest.raises(PermissionDenied):
        eager.activate()
    assert eager.refused is not None and not eager.token


def test_from_env_picks_the_remote_client_and_reads_the_environment(
    served: LocalServer, tmp_path: pathlib.Path
) -> None:
    eid = start(served, quest_desc("from-env"))
    params = tmp_path / "params.json"
    params.write_text('{"big": "' + "x" * 1000 + '"}')
    env = {
        dmjob.ENV_AUTH: json_format.MessageToJson(auth_of(served, eid), indent=None),
        dmjob.ENV_API_URL: served.base_url,
        dmjob.ENV_PARAMS_FILE: str(params),
        dmjob.ENV_PREVIOUS_STATE: '{"carried": true}',
    }
    job = dmjob.Job.from_env(env)
    assert isinstance(job.client, remote.RemoteClient)
    assert job.parameters == {"big": "x" * 1000}
    assert job.state == {"carried": True}
    assert job.reporter is None
    job.activate()
    job.finish({"ok": True})
    with pytest.raises(dmjob.JobError, match="DM_REPORT_TOPIC or DM_REPORT_URL"):
        dmjob.Job.from_env({**env, dmjob.ENV_REPORT_TOKEN: "t"})
    with pytest.raises(dmjob.JobError, match="neither DM_API_URL nor DM_HOME"):
        dmjob.Job.from_env({dmjob.ENV_AUTH: env[dmjob.ENV_AUTH]})


def test_the_previous_state_comes_through_the_api_when_not_given(served: LocalServer) -> None:
    desc = quest_desc("resumed")
    eid = start(served, desc)
    world: FakeWorld = served.world  # type: ignore[attr-defined]

    def first(fake_job: Any) -> None:
        fake_job.activate()
        fake_job.dep_on(quests=[quest_desc("dep1")])  # halts: STOPPING
        fake_job.state = {"state": {"stage": 2}}  # the distributor result remote jobs read

    world.run_task(eid, first)
    deadline = time.monotonic() + SAFETY_S
    while not (dep_eids := [e for e in world.pending() if e.quest != eid.quest]):
        assert time.monotonic() < deadline, "the dependency never ran"
        time.sleep(0.02)

    def dependency(fake_job: Any) -> None:
        fake_job.activate()
        fake_job.finish({"dep": 1})

    world.run_task(dep_eids[0], dependency)
    second = ExecutionID(eid.quest, 1, 2)
    while second not in world.pending():
        assert time.monotonic() < deadline, "the attempt was never resumed"
        time.sleep(0.02)
    job = dmjob.Job(remote.RemoteClient(served.base_url), auth_of(served, second), None)
    job.activate()
    assert job.state == {"stage": 2}


def test_the_client_retries_unavailable_answers_then_gives_up() -> None:
    empty = b""
    answers = [503, 503, 200]

    def answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        status = answers.pop(0) if answers else 503
        code = "0" if status == 200 else str(int(Code.UNAVAILABLE))
        return status, {remote.GRPC_CODE_HEADER: code}, empty

    slept: list[float] = []
    with HttpSink(answer) as server:
        client = remote.RemoteClient(
            server.url, remote.HttpCaller(None, retries=3, sleep=slept.append)
        )
        client.activate_execution(dm_pb2.ActivateExecutionReq())
        assert [s.path for s in server.seen] == ["/prpc/dm.Deps/ActivateExecution"] * 3
        assert server.seen[0].headers["Content-Type"] == remote.PRPC_CONTENT_TYPE
        assert "Authorization" not in server.seen[0].headers  # plain http: no ID token
        with pytest.raises(Unavailable, match="after 3 attempts"):
            client.activate_execution(dm_pb2.ActivateExecutionReq())
    assert slept == [0.5, 1.0, 0.5, 1.0]


def test_an_answer_without_a_prpc_code_is_not_dm() -> None:
    with HttpSink() as server:
        client = remote.RemoteClient(server.url, remote.HttpCaller(None, retries=1))
        with pytest.raises(Internal, match="without a pRPC code"):
            client.walk_graph(dm_pb2.WalkGraphReq())


def test_id_tokens_come_from_the_service_account_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """google-auth signs an assertion with the key file and swaps it at ``token_uri``."""
    import google.auth.jwt

    pem = rs.rsa_pem()
    issued: list[dict[str, Any]] = []

    def token_endpoint(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        form = dict(p.split("=", 1) for p in seen.body.decode().split("&"))
        claims = google.auth.jwt.decode(form["assertion"], verify=False)  # type: ignore[no-untyped-call]
        issued.append(claims)
        now = int(time.time())
        signer = google.auth.crypt.RSASigner.from_string(pem, "k1")  # type: ignore[no-untyped-call]
        fake_id_token = google.auth.jwt.encode(  # type: ignore[no-untyped-call]
            signer,
            {"aud": claims["target_audience"], "iat": now, "exp": now + 3600, "iss": "me"},
        ).decode()
        body = json.dumps({"id_token": fake_id_token}).encode()
        return 200, {"Content-Type": "application/json"}, body

    with HttpSink(token_endpoint) as endpoint:
        keyfile = rs.service_account_file(tmp_path, endpoint.url + "/token", pem)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(keyfile))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        source = remote.default_token_source("https://dm-api.example.run.app/some/path")
        assert source is not None
        token = source()
        assert source() == token  # cached while valid: one exchange
    assert len(issued) == 1
    assert issued[0]["target_audience"] == "https://dm-api.example.run.app"
    assert issued[0]["iss"] == "job@demo.iam.gserviceaccount.com"
    got = google.auth.jwt.decode(token, verify=False)  # type: ignore[no-untyped-call]
    assert got["aud"] == "https://dm-api.example.run.app"
    assert remote.default_token_source("http://127.0.0.1:8080") is None
    assert os.environ["GOOGLE_APPLICATION_CREDENTIALS"] == str(keyfile)


def test_a_job_on_google_cloud_gets_its_id_token_from_the_metadata_server(
    tmp_path: pathlib.Path,
) -> None:
    """``Job.from_env()`` with an https ``DM_API_URL`` and no key file: google-auth asks
    the metadata server (a local stand-in here: GCE_METADATA_HOST / GCE_METADATA_IP)
    for an ID token, and the calls carry it. A Cloud Function's URL is the audience."""
    import google.auth.crypt
    import google.auth.jwt

    pem = rs.rsa_pem()
    signer = google.auth.crypt.RSASigner.from_string(pem, "k1")  # type: ignore[no-untyped-call]
    audiences: list[str] = []

    def metadata(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        headers = {"Metadata-Flavor": "Google", "Content-Type": "text/plain"}
        if {k.lower(): v for k, v in seen.headers.items()}.get("metadata-flavor") != "Google":
            return 403, headers, b"missing Metadata-Flavor"
        if "/service-accounts/default/identity" in seen.path:
            query = dict(p.split("=", 1) for p in seen.path.split("?", 1)[1].split("&") if "=" in p)
            aud = urllib.parse.unquote(query["audience"])
            audiences.append(aud)
            now = int(time.time())
            claims = {
                "aud": aud,
                "iat": now,
                "exp": now + 3600,
                "iss": "https://accounts.google.com",
            }
            token: bytes = google.auth.jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
            return 200, headers, token
        if "/service-accounts/default/" in seen.path:  # who the job runs as
            info = {"email": "job@demo.iam.gserviceaccount.com", "aliases": ["default"]}
            return 200, {**headers, "Content-Type": "application/json"}, json.dumps(info).encode()
        return 200, headers, b""  # the ping

    def dm_api(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        return 200, {remote.GRPC_CODE_HEADER: "0", "Content-Type": remote.PRPC_CONTENT_TYPE}, b""

    url = "https://europe-west1-demo.cloudfunctions.net/dm_api"
    with HttpSink(metadata) as server, HttpSink(dm_api) as api:
        host = server.url.removeprefix("http://")
        script = (
            "import sys\n"
            "from dmcore import job, remote\n"
            "from dmcore.proto import dm_pb2\n"
            f"client = job.client_from_env({{'DM_API_URL': {url!r}}})\n"
            "assert isinstance(client, remote.RemoteClient)\n"
            "# the same caller (its token source) against a local stand-in of dm_api:\n"
            f"remote.RemoteClient({api.url!r}, client.caller).walk_graph(dm_pb2.WalkGraphReq())\n"
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG")
        }
        env.update(
            GCE_METADATA_HOST=host,
            GCE_METADATA_IP=host,
            NO_PROXY="127.0.0.1",
            CLOUDSDK_CONFIG=str(tmp_path / "no-gcloud"),  # no user credentials to find
        )
        proc = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        [call] = api.seen
    assert audiences == [url]  # the function's URL, not only its origin
    scheme, _, token = call.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    got = google.auth.jwt.decode(token, verify=False)  # type: ignore[no-untyped-call]
    assert got["aud"] == url


def test_default_audiences() -> None:
    assert remote.default_audience("https://dm-api-abc-ew.a.run.app/x/y") == (
        "https://dm-api-abc-ew.a.run.app"
    )
    assert remote.default_audience("https://europe-west1-p.cloudfunctions.net/dm_api/") == (
        "https://europe-west1-p.cloudfunctions.net/dm_api"
    )
    assert remote.default_token_source("http://127.0.0.1:8080") is None
