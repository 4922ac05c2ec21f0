"""dmcore.remote's retry budget: how long a call to dm goes on retrying, on a fake clock.

The server is real (a local HTTP server answering from a script); only time is
not: the caller sleeps and reads the clock through the fake, so nothing waits.
"""

from __future__ import annotations

import dataclasses

import pytest

from dmcore import remote
from dmcore.errors import (
    Code,
    DMError,
    Internal,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)
from dmcore.proto import dm_pb2
from tests.http_sink import Answer, HttpSink, Seen

UNAVAILABLE: Answer = (503, {remote.GRPC_CODE_HEADER: str(int(Code.UNAVAILABLE))}, b"busy")
OK: Answer = (200, {remote.GRPC_CODE_HEADER: "0"}, b"")


@dataclasses.dataclass
class FakeClock:
    now: float = 0.0
    slept: list[float] = dataclasses.field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _client(
    server: HttpSink, fake: FakeClock, budget_s: float | None = None
) -> remote.RemoteClient:
    caller = remote.HttpCaller(None, budget_s=budget_s, sleep=fake.sleep, clock=fake.clock)
    return remote.RemoteClient(server.url, caller)


def test_a_busy_dm_is_retried_for_the_budget_then_unavailable() -> None:
    fake = FakeClock()
    with HttpSink(lambda seen: UNAVAILABLE) as server:
        client = _client(server, fake, budget_s=20.0)
        with pytest.raises(Unavailable, match=r"after 6 attempts in 15\.5 s"):
            client.activate_execution(dm_pb2.ActivateExecutionReq())
    # 0.5 + 1 + 2 + 4 + 8 = 15.5 s; the next 8 s would pass 20 s, so no 7th try.
    assert fake.slept == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(server.seen) == 6


def test_the_default_budget_rides_out_a_dm_busy_for_most_of_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dm answering UNAVAILABLE for about 50 s (another call's claim): the default
    budget waits for it where the old one (5 tries, 7.5 s) gave up."""
    monkeypatch.delenv(remote.RETRY_BUDGET_ENV, raising=False)
    fake = FakeClock()

    def answer(seen: Seen) -> Answer:
        return UNAVAILABLE if fake.now < 50 else OK

    with HttpSink(answer) as server:
        _client(server, fake).activate_execution(dm_pb2.ActivateExecutionReq())
    assert fake.now == 55.5 and len(server.seen) == 11
    assert sum(fake.slept) <= remote.DEFAULT_RETRY_BUDGET_S


def test_a_tries_own_time_counts_towards_the_budget() -> None:
    """No try starts past the budget, however long the tries took (each 5 s here)."""
    fake = FakeClock()

    def slow(seen: Seen) -> Answer:
        fake.now += 5.0
        return UNAVAILABLE

    with HttpSink(slow) as server:
        client = _client(server, fake, budget_s=10.0)
        with pytest.raises(Unavailable, match="after 2 attempts"):
            client.walk_graph(dm_pb2.WalkGraphReq())
    assert fake.slept == [0.5]  # then at 10.5 s: past the budget


def test_the_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(remote.RETRY_BUDGET_ENV, "2")
    fake = FakeClock()
    with HttpSink(lambda seen: UNAVAILABLE) as server:
        client = remote.RemoteClient(
            server.url, remote.HttpCaller(None, sleep=fake.sleep, clock=fake.clock)
        )
        with pytest.raises(Unavailable):
            client.finish_attempt(dm_pb2.FinishAttemptReq())
    assert fake.slept == [0.5, 1.0]
    # A count of tries given (a distributor's own calls) is how often, not how long.
    assert remote.HttpCaller(None, retries=2).budget_s is None


@pytest.mark.parametrize("text", ["soon", "0", "-3", "nan", "inf"])
def test_a_bad_budget_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(InvalidArgument, match=f"DM_API_RETRY_BUDGET_S: .*got '{text}'"):
        remote.retry_budget_from_env({remote.RETRY_BUDGET_ENV: text})
    assert remote.retry_budget_from_env({}) == remote.DEFAULT_RETRY_BUDGET_S
    assert remote.retry_budget_from_env({remote.RETRY_BUDGET_ENV: " 90 "}) == 90.0


def test_other_dm_errors_are_not_retried() -> None:
    fake = FakeClock()
    refused: Answer = (403, {remote.GRPC_CODE_HEADER: str(int(Code.PERMISSION_DENIED))}, b"no")
    with HttpSink(lambda seen: refused) as server, pytest.raises(PermissionDenied, match="no"):
        _client(server, fake, budget_s=60.0).activate_execution(dm_pb2.ActivateExecutionReq())
    assert fake.slept == [] and len(server.seen) == 1


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (501, Code.UNIMPLEMENTED, Unimplemented),
        (500, Code.INTERNAL, Internal),
        (413, Code.RESOURCE_EXHAUSTED, DMError),
        (429, Code.RESOURCE_EXHAUSTED, DMError),
    ],
)
def test_dms_own_5xx_and_429_codes_are_raised_at_once(
    status: int, code: Code, error: type[DMError]
) -> None:
    """Only UNAVAILABLE is worth a retry when dm's pRPC code says what went wrong: a dm
    older than the job answers UNIMPLEMENTED for the whole budget."""
    fake = FakeClock()
    answer: Answer = (status, {remote.GRPC_CODE_HEADER: str(int(code))}, b"why")
    with HttpSink(lambda seen: answer) as server, pytest.raises(error, match="why") as raised:
        _client(server, fake, budget_s=60.0).activate_execution(dm_pb2.ActivateExecutionReq())
    assert raised.value.code == code
    assert fake.slept == [] and len(server.seen) == 1


def test_a_front_ends_5xx_without_a_prpc_code_is_retried() -> None:
    """A 502 from a load balancer (no pRPC code) may pass: asked again, then dm answers."""
    fake = FakeClock()
    answers: list[Answer] = [(502, {}, b"bad gateway"), (429, {}, b"slow down"), OK]
    with HttpSink(lambda seen: answers.pop(0)) as server:
        _client(server, fake, budget_s=60.0).activate_execution(dm_pb2.ActivateExecutionReq())
    assert fake.slept == [0.5, 1.0] and len(server.seen) == 3


@pytest.mark.parametrize(
    ("answer", "unanswered"),
    [
        (UNAVAILABLE, False),  # dm's own word: nothing was done
        ((502, {}, b"bad gateway"), True),  # a front end's: dm may have done it
        ((429, {}, b"slow down"), True),
    ],
)
def test_only_dms_own_unavailable_says_nothing_was_done(answer: Answer, unanswered: bool) -> None:
    fake = FakeClock()
    with HttpSink(lambda seen: answer) as server, pytest.raises(Unavailable) as raised:
        _client(server, fake, budget_s=1.0).finish_attempt(dm_pb2.FinishAttemptReq())
    assert isinstance(raised.value, remote.Unanswered) == unanswered


def test_no_answer_at_all_is_unanswered() -> None:
    fake = FakeClock()
    with HttpSink() as server:
        url = server.url
    caller = remote.HttpCaller(None, budget_s=1.0, sleep=fake.sleep, clock=fake.clock)
    with pytest.raises(remote.Unanswered, match="no answer from"):
        remote.RemoteClient(url, caller).finish_attempt(dm_pb2.FinishAttemptReq())


@pytest.mark.parametrize("first", [(504, {}, b"gateway timeout"), (429, {}, b"slow down")])
def test_a_try_unanswered_before_dms_own_unavailable_stays_unanswered(first: Answer) -> None:
    """A first try lost on the way (a front end's 504: dm may have done the call),
    the later ones told UNAVAILABLE by dm itself until the budget runs out: the
    call is still in doubt (Unanswered), not "nothing was done" — a job's last
    delivery must not report CRASHED over a finish dm may have recorded."""
    fake = FakeClock()
    answers: list[Answer] = [first]
    with HttpSink(lambda seen: answers.pop(0) if answers else UNAVAILABLE) as server:
        with pytest.raises(Unavailable) as raised:
            _client(server, fake, budget_s=4.0).finish_attempt(dm_pb2.FinishAttemptReq())
        assert len(server.seen) > 1
    assert isinstance(raised.value, remote.Unanswered)
