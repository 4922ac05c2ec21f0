"""The client an execution (or a user's program) uses to talk to dm.

:class:`Client` is the dm.Deps API as four calls. :class:`LocalClient` calls
a :class:`~dmcore.service.Service` in the same process (embedded mode,
tests); an HTTP client speaking pRPC to ``dm_api`` implements the same
protocol for code running elsewhere.
"""

from __future__ import annotations

from typing import Protocol

from dmcore.proto import dm_pb2
from dmcore.service import Caller, Service


class Client(Protocol):
    def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp: ...

    def activate_execution(self, req: dm_pb2.ActivateExecutionReq) -> None: ...

    def finish_attempt(self, req: dm_pb2.FinishAttemptReq) -> None: ...

    def walk_graph(self, req: dm_pb2.WalkGraphReq) -> dm_pb2.GraphData: ...


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
