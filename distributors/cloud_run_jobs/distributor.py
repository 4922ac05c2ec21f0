"""The cloud_run_jobs distributor's :class:`~dmcore.distributor.D` (see the package docstring)."""

from __future__ import annotations

import datetime
import json
import logging
import re
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.cloud.run_v2.services.executions.transports import ExecutionsGrpcTransport
from google.cloud.run_v2.services.jobs.transports import JobsGrpcTransport
from google.protobuf import duration_pb2, json_format

from distributors import gapi, params, shared
from distributors.cloud_run_jobs import config_pb2
from dmcore import distributor as dist
from dmcore import job as dmjob
from dmcore import remote
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.store.base import Doc, Transaction

log = logging.getLogger("dm.distributors.cloud_run_jobs")

KIND = "cloud_run_jobs"
COLLECTION = "cloud_run_jobs_runs"
EMULATOR_ENV = "DM_CLOUD_RUN_EMULATOR_HOST"
"""``host:port`` of a local Cloud Run stand-in (plain gRPC, no credentials)."""
MARKER_ENV = "DM_EXECUTION_ID"
"""Env var naming the dm execution on a Cloud Run execution (how a lost one is found)."""

ENV_VALUE_LIMIT = 32 * 1024
"""Parameters or state over this many bytes are left out of the env (the job reads
them through the API): Cloud Run refuses an env value over 32768 bytes."""
MAX_TASK_COUNT = 10_000
"""Cloud Run's most tasks in one execution."""
DEFAULT_MAX_TIMEOUT = datetime.timedelta(hours=1)
CLOUD_RUN_MAX_TIMEOUT = datetime.timedelta(hours=168)
DEFAULT_POLL_INTERVAL = datetime.timedelta(seconds=30)
CLAIM_GRACE = datetime.timedelta(seconds=60)
"""A claim this young without an execution name belongs to a run() still starting it."""
LIST_LIMIT = 500
"""Executions looked through when adopting a lost one (the newest first)."""
REPORT_GRACE = shared.REPORT_GRACE
CALL: dict[str, Any] = {"retry": None, "timeout": 30.0}
"""Per call: dm retries transient errors itself (one retry layer), 30 s deadline."""

_CONTAINER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A container name: an RFC 1123 DNS label, as Cloud Run wants it."""
_JOB = re.compile(r"^projects/([^/]+)/locations/([^/]+)/jobs/([a-z]([-a-z0-9]{0,61}[a-z0-9])?)$")
_EXECUTION = re.compile(r"^projects/([^/]+)/locations/([^/]+)/jobs/([^/]+)/executions/([^/]+)$")

Abnormal = dm_pb2.AbnormalFinish
Reason = run_v2.Condition.ExecutionReason


def max_timeout_of(cfg: config_pb2.Config) -> datetime.timedelta:
    return cfg.max_timeout.ToTimedelta() if cfg.HasField("max_timeout") else DEFAULT_MAX_TIMEOUT


def check_config(cfg: config_pb2.Config) -> None:
    """What ``dm config validate`` adds to the proto's own checks."""
    if not cfg.jobs:
        raise ValueError("jobs: at least one (projects/P/locations/L/jobs/J)")
    for i, job in enumerate(cfg.jobs):
        if not _JOB.match(job):
            raise ValueError(f"jobs[{i}]: expected projects/P/locations/L/jobs/J, got {job!r}")
        if job in cfg.jobs[:i]:
            raise ValueError(f"jobs[{i}]: {job} is listed twice")
    if cfg.container and not _CONTAINER.match(cfg.container):
        raise ValueError(f"container: not a container name (a DNS label): {cfg.container!r}")
    if cfg.max_task_count > MAX_TASK_COUNT:
        raise ValueError(f"max_task_count: at most {MAX_TASK_COUNT} (Cloud Run's limit)")
    shared.check_url("dm_api_url", cfg.dm_api_url)
    shared.check_url("report_url", cfg.report_url)
    if not datetime.timedelta(0) < max_timeout_of(cfg) <= CLOUD_RUN_MAX_TIMEOUT:
        raise ValueError("max_timeout: must be within 0..168h")
    if cfg.HasField("poll_interval") and cfg.poll_interval.ToTimedelta().total_seconds() < 1:
        raise ValueError("poll_interval: at least 1s")


# -- clients (one per process and endpoint) ----------------------------------------------------

Clients = tuple[run_v2.JobsClient, run_v2.ExecutionsClient]


def _local_clients(host: str) -> Clients:
    channel = grpc.insecure_channel(host)
    return (
        run_v2.JobsClient(transport=JobsGrpcTransport(channel=channel)),
        run_v2.ExecutionsClient(transport=ExecutionsGrpcTransport(channel=channel)),
    )


def clients() -> Clients:
    """Cloud Run's Jobs and Executions clients (``DM_CLOUD_RUN_EMULATOR_HOST``: a stand-in)."""
    return shared.client(
        "cloudrun",
        EMULATOR_ENV,
        _local_clients,
        lambda: (run_v2.JobsClient(), run_v2.ExecutionsClient()),
    )


def record_path(config_name: str, eid: ExecutionID) -> str:
    return f"{COLLECTION}/{shared.execution_key(config_name, eid)}"


class CloudRunJobs(shared.RemoteDistributor[config_pb2.Config]):
    """Runs executions as Cloud Run Job executions."""

    config_type = config_pb2.Config
    resource = _EXECUTION

    # -- parameters ---------------------------------------------------------------------------

    def parameters(self, text: str) -> config_pb2.Parameters:
        """The quest's parameters, checked against the config's limits."""
        p = params.parse(text, config_pb2.Parameters())
        self.job_of(p)
        limit = self.content.max_task_count or 1
        if p.task_count > limit:
            raise ValueError(f"task_count: at most {limit} (the config's max_task_count)")
        if p.HasField("timeout"):
            t = p.timeout.ToTimedelta()
            if not datetime.timedelta(0) < t <= max_timeout_of(self.content):
                raise ValueError(f"timeout: must be within 0..{max_timeout_of(self.content)}")
        for i, arg in enumerate(p.args):
            if "\0" in arg:
                raise ValueError(f"args[{i}]: must not contain NUL")
        return p

    def job_of(self, p: config_pb2.Parameters) -> str:
        if not p.job:
            return str(self.content.jobs[0])
        for job in self.content.jobs:
            if p.job in (job, job.rsplit("/", 1)[-1]):
                return str(job)
        short = ", ".join(j.rsplit("/", 1)[-1] for j in self.content.jobs)
        raise ValueError(f"job: {p.job!r} is not one of the config's jobs ({short})")

    # -- run ----------------------------------------------------------------------------------

    def env(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dict[str, str]:
        """The container env overrides of an execution."""
        eid = ExecutionID.from_proto(auth.id)
        notify = shared.notify_for(self.cfg, eid, self.content.report_url)
        env = {
            dmjob.ENV_API_URL: shared.dm_api_url(self.content.dm_api_url, self.cfg),
            dmjob.ENV_AUTH: json_format.MessageToJson(auth, indent=None),
            dmjob.ENV_QUEST: eid.quest,
            MARKER_ENV: str(eid),
            dmjob.ENV_REPORT_TOKEN: notify.auth_token,
        }
        if notify.url:
            env[dmjob.ENV_REPORT_URL] = notify.url
        else:
            env[dmjob.ENV_REPORT_TOPIC] = notify.topic
        if len(desc.parameters.encode()) <= ENV_VALUE_LIMIT:
            env[dmjob.ENV_PARAMS] = desc.parameters
        state = remote.state_of(prev_result)
        text = json.dumps({} if state is None else state, separators=(",", ":"))
        if len(text.encode()) <= ENV_VALUE_LIMIT:
            env[dmjob.ENV_PREVIOUS_STATE] = text
        return env

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        eid = ExecutionID.from_proto(auth.id)
        p = self.parameters(desc.distributor_parameters)
        job = self.job_of(p)
        env = self.env(desc, auth, prev_result)
        interval = (
            self.content.poll_interval.ToTimedelta()
            if self.content.HasField("poll_interval")
            else DEFAULT_POLL_INTERVAL
        )
        path = record_path(self.cfg.name, eid)
        claim = self._claim(path, eid)
        name = claim.get("name") or ""
        if not name and claim.get("recover"):
            name = self._find(job, eid)
        if not name:
            name = self._start(job, env, p, path)
        self._record(path, name)
        # Once the job stopped (its report is in), Cloud Run still has to see the container
        # exit: dm asks again two intervals later (then every 30 s, 3 times).
        return dist.Started(f"{eid} {name}", poll_timeout=2 * interval, poll_interval=interval)

    def _claim(self, path: str, eid: ExecutionID) -> Doc:
        """The run's record: created (a claim), or found with a name, or to recover."""
        now = self.clock()

        def claim(tx: Transaction) -> Doc:
            doc = tx.get(path)
            if doc is None:
                doc = {"execution": str(eid), "name": "", "claimed_us": now, "state": None}
                tx.set(path, doc)
                return doc
            if doc["name"]:
                return doc
            if now - int(doc["claimed_us"]) < CLAIM_GRACE.total_seconds() * 1e6:
                raise dist.TransientError(f"another run() of {eid} is starting it; try later")
            doc["claimed_us"] = now  # ours now: recover, then start if nothing is found
            tx.set(path, doc)
            return {**doc, "recover": True}

        return self.transaction(claim)

    def _record(self, path: str, name: str) -> None:
        def record(tx: Transaction) -> None:
            doc = tx.get(path)
            if doc is not None and doc["name"] != name:
                doc["name"] = name
                tx.set(path, doc)

        self.transaction(record)

    def _find(self, job: str, eid: ExecutionID) -> str:
        """The Cloud Run execution started for ``eid`` by a run() that died, or ""."""
        _, executions = clients()
        try:
            pager = executions.list_executions(
                request=run_v2.ListExecutionsRequest(parent=job, page_size=100), **CALL
            )
            for i, ex in enumerate(pager):
                if i >= LIST_LIMIT:
                    break
                for c in ex.template.containers:
                    if any(e.name == MARKER_ENV and e.value == str(eid) for e in c.env):
                        log.info("adopting Cloud Run execution %s for %s", ex.name, eid)
                        return str(ex.name)
        except Exception as e:
            raise gapi.classify(e, f"listing the executions of {job}") from e
        return ""

    def _start(self, job: str, env: dict[str, str], p: config_pb2.Parameters, path: str) -> str:
        override = run_v2.RunJobRequest.Overrides.ContainerOverride(
            name=self.content.container,
            env=[run_v2.EnvVar(name=k, value=v) for k, v in sorted(env.items())],
        )
        if p.args:
            override.args = list(p.args)
        overrides = run_v2.RunJobRequest.Overrides(container_overrides=[override])
        if p.task_count:
            overrides.task_count = p.task_count
        if p.HasField("timeout"):
            overrides.timeout = duration_pb2.Duration(seconds=p.timeout.seconds)
        jobs, _ = clients()
        try:
            op = jobs.run_job(request=run_v2.RunJobRequest(name=job, overrides=overrides), **CALL)
            name = str(op.metadata.name)
        except Exception as e:
            if not isinstance(e, gexc.DeadlineExceeded | gexc.ServiceUnavailable):
                # Cloud Run surely started nothing: let the next run() start afresh. (After a
                # lost answer the claim stays, and the next run() looks for the execution.)
                self.transaction(lambda tx: tx.delete(path))
            raise gapi.classify(e, f"running {job}") from e
        if not name:
            raise dist.TransientError(f"running {job}: no execution named in the answer")
        return name

    # -- the rest of D -------------------------------------------------------------------------

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        _, name = self.split_token(token)
        _, executions = clients()
        try:
            executions.cancel_execution(name=name, **CALL)
        except (gexc.NotFound, gexc.FailedPrecondition):
            pass  # gone, or finished already
        except Exception as e:
            raise gapi.classify(e, f"cancelling {name}") from e

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        eid, name = self.split_token(token)
        _, executions = clients()
        try:
            ex = executions.get_execution(name=name, **CALL)
        except gexc.NotFound:
            return shared.abnormal(Abnormal.MISSING, f"Cloud Run execution {name} is gone")
        except Exception as e:
            raise gapi.classify(e, f"reading {name}") from e
        return self._result(eid, ex)

    def _result(self, eid: ExecutionID, ex: run_v2.Execution) -> dm_pb2.Result | None:
        completed = next((c for c in ex.conditions if c.type_ == "Completed"), None)
        if completed is None or completed.state not in (
            run_v2.Condition.State.CONDITION_SUCCEEDED,
            run_v2.Condition.State.CONDITION_FAILED,
        ):
            return None
        short = ex.name.rsplit("/", 1)[-1]
        if completed.state == run_v2.Condition.State.CONDITION_FAILED:
            why = completed.message or "failed"
            reason = completed.execution_reason
            if reason == Reason.CANCELLED:
                return shared.abnormal(Abnormal.CANCELLED, f"{short}: cancelled")
            if reason == Reason.DELETED:
                return shared.abnormal(Abnormal.MISSING, f"{short}: deleted")
            if reason == Reason.NON_ZERO_EXIT_CODE:
                return shared.abnormal(
                    Abnormal.FAILED, f"{short}: {ex.failed_count} task(s) failed: {why}"
                )
            return shared.abnormal(Abnormal.CRASHED, f"{short}: {why}")
        doc = self.cfg.store().get(record_path(self.cfg.name, eid))
        state = None if doc is None else doc.get("state")
        if state is None:
            raw = run_v2.Execution.pb(ex)
            done_us = raw.completion_time.ToMicroseconds() if raw.HasField("completion_time") else 0
            if self.clock() - done_us < REPORT_GRACE.total_seconds() * 1e6:
                return None  # the job's report (its state) may be on its way
        result = {"state": {} if state is None else state, "execution": short}
        result["succeeded_tasks"] = int(ex.succeeded_count)
        return dm_pb2.Result(data=dist.result_json(result))

    def info_url(self, token: str) -> str:
        m = _EXECUTION.match(self.resource_name(token))
        if m is None:
            return ""
        project, location, _, execution = m.groups()
        return (
            f"https://console.cloud.google.com/run/jobs/executions/details/{location}/"
            f"{execution}/tasks?project={project}"
        )

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: dist.Notification
    ) -> dm_pb2.Result | None:
        report = shared.report_of(notification)
        if report is None:
            return None
        eid = notification.execution_id
        if report.kind != remote.REPORT_STOPPED:
            return shared.result_of(report)
        path = record_path(self.cfg.name, eid)

        def keep(tx: Transaction) -> Doc | None:
            doc = tx.get(path)
            if doc is not None:
                doc["state"] = {} if report.state is None else report.state
                tx.set(path, doc)
            return doc

        doc = self.transaction(keep)
        if doc is None or not doc["name"]:
            return None  # not started by us (or not recorded yet): polling decides
        return self.get_status(desc, f"{eid} {doc['name']}")

    def validate(self, distributor_parameters: str) -> None:
        self.parameters(distributor_parameters)
