"""The swarming_v1 distributor's :class:`~dmcore.distributor.D` (see the package docstring)."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import re
import threading
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

from google.auth import exceptions as auth_exc
from google.protobuf import json_format

from distributors import gapi, params, shared
from distributors.swarming_v1 import config_pb2
from dmcore import distributor as dist
from dmcore import job as dmjob
from dmcore import remote
from dmcore.errors import DMError
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2

log = logging.getLogger("dm.distributors.swarming_v1")

KIND = "swarming_v1"
API_PATH = "/_ah/api/swarming/v1/"
DEFAULT_PRIORITY = 100
DEFAULT_EXPIRATION = datetime.timedelta(hours=1)
RPC_TIMEOUT_S = 10.0
RPC_ATTEMPTS = 3
POLL_INTERVAL = datetime.timedelta(seconds=60)
"""dm also asks Swarming now and then, in case its Pub/Sub message is lost."""

# What Swarming's tasks/new accepts (luci-py task_request.py; the same in luci-go's
# swarming/server/rpcs/tasks_new_task.go): a task outside these is refused (HTTP 400).
MIN_TIMEOUT = datetime.timedelta(seconds=30)
"""Shortest expiration, execution timeout and (non-zero) I/O timeout."""
MAX_EXPIRATION = datetime.timedelta(days=7)
MAX_GRACE = datetime.timedelta(hours=1)
MAX_TIMEOUT = datetime.timedelta(days=7) - MAX_GRACE - datetime.timedelta(seconds=60)
"""Longest execution and I/O timeout."""
ENV_VALUE_LIMIT = 1024
"""Bytes of one env value; larger quest parameters are read through dm's API."""
MAX_ENV_VARS = 64
MAX_COMMAND_ARGS = 128
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DM_ENV = (dmjob.ENV_API_URL, dmjob.ENV_QUEST, dmjob.ENV_PARAMS)
"""What dm puts in a task's env besides the quest's own."""
SCOPES = ("https://www.googleapis.com/auth/userinfo.email",)
"""Swarming authenticates OAuth access tokens with the email scope."""
ISOLATE_NAMESPACE = "default-gzip"

Abnormal = dm_pb2.AbnormalFinish
Parameters = config_pb2.Parameters

BAD_STATES = {
    "BOT_DIED": Abnormal.CRASHED,
    "CANCELED": Abnormal.CANCELLED,
    # Not in DM's table (it never cancelled): a running task cancelled with
    # kill_running ends KILLED, which is what cancel() asks for.
    "KILLED": Abnormal.CANCELLED,
    "EXPIRED": Abnormal.EXPIRED,
    "TIMED_OUT": Abnormal.TIMED_OUT,
    # Not in DM's table (Swarming added it later): refused at once because no bot has
    # the dimensions. Before, such a task stayed PENDING until it EXPIRED, as DM saw it.
    "NO_RESOURCE": Abnormal.EXPIRED,
}


class SwarmingError(ValueError):
    """A final answer from Swarming (a bad request, a permission error)."""


# -- checks, as DM's normalize.go ---------------------------------------------------------------


def check_host_url(field: str, url: str) -> None:
    """scheme://host, lower-case, nothing else (DM's schemaHostURLValidate)."""
    if not url:
        raise ValueError(f"{field}: required")
    if url != url.lower():
        raise ValueError(f"{field}: must be lower-case")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{field}: unsupported scheme: {parts.scheme or '(none)'}")
    if f"{parts.scheme}://{parts.netloc}" != url or not parts.netloc:
        raise ValueError(f"{field}: unsupported url: {url} (want scheme://host)")


def check_config(cfg: config_pb2.Config) -> None:
    check_host_url("swarming.url", cfg.swarming.url)
    if cfg.isolate.url:
        check_host_url("isolate.url", cfg.isolate.url)
    if cfg.isolate.expiration.ToTimedelta() < datetime.timedelta(0):
        raise ValueError("isolate.expiration: must not be negative")
    if cfg.HasField("default_expiration") and not (
        MIN_TIMEOUT <= cfg.default_expiration.ToTimedelta() <= MAX_EXPIRATION
    ):
        raise ValueError("default_expiration: must be within 30s..7 days (Swarming's limits)")
    shared.check_url("dm_api_url", cfg.dm_api_url)


def _check_cipd(spec: config_pb2.CipdSpec, where: str) -> None:
    check_host_url(f"{where}.server", spec.server)
    if spec.HasField("client"):
        _check_package(spec.client, f"{where}.client")
    for path, pkgs in sorted(spec.by_path.items()):
        for i, p in enumerate(pkgs.pkg):
            _check_package(p, f"{where}.by_path[{path}].pkg[{i}]")


def _check_package(p: config_pb2.CipdPackage, where: str) -> None:
    if not p.name:
        raise ValueError(f"{where}: missing name")
    if not p.version:
        raise ValueError(f"{where}: missing version")


def parse_parameters(text: str) -> Parameters:
    """Strict parse + DM's checks; priority 0 becomes the default."""
    p = params.parse(text, Parameters())
    s = p.scheduling
    if s.priority > 255:
        raise ValueError("scheduling.priority: at most 255")
    if s.priority == 0:
        s.priority = DEFAULT_PRIORITY
    for k, v in sorted(s.dimensions.items()):
        if not k:
            raise ValueError("scheduling.dimensions: empty dimension key")
        if not v:
            raise ValueError(f"scheduling.dimensions: dimension key {k!r} with empty value")
    io = s.io_timeout.ToTimedelta()
    if io < datetime.timedelta(0):
        raise ValueError("scheduling.io_timeout: negative timeout not allowed")
    if io and not MIN_TIMEOUT <= io <= MAX_TIMEOUT:
        raise ValueError(
            f"scheduling.io_timeout: 0 or within 30s..{MAX_TIMEOUT} (Swarming's limits)"
        )
    inputs = p.job.inputs
    if not inputs.HasField("cipd") and not inputs.isolated and not inputs.HasField("cas"):
        raise ValueError("job.inputs: at least one of cipd, isolated and cas must be specified")
    if inputs.HasField("cipd"):
        _check_cipd(inputs.cipd, "job.inputs.cipd")
    if len(inputs.isolated) > 1:
        raise ValueError("job.inputs.isolated: at most one (Swarming takes one isolated input)")
    for i, ref in enumerate(inputs.isolated):
        if not ref.id:
            raise ValueError(f"job.inputs.isolated[{i}].id: required")
        if ref.server:
            check_host_url(f"job.inputs.isolated[{i}].server", ref.server)
    if inputs.HasField("cas"):
        if not inputs.cas.instance.startswith("projects/") or "/instances/" not in (
            inputs.cas.instance
        ):
            raise ValueError("job.inputs.cas.instance: expected projects/P/instances/I")
        digest_hash, _, size = inputs.cas.digest.partition("/")
        if not digest_hash or not size.isdigit():
            raise ValueError("job.inputs.cas.digest: expected <hash>/<size in bytes>")
    if not p.job.command:
        raise ValueError("job.command: command is required")
    if len(p.job.command) > MAX_COMMAND_ARGS:
        raise ValueError(f"job.command: at most {MAX_COMMAND_ARGS} arguments (Swarming's limit)")
    for k, v in sorted(p.job.env.items()):
        if not k:
            raise ValueError("job.env: environment key is empty")
        if not ENV_KEY.match(k):
            raise ValueError(f"job.env: key {k!r}: letters, digits and _, up to 64")
        if k in DM_ENV:
            raise ValueError(f"job.env: {k} is dm's to set")
        if len(v.encode()) > ENV_VALUE_LIMIT:
            raise ValueError(f"job.env: value of {k}: at most {ENV_VALUE_LIMIT} bytes")
    if len(p.job.env) + len(DM_ENV) > MAX_ENV_VARS:
        raise ValueError(f"job.env: at most {MAX_ENV_VARS - len(DM_ENV)} keys (Swarming's limit)")
    return p


def _secs(d: datetime.timedelta) -> str:
    """Whole seconds, as Swarming's int64 JSON fields are (strings)."""
    return str(int(d.total_seconds()))


def _within(d: datetime.timedelta, low: datetime.timedelta, high: datetime.timedelta) -> str:
    return _secs(min(max(d, low), high))


# -- the HTTP side ---------------------------------------------------------------------------

_tokens: dict[str, remote.TokenSource] = {}
_tokens_lock = threading.Lock()


def access_token_source() -> remote.TokenSource:
    """OAuth access tokens of dm's own identity (Application Default Credentials)."""
    with _tokens_lock:
        got = _tokens.get("adc")
        if got is None:
            import google.auth
            import google.auth.transport.requests

            lock = threading.Lock()
            creds, _ = google.auth.default(scopes=list(SCOPES))

            def token() -> str:
                with lock:
                    if not creds.valid:
                        creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
                    return str(creds.token)

            got = _tokens["adc"] = token
        return got


class SwarmingV1(shared.RemoteDistributor[config_pb2.Config]):
    """Runs executions as Swarming tasks (tokens are Swarming task ids)."""

    config_type = config_pb2.Config

    def __init__(self, cfg: dist.Config) -> None:
        super().__init__(cfg)
        self.base = self.content.swarming.url + API_PATH

    def _caller(self) -> remote.HttpCaller:
        url = self.content.swarming.url
        token = None if url.startswith("http://") else access_token_source()
        return remote.HttpCaller(token, timeout_s=RPC_TIMEOUT_S, retries=RPC_ATTEMPTS)

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None) -> tuple[int, Any]:
        """One API call: (status, parsed JSON). An outage is transient; other non-2xx
        answers but 404 are final."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        try:
            status, _, raw = self._caller().retrying(method, self.base + path, data, headers)
        except DMError as e:  # no answer, 5xx or 429 after the attempts
            raise dist.TransientError(f"swarming {path}: {e.message}") from e
        except auth_exc.GoogleAuthError as e:  # dm's own access token
            raise gapi.classify(e, f"swarming {path}: credentials") from e
        if status == 404:
            return status, None
        if not 200 <= status < 300:
            text = raw[:300].decode(errors="replace").strip()
            raise SwarmingError(f"swarming {path}: HTTP {status}: {text}")
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            raise dist.TransientError(f"swarming {path}: answer is not JSON") from None

    # -- run -----------------------------------------------------------------------------

    def request_uuid(self, eid: ExecutionID) -> str:
        """Deterministic per (config, execution): Swarming dedupes repeated requests."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dm:{self.cfg.name}:{eid}"))

    def new_task_request(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dict[str, Any]:
        """The body of tasks/new for an execution."""
        eid = ExecutionID.from_proto(auth.id)
        p = parse_parameters(desc.distributor_parameters)
        prev: config_pb2.Result | None = None
        if prev_result is not None and prev_result.object:
            prev = config_pb2.Result()
            try:
                json_format.Parse(prev_result.object, prev, ignore_unknown_fields=True)
            except json_format.ParseError as e:
                raise ValueError(f"parsing the previous result: {e}") from None
        topic, auth_token = self.cfg.prepare_topic(eid)
        if not topic.startswith("projects/"):
            raise ValueError(f"{KIND}: dm has no Pub/Sub topic ({topic!r}) for Swarming")
        secret = json_format.MessageToJson(auth, preserving_proto_field_name=True, indent=None)
        dims = dict(p.scheduling.dimensions)
        if prev is not None:
            dims.update(prev.snapshot_dimensions)
        env = dict(p.job.env)
        env[dmjob.ENV_API_URL] = shared.dm_api_url(self.content.dm_api_url, self.cfg)
        env[dmjob.ENV_QUEST] = eid.quest
        if len(desc.parameters.encode()) <= ENV_VALUE_LIMIT:
            env[dmjob.ENV_PARAMS] = desc.parameters  # else the job reads them through the API
        # Swarming's limits, with dm's own timers the stricter: a shorter dm timeout still
        # ends the execution first; no dm run timeout (0) is Swarming's longest.
        timeouts = desc.meta.timeouts
        expiration = timeouts.start.ToTimedelta() or (
            self.content.default_expiration.ToTimedelta() or DEFAULT_EXPIRATION
        )
        run_timeout = timeouts.run.ToTimedelta() or MAX_TIMEOUT
        props: dict[str, Any] = {
            "command": list(p.job.command),
            "dimensions": [{"key": k, "value": v} for k, v in sorted(dims.items())],
            "env": [{"key": k, "value": v} for k, v in sorted(env.items())],
            "execution_timeout_secs": _within(run_timeout, MIN_TIMEOUT, MAX_TIMEOUT),
            "grace_period_secs": _secs(min(timeouts.stop.ToTimedelta(), MAX_GRACE)),
            "io_timeout_secs": _secs(p.scheduling.io_timeout.ToTimedelta()),
            "secret_bytes": base64.b64encode(secret.encode()).decode(),
        }
        cipd = prev.cipd_pins if prev is not None and prev.HasField("cipd_pins") else None
        if cipd is None and p.job.inputs.HasField("cipd"):
            cipd = p.job.inputs.cipd
        if cipd is not None:
            props["cipd_input"] = cipd_input(cipd, p.job.inputs.cipd.server or cipd.server)
        if p.job.inputs.isolated:
            ref = p.job.inputs.isolated[0]
            props["inputs_ref"] = {
                "isolated": ref.id,
                "isolatedserver": ref.server or self.content.isolate.url,
                "namespace": ISOLATE_NAMESPACE,
            }
        if p.job.inputs.HasField("cas"):
            digest_hash, _, size = p.job.inputs.cas.digest.partition("/")
            props["cas_input_root"] = {
                "cas_instance": p.job.inputs.cas.instance,
                "digest": {"hash": digest_hash, "size_bytes": size},
            }
        prefix = p.meta.name_prefix + " / " if p.meta.name_prefix else ""
        host = urllib.parse.urlsplit(self.cfg.dm_host).netloc or self.cfg.dm_host or "dm"
        return {
            "name": f"{prefix}{eid}",
            "priority": str(p.scheduling.priority),
            "expiration_secs": _within(expiration, MIN_TIMEOUT, MAX_EXPIRATION),
            "properties": props,
            "pubsub_topic": topic,
            "pubsub_auth_token": auth_token,
            "pubsub_userdata": str(eid),
            "request_uuid": self.request_uuid(eid),
            "tags": [
                "requestor:DM",
                f"requestor:{host}",
                "requestor:swarming_v1",
                f"quest:{eid.quest}",
                f"attempt:{eid.quest}|{eid.attempt}",
                f"execution:{eid}",
            ],
        }

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        body = self.new_task_request(desc, auth, prev_result)
        status, answer = self._call("POST", "tasks/new", body)
        task_id = (answer or {}).get("task_id") if status != 404 else None
        if not task_id:
            raise SwarmingError(f"swarming tasks/new: no task_id in the answer (HTTP {status})")
        return dist.Started(str(task_id), poll_interval=POLL_INTERVAL)

    # -- the rest of D ------------------------------------------------------------------

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        self._call(
            "POST", f"task/{urllib.parse.quote(token, safe='')}/cancel", {"kill_running": True}
        )

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        status, r = self._call("GET", f"task/{urllib.parse.quote(token, safe='')}/result", None)
        if status == 404:
            return shared.abnormal(Abnormal.MISSING, "swarming: notFound")
        state = str(r.get("state", ""))
        if state in ("PENDING", "RUNNING"):
            return None
        if state == "COMPLETED":
            exit_code = int(r.get("exit_code") or 0)
            if r.get("internal_failure"):
                return shared.abnormal(
                    Abnormal.CRASHED, f"swarming: COMPLETED/InternalFailure({exit_code})"
                )
            return self._completed(desc, r, exit_code)
        if state in BAD_STATES:
            return shared.abnormal(BAD_STATES[state], f"swarming: {state}")
        return shared.abnormal(Abnormal.RESULT_MALFORMED, f"swarming: unknown state {state}")

    def _completed(
        self, desc: dm_pb2.Quest.Desc, r: Mapping[str, Any], exit_code: int
    ) -> dm_pb2.Result:
        out = config_pb2.Result(exit_code=exit_code)
        pins = r.get("cipd_pins")
        if pins:
            out.cipd_pins.CopyFrom(cipd_spec(pins))
        try:
            wanted = list(
                parse_parameters(desc.distributor_parameters).scheduling.snapshot_dimensions
            )
        except ValueError:
            wanted = []
        reported = {
            d["key"]: d["value"][-1] for d in r.get("bot_dimensions") or [] if d.get("value")
        }
        for k in wanted:
            if k in reported:
                out.snapshot_dimensions[k] = reported[k]
        doc = json_format.MessageToDict(out, preserving_proto_field_name=True)
        doc.setdefault("exit_code", "0")  # proto3 leaves a zero out; say it
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
        data = dm_pb2.JsonResult(object=text, size=len(text.encode()))
        if self.content.isolate.HasField("expiration"):
            exp_us = self.clock() + int(
                self.content.isolate.expiration.ToTimedelta().total_seconds() * 1e6
            )
            data.expiration.FromMicroseconds(exp_us)
        return dm_pb2.Result(data=data)

    def info_url(self, token: str) -> str:
        return f"{self.content.swarming.url}/user/task/{urllib.parse.quote(token, safe='')}"

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: dist.Notification
    ) -> dm_pb2.Result | None:
        try:
            task_id = json.loads(notification.data)["task_id"]
        except (ValueError, KeyError, TypeError):
            log.error(
                "swarming notification for %s unreadable: relying on polls and timeouts",
                notification.execution_id,
            )
            return None
        return self.get_status(desc, str(task_id))

    def validate(self, distributor_parameters: str) -> None:
        parse_parameters(distributor_parameters)


def cipd_input(spec: config_pb2.CipdSpec, server: str) -> dict[str, Any]:
    """A CipdSpec as Swarming's CipdInput (packages listed by sorted path)."""
    out: dict[str, Any] = {"server": server}
    if spec.HasField("client"):
        out["client_package"] = {"package_name": spec.client.name, "version": spec.client.version}
    out["packages"] = [
        {"package_name": p.name, "version": p.version, "path": path}
        for path in sorted(spec.by_path)
        for p in spec.by_path[path].pkg
    ]
    return out


def cipd_spec(pins: Mapping[str, Any]) -> config_pb2.CipdSpec:
    """Swarming's CipdPins as a CipdSpec (by path)."""
    spec = config_pb2.CipdSpec()
    client = pins.get("client_package")
    if client:
        spec.client.name = client.get("package_name", "")
        spec.client.version = client.get("version", "")
    for p in pins.get("packages") or []:
        spec.by_path[p.get("path", "")].pkg.add(
            name=p.get("package_name", ""), version=p.get("version", "")
        )
    return spec
