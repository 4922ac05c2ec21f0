"""dm_api through functions-framework: pRPC codecs, every method, bad input, OIDC, logs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import empty_pb2, json_format, text_format

from distributors.fake import quest_desc
from dmcore.proto import dm_pb2
from tests.test_functions_support import (
    AUDIENCE,
    DM,
    INVOKER,
    JSON_PREFIX,
    READER,
    WRITER,
    Oidc,
    assert_clean,
    dm_fixture,  # noqa: F401 - the dm fixture
    oidc_fixture,  # noqa: F401 - the oidc fixture
)

FORMATS = ["json", "binary"]


def walk_req(qid: str, **include: bool) -> dm_pb2.WalkGraphReq:
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[qid].nums.append(1)
    req.include.attempt.data = True
    for k, v in include.items():
        setattr(req.include.attempt, k, v)
    return req


def attempt_of(graph: dm_pb2.GraphData, qid: str) -> dm_pb2.Attempt:
    return graph.quests[qid].attempts[1]


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_ensure_graph_data_round_trip(dm: DM, fmt: str) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc("a"))
    req.quest_attempt.add(nums=[1])
    rsp = dm.ok(dm.call("EnsureGraphData", req, fmt=fmt), dm_pb2.EnsureGraphDataRsp)
    assert rsp.accepted
    qid = rsp.quest_ids[0].id
    assert rsp.result.quests[qid].attempts[1].DNE  # the state before the call
    dm.drain()  # the attempt is created asynchronously (by the queue)
    again = dm.ok(dm.call("EnsureGraphData", req, fmt=fmt), dm_pb2.EnsureGraphDataRsp)
    assert again.quest_ids[0].id == qid
    assert not again.result.quests[qid].attempts[1].DNE


@pytest.mark.parametrize("fmt", FORMATS)
def test_execution_lifecycle_round_trip(dm: DM, fmt: str) -> None:
    """Activate, walk as the execution, finish; the distributor's notification ends it."""
    task = dm.scheduled("life")
    qid = task.eid.quest
    exe = dm.activate(task, fmt=fmt)

    walk = walk_req(qid)
    walk.auth.CopyFrom(exe)
    graph = dm.ok(dm.call("WalkGraph", walk, fmt=fmt), dm_pb2.GraphData)
    assert attempt_of(graph, qid).data.executing.cur_execution_id == 1

    finish = dm_pb2.FinishAttemptReq(auth=exe, data=dm_pb2.JsonResult(object='{"answer": 42}'))
    dm.ok(dm.call("FinishAttempt", finish, fmt=fmt), empty_pb2.Empty)
    # The identical retry of a lost answer is fine (W-6).
    dm.ok(dm.call("FinishAttempt", finish, fmt=fmt), empty_pb2.Empty)

    task.result = dm_pb2.Result(data=dm_pb2.JsonResult(object='{"done": true}'))
    assert (
        dm.push(
            b"{}", {"token": dm.world.token_of(task.eid), "auth_token": task.auth_token}
        ).status_code
        == 200
    )
    dm.drain()
    graph = dm.ok(dm.call("WalkGraph", walk_req(qid, result=True), fmt=fmt), dm_pb2.GraphData)
    got = attempt_of(graph, qid).data.finished.data
    assert json.loads(got.object) == {"answer": 42}


@pytest.mark.parametrize("fmt", FORMATS)
def test_ensure_graph_data_for_execution_round_trip(dm: DM, fmt: str) -> None:
    task = dm.scheduled("parent")
    exe = dm.activate(task, fmt=fmt)
    req = dm_pb2.EnsureGraphDataReq(for_execution=exe)
    req.quest.append(quest_desc("child"))
    req.quest_attempt.add(nums=[1])
    rsp = dm.ok(dm.call("EnsureGraphData", req, fmt=fmt), dm_pb2.EnsureGraphDataRsp)
    assert rsp.accepted
    assert rsp.should_halt  # the child has not run yet: stop, dm resumes us later


@pytest.mark.parametrize("fmt", FORMATS)
def test_cancel_attempt_round_trip(dm: DM, fmt: str) -> None:
    task = dm.scheduled("cancel-me")
    qid = task.eid.quest
    req = dm_pb2.CancelAttemptReq(reason="no longer needed")
    req.attempt.quest = qid
    req.attempt.id = 1
    dm.ok(dm.call("CancelAttempt", req, fmt=fmt), empty_pb2.Empty)
    dm.drain()
    graph = dm.ok(dm.call("WalkGraph", walk_req(qid, abnormal=True), fmt=fmt), dm_pb2.GraphData)
    ab = attempt_of(graph, qid).data.abnormal_finish
    assert ab.status == dm_pb2.AbnormalFinish.CANCELLED
    assert "no longer needed" in ab.reason


def test_accept_header_picks_the_response_codec(dm: DM) -> None:
    qid = dm.new_quest("codec")
    req = walk_req(qid)
    as_binary = dm.call("WalkGraph", req, headers={"Accept": "application/prpc; encoding=binary"})
    assert as_binary.headers["Content-Type"] == "application/prpc; encoding=binary"
    binary_graph = dm.ok(as_binary, dm_pb2.GraphData)
    as_json = dm.call("WalkGraph", req, fmt="binary", headers={"Accept": "application/json"})
    assert as_json.data.startswith(JSON_PREFIX)
    assert dm.ok(as_json, dm_pb2.GraphData) == binary_graph
    wild = dm.call("WalkGraph", req, fmt="binary", headers={"Accept": "*/*"})
    assert wild.headers["Content-Type"] == "application/prpc; encoding=binary"
    weighted = dm.call(
        "WalkGraph",
        req,
        fmt="binary",
        headers={"Accept": "application/prpc; encoding=binary; q=0.5, application/json"},
    )
    assert weighted.headers["Content-Type"] == "application/json"
    text = dm.api.post(
        "/prpc/dm.Deps/WalkGraph",
        data=text_format.MessageToString(req),
        headers={"Content-Type": "application/prpc; encoding=text"},
    )
    assert text.status_code == 200
    parsed = text_format.Parse(text.data.decode(), dm_pb2.GraphData())
    assert parsed == binary_graph


def test_json_request_with_proto_field_names(dm: DM) -> None:
    """protobuf JSON accepts both lowerCamel and the proto's own field names."""
    qid = dm.new_quest("names")
    body = {"query": {"attempt_list": {"to": {qid: {"nums": [1]}}}}, "include": {}}
    rsp = dm.api.post("/prpc/dm.Deps/WalkGraph", json=body)
    assert qid in dm.ok(rsp, dm_pb2.GraphData).quests


# -- bad input ------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code", "says"),
    [
        ("/prpc/dm.Deps/WalkGraph", b"{not json", JSON, 400, 3, "could not decode body"),
        ("/prpc/dm.Deps/WalkGraph", b'{"bogus": 1}', JSON, 400, 3, "bogus"),
        ("/prpc/dm.Deps/WalkGraph", b'{"query": 7}', JSON, 400, 3, "query"),
        ("/prpc/dm.Deps/WalkGraph", b"\xff\xfe{}", JSON, 400, 3, "UTF-8"),
        ("/prpc/dm.Deps/WalkGraph", b"[" * 5000 + b"]" * 5000, JSON, 400, 3, "decode"),
        (
            "/prpc/dm.Deps/WalkGraph",
            b"\xff\xff\xff\xff",
            {"Content-Type": "application/x-protobuf"},
            400,
            3,
            "dm.WalkGraphReq",
        ),
        ("/prpc/dm.Deps/WalkGraph", b"{}", {"Content-Type": "text/plain"}, 415, 3, "text/plain"),
        (
            "/prpc/dm.Deps/WalkGraph",
            b"query=1",
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            3,
            "Content-Type",
        ),
        (
            "/prpc/dm.Deps/WalkGraph",
            b"{}",
            {"Content-Type": "application/prpc; encoding=yaml"},
            415,
            3,
            "yaml",
        ),
        (
            "/prpc/dm.Deps/WalkGraph",
            b"{}",
            {**JSON, "Accept": "text/html"},
            406,
            3,
            "Accept",
        ),
        ("/prpc/dm.Deps/Frobnicate", b"{}", JSON, 501, 12, "Frobnicate"),
        ("/prpc/dm.Other/WalkGraph", b"{}", JSON, 501, 12, "dm.Other"),
        ("/prpc/dm.Deps", b"{}", JSON, 501, 12, "not implemented"),
        ("/v1/walk", b"{}", JSON, 404, 5, "/v1/walk"),
        ("/prpc/dm.Deps/WalkGraph", b"{}", JSON, 400, 3, "query: required"),
        ("/prpc/dm.Deps/EnsureGraphData", b"{}", JSON, 400, 3, "at least one"),
        ("/prpc/dm.Deps/ActivateExecution", b"{}", JSON, 400, 3, "auth.id: required"),
        ("/prpc/dm.Deps/FinishAttempt", b"{}", JSON, 400, 3, "auth.id: required"),
        ("/prpc/dm.Deps/CancelAttempt", b"{}", JSON, 400, 3, "attempt: required"),
        (
            "/prpc/dm.Deps/EnsureGraphData",
            json.dumps(
                {
                    "quest": [
                        {
                            "distributorConfigName": "nowhere",
                            "parameters": "{}",
                            "distributorParameters": "{}",
                        }
                    ],
                    "questAttempt": [{"nums": [1]}],
                }
            ).encode(),
            JSON,
            400,
            3,
            "nowhere",
        ),
        (
            "/prpc/dm.Deps/EnsureGraphData",
            json.dumps(
                {
                    "quest": [
                        {
                            "distributorConfigName": "fake",
                            "parameters": "[1, 2",
                            "distributorParameters": "{}",
                        }
                    ],
                    "questAttempt": [{"nums": [1]}],
                }
            ).encode(),
            JSON,
            400,
            3,
            "parameters",
        ),
        (
            "/prpc/dm.Deps/EnsureGraphData",
            json.dumps(
                {
                    "quest": [
                        {
                            "distributorConfigName": "fake",
                            "parameters": "{}",
                            "distributorParameters": "{}",
                        }
                    ],
                    "questAttempt": [{"nums": [0]}],
                }
            ).encode(),
            JSON,
            400,
            3,
            "quest_attempt[0]",
        ),
    ],
)
def test_bad_input_is_refused_cleanly(  # noqa: PLR0917 - parametrized
    dm: DM, path: str, body: bytes, headers: dict[str, str], status: int, code: int, says: str
) -> None:
    dm.new_quest("existing")  # something in the store to compare against
    before = dm.docs()
    rsp = dm.api.post(path, data=body, headers=headers)
    assert rsp.status_code == status, rsp.data
    assert rsp.headers["X-Prpc-Grpc-Code"] == str(code)
    assert rsp.headers["Content-Type"].startswith("text/plain")
    assert says in rsp.data.decode()
    assert_clean(rsp.data)
    assert dm.docs() == before


def test_wrong_http_method(dm: DM) -> None:
    for method in ("GET", "PUT", "DELETE"):
        rsp = dm.api.open("/prpc/dm.Deps/WalkGraph", method=method)
        assert rsp.status_code == 405
        assert rsp.headers["Allow"] == "POST"


def test_oversize_body_is_413(dm: DM) -> None:
    before = dm.docs()
    rsp = dm.api.post("/prpc/dm.Deps/WalkGraph", data=b" " * (32 * 1024 * 1024 + 1), headers=JSON)
    assert rsp.status_code == 413
    assert rsp.headers["X-Prpc-Grpc-Code"] == "8"
    assert dm.docs() == before


def test_oversize_result_is_refused(dm: DM) -> None:
    task = dm.scheduled("big")
    exe = dm.activate(task)
    before = dm.docs()
    big = json.dumps({"blob": "x" * 300_000})
    rsp = dm.call(
        "FinishAttempt", dm_pb2.FinishAttemptReq(auth=exe, data=dm_pb2.JsonResult(object=big))
    )
    assert rsp.status_code == 400
    assert "data.object" in rsp.data.decode()
    assert_clean(rsp.data)
    assert dm.docs() == before


def test_short_execution_token_is_refused(dm: DM) -> None:
    task = dm.scheduled("short")
    before = dm.docs()
    req = dm_pb2.ActivateExecutionReq(auth=task.auth, execution_token=b"too short")
    rsp = dm.call("ActivateExecution", req)
    assert rsp.status_code == 400
    assert "execution_token" in rsp.data.decode()
    assert dm.docs() == before


def test_replayed_activation_token_is_refused(dm: DM) -> None:
    task = dm.scheduled("replay")
    dm.activate(task)
    before = dm.docs()
    replay = dm_pb2.ActivateExecutionReq(auth=task.auth, execution_token=b"y" * 40)
    rsp = dm.call("ActivateExecution", replay)
    assert rsp.status_code == 403
    assert rsp.headers["X-Prpc-Grpc-Code"] == "7"
    assert_clean(rsp.data)
    assert dm.docs() == before


def test_forged_execution_tokens_are_refused(dm: DM) -> None:
    task = dm.scheduled("forged")
    exe = dm.activate(task)
    forged = dm_pb2.Execution.Auth(id=exe.id, token=b"z" * 32)
    before = dm.docs()
    finish = dm_pb2.FinishAttemptReq(auth=forged, data=dm_pb2.JsonResult(object="{}"))
    assert dm.call("FinishAttempt", finish).status_code == 403
    walk = walk_req(task.eid.quest)
    walk.auth.CopyFrom(forged)
    rsp = dm.call("WalkGraph", walk)
    assert rsp.status_code == 401
    assert rsp.headers["WWW-Authenticate"] == "Bearer"
    deps = dm_pb2.EnsureGraphDataReq(for_execution=forged)
    deps.quest.append(quest_desc("dep"))
    deps.quest_attempt.add(nums=[1])
    assert dm.call("EnsureGraphData", deps).status_code in (401, 403)
    assert dm.docs() == before


def test_unexpected_error_is_500_without_details(
    dm: DM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("secret internals at /srv/dm")

    monkeypatch.setattr(dm.backend.service, "walk_graph", boom)
    rsp = dm.call("WalkGraph", walk_req(dm.new_quest("boom")))
    assert rsp.status_code == 500
    assert rsp.headers["X-Prpc-Grpc-Code"] == "13"
    assert rsp.data == b"internal error\n"
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    crash = [x for x in lines if x.get("message") == "pRPC call failed"]
    assert crash
    assert crash[0]["severity"] == "ERROR"
    assert "secret internals" in crash[0]["exception"]


# -- identity (DM_AUTH=oidc) ------------------------------------------------------------------


def test_oidc_writer_may_create(dm: DM, oidc: Oidc) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc("w"))
    req.quest_attempt.add(nums=[1])
    rsp = dm.call("EnsureGraphData", req, token=oidc.token(WRITER))
    assert dm.ok(rsp, dm_pb2.EnsureGraphDataRsp).accepted


def test_oidc_reader_may_walk_but_not_write(dm: DM, oidc: Oidc) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc("r"))
    req.quest_attempt.add(nums=[1])
    before = dm.docs()
    rsp = dm.call("EnsureGraphData", req, token=oidc.token(READER))
    assert rsp.status_code == 403
    assert rsp.headers["X-Prpc-Grpc-Code"] == "7"
    assert READER in rsp.data.decode()
    assert dm.docs() == before
    qid = (
        dm.ok(dm.call("EnsureGraphData", req, token=oidc.token(WRITER)), dm_pb2.EnsureGraphDataRsp)
        .quest_ids[0]
        .id
    )
    dm.ok(dm.call("WalkGraph", walk_req(qid), token=oidc.token(READER)), dm_pb2.GraphData)
    cancel = dm_pb2.CancelAttemptReq()
    cancel.attempt.quest = qid
    cancel.attempt.id = 1
    assert dm.call("CancelAttempt", cancel, token=oidc.token(READER)).status_code == 403


def test_oidc_stranger_may_not_read(dm: DM, oidc: Oidc) -> None:
    qid = "a" * 43
    rsp = dm.call("WalkGraph", walk_req(qid), token=oidc.token("stranger@example.com"))
    assert rsp.status_code == 403
    rsp = dm.call("WalkGraph", walk_req(qid), token=oidc.token(INVOKER))
    assert rsp.status_code == 403


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda o: o.token(WRITER, expires_in=-3600), "expired"),
        (lambda o: o.token(WRITER, aud="https://elsewhere.example.com"), "audience"),
        (lambda o: o.token(WRITER, iss="https://evil.example.com"), "Google"),
        (lambda o: o.token(WRITER, email_verified=False), "not verified"),
        (lambda o: Oidc().token(WRITER), "invalid ID token"),
        (lambda o: "not-a-jwt", "invalid ID token"),
        (lambda o: o.token(WRITER)[:-8] + "AAAAAAAA", "invalid ID token"),
    ],
    ids=["expired", "audience", "issuer", "unverified", "other-key", "garbage", "tampered"],
)
def test_oidc_bad_tokens_are_401(dm: DM, oidc: Oidc, make: Any, says: str) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc("bad"))
    req.quest_attempt.add(nums=[1])
    before = dm.docs()
    rsp = dm.call("EnsureGraphData", req, token=make(oidc))
    assert rsp.status_code == 401, rsp.data
    assert rsp.headers["X-Prpc-Grpc-Code"] == "16"
    assert says in rsp.data.decode()
    assert_clean(rsp.data)
    assert dm.docs() == before


def test_oidc_missing_or_malformed_credentials(dm: DM, oidc: Oidc) -> None:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc("anon"))
    req.quest_attempt.add(nums=[1])
    assert dm.call("EnsureGraphData", req).status_code == 401
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert dm.call("EnsureGraphData", req, headers=basic).status_code == 401
    assert dm.call("WalkGraph", walk_req("a" * 43)).status_code == 401


def test_oidc_execution_calls_need_no_identity(dm: DM, oidc: Oidc) -> None:
    """Execution calls are authorised by their tokens (Cloud Run IAM guards the door)."""
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(quest_desc("job"))
    req.quest_attempt.add(nums=[1])
    dm.ok(dm.call("EnsureGraphData", req, token=oidc.token(WRITER)), dm_pb2.EnsureGraphDataRsp)
    dm.drain()
    (eid,) = dm.world.pending()
    task = dm.world.task(eid)
    exe = dm.activate(task)
    walk = walk_req(eid.quest)
    walk.auth.CopyFrom(exe)
    dm.ok(dm.call("WalkGraph", walk), dm_pb2.GraphData)
    finish = dm_pb2.FinishAttemptReq(auth=exe, data=dm_pb2.JsonResult(object='{"ok": 1}'))
    dm.ok(dm.call("FinishAttempt", finish), empty_pb2.Empty)


def test_oidc_certs_unreachable_is_503_and_certs_are_cached(dm: DM, oidc: Oidc) -> None:
    token = oidc.token(READER)
    fetched = oidc.fetches
    dm.ok(dm.call("WalkGraph", walk_req("a" * 43), token=token), dm_pb2.GraphData)
    dm.ok(dm.call("WalkGraph", walk_req("a" * 43), token=token), dm_pb2.GraphData)
    assert oidc.fetches == fetched + 1  # the second call used the cached certs

    from dmcore.server import auth

    oidc.down = True
    auth.set_http_request(oidc)  # a fresh cache
    rsp = dm.call("WalkGraph", walk_req("a" * 43), token=token)
    assert rsp.status_code == 503
    assert rsp.headers["X-Prpc-Grpc-Code"] == "14"


def test_oidc_config_is_required(dm: DM) -> None:
    from dmcore.runtime.backend import ConfigError

    dm.monkeypatch.setenv("DM_AUTH", "oidc")
    with pytest.raises(ConfigError, match="DM_OIDC_AUDIENCE"):
        dm.configure()
    dm.monkeypatch.setenv("DM_OIDC_AUDIENCE", AUDIENCE)
    with pytest.raises(ConfigError, match="DM_INVOKER_SERVICE_ACCOUNT"):
        dm.configure()


def test_misconfigured_function_answers_500(dm: DM) -> None:
    from dmcore.runtime import backend

    backend.reset()
    dm.monkeypatch.setenv("DM_AUTH", "sometimes")
    rsp = dm.call("WalkGraph", walk_req("a" * 43))
    assert rsp.status_code == 500
    assert "misconfigured" in rsp.data.decode()
    assert "sometimes" not in rsp.data.decode()


# -- logs ---------------------------------------------------------------------------------------


def test_logs_are_json_lines_with_severity_message_and_trace(
    dm: DM, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    trace = "105445aa7843bc8bf206b12000100000"
    rsp = dm.call(
        "WalkGraph", walk_req("a" * 43), headers={"X-Cloud-Trace-Context": f"{trace}/1;o=1"}
    )
    assert rsp.status_code == 200
    out = capsys.readouterr().out.splitlines()
    lines = [json.loads(x) for x in out if x.strip()]  # every line is JSON
    call = next(x for x in lines if x["message"] == "pRPC call")
    assert call["severity"] == "INFO"
    assert call["rpc"] == "WalkGraph"
    assert call["logging.googleapis.com/trace"] == trace
    assert "time" in call

    dm.monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo")
    dm.call("Nope", walk_req("a"), headers={"X-Cloud-Trace-Context": f"{trace}/2"})
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    call = next(x for x in lines if x["message"] == "pRPC call")
    assert call["logging.googleapis.com/trace"] == f"projects/demo/traces/{trace}"
    assert call["severity"] == "INFO"


def test_stdlib_logging_is_routed_as_json(dm: DM, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from dmcore import logs

    capsys.readouterr()
    with logs.request_context({"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}):
        logging.getLogger("dm.engine").warning("engine says %s", "hi")
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["severity"] == "WARNING"
    assert line["message"] == "engine says hi"
    assert line["logger"] == "dm.engine"
    assert line["logging.googleapis.com/trace"] == "ab" * 16


def test_json_encoding_helpers_agree_with_protobuf(dm: DM) -> None:
    """Our JSON answers parse back with json_format (after the prefix)."""
    qid = dm.new_quest("json")
    rsp = dm.call("WalkGraph", walk_req(qid))
    text = rsp.data[len(JSON_PREFIX) :].decode()
    assert json_format.Parse(text, dm_pb2.GraphData()).quests[qid].attempts[1]


def test_transient_store_error_is_503(dm: DM, monkeypatch: pytest.MonkeyPatch) -> None:
    from dmcore.store.base import Contention

    def busy(*args: Any, **kw: Any) -> None:
        raise Contention("database is locked by writer 7")

    monkeypatch.setattr(dm.backend.service, "walk_graph", busy)
    rsp = dm.call("WalkGraph", walk_req("a" * 43))
    assert rsp.status_code == 503
    assert rsp.headers["X-Prpc-Grpc-Code"] == "14"
    assert b"writer 7" not in rsp.data
