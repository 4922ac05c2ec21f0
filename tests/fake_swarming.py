"""TEST DOUBLE: a fake Swarming server speaking the public v1 API (``FakeSwarming``).

No Swarming emulator exists. This fake serves, on 127.0.0.1, the three calls
dm's ``swarming_v1`` distributor makes, with the field names and JSON shapes
of Swarming's v1 API (``swarming-api.json``: int64 fields are JSON strings):

* ``POST /_ah/api/swarming/v1/tasks/new`` (NewTaskRequest -> TaskRequestMetadata
  ``{task_id, request}``). Checked as Swarming checks (luci-py's
  task_request.py, the v1 server): ``properties.command`` (or
  ``cas_input_root``) present with at most 128 arguments, a ``pool``
  dimension, ``expiration_secs`` within 30 s..7 days, ``execution_timeout_secs``
  within 30 s..7 days - 1 h - 60 s (required), ``grace_period_secs`` at most
  1 h, ``io_timeout_secs`` 0 or like the execution timeout, at most 64 env
  keys (``[A-Za-z_][A-Za-z0-9_]*``, up to 64 long) with values of at most
  1024 bytes, ``secret_bytes`` at most 20 KiB, priority 0..255,
  ``pubsub_auth_token`` only with ``pubsub_topic`` (``projects/P/topics/T``).
  A repeated ``request_uuid`` returns the task it made first (Swarming's
  dedup), without a second task.
* ``GET /_ah/api/swarming/v1/task/{id}/result`` -> TaskResult (``state``,
  ``exit_code``, ``internal_failure``, ``bot_dimensions``, ``cipd_pins``, ...);
  404 for an unknown task.
* ``POST /_ah/api/swarming/v1/task/{id}/cancel`` (``kill_running``) ->
  ``{ok, was_running}``: a pending task becomes CANCELED, a running one KILLED
  with ``kill_running`` (else not ok).

Bots are the test's: :meth:`start` and :meth:`finish` move a task; or, with
``run_commands``, the fake runs each task's command as a local process (a bot
on this machine) with the task's env and a ``LUCI_CONTEXT`` file holding its
``secret_bytes``, as a Swarming bot does. When a task ends the fake publishes
``{"task_id", "userdata"}`` with attribute ``auth_token`` to the task's
``pubsub_topic`` (the Pub/Sub emulator in tests), as Swarming does.
:meth:`fail_next` makes the next requests answer an HTTP status (an outage, a
permission error).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import Any

from tests.http_sink import HttpSink, Seen

PREFIX = "/_ah/api/swarming/v1/"
MIN_TIMEOUT_S = 30
MAX_EXPIRATION_S = 7 * 24 * 3600
MAX_GRACE_S = 3600
MAX_TIMEOUT_S = 7 * 24 * 3600 - MAX_GRACE_S - 60
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Publish = Callable[[str, bytes, dict[str, str]], None]


@dataclasses.dataclass
class FakeTask:
    task_id: str
    request: dict[str, Any]
    state: str = "PENDING"
    exit_code: int | None = None
    internal_failure: bool = False
    bot_dimensions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cipd_pins: dict[str, Any] | None = None
    output: str = ""

    def result(self) -> dict[str, Any]:
        r: dict[str, Any] = {
            "task_id": self.task_id,
            "name": self.request.get("name", ""),
            "state": self.state,
            "tags": self.request.get("tags", []),
            "failure": bool(self.exit_code),
            "internal_failure": self.internal_failure,
        }
        if self.exit_code is not None:
            r["exit_code"] = str(self.exit_code)
        if self.bot_dimensions:
            r["bot_dimensions"] = self.bot_dimensions
        if self.cipd_pins is not None:
            r["cipd_pins"] = self.cipd_pins
        return r


class FakeSwarming:
    """TEST DOUBLE of a Swarming server's v1 API (see the module docstring)."""

    def __init__(self, publish: Publish | None = None, *, run_commands: bool = False) -> None:
        self.publish = publish
        self.run_commands = run_commands
        self.tasks: dict[str, FakeTask] = {}
        self.requests: list[tuple[str, str, Any]] = []
        """(method, path, JSON body) of every request, in order."""
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self._by_uuid: dict[str, str] = {}
        self._faults: list[int] = []
        self._lock = threading.RLock()
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-swarming-")
        self._sink = HttpSink(self._answer)

    @property
    def url(self) -> str:
        return self._sink.url

    def close(self) -> None:
        self._sink.close()
        self._tmp.cleanup()

    def _answer(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        status, body = self._handle(seen.method, seen.path, seen.body)
        return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def __enter__(self) -> FakeSwarming:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- test controls ------------------------------------------------------------------

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._faults.extend([status] * times)

    def start(self, task_id: str, bot_dimensions: dict[str, list[str]] | None = None) -> None:
        with self._lock:
            t = self.tasks[task_id]
            t.state = "RUNNING"
            t.bot_dimensions = [
                {"key": k, "value": v} for k, v in sorted((bot_dimensions or {}).items())
            ]

    def finish(
        self,
        task_id: str,
        state: str = "COMPLETED",
        exit_code: int = 0,
        *,
        internal_failure: bool = False,
        cipd_pins: dict[str, Any] | None = None,
    ) -> None:
        """End a task and publish its notification (if it asked for one)."""
        with self._lock:
            t = self.tasks[task_id]
            t.state = state
            t.exit_code = exit_code if state == "COMPLETED" else None
            t.internal_failure = internal_failure
            t.cipd_pins = cipd_pins
        self._notify(t)

    # -- the API ------------------------------------------------------------------------

    def _handle(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append((method, path, body))
            if self._faults:
                status = self._faults.pop(0)
                return status, {"error": {"code": status, "message": "injected"}}
        if not path.startswith(PREFIX):
            return 404, _error(404, "not found")
        route = path[len(PREFIX) :].split("/")
        if method == "POST" and route == ["tasks", "new"]:
            return self._new(body or {})
        if len(route) == 3 and route[0] == "task":
            with self._lock:
                t = self.tasks.get(route[1])
            if t is None:
                return 404, _error(404, f"Task {route[1]} not found.")
            if method == "GET" and route[2] == "result":
                with self._lock:
                    return 200, t.result()
            if method == "POST" and route[2] == "cancel":
                return self._cancel(t, bool((body or {}).get("kill_running")))
        return 404, _error(404, "no such method")

    def _new(self, req: dict[str, Any]) -> tuple[int, Any]:
        refused = _refusal(req)
        if refused:
            return 400, _error(400, refused)
        if not 0 <= int(req.get("priority") or 0) <= 255:
            return 400, _error(400, "priority: out of range")
        topic = req.get("pubsub_topic") or ""
        if req.get("pubsub_auth_token") and not topic:
            return 400, _error(400, "pubsub_auth_token requires pubsub_topic")
        if topic and not (topic.startswith("projects/") and "/topics/" in topic):
            return 400, _error(400, f"pubsub_topic: bad topic {topic!r}")
        with self._lock:
            known = self._by_uuid.get(req.get("request_uuid") or "")
            if known is not None:
                t = self.tasks[known]
                return 200, {"task_id": t.task_id, "request": t.request}
            task_id = uuid.uuid4().hex[:15] + "0"
            t = self.tasks[task_id] = FakeTask(task_id, req)
            if req.get("request_uuid"):
                self._by_uuid[req["request_uuid"]] = task_id
        if self.run_commands:
            threading.Thread(target=self._bot, args=(t,), daemon=True).start()
        return 200, {"task_id": task_id, "request": req}

    def _cancel(self, t: FakeTask, kill_running: bool) -> tuple[int, Any]:
        with self._lock:
            if t.state == "PENDING":
                t.state = "CANCELED"
            elif t.state == "RUNNING" and kill_running:
                t.state = "KILLED"
            else:
                return 200, {"ok": False, "was_running": t.state == "RUNNING"}
            was_running = t.state == "KILLED"
        self._notify(t)
        return 200, {"ok": True, "was_running": was_running}

    def _notify(self, t: FakeTask) -> None:
        topic = t.request.get("pubsub_topic")
        if not topic or self.publish is None:
            return
        data = json.dumps({"task_id": t.task_id, "userdata": t.request.get("pubsub_userdata", "")})
        attrs = {"auth_token": t.request.get("pubsub_auth_token", "")}
        self.published.append((topic, data.encode(), attrs))
        self.publish(topic, data.encode(), attrs)

    def _bot(self, t: FakeTask) -> None:
        """Run the task's command here, as a bot would (LUCI_CONTEXT carries secret_bytes)."""
        props = t.request["properties"]
        ctx = pathlib.Path(self._tmp.name) / f"{t.task_id}.luci_context.json"
        ctx.write_text(json.dumps({"swarming": {"secret_bytes": props.get("secret_bytes", "")}}))
        env = {**os.environ, **{e["key"]: e["value"] for e in props.get("env") or []}}
        env["LUCI_CONTEXT"] = str(ctx)
        dims = {d["key"]: [d["value"]] for d in props.get("dimensions") or []}
        self.start(t.task_id, {**dims, "id": ["fake-bot-1"]})
        proc = subprocess.run(props["command"], env=env, capture_output=True, check=False)
        t.output = (proc.stdout + proc.stderr).decode(errors="replace")
        self.finish(t.task_id, "COMPLETED", proc.returncode)


def _refusal(req: dict[str, Any]) -> str:
    """Why Swarming would refuse this NewTaskRequest ("" if it would take it)."""
    props = req.get("properties") or {}
    if not props.get("command") and not props.get("cas_input_root"):
        return "properties.command: required"
    if len(props.get("command") or []) > 128:
        return "command can have up to 128 arguments"
    dims = {d.get("key"): d.get("value") for d in props.get("dimensions") or []}
    if not dims.get("pool"):
        return "pool is required"

    def secs(obj: dict[str, Any], key: str) -> int:
        return int(obj.get(key) or 0)

    if not MIN_TIMEOUT_S <= secs(req, "expiration_secs") <= MAX_EXPIRATION_S:
        return f"expiration_secs ({secs(req, 'expiration_secs')}) must be between 30s and 7 days"
    hard = secs(props, "execution_timeout_secs")
    if not MIN_TIMEOUT_S <= hard <= MAX_TIMEOUT_S:
        return f"execution_timeout_secs ({hard}s) must be between 30s and {MAX_TIMEOUT_S}s"
    if not 0 <= secs(props, "grace_period_secs") <= MAX_GRACE_S:
        return "grace_period_secs must be between 0s and 3600s"
    io = secs(props, "io_timeout_secs")
    if io and not MIN_TIMEOUT_S <= io <= MAX_TIMEOUT_S:
        return f"io_timeout_secs ({io}s) must be 0 or between 30s and {MAX_TIMEOUT_S}s"
    env = props.get("env") or []
    if len(env) > 64:
        return "env can have up to 64 keys"
    for e in env:
        if not ENV_KEY.match(e.get("key", "")) or len(e["key"]) > 64:
            return f"key in env is invalid: {e.get('key')!r}"
        if len(e.get("value", "").encode()) > 1024:
            return f"env: key {e['key']!r} has too long value"
    if len(base64.b64decode(props.get("secret_bytes") or "")) > 20 * 1024:
        return "secret_bytes: too long"
    if len(req.get("pubsub_userdata") or "") > 1024:
        return "pubsub_userdata: too long"
    return ""


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def secret_auth(task: FakeTask) -> dict[str, Any]:
    """The Execution.Auth (protobuf JSON) a task carries in its secret_bytes."""
    raw = base64.b64decode(task.request["properties"]["secret_bytes"])
    out: dict[str, Any] = json.loads(raw)
    return out
