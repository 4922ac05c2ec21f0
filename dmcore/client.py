"""The client an execution (or a user's program) uses to talk to dm.

:class:`Client` is the dm.Deps API as four calls. :class:`LocalClient` calls
a :class:`~dmcore.service.Service` in the same process (embedded mode,
tests); an HTTP client speaking pRPC to ``dm_api`` implements the same
protocol for code running elsewhere (and retries what is worth retrying);
:class:`RetryingClient` does so for any other client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from dmcore import remote
from dmcore.errors import Unavailable
from dmcore.proto import dm_pb2
from dmcore.service import Caller, Service


class Client(Protocol):
    def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp: ...

    def activate_execution(self, req: dm_pb2.ActivateExecutionReq) -> None: ...

    def finish_attempt(self, req: dm_pb2.FinishAttemptReq) -> None: ...

    def walk_graph(self, req: dm_pb2.WalkGraphReq) -> dm_pb2.GraphData: ...


T = TypeVar("T")


class LocalClient:
    """Calls the service directly, as ``caller``."""

    def __init__(self, service: Service, caller: Caller | None = None) -> None:
        self.service = service
        self.caller = caller or Caller.anonymous()

    def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
        return self.service.ensure_graph_data(req, self.caller)

    def activate_execution(self, req: dm_pb2.ActivateExecutionReq) -> None:
        self.service.activate_execution(req)

    def finish_attempt(self, req: dm_pb2.FinishAttemptReq) -> None:
        self.service.finish_attempt(req)

    def walk_graph(self, req: dm_pb2.WalkGraphReq) -> dm_pb2.GraphData:
        return self.service.walk_graph(req, self.caller)


class RetryingClient:
    """``inner``, each call asked again when dm answers UNAVAILABLE, with the backoff
    and within the time budget a remote job's calls have (``budget_s``, default
    ``DM_API_RETRY_BUDGET_S`` or 60 s, counted from the call's first try; no try
    starts past it: :func:`dmcore.remote.pause_before_retry`), then the last
    Unavailable is raised. ``sleep`` and ``clock`` are injected.

    Safe because dm answers so only when nothing of the call was written (e.g.
    an attempt on the way is recording a declaration in parts), and every call
    a job makes is idempotent. The same budget as a remote job's, because it
    is the same wait: a crashed declaration's claim holds for up to 2 minutes.
    """

    def __init__(
        self,
        inner: Client,
        *,
        budget_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.budget_s = remote.retry_budget_from_env() if budget_s is None else budget_s
        self.sleep = sleep
        self.clock = clock

    def _call(self, fn: Callable[[], T]) -> T:
        start = self.clock()
        tries = 0
        while True:
            tries += 1
            try:
                return fn()
            except Unavailable:
                pause = remote.pause_before_retry(
                    tries, self.clock() - start, budget_s=self.budget_s
                )
                if pause is None:
                    raise
                self.sleep(pause)

    def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
        return self._call(lambda: self.inner.ensure_graph_data(req))

    def activate_execution(self, req: dm_pb2.ActivateExecutionReq) -> None:
        self._call(lambda: self.inner.activate_execution(req))

    def finish_attempt(self, req: dm_pb2.FinishAttemptReq) -> None:
        self._call(lambda: self.inner.finish_attempt(req))

    def walk_graph(self, req: dm_pb2.WalkGraphReq) -> dm_pb2.GraphData:
        return self._call(lambda: self.inner.walk_graph(req))


def serve_in_process(service: Service) -> Service:
    """Let distributors that run jobs in this process (jobsim) reach ``service``.

    Fills the registry's ``client`` hook unless something else did; returns
    ``service``. Whoever builds a Service for a process calls this (the
    embedded and gcp backends, tests), so the service needs no client.
    """
    registry = service.engine.registry
    if registry.client is None:
        registry.client = lambda: LocalClient(service)
    return service
