"""The local distributor's :class:`~dmcore.distributor.D` (see the package docstring)."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import json_format

from distributors.local import config_pb2, tasks
from distributors.params import parse as parse_fields
from dmcore import distributor as dist
from dmcore import job as dmjob
from dmcore.engine import docs
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.states import ExecutionState
from dmcore.store.base import AlreadyExists, Contention, Doc, Store, Transaction

log = logging.getLogger("dm.distributors.local")

KIND = "local"

START_TIMEOUT_S = 30.0
"""How long ``run`` waits for the supervisor to start the command."""

START_GRACE_US = 60 * 1_000_000
"""A record still "starting" with no live supervisor this long after ``run``
claimed it belongs to a ``run`` that died half-way: CRASHED."""

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[2]
"""Where ``distributors`` lives: the supervisor's working directory, so that
``python -m`` finds this very package (installed or not)."""

FILE_URL = "file://"

ENV_PARAMS_LIMIT = 64 * 1024
"""Quest parameters longer than this (bytes) reach the command in a file
(``DM_QUEST_PARAMETERS_FILE``), not the environment: Linux refuses an
environment string over 128 KiB ("Argument list too long"), all of them
together share the argument space, and dm accepts 256 KiB of parameters."""

Abnormal = dm_pb2.AbnormalFinish
T = TypeVar("T")


def _abnormal(status: Abnormal.Status, reason: str) -> dm_pb2.Result:
    return dm_pb2.Result(abnormal_finish=Abnormal(status=status, reason=reason))


def _now_us() -> int:
    return time.time_ns() // 1000


def _transaction(store: Store, fn: Callable[[Transaction], T]) -> T:
    """``store.transaction``, with lost races reported as transient (dm retries)."""
    try:
        return store.transaction(fn)
    except Contention as e:
        raise dist.TransientError(f"store busy: {e}") from e


# -- parameters --------------------------------------------------------------------


def parse_parameters(text: str) -> config_pb2.Parameters:
    """Strictly parse a quest's distributor parameters; ValueError names the field."""
    params = parse_fields(text, config_pb2.Parameters())
    if not params.command:
        raise ValueError("command: required")
    if not params.command[0]:
        raise ValueError("command[0]: must not be empty")
    for i, arg in enumerate(params.command):
        if "\0" in arg:
            raise ValueError(f"command[{i}]: must not contain NUL")
    for k, v in sorted(params.env.items()):
        if not k:
            raise ValueError("env: empty key")
        if "=" in k:
            raise ValueError(f'env: key {k!r} contains "="')
        if "\0" in k or "\0" in v:
            raise ValueError(f"env[{k!r}]: must not contain NUL")
    if "\0" in params.cwd:
        raise ValueError("cwd: must not contain NUL")
    if params.timeout.seconds < 0 or params.timeout.nanos < 0:
        raise ValueError("timeout: must not be negative")
    return params


def previous_state(prev: dm_pb2.JsonResult | None) -> str:
    """The state to start from: ``state`` of the previous execution's result, or ``{}``."""
    if prev is None or not prev.object:
        return "{}"
    try:
        obj = json.loads(prev.object)
    except ValueError:
        return "{}"
    if isinstance(obj, dict) and "state" in obj:
        return json.dumps(obj["state"])
    return "{}"


# -- the distributor ------------------------------------------------------------------


POLL_INTERVAL = datetime.timedelta(seconds=30)
"""How often dm asks how a running command is doing (in case its supervisor died)."""


class LocalDistributor(dist.D):
    """Runs a quest's command as a local subprocess under a supervisor."""

    def __init__(self, cfg: dist.Config) -> None:
        if not isinstance(cfg.content, config_pb2.Config):
            raise TypeError(f"local: config must be {config_pb2.Config.DESCRIPTOR.full_name}")
        self.cfg = cfg
        self.content = cfg.content

    # -- where things are (no I/O) --------------------------------------------------

    def home(self) -> pathlib.Path:
        """The embedded dm's home, from ``dm_host`` (``file://<absolute home>``)."""
        host = self.cfg.dm_host
        if not host.startswith(FILE_URL) or not host[len(FILE_URL) :].startswith("/"):
            raise ValueError(
                f"the local distributor needs an embedded dm (dm_host file:///<home>), got {host!r}"
            )
        return pathlib.Path(host[len(FILE_URL) :])

    def log_dir(self) -> pathlib.Path:
        d = pathlib.Path(self.content.log_dir or "logs")
        return d if d.is_absolute() else self.home() / d

    def files(self, token: str) -> tasks.Files:
        return tasks.Files.of(self.log_dir(), token)

    def max_jobs(self) -> int:
        """How many commands run at once (``max_jobs``; 0: the CPU count)."""
        return self.content.max_jobs or os.cpu_count() or 1

    def slot_dir(self) -> pathlib.Path:
        """Where the supervisors' slot locks are (one file per command running at once)."""
        return self.log_dir() / "slots"

    # -- D -------------------------------------------------------------------------

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        eid = ExecutionID.from_proto(auth.id)
        token = tasks.task_id(eid.quest, eid.attempt, eid.num)
        path = tasks.task_path(token)
        store = self.cfg.store()
        if store.get(path) is not None:
            return dist.Started(token, poll_interval=POLL_INTERVAL)
        params = parse_parameters(desc.distributor_parameters)
        home = self.home()
        cwd = pathlib.Path(os.path.abspath(params.cwd or os.getcwd()))
        if not cwd.is_dir():
            raise ValueError(f"cwd: {cwd} is not a directory")
        files = self.files(token)
        topic, auth_token = self.cfg.prepare_topic(eid)
        files.log.parent.mkdir(parents=True, exist_ok=True)
        self.slot_dir().mkdir(parents=True, exist_ok=True)
        timeout_s = params.timeout.ToTimedelta().total_seconds()
        doc: Doc = {
            "status": tasks.STARTING,
            "execution": str(eid),
            "config_name": self.cfg.name,
            "home": str(home),
            "command": list(params.command),
            "cwd": str(cwd),
            "timeout_s": timeout_s,
            "log": str(files.log),
            "state_file": str(files.state),
            "lock": str(files.lock),
            "topic": topic,
            "auth_token": auth_token,
            "pid": None,
            "command_pid": None,
            "created_us": _now_us(),
            "started_us": None,
            "ended_us": None,
            "exit_code": None,
            "signal": None,
            "state": None,
            "state_error": "",
        }
        if not self._claim(store, path, doc):
            return dist.Started(
                token, poll_interval=POLL_INTERVAL
            )  # another run() of this execution got there first
        env = dict(os.environ)
        env.pop(dmjob.ENV_HOST, None)
        env.pop(dmjob.ENV_PARAMS_FILE, None)
        env.pop(dmjob.ENV_API_URL, None)  # the job talks to this dm, embedded, not a remote one
        env.update(params.env)
        env.update(
            {
                dmjob.ENV_AUTH: json_format.MessageToJson(auth, indent=None),
                dmjob.ENV_HOME: str(home),
                dmjob.ENV_STATE: str(files.state),
                dmjob.ENV_QUEST: eid.quest,
                dmjob.ENV_WORKDIR: os.getcwd(),
            }
        )
        if len(desc.parameters.encode()) <= ENV_PARAMS_LIMIT:
            env[dmjob.ENV_PARAMS] = desc.parameters
        else:
            # Too large for one environment variable (Linux: 128 KiB each): a file.
            env.pop(dmjob.ENV_PARAMS, None)
            files.parameters.write_text(desc.parameters, encoding="utf-8")
            env[dmjob.ENV_PARAMS_FILE] = str(files.parameters)
        spec = {
            "argv": list(params.command),
            "env": env,
            "cwd": str(cwd),
            "timeout_s": timeout_s,
            "log": str(files.log),
            "state": str(files.state),
            "lock": str(files.lock),
            "slots": self.max_jobs(),
            "slot_dir": str(self.slot_dir()),
        }
        try:
            files.state.write_text(previous_state(prev_result))
            pid, command_pid = self._start(token, home, files, spec)
        except BaseException:
            # Let a retry of run() start afresh.
            _transaction(store, lambda tx: tx.delete(path))
            raise

        def started(tx: Transaction) -> None:
            cur = tx.get(path)
            if cur is None:
                return
            if cur["status"] == tasks.STARTING:
                cur["status"] = tasks.RUNNING
            cur.update(pid=pid, command_pid=command_pid, started_us=_now_us())
            tx.set(path, cur)

        _transaction(store, started)
        return dist.Started(token, poll_interval=POLL_INTERVAL)

    @staticmethod
    def _claim(store: Store, path: str, doc: Doc) -> bool:
        def claim(tx: Transaction) -> bool:
            if tx.get(path) is not None:
                return False
            tx.create(path, doc)
            return True

        try:
            return _transaction(store, claim)
        except AlreadyExists:
            return False

    @staticmethod
    def _start(
        token: str, home: pathlib.Path, files: tasks.Files, spec: dict[str, Any]
    ) -> tuple[int, int | None]:
        """Start the supervisor and wait until it has started the command or queued it:
        (its pid, the command's pid or None while queued)."""
        log_fd = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "distributors.local.supervise", token, str(home)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fd,  # the supervisor's own errors land in the task's log
                cwd=PACKAGE_ROOT,
                start_new_session=True,
            )
        except OSError as e:
            raise dist.TransientError(f"cannot start the supervisor: {e}") from e
        finally:
            os.close(log_fd)
        try:
            # EOF comes once the supervisor has answered: it then puts its log
            # over its stdout, and the first process has long exited.
            out, _ = proc.communicate(json.dumps(spec).encode(), timeout=START_TIMEOUT_S)
        except BaseException as e:
            # The supervisor is still in the session (and group) of the first process.
            tasks.signal_group(proc.pid, signal.SIGKILL)
            proc.communicate()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            raise dist.TransientError(
                f"the supervisor did not start the command within {START_TIMEOUT_S:g}s "
                f"(see {files.log})"
            ) from None
        answer = _answer(out, files.log)
        if "error" in answer:
            if answer.get("transient"):
                raise dist.TransientError(str(answer["error"]))
            raise ValueError(str(answer["error"]))
        command_pid = answer.get("command_pid")
        return int(answer["pid"]), None if command_pid is None else int(command_pid)

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        path = tasks.task_path(token)

        def mark(tx: Transaction) -> Doc | None:
            doc = tx.get(path)
            if doc is not None and doc["status"] in tasks.LIVE:
                doc["status"] = tasks.CANCELLED
                doc["cancelled_us"] = _now_us()
                tx.set(path, doc)
            return doc

        doc = _transaction(self.cfg.store(), mark)
        if doc is None:
            log.warning("cancel: unknown local task %s (nothing to stop)", token)
            return
        if doc["status"] != tasks.CANCELLED:
            return  # it had ended already
        # Only signal pids while the supervisor holds its lock: after that
        # they may belong to someone else.
        if not tasks.supervisor_alive(pathlib.Path(doc["lock"])):
            return
        if doc.get("pid"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(doc["pid"]), signal.SIGTERM)  # it stops the command's group too
        if doc.get("command_pid"):
            tasks.stop_group(int(doc["command_pid"]))

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        store = self.cfg.store()
        path = tasks.task_path(token)
        doc = store.get(path)
        if doc is None:
            return _abnormal(Abnormal.MISSING, f"unknown local task {token}")
        if doc["status"] in tasks.LIVE:
            if tasks.supervisor_alive(pathlib.Path(doc["lock"])):
                return None
            # Dead now: anything it recorded before dying is there by now.
            doc = store.get(path) or doc
        return _unreported(store, doc) or _result(doc)

    def info_url(self, token: str) -> str:
        try:
            return self.files(token).log.as_uri()
        except ValueError:
            return ""

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: dist.Notification
    ) -> dm_pb2.Result | None:
        eid = notification.execution_id
        token = tasks.task_id(eid.quest, eid.attempt, eid.num)
        named = notification.attrs.get("task")
        if named and named != token:
            log.warning("notification for %s names task %r: ignored", eid, named)
            return None
        return self.get_status(desc, token)

    def handle_task_queue_task(self, request: dist.TaskRequest) -> list[dist.Notification]:
        return []

    def validate(self, distributor_parameters: str) -> None:
        parse_parameters(distributor_parameters)


def _answer(out: bytes, log_path: pathlib.Path) -> dict[str, Any]:
    """The supervisor's one-line JSON answer."""
    line = out.partition(b"\n")[0]
    if not line:
        raise dist.TransientError(
            f"the supervisor exited before starting the command (see {log_path})"
        )
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise dist.TransientError(f"the supervisor answered {line!r} (see {log_path})")
    return answer


NO_RESULT = "the command exited 0 without reporting a result (call Job.finish)"


def _unreported(store: Store, doc: Doc) -> dm_pb2.Result | None:
    """FAILED in plain words when the command exited 0 but never told dm its result.

    dm itself would say "distributor finished execution while it was in the
    RUNNING state": true, and of no help to whoever wrote the script.
    """
    if doc["status"] != tasks.EXITED or doc.get("exit_code") != 0:
        return None
    ex = docs.read_execution(store, ExecutionID.parse(str(doc["execution"])))
    if ex is None or ex["state"] not in (ExecutionState.SCHEDULING, ExecutionState.RUNNING):
        return None
    if ex["state"] == ExecutionState.SCHEDULING:
        return _abnormal(Abnormal.FAILED, NO_RESULT.replace("(call", "(it never used Job: call"))
    return _abnormal(Abnormal.FAILED, NO_RESULT)


def _result(doc: Doc) -> dm_pb2.Result | None:
    """What a task record means to dm."""
    status = doc["status"]
    if status in tasks.LIVE:
        if status == tasks.STARTING and _now_us() - int(doc["created_us"]) < START_GRACE_US:
            return None  # run() may still be starting it
        return _abnormal(Abnormal.CRASHED, f"supervisor died (log: {doc['log']})")
    if status == tasks.EXITED:
        code = int(doc["exit_code"])
        if code != 0:
            return _abnormal(Abnormal.FAILED, f"exit code {code}")
        if doc.get("state_error"):
            return _abnormal(Abnormal.RESULT_MALFORMED, str(doc["state_error"]))
        text = f'{{"exit_code":0,"state":{doc["state"]}}}'
        return dm_pb2.Result(data=dm_pb2.JsonResult(object=text, size=len(text.encode())))
    if status == tasks.KILLED:
        sig = int(doc["signal"])
        return _abnormal(Abnormal.CRASHED, f"killed by signal {sig} ({tasks.signal_name(sig)})")
    if status == tasks.TIMED_OUT:
        return _abnormal(Abnormal.TIMED_OUT, f"timed out after {doc['timeout_s']:g}s (killed)")
    if status == tasks.CANCELLED:
        return _abnormal(Abnormal.CANCELLED, "cancelled")
    raise ValueError(f"local task in an unknown status {status!r}")
