"""The cloud_run_jobs distributor over the wire: the official google-cloud-run client
against the fake Cloud Run server (a test double: no emulator exists), then end to
end: dm under ``dm serve``, the fake running the example job as local processes.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from distributors import gapi
from distributors.cloud_run_jobs import distributor as crj
from dmcore import distributor as dist
from dmcore import job as dmjob
from dmcore import remote
from dmcore.errors import InvalidArgument
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from tests import remote_support as rs
from tests.fake_cloudrun import Condition, FakeCloudRunServer, FakeJob

JOB = "projects/demo/locations/us-central1/jobs/render"
OTHER = "projects/demo/locations/us-central1/jobs/other"
Abnormal = dm_pb2.AbnormalFinish
EID = ExecutionID("q" * 43, 1, 1)


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def cloudrun(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloudRunServer]:
    jobs = [FakeJob(JOB, env={"BASE": "1"}, args=["--default"]), FakeJob(OTHER)]
    with FakeCloudRunServer(clock=now_us, jobs=jobs) as fake:
        monkeypatch.setenv(crj.EMULATOR_ENV, fake.address)
        yield fake


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    t = [now_us()]
    monkeypatch.setattr(crj.CloudRunJobs, "clock", staticmethod(lambda: t[0]))
    return t


def config(**over: Any) -> dict[str, Any]:
    cfg = {"jobs": [JOB, OTHER], "max_task_count": 4, "max_timeout": "3600s"}
    return {"remote": {"cloud_run_jobs": {**cfg, **over}}}


def make(tmp_path: pathlib.Path, **over: Any) -> crj.CloudRunJobs:
    d, _, _ = rs.build(tmp_path, "remote", config(**over))
    assert isinstance(d, crj.CloudRunJobs)
    return d


def env_of(fake: FakeCloudRunServer, name: str) -> dict[str, str]:
    return {e.name: e.value for e in fake.execution(name).template.containers[0].env}


# -- run --------------------------------------------------------------------------------------


def test_run_starts_one_execution_with_the_overrides(
    tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer
) -> None:
    d = make(tmp_path)
    quest = rs.desc({"n": 1}, {"args": ["--fast", "x"], "task_count": 2, "timeout": "600s"})
    prev = dm_pb2.JsonResult(object='{"state":{"stage":1},"execution":"e"}')
    started = d.run(quest, rs.auth(), prev)
    assert d.run(quest, rs.auth(), prev) == started  # a retried run(): the recorded execution
    [req] = cloudrun.runs
    assert req.name == JOB
    assert req.overrides.task_count == 2
    assert req.overrides.timeout.seconds == 600
    eid, name = d.split_token(started.token)
    assert eid == EID and name.startswith(JOB + "/executions/render-")
    assert started.poll_interval == crj.DEFAULT_POLL_INTERVAL
    assert started.poll_timeout == 2 * crj.DEFAULT_POLL_INTERVAL
    ex = cloudrun.execution(name)
    assert list(ex.template.containers[0].args) == ["--fast", "x"]
    env = env_of(cloudrun, name)
    assert env["BASE"] == "1"  # the job's own env stays
    assert env[dmjob.ENV_API_URL] == "https://dm-api.example.run.app"
    assert env[dmjob.ENV_QUEST] == "q" * 43
    assert json.loads(env[dmjob.ENV_PARAMS]) == {"n": 1}
    assert json.loads(env[dmjob.ENV_PREVIOUS_STATE]) == {"stage": 1}
    assert env[dmjob.ENV_REPORT_TOPIC] == "projects/demo/topics/dm-distributor-notify"
    assert env[crj.MARKER_ENV] == str(EID)
    job = dmjob.Job.from_env(env)  # what the container's Job.from_env() sees
    assert job.auth == rs.auth() and isinstance(job.client, remote.RemoteClient)
    assert job.reporter is not None


def test_large_parameters_stay_out_of_the_env(
    tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer
) -> None:
    d = make(tmp_path)
    big = {"blob": "x" * (crj.ENV_VALUE_LIMIT + 1)}
    token = d.run(rs.desc(big), rs.auth(), None).token
    env = env_of(cloudrun, d.split_token(token)[1])
    assert dmjob.ENV_PARAMS not in env  # the job reads them through the API
    assert env[dmjob.ENV_PREVIOUS_STATE] == "{}"
    # Cloud Run counts bytes: 20,000 characters of "é" are 40,000 bytes (the fake refuses
    # an env value over 32768 bytes, as Cloud Run does).
    wide = rs.desc()
    wide.parameters = json.dumps({"blob": "é" * 20_000}, ensure_ascii=False)
    prev = dm_pb2.JsonResult(object=json.dumps({"state": {"s": "é" * 20_000}}, ensure_ascii=False))
    token = d.run(wide, rs.auth(num=2), prev).token
    env = env_of(cloudrun, d.split_token(token)[1])
    assert dmjob.ENV_PARAMS not in env and dmjob.ENV_PREVIOUS_STATE not in env


def test_a_run_whose_answer_was_lost_adopts_its_execution_instead_of_starting_another(
    tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer, clock: list[int]
) -> None:
    d = make(tmp_path)
    cloudrun.fail_next("RunJob", "DEADLINE_EXCEEDED", after=True)  # started; answer lost
    with pytest.raises(dist.TransientError):
        d.run(rs.desc(), rs.auth(), None)
    with pytest.raises(dist.TransientError, match="another run"):
        d.run(rs.desc(), rs.auth(), None)  # the claim is fresh: someone may be starting it
    clock[0] += int(crj.CLAIM_GRACE.total_seconds() * 1e6) + 1
    token = d.run(rs.desc(), rs.auth(), None).token
    assert len(cloudrun.runs) == 1  # adopted, not started twice
    assert token.endswith("/executions/render-00001")


def test_run_errors_are_classified(tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer) -> None:
    d = make(tmp_path)
    for code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"):
        cloudrun.fail_next("RunJob", code)
        with pytest.raises(dist.TransientError, match="running"):
            d.run(rs.desc(), rs.auth(num=len(code)), None)
    for code in ("PERMISSION_DENIED", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED"):
        cloudrun.fail_next("RunJob", code)
        with pytest.raises(gapi.GoogleApiError) as e:
            d.run(rs.desc(), rs.auth(), None)
        assert not isinstance(e.value, dist.TransientError)
    assert cloudrun.runs == []
    d.run(rs.desc(), rs.auth(), None)  # the failed claims were dropped: it starts now
    assert len(cloudrun.runs) == 1


def test_quest_parameters_are_checked_against_the_config(tmp_path: pathlib.Path) -> None:
    d = make(tmp_path)
    d.validate('{"job": "other", "args": ["a"], "task_count": 4, "timeout": "3600s"}')
    d.validate(f'{{"job": "{JOB}"}}')
    for bad, message in [
        ('{"job": "nope"}', "job: 'nope' is not one of the config's jobs"),
        ('{"task_count": 5}', "task_count: at most 4"),
        ('{"timeout": "7200s"}', "timeout: must be within"),
        ('{"image": "x"}', "image: unknown field"),
        ('{"args": "x"}', "args:"),
    ]:
        with pytest.raises(ValueError, match=message):
            d.validate(bad)


# -- get_status, cancel, notifications ---------------------------------------------------------


def test_get_status_maps_the_execution_conditions(
    tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer, clock: list[int]
) -> None:
    d = make(tmp_path)

    def started(num: int) -> tuple[str, str]:
        token = d.run(rs.desc(), rs.auth(num=num), None).token
        return token, d.split_token(token)[1]

    token, name = started(1)
    assert d.get_status(rs.desc(), token) is None  # running
    cloudrun.complete(name, "succeeded")
    clock[0] = now_us()
    assert d.get_status(rs.desc(), token) is None  # no report yet: it may be on its way
    clock[0] += int(crj.REPORT_GRACE.total_seconds() * 1e6) + 1
    got = d.get_status(rs.desc(), token)
    assert got is not None
    assert json.loads(got.data.object) == {
        "execution": name.rsplit("/", 1)[-1],
        "state": {},
        "succeeded_tasks": 1,
    }

    cases = [
        ("failed", Condition.ExecutionReason.NON_ZERO_EXIT_CODE, Abnormal.FAILED, "task(s) failed"),
        ("failed", Condition.ExecutionReason.EXECUTION_REASON_UNDEFINED, Abnormal.CRASHED, "boom"),
        ("failed", Condition.ExecutionReason.DELETED, Abnormal.MISSING, "deleted"),
    ]
    for i, (outcome, reason, status, text) in enumerate(cases):
        token, name = started(10 + i)
        cloudrun.complete(name, outcome, message="boom", reason=reason)
        got = d.get_status(rs.desc(), token)
        assert got is not None and got.abnormal_finish.status == status
        assert text in got.abnormal_finish.reason

    token, name = started(20)
    d.cancel(rs.desc(), token)
    d.cancel(rs.desc(), token)  # ended already: fine
    got = d.get_status(rs.desc(), token)
    assert got is not None and got.abnormal_finish.status == Abnormal.CANCELLED


def test_a_job_deleted_mid_run_is_missing_and_errors_are_classified(
    tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer
) -> None:
    d = make(tmp_path)
    token = d.run(rs.desc(), rs.auth(), None).token
    cloudrun.fail_next("GetExecution", "UNAVAILABLE")
    with pytest.raises(dist.TransientError):
        d.get_status(rs.desc(), token)
    cloudrun.fail_next("GetExecution", "RESOURCE_EXHAUSTED")
    with pytest.raises(dist.TransientError):
        d.get_status(rs.desc(), token)
    cloudrun.fail_next("GetExecution", "PERMISSION_DENIED")
    with pytest.raises(gapi.GoogleApiError):
        d.get_status(rs.desc(), token)
    cloudrun.fail_next("CancelExecution", "PERMISSION_DENIED")
    with pytest.raises(gapi.GoogleApiError):
        d.cancel(rs.desc(), token)
    cloudrun.delete_job(JOB)
    got = d.get_status(rs.desc(), token)
    assert got is not None and got.abnormal_finish.status == Abnormal.MISSING
    d.cancel(rs.desc(), token)  # gone: nothing to cancel


def test_every_call_walks_each_error_class(
    tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer, clock: list[int]
) -> None:
    """Transient (dm retries) or final, at the calls not walked above."""
    d, _, _ = rs.build(tmp_path, "remote", config(), busy_timeout=0.05)
    assert isinstance(d, crj.CloudRunJobs)
    token = d.run(rs.desc(), rs.auth(), None).token
    cloudrun.fail_next("CancelExecution", "UNAVAILABLE")
    with pytest.raises(dist.TransientError, match="cancelling"):
        d.cancel(rs.desc(), token)
    # dm's store, held by another writer: transient.
    with rs.write_locked(tmp_path), pytest.raises(dist.TransientError, match="store busy"):
        d.run(rs.desc(), rs.auth(num=2), None)
    # Adoption after a lost RunJob answer lists the job's executions.
    cloudrun.fail_next("RunJob", "DEADLINE_EXCEEDED", after=True)
    with pytest.raises(dist.TransientError):
        d.run(rs.desc(), rs.auth(num=3), None)
    clock[0] += int(crj.CLAIM_GRACE.total_seconds() * 1e6) + 1
    cloudrun.fail_next("ListExecutions", "UNAVAILABLE")
    with pytest.raises(dist.TransientError, match="listing the executions"):
        d.run(rs.desc(), rs.auth(num=3), None)
    clock[0] += int(crj.CLAIM_GRACE.total_seconds() * 1e6) + 1
    cloudrun.fail_next("ListExecutions", "PERMISSION_DENIED")
    with pytest.raises(gapi.GoogleApiError, match="listing the executions"):
        d.run(rs.desc(), rs.auth(num=3), None)
    clock[0] += int(crj.CLAIM_GRACE.total_seconds() * 1e6) + 1
    d.run(rs.desc(), rs.auth(num=3), None)  # adopted at last
    assert len(cloudrun.runs) == 2  # executions 1 and 3, each started once


def test_the_jobs_report_carries_its_state_into_the_result(
    tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer
) -> None:
    d = make(tmp_path)
    token = d.run(rs.desc(), rs.auth(), None).token
    name = d.split_token(token)[1]
    report = remote.Report(remote.REPORT_STOPPED, state={"stage": 3}).to_bytes()
    assert d.handle_notification(rs.desc(), dist.Notification(EID, report)) is None  # running
    cloudrun.complete(name, "succeeded")
    got = d.get_status(rs.desc(), token)  # no grace needed: the report is in
    assert got is not None and json.loads(got.data.object)["state"] == {"stage": 3}
    again = d.handle_notification(rs.desc(), dist.Notification(EID, report))
    assert again == got
    failed = remote.Report(remote.REPORT_FAILED, reason="no").to_bytes()
    got = d.handle_notification(rs.desc(), dist.Notification(EID, failed))
    assert got is not None and got.abnormal_finish.status == Abnormal.FAILED
    assert d.handle_notification(rs.desc(), dist.Notification(EID, b"{}")) is None


def test_info_url_is_the_console_page_without_secrets(
    tmp_path: pathlib.Path, cloudrun: FakeCloudRunServer
) -> None:
    d = make(tmp_path)
    token = d.run(rs.desc(), rs.auth(), None).token
    name = d.split_token(token)[1]
    url = d.info_url(token)
    assert url == (
        "https://console.cloud.google.com/run/jobs/executions/details/us-central1/"
        f"{name.rsplit('/', 1)[-1]}/tasks?project=demo"
    )
    env = env_of(cloudrun, name)
    for secret in (env[dmjob.ENV_REPORT_TOKEN], "QUFB"):
        assert secret not in url and secret not in token
    assert d.info_url("junk") == ""


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"jobs": []}, "jobs: at least one"),
        ({"jobs": ["render"]}, r"jobs\[0\]: expected projects/P/locations/L/jobs/J"),
        ({"max_timeout": "700000s"}, "max_timeout: must be within"),
        ({"report_url": "http://example.com/"}, "report_url: plain http only on the loopback"),
        ({"poll_interval": "0.5s"}, "poll_interval: at least 1s"),
        ({"jobs": [JOB, JOB]}, r"jobs\[1\]: .* is listed twice"),
        ({"container": "Main Container"}, "container: not a container name"),
        ({"max_task_count": 10001}, "max_task_count: at most 10000"),
    ],
)
def test_malformed_configs_are_refused(
    tmp_path: pathlib.Path, over: dict[str, Any], message: str
) -> None:
    with pytest.raises(
        InvalidArgument, match=f"distributor_configs.remote.cloud_run_jobs: {message}"
    ):
        rs.build(tmp_path, "remote", config(**over))


# -- end to end: dm serve + the fake running the example job as processes ------------------------


def test_end_to_end_the_example_job_counts_words_through_a_dependency(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmcore.runtime import backend as backends
    from dmcore.runtime.serve import LocalServer
    from tests.test_functions_support import clean_env
    from tests.test_http_distributor import submit_and_wait

    clean_env(monkeypatch)
    job_name = "projects/dm-local/locations/local/jobs/wordcount"
    example = rs.REPO / "examples" / "cloud_run_jobs" / "job.py"
    fake_job = FakeJob(job_name, command=[sys.executable, str(example)])
    port = rs.free_port()
    base = f"http://127.0.0.1:{port}"
    configs = {
        "distributor_configs": {
            "cloud_run_jobs": {
                "cloud_run_jobs": {
                    "jobs": [job_name],
                    "poll_interval": "1s",
                    "dm_api_url": base,
                    "report_url": base + "/dm_notify/",
                }
            }
        }
    }
    with FakeCloudRunServer(clock=now_us, jobs=[fake_job]) as fake:
        monkeypatch.setenv(crj.EMULATOR_ENV, fake.address)
        srv = LocalServer(
            port, tmp_path / "home", config=configs, sweep_every_s=0.5, out=lambda s: None
        ).start()
        try:
            stack = {"server": srv, "backend": backends.get(), "tmp": tmp_path}
            q = {
                "distributor_config_name": "cloud_run_jobs",
                "parameters": {"config": "cloud_run_jobs"},
                "distributor_parameters": {"args": list("abcdefg")},
            }
            att = submit_and_wait(stack, q)
        finally:
            srv.close()
            from dmcore import logs

            logs.unconfigure()
        assert json.loads(att.data.finished.data.object) == {"words": 7}, fake.logs
        assert len(att.executions) == 2  # halted for the first half, then resumed
        first = json.loads(att.executions[1].data.finished.data.object)
        assert first["state"] == {"split_at": 3}
        assert len(fake.runs) == 3  # 7 words: 2 executions; its first half (3 words): 1
