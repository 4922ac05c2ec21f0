"""The http distributor's :class:`~dmcore.distributor.D` (see the package docstring)."""

from __future__ import annotations

import datetime
import json
import re
import urllib.parse
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2

from distributors import gapi, params, shared
from distributors.http import config_pb2
from dmcore import distributor as dist
from dmcore import remote
from dmcore.errors import DMError
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.store.base import Doc, Transaction

KIND = "http"
COLLECTION = "http_tasks"
"""The distributor's records in dm's store: when a task was first seen gone."""

EMULATOR_ENV = "DM_TASKS_EMULATOR_HOST"
"""``host:port`` of a local Cloud Tasks stand-in (plain gRPC), as dm's own queue uses."""

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_DEADLINE = datetime.timedelta(minutes=10)
MIN_DEADLINE = datetime.timedelta(seconds=15)
MAX_DEADLINE = datetime.timedelta(minutes=30)
MAX_ORDER_BYTES = 90_000
"""Work orders above this leave out parameters and state (the worker reads them via
the API): Cloud Tasks refuses tasks over 100 KB."""

POLL_INTERVAL = datetime.timedelta(seconds=30)
"""How often dm asks whether a running execution's task still exists."""
POLL_TIMEOUT = datetime.timedelta(seconds=60)
"""After the execution stops, how long dm waits for the report before polling."""
REPORT_GRACE = shared.REPORT_GRACE
"""A task gone this long without a report ended without one (see :meth:`HttpDistributor._gone`)."""

CALL: dict[str, Any] = {"retry": None, "timeout": 10.0}
"""Per call: no client-side retries (dm retries transient errors itself, with backoff;
one retry layer keeps a call's cost bounded) and a 10 s deadline."""

_TASK = re.compile(r"^projects/[^/]+/locations/[^/]+/queues/[^/]+/tasks/[^/]+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_QUEUE = re.compile(r"^projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]{1,100}$")

Abnormal = dm_pb2.AbnormalFinish


def deadline_of(cfg: config_pb2.Config) -> datetime.timedelta:
    return cfg.deadline.ToTimedelta() if cfg.HasField("deadline") else DEFAULT_DEADLINE


def check_config(cfg: config_pb2.Config) -> None:
    """What ``dm config validate`` adds to the proto's own checks."""
    shared.check_url("url", cfg.url, required=True)
    for field in ("status_url", "cancel_url", "dm_api_url", "report_url"):
        shared.check_url(field, getattr(cfg, field))
    if not _QUEUE.match(cfg.queue):
        raise ValueError(f"queue: expected projects/P/locations/L/queues/Q, got {cfg.queue!r}")
    if cfg.url.startswith("https://") and not cfg.service_account_email:
        raise ValueError("service_account_email: required for an https url (the OIDC identity)")
    if cfg.service_account_email and not _EMAIL.match(cfg.service_account_email):
        raise ValueError(f"service_account_email: not an email: {cfg.service_account_email!r}")
    if not MIN_DEADLINE <= deadline_of(cfg) <= MAX_DEADLINE:
        raise ValueError("deadline: must be within 15s..30m (Cloud Tasks' dispatch deadline)")
    if cfg.max_attempts > 100:
        raise ValueError("max_attempts: at most 100")


# -- the Cloud Tasks client (one per process and endpoint: channels are costly) -------------


def tasks_client() -> tasks_v2.CloudTasksClient:
    """The Cloud Tasks client (``DM_TASKS_EMULATOR_HOST``: a local stand-in)."""
    return shared.client(
        "cloudtasks",
        EMULATOR_ENV,
        lambda host: tasks_v2.CloudTasksClient(
            transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(host))
        ),
        tasks_v2.CloudTasksClient,
    )


def task_id(config_name: str, eid: ExecutionID) -> str:
    """The Cloud Tasks id of an execution's task (deterministic: ``run`` is idempotent)."""
    return f"dm-{shared.execution_key(config_name, eid)}"


class HttpDistributor(shared.RemoteDistributor[config_pb2.Config]):
    """Runs executions on a worker behind a URL, through Cloud Tasks."""

    config_type = config_pb2.Config
    resource = _TASK

    # -- helpers ----------------------------------------------------------------------------

    def _client(self) -> tasks_v2.CloudTasksClient:
        return tasks_client()

    def _caller(self, url: str) -> remote.HttpCaller:
        """Calls to the worker's status/cancel URLs, with an ID token for its audience."""
        token = remote.default_token_source(url, self.content.audience or self.content.url)
        return remote.HttpCaller(token, timeout_s=30.0, retries=2)

    def order(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> bytes:
        """The task body for an execution (parameters and state left out if too large)."""
        eid = ExecutionID.from_proto(auth.id)
        state = remote.state_of(prev_result)
        order = remote.WorkOrder(
            auth=auth,
            dm_api_url=shared.dm_api_url(self.content.dm_api_url, self.cfg),
            quest_id=eid.quest,
            parameters=desc.parameters,
            distributor_parameters=desc.distributor_parameters or "{}",
            state={} if state is None else state,
            notify=shared.notify_for(self.cfg, eid, self.content.report_url),
            max_attempts=self.content.max_attempts or DEFAULT_MAX_ATTEMPTS,
        )
        body = order.to_bytes()
        if len(body) > MAX_ORDER_BYTES:
            order.parameters = None
            order.state = None
            body = order.to_bytes()
        return body

    # -- D ----------------------------------------------------------------------------------

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        eid = ExecutionID.from_proto(auth.id)
        quest = params.parse(desc.distributor_parameters, config_pb2.Parameters())
        deadline = deadline_of(self.content)
        if quest.HasField("deadline"):
            deadline = min(deadline, quest.deadline.ToTimedelta())
        client = self._client()
        name = f"{self.content.queue}/tasks/{task_id(self.cfg.name, eid)}"
        http = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=self.content.url,
            headers={"Content-Type": "application/json"},
            body=self.order(desc, auth, prev_result),
        )
        if self.content.service_account_email:
            http.oidc_token = tasks_v2.OidcToken(
                service_account_email=self.content.service_account_email,
                audience=self.content.audience or self.content.url,
            )
        task = tasks_v2.Task(
            name=name,
            http_request=http,
            dispatch_deadline=duration_pb2.Duration(seconds=int(deadline.total_seconds())),
        )
        try:
            client.create_task(
                request=tasks_v2.CreateTaskRequest(parent=self.content.queue, task=task),
                **CALL,
            )
        except gexc.AlreadyExists:
            pass  # an earlier run() of this execution created it (or it ran within the hour)
        except Exception as e:
            raise gapi.classify(e, f"creating Cloud Task {name}") from e
        return dist.Started(f"{eid} {name}", POLL_TIMEOUT, POLL_INTERVAL)

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        eid, name = self.split_token(token)
        try:
            self._client().delete_task(name=name, **CALL)
        except gexc.NotFound:
            pass  # ran or deleted already
        except Exception as e:
            raise gapi.classify(e, f"deleting Cloud Task {name}") from e
        self._mark(eid, name, cancelled=True)
        if self.content.cancel_url:
            body = json.dumps({"execution": str(eid)}).encode()
            try:
                status, _, text = self._caller(self.content.cancel_url).retrying(
                    "POST", self.content.cancel_url, body, {"Content-Type": "application/json"}
                )
            except DMError as e:
                raise dist.TransientError(f"cancel_url: {e.message}") from e
            if not 200 <= status < 300 and status != 404:
                raise gapi.GoogleApiError(f"cancel_url answered {status}: {text[:200]!r}")

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        eid, name = self.split_token(token)
        if self.content.status_url:
            got = self._worker_status(eid)
            if got is not None:
                return got
        try:
            self._client().get_task(name=name, **CALL)
        except gexc.NotFound:
            return self._gone(eid, name)
        except Exception as e:
            raise gapi.classify(e, f"reading Cloud Task {name}") from e
        return None  # queued, running, or waiting for a retry

    def _worker_status(self, eid: ExecutionID) -> dm_pb2.Result | None:
        sep = "&" if "?" in self.content.status_url else "?"
        url = f"{self.content.status_url}{sep}{urllib.parse.urlencode({'execution': str(eid)})}"
        try:
            status, _, body = self._caller(url).retrying("GET", url, None, {})
        except DMError as e:
            raise dist.TransientError(f"status_url: {e.message}") from e
        if status == 404:
            return None
        if status != 200:
            raise gapi.GoogleApiError(f"status_url answered {status}: {body[:200]!r}")
        try:
            return shared.result_of(remote.Report.parse(body))
        except ValueError as e:
            return shared.abnormal(Abnormal.RESULT_MALFORMED, f"status_url: {e}")

    def _mark(self, eid: ExecutionID, name: str, *, cancelled: bool = False) -> Doc:
        """The task's record: when it was first seen gone, and whether dm cancelled it."""
        path = f"{COLLECTION}/{name.rsplit('/', 1)[-1]}"
        now_us = self.clock()

        def mark(tx: Transaction) -> Doc:
            doc = tx.get(path)
            if doc is None or (cancelled and not doc.get("cancelled")):
                doc = {**(doc or {"gone_since_us": now_us}), "execution": str(eid)}
                doc["cancelled"] = cancelled or bool(doc.get("cancelled"))
                tx.set(path, doc)
            return doc

        return self.transaction(mark)

    def _gone(self, eid: ExecutionID, name: str) -> dm_pb2.Result | None:
        """The task is gone and no report ended the execution: cancelled by dm, or
        (after a little wait for a report on its way) a normal end without state.

        Cloud Tasks removes a task alike after a 2xx and after its last failed
        delivery, and keeps no answer; what dm does know is whether the job
        stopped. So the end is normal, and dm's rule for a distributor that
        ends an execution which has not stopped (spec §4.6) decides: FINISHED
        when the job did stop (FinishAttempt, or a halt, and its report was
        lost, or a worker that does not report), FAILED when it had not (a
        worker that answered 2xx without finishing, or whose deliveries all
        timed out). ``dmcore.job.worker`` reports the finer ends itself.
        """
        doc = self._mark(eid, name)
        if doc.get("cancelled"):
            return shared.abnormal(Abnormal.CANCELLED, "cancelled (its Cloud Task deleted)")
        waited_us = self.clock() - int(doc["gone_since_us"])
        if waited_us < REPORT_GRACE.total_seconds() * 1_000_000:
            return None
        return shared.result_of(remote.Report(remote.REPORT_STOPPED))

    def info_url(self, token: str) -> str:
        parts = self.resource_name(token).split("/")  # projects/P/locations/L/queues/Q/tasks/T
        if len(parts) < 8:
            return ""
        project, location, queue = parts[1], parts[3], parts[5]
        return (
            f"https://console.cloud.google.com/cloudtasks/queue/{location}/{queue}/tasks"
            f"?project={project}"
        )

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: dist.Notification
    ) -> dm_pb2.Result | None:
        report = shared.report_of(notification)
        return None if report is None else shared.result_of(report)

    def validate(self, distributor_parameters: str) -> None:
        quest = params.parse(distributor_parameters, config_pb2.Parameters())
        if quest.HasField("deadline"):
            d = quest.deadline.ToTimedelta()
            if not MIN_DEADLINE <= d <= MAX_DEADLINE:
                raise ValueError("deadline: must be within 15s..30m")
