"""What the remote distributors (``http``, ``cloud_run_jobs``) share: URL checks,
dm's address for the job, and where a job reports how it ended."""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

from google.protobuf import message

from dmcore import distributor as dist
from dmcore import remote
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.store.base import Contention, Transaction

log = logging.getLogger("dm.distributors")

C = TypeVar("C", bound=message.Message)
T = TypeVar("T")

REPORT_GRACE = datetime.timedelta(seconds=45)
"""A run that ended this long ago without its job's report ended without one."""


_clients: dict[tuple[str, str], object] = {}
_clients_lock = threading.Lock()


def client(kind: str, emulator_env: str, local: Callable[[str], T], cloud: Callable[[], T]) -> T:
    """The process's client of ``kind`` (gRPC channels are costly: one per endpoint):
    ``local(host)`` when ``emulator_env`` names a local stand-in (plain gRPC, no
    credentials), else ``cloud()`` (Application Default Credentials)."""
    host = os.environ.get(emulator_env, "").strip()
    with _clients_lock:
        got = _clients.get((kind, host))
        if got is None:
            got = _clients[(kind, host)] = local(host) if host else cloud()
        return got  # type: ignore[return-value]


def execution_key(config_name: str, eid: ExecutionID) -> str:
    """A stable name for an execution under a config (hex): task ids, record keys."""
    return hashlib.sha256(f"{config_name}\0{eid}".encode()).hexdigest()


def now_us() -> int:
    return time.time_ns() // 1000


def loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def check_url(field: str, url: str, *, required: bool = False) -> None:
    """An http(s) URL without credentials; plain http only on the loopback."""
    if not url:
        if required:
            raise ValueError(f"{field}: required")
        return
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{field}: must be an http(s) URL, got {url!r}")
    if parts.scheme == "http" and not loopback(url):
        raise ValueError(f"{field}: plain http only on the loopback (use https): {url!r}")
    if parts.username or parts.password:
        raise ValueError(f"{field}: must not carry credentials")


def dm_api_url(configured: str, cfg: dist.Config) -> str:
    """The dm_api URL a job calls: the config's, else dm's own (DM_HOST)."""
    url = configured or cfg.dm_host
    if not url.startswith(("http://", "https://")):
        raise ValueError(
            f"{cfg.kind}: the job needs dm_api's URL: set dm_api_url in the config "
            f"(dm's own address is {cfg.dm_host!r})"
        )
    return url


def notify_for(cfg: dist.Config, eid: ExecutionID, report_url: str) -> remote.Notify:
    """Where the job of ``eid`` reports: ``report_url``, else dm's Pub/Sub topic."""
    topic, auth_token = cfg.prepare_topic(eid)
    if report_url:
        return remote.Notify(auth_token, url=report_url)
    if not topic.startswith("projects/"):
        raise ValueError(
            f"{cfg.kind}: dm has no Pub/Sub topic ({topic!r}) for the job's reports: "
            "set report_url in the config"
        )
    return remote.Notify(auth_token, topic=topic)


def report_of(notification: dist.Notification) -> remote.Report | None:
    """The job's report a notification carries (None, logged, if it is none)."""
    try:
        return remote.Report.parse(notification.data)
    except ValueError:
        log.warning("notification for %s is no job report: ignored", notification.execution_id)
        return None


def abnormal(status: dm_pb2.AbnormalFinish.Status, reason: str) -> dm_pb2.Result:
    return dm_pb2.Result(abnormal_finish=dm_pb2.AbnormalFinish(status=status, reason=reason))


def result_of(report: remote.Report) -> dm_pb2.Result:
    """A job's report as the execution's result: ``{"state": ...}`` or abnormal."""
    if report.kind == remote.REPORT_STOPPED:
        state = {} if report.state is None else report.state
        return dm_pb2.Result(data=dist.result_json({"state": state}))
    status = (
        dm_pb2.AbnormalFinish.CRASHED
        if report.kind == remote.REPORT_CRASHED
        else dm_pb2.AbnormalFinish.FAILED
    )
    return abnormal(status, report.reason or report.kind)


class RemoteDistributor(dist.D, Generic[C]):
    """What the remote distributors share: their config message, a clock, their
    records in dm's store, and tokens of the form ``"<execution id> <resource name>"``
    (the execution is needed to find its record; the name, to ask the service)."""

    config_type: ClassVar[type[message.Message]]
    resource: ClassVar[re.Pattern[str]]
    """What the resource name in a token must look like."""

    clock = staticmethod(now_us)
    """Now, in microseconds since the epoch (tests replace it)."""

    def __init__(self, cfg: dist.Config) -> None:
        if not isinstance(cfg.content, self.config_type):
            raise TypeError(f"{cfg.kind}: config must be {self.config_type.DESCRIPTOR.full_name}")
        self.cfg = cfg
        self.content: C = cfg.content  # type: ignore[assignment]

    def split_token(self, token: str) -> tuple[ExecutionID, str]:
        """A token's parts (ValueError if it is not one of ours)."""
        eid, sep, name = token.partition(" ")
        if not sep or not self.resource.match(name):
            raise ValueError(f"not a {self.cfg.kind} token: {token!r}")
        return ExecutionID.parse(eid), name

    def resource_name(self, token: str) -> str:
        """The resource name in a token ("" if it is not one of ours): for info_url."""
        try:
            return self.split_token(token)[1]
        except ValueError:
            return ""

    def handle_task_queue_task(self, request: dist.TaskRequest) -> list[dist.Notification]:
        return []  # it queues no task of its own

    def transaction(self, fn: Callable[[Transaction], T]) -> T:
        """A transaction on dm's store; a lost race is transient (dm retries)."""
        try:
            return self.cfg.store().transaction(fn)
        except Contention as e:
            raise dist.TransientError(f"store busy: {e}") from e
