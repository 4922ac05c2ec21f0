"""RetryingClient: a call dm answers UNAVAILABLE is asked again, with backoff; nothing else is."""

from __future__ import annotations

import pathlib

import pytest

from dmcore.client import RetryingClient
from dmcore.errors import InvalidArgument, Unavailable
from dmcore.job import client_from_env
from dmcore.proto import dm_pb2


class FlakyClient:
    """A test double of a dm client: raises ``errors`` in turn, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def _next(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

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


def test_unavailable_is_asked_again_with_backoff() -> None:
    inner = FlakyClient(Unavailable("busy"), Unavailable("busy"))
    slept: list[float] = []
    rsp = RetryingClient(inner, sleep=slept.append).ensure_graph_data(dm_pb2.EnsureGraphDataReq())
    assert rsp.accepted
    assert inner.calls == 3
    assert slept == [0.5, 1.0]


def test_after_its_tries_the_last_unavailable_is_raised() -> None:
    inner = FlakyClient(*[Unavailable(f"busy {i}") for i in range(6)])
    slept: list[float] = []
    with pytest.raises(Unavailable, match="busy 3"):
        RetryingClient(inner, tries=4, sleep=slept.append).finish_attempt(dm_pb2.FinishAttemptReq())
    assert inner.calls == 4
    assert slept == [0.5, 1.0, 2.0]


def test_other_errors_are_not_asked_again() -> None:
    inner = FlakyClient(InvalidArgument("bad"))
    slept: list[float] = []
    with pytest.raises(InvalidArgument):
        RetryingClient(inner, sleep=slept.append).activate_execution(dm_pb2.ActivateExecutionReq())
    assert inner.calls == 1
    assert slept == []


def test_a_job_of_an_embedded_dm_retries(tmp_path: pathlib.Path) -> None:
    client = client_from_env({"DM_HOME": str(tmp_path / "home")})
    assert isinstance(client, RetryingClient)
