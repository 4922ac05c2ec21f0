"""A distributor factory that notes, for each call, whether dm held its store's write lock.

``registry.register(kind, config_type, watched(Factory, calls))`` builds the
real distributor and hands every call on to it; ``calls`` gets
``(method, held)``, ``held`` being whether the calling thread's connection to
the SQLite store was inside a transaction (a batch holds the write lock from
its start). Nothing is faked: the distributor does what it always does.
"""

from __future__ import annotations

from dmcore import distributor as dist
from dmcore.proto import dm_pb2
from dmcore.store.sqlite import SqliteStore


def watched(factory: dist.Factory, calls: list[tuple[str, bool]]) -> dist.Factory:
    """``factory``'s distributors, each call noted in ``calls`` before it is made."""

    def build(cfg: dist.Config) -> dist.D:
        return _Watched(factory(cfg), cfg, calls)

    return build


class _Watched(dist.D):
    def __init__(self, d: dist.D, cfg: dist.Config, calls: list[tuple[str, bool]]) -> None:
        self._d = d
        self._cfg = cfg
        self._calls = calls

    def _note(self, what: str) -> None:
        store = self._cfg.store()
        assert isinstance(store, SqliteStore)
        self._calls.append((what, store.connection().in_transaction))

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        self._note("run")
        return self._d.run(desc, auth, prev_result)

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        self._note("cancel")
        self._d.cancel(desc, token)

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        self._note("get_status")
        return self._d.get_status(desc, token)

    def info_url(self, token: str) -> str:
        return self._d.info_url(token)

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: dist.Notification
    ) -> dm_pb2.Result | None:
        self._note("handle_notification")
        return self._d.handle_notification(desc, notification)

    def handle_task_queue_task(self, request: dist.TaskRequest) -> list[dist.Notification]:
        self._note("handle_task_queue_task")
        return self._d.handle_task_queue_task(request)

    def validate(self, distributor_parameters: str) -> None:
        self._d.validate(distributor_parameters)
