"""RetryingClient (a job of an embedded dm): a call dm answers UNAVAILABLE is asked
again with backoff, within the same time budget as a remote job's calls
(``DM_API_RETRY_BUDGET_S``, default 60 s); nothing else is asked again. Time is a
fake clock: the client sleeps and reads the clock through it, so nothing waits.
"""

from __future__ import annotations

import pathlib

import pytest

from dmcore import remote
from dmcore.client import LocalClient, RetryingClient
from dmcore.errors import InvalidArgument, Unavailable
from dmcore.job import client_from_env
from dmcore.proto import dm_pb2
from tests.test_remote_budget import FakeClock


class FlakyClient:
    """A test double of a dm client: each call asks ``busy(calls)`` whether to raise
    Unavailable, and may take ``takes_s`` of the fake clock's time."""

    def __init__(
        self,
        fake: FakeClock,
        busy_until_s: float = 0.0,
        *,
        other: Exception | None = None,
        takes_s: float = 0.0,
    ) -> None:
        self.fake = fake
        self.busy_until_s = busy_until_s
        self.other = other
        self.takes_s = takes_s
        self.calls = 0

    def _next(self) -> None:
        self.calls += 1
        self.fake.now += self.takes_s
        if self.other is not None:
            raise self.other
        if self.fake.now < self.busy_until_s:
            raise Unavailable(f"busy (call {self.calls})")

    def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
        self._next()
        return dm_pb2.EnsureGraphDataRsp(accepted=True)

    def activate_execution(self, req: dm_pb2.ActivateExecutionReq) -> None:
        self._next()

    def finish_attempt(self, req: dm_pb2.FinishAttemptReq) -> None:
        self._next()

    def walk_graph(self, req: dm_pb2.WalkGraphReq) -> dm_pb2.GraphData:
        self._next()
        return dm_pb2.GraphData()


def retrying(inner: FlakyClient, budget_s: float | None = None) -> RetryingClient:
    return RetryingClient(inner, budget_s=budget_s, sleep=inner.fake.sleep, clock=inner.fake.clock)


def test_unavailable_is_asked_again_with_backoff() -> None:
    inner = FlakyClient(FakeClock(), busy_until_s=1.0)
    rsp = retrying(inner, 60.0).ensure_graph_data(dm_pb2.EnsureGraphDataReq())
    assert rsp.accepted
    assert inner.calls == 3
    assert inner.fake.slept == [0.5, 1.0]


def test_the_default_budget_rides_out_a_dm_busy_for_most_of_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dm answering UNAVAILABLE for 50 s (a crashed declaration's claim): the budget
    of a remote job's calls waits for it, where the old 5 tries (7.5 s) gave up."""
    monkeypatch.delenv(remote.RETRY_BUDGET_ENV, raising=False)
    inner = FlakyClient(FakeClock(), busy_until_s=50.0)
    retrying(inner).activate_execution(dm_pb2.ActivateExecutionReq())
    assert inner.fake.now == 55.5 and inner.calls == 11
    assert inner.fake.slept == [0.5, 1.0, 2.0, 4.0] + [8.0] * 6


def test_past_the_budget_the_last_unavailable_is_raised() -> None:
    inner = FlakyClient(FakeClock(), busy_until_s=1e9)
    with pytest.raises(Unavailable, match=r"busy \(call 6\)"):
        retrying(inner, 20.0).finish_attempt(dm_pb2.FinishAttemptReq())
    # 0.5 + 1 + 2 + 4 + 8 = 15.5 s; the next 8 s would pass 20 s, so no 7th try.
    assert inner.fake.slept == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert inner.calls == 6


def test_a_calls_own_time_counts_towards_the_budget() -> None:
    """No try starts past the budget, however long the tries took (each 5 s here)."""
    inner = FlakyClient(FakeClock(), busy_until_s=1e9, takes_s=5.0)
    with pytest.raises(Unavailable):
        retrying(inner, 10.0).walk_graph(dm_pb2.WalkGraphReq())
    assert inner.fake.slept == [0.5]  # then at 10.5 s: past the budget
    assert inner.calls == 2


def test_the_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(remote.RETRY_BUDGET_ENV, "2")
    inner = FlakyClient(FakeClock(), busy_until_s=1e9)
    with pytest.raises(Unavailable):
        retrying(inner).walk_graph(dm_pb2.WalkGraphReq())
    assert inner.fake.slept == [0.5, 1.0]  # 3.5 s would pass 2 s


def test_other_errors_are_not_asked_again() -> None:
    inner = FlakyClient(FakeClock(), other=InvalidArgument("bad"))
    with pytest.raises(InvalidArgument):
        retrying(inner, 60.0).activate_execution(dm_pb2.ActivateExecutionReq())
    assert inner.calls == 1
    assert inner.fake.slept == []


def test_a_job_of_an_embedded_dm_retries_within_the_budget_its_environment_sets(
    tmp_path: pathlib.Path,
) -> None:
    home = str(tmp_path / "home")
    client = client_from_env({"DM_HOME": home})
    assert isinstance(client, RetryingClient) and isinstance(client.inner, LocalClient)
    assert client.budget_s == remote.DEFAULT_RETRY_BUDGET_S
    client = client_from_env({"DM_HOME": home, remote.RETRY_BUDGET_ENV: "90"})
    assert isinstance(client, RetryingClient) and client.budget_s == 90.0


def test_a_remote_job_takes_the_budget_from_its_environment_too() -> None:
    client = client_from_env({"DM_API_URL": "http://127.0.0.1:9", remote.RETRY_BUDGET_ENV: "7"})
    assert isinstance(client, remote.RemoteClient) and client.caller.budget_s == 7.0


@pytest.mark.parametrize("url", ["", "http://127.0.0.1:9"])
def test_a_bad_budget_is_refused_naming_the_variable(tmp_path: pathlib.Path, url: str) -> None:
    env = {"DM_HOME": str(tmp_path / "home"), "DM_API_URL": url, remote.RETRY_BUDGET_ENV: "-1"}
    with pytest.raises(InvalidArgument, match="DM_API_RETRY_BUDGET_S: expected seconds > 0"):
        client_from_env(env)
