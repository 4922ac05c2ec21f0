"""The swarming_v1 distributor (spec §6) against the fake Swarming server (a test
double speaking the public v1 API), then end to end: dm under ``dm serve``, the
fake running the example task as a local bot and publishing its end to the
Pub/Sub emulator, which pushes it to dm_notify.
"""

from __future__ import annotations

import base64
import json
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from distributors.swarming_v1 import distributor as sw
from dmcore import distributor as dist
from dmcore.errors import InvalidArgument
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from tests import remote_support as rs
from tests.fake_swarming import FakeSwarming, secret_auth

Abnormal = dm_pb2.AbnormalFinish
EID = ExecutionID("q" * 43, 1, 1)
CIPD = "https://chrome-infra-packages.appspot.com"


@pytest.fixture
def swarming() -> Iterator[FakeSwarming]:
    with FakeSwarming(lambda topic, data, attrs: None) as fake:
        yield fake


def make(tmp_path: pathlib.Path, fake: FakeSwarming, **over: Any) -> sw.SwarmingV1:
    cfg = {
        "swarming": {"url": fake.url},
        "isolate": {"url": "https://isolate.example.com", "expiration": "3600s"},
        **over,
    }
    d, _, _ = rs.build(tmp_path, "remote", {"remote": {"swarming_v1": cfg}})
    assert isinstance(d, sw.SwarmingV1)
    return d


def params(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "scheduling": {
            "priority": 50,
            "dimensions": {"pool": "dm", "os": "Linux"},
            "snapshot_dimensions": ["os", "cpu"],
            "io_timeout": "30s",
        },
        "meta": {"name_prefix": "build"},
        "job": {
            "inputs": {
                "cipd": {
                    "server": CIPD,
                    "client": {"name": "infra/cipd", "version": "v1"},
                    "by_path": {"bin": {"pkg": [{"name": "tools/a", "version": "1"}]}},
                }
            },
            "command": ["python3", "run.py", "--fast"],
            "env": {"MODE": "test"},
        },
    }
    p.update(over)
    return p


def quest(p: dict[str, Any] | None = None, start: str = "600s") -> dm_pb2.Quest.Desc:
    desc = rs.desc({"name": "sw"}, p or params())
    json_format.ParseDict({"timeouts": {"start": start, "run": "1200s", "stop": "60s"}}, desc.meta)
    return desc


# -- run --------------------------------------------------------------------------------------


def test_run_creates_the_task_as_spec_6_says_and_sends_the_command(
    tmp_path: pathlib.Path, swarming: FakeSwarming
) -> None:
    d = make(tmp_path, swarming)
    started = d.run(quest(), rs.auth(), None)
    assert d.run(quest(), rs.auth(), None) == started  # same request_uuid: the same task
    assert len(swarming.tasks) == 1
    task = swarming.tasks[started.token]
    req = task.request
    assert req["name"] == f"build / {EID}"
    assert req["priority"] == "50"
    assert req["expiration_secs"] == "600"
    props = req["properties"]
    assert props["command"] == ["python3", "run.py", "--fast"]  # W-15: sent
    assert props["dimensions"] == [{"key": "os", "value": "Linux"}, {"key": "pool", "value": "dm"}]
    env = {e["key"]: e["value"] for e in props["env"]}
    assert env["MODE"] == "test"
    assert env["DM_API_URL"] == "https://dm-api.example.run.app"
    assert env["DM_QUEST_ID"] == "q" * 43
    assert json.loads(env["DM_QUEST_PARAMETERS"]) == {"name": "sw"}
    assert (props["execution_timeout_secs"], props["grace_period_secs"]) == ("1200", "60")
    assert props["io_timeout_secs"] == "30"
    assert secret_auth(task) == {
        "id": {"quest": "q" * 43, "attempt": 1, "id": 1},
        "token": base64.b64encode(b"A" * 32).decode(),
    }
    assert props["cipd_input"] == {
        "server": CIPD,
        "client_package": {"package_name": "infra/cipd", "version": "v1"},
        "packages": [{"package_name": "tools/a", "version": "1", "path": "bin"}],
    }
    assert req["pubsub_topic"] == "projects/demo/topics/dm-distributor-notify"
    assert req["pubsub_auth_token"] and req["pubsub_userdata"] == str(EID)
    assert req["tags"] == [
        "requestor:DM",
        "requestor:dm-api.example.run.app",
        "requestor:swarming_v1",
        f"quest:{'q' * 43}",
        f"attempt:{'q' * 43}|1",
        f"execution:{EID}",
    ]
    assert started.poll_timeout == dist.Started("x").poll_timeout  # notifications, not polls


def test_the_previous_result_pins_packages_and_dimensions(
    tmp_path: pathlib.Path, swarming: FakeSwarming
) -> None:
    d = make(tmp_path, swarming)
    prev = {
        "exit_code": "0",
        "cipd_pins": {
            "client": {"name": "infra/cipd", "version": "sha-1"},
            "by_path": {"bin": {"pkg": [{"name": "tools/a", "version": "sha-a"}]}},
        },
        "snapshot_dimensions": {"os": "Ubuntu-22.04", "cpu": "x86-64"},
    }
    token = d.run(quest(), rs.auth(num=2), dm_pb2.JsonResult(object=json.dumps(prev))).token
    props = swarming.tasks[token].request["properties"]
    assert props["cipd_input"]["client_package"]["version"] == "sha-1"
    assert props["cipd_input"]["packages"][0]["version"] == "sha-a"
    dims = {x["key"]: x["value"] for x in props["dimensions"]}
    assert dims == {"pool": "dm", "os": "Ubuntu-22.04", "cpu": "x86-64"}


def test_isolated_and_cas_inputs_are_sent(tmp_path: pathlib.Path, swarming: FakeSwarming) -> None:
    d = make(tmp_path, swarming)
    p = params()
    p["job"]["inputs"] = {
        "isolated": [{"id": "deadbeef"}],
        "cas": {"instance": "projects/p/instances/default_instance", "digest": "abc/42"},
    }
    token = d.run(quest(p, start="0s"), rs.auth(), None).token
    req = swarming.tasks[token].request
    assert req["properties"]["inputs_ref"] == {
        "isolated": "deadbeef",
        "isolatedserver": "https://isolate.example.com",
        "namespace": "default-gzip",
    }
    assert req["properties"]["cas_input_root"] == {
        "cas_instance": "projects/p/instances/default_instance",
        "digest": {"hash": "abc", "size_bytes": "42"},
    }
    assert req["expiration_secs"] == "3600"  # no start timeout: the default, never 0


def test_timeouts_are_kept_within_what_swarming_accepts(
    tmp_path: pathlib.Path, swarming: FakeSwarming
) -> None:
    """Swarming refuses a task outside its limits; dm's own timers stay the stricter."""
    d = make(tmp_path, swarming)
    desc = quest()
    json_format.ParseDict({"timeouts": {"start": "10s", "run": "0s", "stop": "7200s"}}, desc.meta)
    token = d.run(desc, rs.auth(), None).token  # the fake refuses what Swarming refuses
    req = swarming.tasks[token].request
    assert req["expiration_secs"] == "30"  # dm's own 10 s start timer ends it first
    assert req["properties"]["execution_timeout_secs"] == str(sw_max_timeout())  # no dm limit
    assert req["properties"]["grace_period_secs"] == "3600"


def sw_max_timeout() -> int:
    return 7 * 24 * 3600 - 3600 - 60


def test_large_parameters_reach_the_task_through_the_api_not_its_env(
    tmp_path: pathlib.Path, swarming: FakeSwarming
) -> None:
    d = make(tmp_path, swarming)
    for n, big in enumerate(({"blob": "x" * 2000}, {"blob": "é" * 600})):  # 600 chars, 1.2 KB
        token = d.run(_with_params(big), rs.auth(num=n + 1), None).token
        env = {e["key"] for e in swarming.tasks[token].request["properties"]["env"]}
        assert "DM_QUEST_PARAMETERS" not in env and "DM_API_URL" in env
    small = d.run(_with_params({"name": "é" * 100}), rs.auth(num=9), None).token
    env_small = {e["key"]: e["value"] for e in swarming.tasks[small].request["properties"]["env"]}
    assert json.loads(env_small["DM_QUEST_PARAMETERS"]) == {"name": "é" * 100}


def _with_params(p: dict[str, Any]) -> dm_pb2.Quest.Desc:
    desc = quest()
    desc.parameters = json.dumps(p, ensure_ascii=False)
    return desc


def test_errors_are_classified_an_outage_is_transient(
    tmp_path: pathlib.Path, swarming: FakeSwarming
) -> None:
    d = make(tmp_path, swarming)
    swarming.fail_next(503, times=sw.RPC_ATTEMPTS)
    with pytest.raises(dist.TransientError, match="tasks/new"):
        d.run(quest(), rs.auth(), None)
    swarming.fail_next(500, times=sw.RPC_ATTEMPTS - 1)  # passes within the attempts
    token = d.run(quest(), rs.auth(), None).token
    swarming.fail_next(429, times=sw.RPC_ATTEMPTS)
    with pytest.raises(dist.TransientError):
        d.get_status(quest(), token)
    for status in (400, 401, 403):
        swarming.fail_next(status)
        with pytest.raises(sw.SwarmingError) as e:
            d.run(quest(), rs.auth(num=status), None)
        assert not isinstance(e.value, dist.TransientError)
    p = params()
    p["scheduling"]["dimensions"] = {"os": "Linux"}  # no pool: Swarming refuses it
    with pytest.raises(sw.SwarmingError, match="pool is required"):
        d.run(quest(p), rs.auth(num=9), None)
    closed = FakeSwarming()
    url = closed.url
    closed.close()  # nothing listens: no answer at all
    down = make(tmp_path / "down", swarming)
    down.base = url + sw.API_PATH
    with pytest.raises(dist.TransientError, match="no answer"):
        down.run(quest(), rs.auth(), None)


def test_every_call_walks_each_error_class(tmp_path: pathlib.Path, swarming: FakeSwarming) -> None:
    """Transient (dm retries) or final, at the calls not walked above."""
    d = make(tmp_path, swarming)
    token = d.run(quest(), rs.auth(), None).token
    swarming.fail_next(403)
    with pytest.raises(sw.SwarmingError, match="HTTP 403"):
        d.get_status(quest(), token)
    swarming.fail_next(503, times=sw.RPC_ATTEMPTS)
    with pytest.raises(dist.TransientError, match="cancel"):
        d.cancel(quest(), token)
    swarming.fail_next(403)
    with pytest.raises(sw.SwarmingError, match="cancel: HTTP 403"):
        d.cancel(quest(), token)


@pytest.mark.parametrize(
    ("token_endpoint", "transient"),
    [(503, True), (None, True), (400, False)],  # None: nothing listens
)
def test_dms_own_credentials_failing_are_classified(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    token_endpoint: int | None,
    transient: bool,
) -> None:
    """dm's access token for Swarming (google-auth, a service account key file here)."""
    from tests.http_sink import HttpSink

    monkeypatch.setattr(sw, "_tokens", {})  # the process's token source, made afresh
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    refusal = json.dumps({"error": "invalid_grant"}).encode()
    with HttpSink(lambda seen: (token_endpoint or 200, {}, refusal)) as endpoint:
        url = endpoint.url if token_endpoint else "http://127.0.0.1:9"
        keyfile = rs.service_account_file(tmp_path, url + "/token")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(keyfile))
        cfg = {"swarming": {"url": "https://swarming.invalid"}}
        d, _, _ = rs.build(tmp_path, "remote", {"remote": {"swarming_v1": cfg}})
        with pytest.raises(Exception) as e:
            d.run(quest(), rs.auth(), None)
    assert isinstance(e.value, dist.TransientError) == transient, e.value
    assert "credentials" in str(e.value)


# -- get_status, cancel, notifications ---------------------------------------------------------


def test_get_status_follows_the_state_table(
    tmp_path: pathlib.Path, swarming: FakeSwarming, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make(tmp_path, swarming)
    monkeypatch.setattr(sw.SwarmingV1, "clock", staticmethod(lambda: 1_000_000_000_000_000))

    def task(num: int) -> str:
        return d.run(quest(), rs.auth(num=num), None).token

    t = task(1)
    assert d.get_status(quest(), t) is None  # PENDING
    swarming.start(t, {"os": ["Linux", "Ubuntu", "Ubuntu-22.04"], "cpu": ["x86", "x86-64"]})
    assert d.get_status(quest(), t) is None  # RUNNING
    pins = {
        "client_package": {"package_name": "infra/cipd", "version": "sha-1"},
        "packages": [{"package_name": "tools/a", "version": "sha-a", "path": "bin"}],
    }
    swarming.finish(t, "COMPLETED", 3, cipd_pins=pins)
    got = d.get_status(quest(), t)
    assert got is not None and not got.HasField("abnormal_finish")  # exit 3 is still normal
    assert json.loads(got.data.object) == {
        "exit_code": "3",
        "cipd_pins": {
            "client": {"name": "infra/cipd", "version": "sha-1"},
            "by_path": {"bin": {"pkg": [{"name": "tools/a", "version": "sha-a"}]}},
        },
        "snapshot_dimensions": {"os": "Ubuntu-22.04", "cpu": "x86-64"},
    }
    assert got.data.expiration.ToMicroseconds() == 1_000_000_000_000_000 + 3600 * 1_000_000

    table = [
        ("COMPLETED", True, Abnormal.CRASHED, "swarming: COMPLETED/InternalFailure(0)"),
        ("BOT_DIED", False, Abnormal.CRASHED, "swarming: BOT_DIED"),
        ("CANCELED", False, Abnormal.CANCELLED, "swarming: CANCELED"),
        ("EXPIRED", False, Abnormal.EXPIRED, "swarming: EXPIRED"),
        ("TIMED_OUT", False, Abnormal.TIMED_OUT, "swarming: TIMED_OUT"),
        ("KILLED", False, Abnormal.CANCELLED, "swarming: KILLED"),  # cancel of a running task
        ("NO_RESOURCE", False, Abnormal.EXPIRED, "swarming: NO_RESOURCE"),  # no bot matches
        ("INVALID", False, Abnormal.RESULT_MALFORMED, "swarming: unknown state INVALID"),
    ]
    for i, (state, internal, status, reason) in enumerate(table):
        t = task(10 + i)
        swarming.finish(t, state, 0, internal_failure=internal)
        got = d.get_status(quest(), t)
        assert got is not None
        assert got.abnormal_finish == Abnormal(status=status, reason=reason)
    got = d.get_status(quest(), "0123456789abcde0")
    assert got is not None
    assert got.abnormal_finish == Abnormal(status=Abnormal.MISSING, reason="swarming: notFound")


def test_cancel_kills_running_tasks_and_the_notification_is_read(
    tmp_path: pathlib.Path, swarming: FakeSwarming
) -> None:
    d = make(tmp_path, swarming)
    pending = d.run(quest(), rs.auth(num=1), None).token
    running = d.run(quest(), rs.auth(num=2), None).token
    swarming.start(running)
    d.cancel(quest(), pending)
    d.cancel(quest(), running)
    cancels = [(p, b) for m, p, b in swarming.requests if p.endswith("/cancel")]
    assert cancels == [
        (f"{sw.API_PATH}task/{pending}/cancel", {"kill_running": True}),
        (f"{sw.API_PATH}task/{running}/cancel", {"kill_running": True}),
    ]
    for token in (pending, running):
        [(topic, data, attrs)] = [x for x in swarming.published if token in x[1].decode()]
        assert topic == "projects/demo/topics/dm-distributor-notify" and attrs["auth_token"]
        got = d.handle_notification(quest(), dist.Notification(EID, data, {}))
        assert got is not None and got.abnormal_finish.status == Abnormal.CANCELLED
    assert d.handle_notification(quest(), dist.Notification(EID, b"not json")) is None
    assert d.info_url(pending) == f"{swarming.url}/user/task/{pending}"


def test_validate_reproduces_dms_checks(tmp_path: pathlib.Path, swarming: FakeSwarming) -> None:
    d = make(tmp_path, swarming)
    d.validate(json.dumps(params()))

    def bad(message: str, **over: Any) -> None:
        with pytest.raises(ValueError, match=message):
            d.validate(json.dumps(params(**over)))

    bad("scheduling.priority: at most 255", scheduling={"priority": 256})
    bad("empty dimension key", scheduling={"dimensions": {"": "x"}})
    bad("dimension key 'os' with empty value", scheduling={"dimensions": {"os": ""}})
    bad("negative timeout", scheduling={"io_timeout": "-1s"})
    bad("job.command: command is required", job={"inputs": {"isolated": [{"id": "a"}]}})
    bad("job.inputs: at least one of cipd, isolated and cas", job={"command": ["x"]})
    bad(
        "job.inputs.cipd.server: must be lower-case",
        job={"command": ["x"], "inputs": {"cipd": {"server": "https://CIPD.example.com"}}},
    )
    bad(
        r"job.inputs.cipd.by_path\[p\].pkg\[0\]: missing version",
        job={
            "command": ["x"],
            "inputs": {"cipd": {"server": CIPD, "by_path": {"p": {"pkg": [{"name": "n"}]}}}},
        },
    )
    bad("job.env: environment key is empty", job={**params()["job"], "env": {"": "v"}})
    # Swarming's own limits, refused when the quest is made rather than REJECTED later:
    bad("io_timeout: 0 or within 30s", scheduling={"io_timeout": "10s"})
    bad("job.command: at most 128", job={**params()["job"], "command": ["x"] * 129})
    bad("job.env: key '1A'", job={**params()["job"], "env": {"1A": "v"}})
    bad("job.env: DM_API_URL is dm's", job={**params()["job"], "env": {"DM_API_URL": "x"}})
    bad("job.env: value of K: at most 1024 bytes", job={**params()["job"], "env": {"K": "é" * 513}})
    many = {f"K{i}": "v" for i in range(62)}
    bad("job.env: at most 61 keys", job={**params()["job"], "env": many})
    bad("colour: unknown field", colour="red")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"swarming": {"url": ""}}, "swarming.url: required"),
        ({"swarming": {"url": "https://Swarm.example.com"}}, "swarming.url: must be lower-case"),
        ({"swarming": {"url": "https://swarm.example.com/x"}}, "swarming.url: unsupported url"),
        ({"swarming": {"url": "ftp://swarm.example.com"}}, "swarming.url: unsupported scheme"),
        (
            {"swarming": {"url": "https://s.example.com"}, "default_expiration": "691200s"},
            "default_expiration: must be within 30s..7 days",
        ),
    ],
)
def test_malformed_configs_are_refused(
    tmp_path: pathlib.Path, cfg: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"remote.swarming_v1: {message}"):
        rs.build(tmp_path, "remote", {"remote": {"swarming_v1": cfg}})


# -- end to end: dm serve + the fake bot + the Pub/Sub emulator ----------------------------------


@pytest.mark.emulator
def test_end_to_end_swarming_publishes_the_end_to_dm_through_pubsub(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, pubsub_emulator: str
) -> None:
    from dmcore.notify import pubsub
    from dmcore.runtime import backend as backends
    from dmcore.runtime.serve import LocalServer
    from tests.test_functions_support import clean_env
    from tests.test_http_distributor import submit_and_wait

    clean_env(monkeypatch)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    project = f"dm-swarming-{time.time_ns()}"
    topic = pubsub.topic_path(project, "dm-distributor-notify")
    monkeypatch.setenv("DM_NOTIFY_TOPIC", topic)
    publisher = pubsub.PubSubPublisher(topic)
    port = rs.free_port()
    base = f"http://127.0.0.1:{port}"

    def publish(t: str, data: bytes, attrs: dict[str, str]) -> None:
        assert t == topic
        publisher.publish(data, attrs)

    with FakeSwarming(publish, run_commands=True) as fake:
        configs = {
            "distributor_configs": {
                "swarming": {
                    "swarming_v1": {
                        "swarming": {"url": fake.url},
                        "isolate": {"expiration": "86400s"},
                        "dm_api_url": base,
                    }
                }
            }
        }
        pubsub.ensure_topic(topic)
        pubsub.ensure_push_subscription(
            pubsub.subscription_path(project, "dm-notify-push"), topic, base + "/dm_notify/"
        )
        srv = LocalServer(
            port, tmp_path / "home", config=configs, sweep_every_s=0.5, out=lambda s: None
        ).start()
        try:
            stack = {"server": srv, "backend": backends.get(), "tmp": tmp_path}
            example = rs.REPO / "examples" / "swarming_v1" / "job.py"
            q = {
                "distributor_config_name": "swarming",
                "parameters": {"name": "bot"},
                "distributor_parameters": {
                    "scheduling": {"dimensions": {"pool": "local"}},
                    "job": {
                        "inputs": {"cas": {"instance": "projects/p/instances/i", "digest": "h/1"}},
                        "command": [sys.executable, str(example)],
                        "env": {"POOL": "local"},
                    },
                },
                "meta": {"timeouts": {"start": "600s", "run": "600s", "stop": "60s"}},
            }
            att = submit_and_wait(stack, q)
        finally:
            srv.close()
            publisher.close()
            from dmcore import logs

            logs.unconfigure()
        outputs = [t.output for t in fake.tasks.values()]
        assert json.loads(att.data.finished.data.object) == {
            "greeting": "hello, bot",
            "pool": "local",
        }, outputs
        [ex] = att.executions.values()
        assert json.loads(ex.data.finished.data.object)["exit_code"] == "0"
        assert len(fake.published) == 1  # the end reached dm through Pub/Sub
