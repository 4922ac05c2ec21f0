"""What the remote distributors (``http``, ``cloud_run_jobs``) share: URL checks,
dm's address for the job, and where a job reports how it ended."""

from __future__ import annotations

import datetime
import time
import urllib.parse

from dmcore import distributor as dist
from dmcore import remote
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2

REPORT_GRACE = datetime.timedelta(seconds=45)
"""A run that ended this long ago without its job's report ended without one."""


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
