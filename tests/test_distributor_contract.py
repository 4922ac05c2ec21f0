"""The distributor contract (spec §4.1, dmcore/distributor.py): what every D must show.

One suite, run against every distributor dm ships, each built as dm builds it
(entry points, its config checks, dm's store and hooks) on its own back end:
``fake`` and ``jobsim`` in memory / the store, ``local`` with real processes,
``http`` on the fake Cloud Tasks server, ``cloud_run_jobs`` on the fake Cloud
Run server, ``swarming_v1`` on the fake Swarming server (the test doubles of
services that have no emulator).

The rules checked:

* ``run`` is idempotent per execution (the same token again, one task), and
  different executions get different tokens; tokens are short strings.
* A task just started is not done (``get_status`` -> None).
* ``cancel`` is idempotent and ends the task CANCELLED.
* ``info_url`` is computed locally (the same with the back end stopped) and
  shows neither the execution's activation token nor the notification
  ``auth_token`` dm minted for it; nor does the token.
* A token never issued never reads as a normal end, nor as a transient error
  (dm would poll it for ever): MISSING, another abnormal end, None for a
  while, or a final error.
* ``validate`` accepts the distributor's own parameters and refuses what is
  not a JSON object.
* A notification the distributor did not cause is ignored or refused, never
  a normal end nor a transient error.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dmcore import distributor as dist
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from tests import remote_support as rs

SAFETY_S = 60.0


@dataclasses.dataclass
class Bench:
    """One distributor on its back end, and what the suite needs to know of it."""

    d: dist.D
    desc: dm_pb2.Quest.Desc
    bogus_token: str
    count_tasks: Callable[[], int]
    strict_params: bool = True
    """Whether validate refuses parameters that are not a JSON object (fake accepts all)."""
    stop_backend: Callable[[], None] = lambda: None
    """Stops the service the distributor talks to (nothing for the in-process ones)."""
    minted: list[str] = dataclasses.field(default_factory=list)
    """The notification auth_tokens dm handed the distributor."""
    remote: bool = False
    """Runs work away from dm (its task must carry dm's notification token)."""


def _desc(params: dict[str, Any], dist_params: dict[str, Any]) -> dm_pb2.Quest.Desc:
    return rs.desc(params, dist_params, config="c")


@contextlib.contextmanager
def _fake(tmp: pathlib.Path, mp: pytest.MonkeyPatch) -> Iterator[Bench]:
    from distributors.fake import FakeDistributor

    d, _, _ = rs.build(tmp, "c", {"c": {"fake": {}}})
    assert isinstance(d, FakeDistributor)
    yield Bench(
        d,
        _desc({"name": "x"}, {}),
        "fakeDistributor:nope",
        lambda: len(d.world.tasks),
        strict_params=False,
    )


@contextlib.contextmanager
def _jobsim(tmp: pathlib.Path, mp: pytest.MonkeyPatch) -> Iterator[Bench]:
    d, registry, store = rs.build(tmp, "c", {"c": {"jobsim": {"pool": "p"}}})
    queued: list[bytes] = []
    registry.enqueue_task = lambda cfg, body, delay, name: queued.append(body)
    d, _ = registry.build_named("c")
    yield Bench(
        d,
        _desc({"name": "x", "stages": [{"stall": {"delay": "60s"}}]}, {}),
        "p|nope",
        lambda: store.count("jobsim_tasks"),
    )


@contextlib.contextmanager
def _local(tmp: pathlib.Path, mp: pytest.MonkeyPatch) -> Iterator[Bench]:
    if os.name != "posix":
        pytest.skip("the local distributor is POSIX-only")
    d, _, store = rs.build(tmp, "c", {"c": {"local": {}}}, dm_host=f"file://{tmp}")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    yield Bench(
        d,
        _desc({"name": "x"}, {"command": sleeper}),
        "nope.1.1",
        lambda: store.count("local_tasks"),
    )


@contextlib.contextmanager
def _http(tmp: pathlib.Path, mp: pytest.MonkeyPatch) -> Iterator[Bench]:
    from distributors.http import distributor as httpd
    from tests.fake_cloudtasks import FakeCloudTasksServer

    queue = "projects/demo/locations/l/queues/q"
    with FakeCloudTasksServer(clock=lambda: time.time_ns() // 1000) as fake:
        mp.setenv(httpd.EMULATOR_ENV, fake.address)
        cfg = {"url": "http://127.0.0.1:9/", "queue": queue}
        minted: list[str] = []
        d, _, _ = rs.build(tmp, "c", {"c": {"http": cfg}}, minted=minted)
        yield Bench(
            d,
            _desc({"name": "x"}, {}),
            f"{'q' * 43}|1|1 {queue}/tasks/dm-nope",
            lambda: len(fake.tasks(None)),
            stop_backend=fake.stop,
            minted=minted,
            remote=True,
        )


@contextlib.contextmanager
def _cloud_run_jobs(tmp: pathlib.Path, mp: pytest.MonkeyPatch) -> Iterator[Bench]:
    from distributors.cloud_run_jobs import distributor as crj
    from tests.fake_cloudrun import FakeCloudRunServer, FakeJob

    job = "projects/demo/locations/l/jobs/j"
    with FakeCloudRunServer(clock=lambda: time.time_ns() // 1000, jobs=[FakeJob(job)]) as fake:
        mp.setenv(crj.EMULATOR_ENV, fake.address)
        minted: list[str] = []
        d, _, _ = rs.build(tmp, "c", {"c": {"cloud_run_jobs": {"jobs": [job]}}}, minted=minted)
        yield Bench(
            d,
            _desc({"name": "x"}, {}),
            f"{'q' * 43}|1|1 {job}/executions/j-nope",
            lambda: len(fake.runs),
            stop_backend=fake.stop,
            minted=minted,
            remote=True,
        )


@contextlib.contextmanager
def _swarming_v1(tmp: pathlib.Path, mp: pytest.MonkeyPatch) -> Iterator[Bench]:
    from tests.fake_swarming import FakeSwarming

    with FakeSwarming(lambda t, d, a: None) as fake:
        cfg = {"swarming": {"url": fake.url}}
        minted: list[str] = []
        d, _, _ = rs.build(tmp, "c", {"c": {"swarming_v1": cfg}}, minted=minted)
        cas = {"instance": "projects/p/instances/i", "digest": "h/1"}
        params = {
            "scheduling": {"dimensions": {"pool": "p"}},
            "job": {"inputs": {"cas": cas}, "command": ["true"]},
        }
        yield Bench(
            d,
            _desc({"name": "x"}, params),
            "0000000000nope0",
            lambda: len(fake.tasks),
            stop_backend=fake.close,
            minted=minted,
            remote=True,
        )


BENCHES = {
    "fake": _fake,
    "jobsim": _jobsim,
    "local": _local,
    "http": _http,
    "cloud_run_jobs": _cloud_run_jobs,
    "swarming_v1": _swarming_v1,
}


@pytest.fixture(params=sorted(BENCHES))
def bench(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Bench]:
    with BENCHES[request.param](tmp_path, monkeypatch) as b:
        yield b


def test_every_shipped_distributor_is_in_the_suite() -> None:
    registry = dist.Registry()
    registry.load_entry_points()
    assert set(registry.kinds) <= set(BENCHES)


def test_run_is_idempotent_per_execution(bench: Bench) -> None:
    first = bench.d.run(bench.desc, rs.auth(num=1), None)
    again = bench.d.run(bench.desc, rs.auth(num=1), None)
    other = bench.d.run(bench.desc, rs.auth(num=2), None)
    try:
        assert again.token == first.token
        assert other.token != first.token
        assert bench.count_tasks() == 2  # one task per execution, not per call
        for t in (first.token, other.token):
            assert isinstance(t, str) and t and len(t.encode()) <= 1500
    finally:
        for t in (first.token, other.token):
            bench.d.cancel(bench.desc, t)


def test_a_fresh_task_is_not_done_and_cancel_ends_it(bench: Bench) -> None:
    token = bench.d.run(bench.desc, rs.auth(), None).token
    assert bench.d.get_status(bench.desc, token) is None
    bench.d.cancel(bench.desc, token)
    bench.d.cancel(bench.desc, token)  # idempotent
    deadline = time.monotonic() + SAFETY_S
    while (got := bench.d.get_status(bench.desc, token)) is None:
        assert time.monotonic() < deadline, "cancel never ended the task"
        time.sleep(0.05)
    assert got.abnormal_finish.status == dm_pb2.AbnormalFinish.CANCELLED


def test_info_url_is_local_and_shows_no_secret(bench: Bench) -> None:
    auth = rs.auth()
    token = bench.d.run(bench.desc, auth, None).token
    try:
        url = bench.d.info_url(token)
        assert isinstance(url, str)
        secrets = [
            auth.token.decode(),
            auth.token.hex(),
            base64.b64encode(auth.token).decode(),
            base64.urlsafe_b64encode(auth.token).decode(),
            *bench.minted,
        ]
        for secret in secrets:
            assert secret not in url and secret not in token
        assert isinstance(bench.d.info_url("not a token of ours"), str)
        assert bench.minted or not bench.remote  # a remote one was handed a token to check
    finally:
        bench.d.cancel(bench.desc, token)
    bench.stop_backend()
    assert bench.d.info_url(token) == url  # no call to the service


def test_a_token_never_issued_is_no_normal_end_nor_transient(bench: Bench) -> None:
    try:
        got = bench.d.get_status(bench.desc, bench.bogus_token)
    except dist.TransientError:
        pytest.fail("a token never issued must not read as a transient error")
    except Exception:
        return  # final: dm says MISSING once 30 s have passed since run
    assert got is None or got.HasField("abnormal_finish")


def test_validate(bench: Bench) -> None:
    bench.d.validate(bench.desc.distributor_parameters)
    if bench.strict_params:
        with pytest.raises(ValueError):
            bench.d.validate("[]")


def test_a_foreign_notification_is_no_normal_end(bench: Bench) -> None:
    """A message the distributor did not cause (garbage, or for a task it never ran)
    is ignored or refused; never a normal end, nor transient (redelivered for ever)."""
    note = dist.Notification(ExecutionID("q" * 43, 1, 7), b"not a message of ours", {})
    try:
        got = bench.d.handle_notification(bench.desc, note)
    except dist.TransientError:
        pytest.fail("a foreign notification must not read as a transient error")
    except Exception:
        return
    assert got is None or got.HasField("abnormal_finish")
