"""TEST DOUBLE: a fake Cloud Run Admin API v2 gRPC server (``FakeCloudRunServer``).

No Cloud Run emulator exists, so the ``cloud_run_jobs`` distributor is tested
through the official ``google-cloud-run`` client against this fake, served
with grpcio's generic handlers and the client's own request/response types
(as ``tests/fake_cloudtasks.py`` does for Cloud Tasks). It implements what
the distributor uses:

* ``Jobs.RunJob``: a new execution ``<job>/executions/<job id>-<n>`` whose
  template is the job's with the overrides applied (env merged by name, args
  replaced, task count, timeout), answered as a long-running operation whose
  metadata is the Execution (as Cloud Run answers). A missing job is
  ``NOT_FOUND``; an override naming no container of the job, or an env value
  over 32768 bytes (Cloud Run's limit, ``EnvVar.value``), ``INVALID_ARGUMENT``.
  That a listed execution's template shows the env overrides (which dm's
  adoption of a lost execution reads) is this fake's assumption of Cloud
  Run: its API says the template is the one the execution's tasks run.
* ``Executions.GetExecution``, ``ListExecutions`` (newest first, paged),
  ``CancelExecution`` (the execution ends CANCELLED; an ended one answers
  ``FAILED_PRECONDITION``).
* Ending an execution: :meth:`complete` (a test decides), or, for a job
  registered with a ``command``, the fake runs it as a local process with
  the template's env and args (a Cloud Run task run on this machine): exit 0
  -> succeeded, else failed with ``NON_ZERO_EXIT_CODE``. Conditions and counts
  as Cloud Run reports them: a ``Completed`` condition, PENDING while running.
* :meth:`delete_job` removes a job and its executions (later calls: NOT_FOUND);
  :meth:`fail_next` makes the next calls of a method fail with a gRPC code,
  before or after they take effect (a lost answer).

Time comes from the injected ``clock`` (microseconds since the epoch).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
from google.cloud import run_v2
from google.longrunning import operations_pb2  # type: ignore[import-untyped]
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2

JOBS = "google.cloud.run.v2.Jobs"
ENV_VALUE_MAX = 32768
EXECUTIONS = "google.cloud.run.v2.Executions"

Clock = Callable[[], int]
Condition = run_v2.Condition


@dataclasses.dataclass
class FakeJob:
    name: str
    container: str = "main"
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    args: list[str] = dataclasses.field(default_factory=list)
    command: list[str] | None = None
    """Run this locally for each execution (None: a test completes executions)."""
    task_count: int = 1
    timeout_s: int = 600


class _Abort(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _ts(us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)


class FakeCloudRunServer:
    """TEST DOUBLE of Cloud Run's Jobs and Executions services on 127.0.0.1."""

    def __init__(self, *, clock: Clock, jobs: Sequence[FakeJob] = ()) -> None:
        self.clock = clock
        self.jobs: dict[str, FakeJob] = {j.name: j for j in jobs}
        self.executions: dict[str, run_v2.Execution] = {}
        self.runs: list[run_v2.RunJobRequest] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, str] = {}
        """Output of the executions the fake ran as local processes."""
        self.port = 0
        self._counter = 0
        self._faults: dict[str, list[tuple[str, str, bool]]] = {}
        self._lock = threading.RLock()
        self._server: Any = None
        self._channels: list[Any] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeCloudRunServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers(self._handlers())
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        with self._lock:
            procs = list(self.processes.values())
        for p in procs:
            if p.poll() is None:
                p.kill()
        for ch in self._channels:
            ch.close()
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> FakeCloudRunServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -------------------------------------------------------------------

    def fail_next(
        self, method: str, code: str, times: int = 1, message: str = "injected", after: bool = False
    ) -> None:
        """The next ``times`` calls of ``method`` fail with ``code``; with ``after``, once
        the call has taken effect (its answer is lost, as on a timeout)."""
        with self._lock:
            self._faults.setdefault(method, []).extend([(code, message, after)] * times)

    def complete(
        self,
        name: str,
        outcome: str = "succeeded",
        message: str = "",
        reason: Any = Condition.ExecutionReason.EXECUTION_REASON_UNDEFINED,
    ) -> None:
        """End execution ``name``: "succeeded" or "failed" (with ``reason``)."""
        with self._lock:
            ex = self.executions[name]
            self._end(ex, outcome == "succeeded", message, reason)

    def delete_job(self, job: str) -> None:
        """The job and its executions vanish (a person deleted the job mid-run)."""
        with self._lock:
            self.jobs.pop(job, None)
            for name in [n for n in self.executions if n.startswith(job + "/")]:
                del self.executions[name]

    def execution(self, name: str) -> run_v2.Execution:
        with self._lock:
            return run_v2.Execution(self.executions[name])

    # -- internals -----------------------------------------------------------------------

    def _end(
        self,
        ex: run_v2.Execution,
        ok: bool,
        message: str,
        reason: Any = Condition.ExecutionReason.EXECUTION_REASON_UNDEFINED,
    ) -> None:
        cond: Any = ex.conditions[0]
        if cond.state != Condition.State.CONDITION_PENDING:
            return
        cond.state = Condition.State.CONDITION_SUCCEEDED if ok else Condition.State.CONDITION_FAILED
        cond.message = message or ("Execution completed successfully." if ok else "failed")
        cond.execution_reason = reason
        ex.running_count = 0
        if ok:
            ex.succeeded_count = ex.task_count
        elif reason == Condition.ExecutionReason.CANCELLED:
            ex.cancelled_count = ex.task_count
        else:
            ex.failed_count = ex.task_count
        run_v2.Execution.pb(ex).completion_time.CopyFrom(_ts(self.clock()))

    def _run_process(self, name: str, job: FakeJob, ex: run_v2.Execution) -> None:
        container = ex.template.containers[0]
        env = {**os.environ, **{e.name: e.value for e in container.env}}
        assert job.command is not None
        proc = subprocess.Popen(
            [*job.command, *container.args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        with self._lock:
            self.processes[name] = proc

        def wait() -> None:
            out, _ = proc.communicate()
            with self._lock:
                self.logs[name] = out.decode(errors="replace")
                if name in self.executions:
                    code = proc.returncode
                    self._end(
                        ex,
                        code == 0,
                        "" if code == 0 else f"Task exited with code {code}",
                        Condition.ExecutionReason.EXECUTION_REASON_UNDEFINED
                        if code == 0
                        else Condition.ExecutionReason.NON_ZERO_EXIT_CODE,
                    )

        threading.Thread(target=wait, daemon=True).start()

    def _run_job(self, req: run_v2.RunJobRequest) -> operations_pb2.Operation:
        job = self.jobs.get(req.name)
        if job is None:
            raise _Abort("NOT_FOUND", f"Resource '{req.name}' was not found")
        env = dict(job.env)
        args = list(job.args)
        ov = req.overrides
        for co in ov.container_overrides:
            if co.name and co.name != job.container:
                raise _Abort("INVALID_ARGUMENT", f"no container named {co.name!r}")
            for e in co.env:
                if len(e.value.encode()) > ENV_VALUE_MAX:
                    raise _Abort("INVALID_ARGUMENT", f"env {e.name}: value over 32768 bytes")
            env.update({e.name: e.value for e in co.env})
            if co.args or co.clear_args:
                args = list(co.args)
        self._counter += 1
        short = req.name.rsplit("/", 1)[-1]
        name = f"{req.name}/executions/{short}-{self._counter:05d}"
        task_count = ov.task_count or job.task_count
        timeout = (
            run_v2.RunJobRequest.Overrides.pb(ov).timeout
            if "timeout" in ov
            else duration_pb2.Duration(seconds=job.timeout_s)
        )
        template = run_v2.TaskTemplate(
            containers=[
                run_v2.Container(
                    name=job.container,
                    image="fake",
                    args=args,
                    env=[run_v2.EnvVar(name=k, value=v) for k, v in env.items()],
                )
            ],
            timeout=timeout,
        )
        ex = run_v2.Execution(
            name=name,
            uid=f"uid-{self._counter}",
            job=short,
            task_count=task_count,
            parallelism=task_count,
            template=template,
            running_count=task_count,
            conditions=[
                run_v2.Condition(type_="Completed", state=Condition.State.CONDITION_PENDING)
            ],
        )
        run_v2.Execution.pb(ex).create_time.CopyFrom(_ts(self.clock()))
        self.executions[name] = ex
        self.runs.append(req)
        if job.command is not None:
            self._run_process(name, job, ex)
        return self._operation(name, ex)

    @staticmethod
    def _operation(name: str, ex: run_v2.Execution) -> operations_pb2.Operation:
        meta = any_pb2.Any()
        meta.Pack(run_v2.Execution.pb(ex))
        return operations_pb2.Operation(name=f"{name}/operations/1", done=False, metadata=meta)

    def _get(self, name: str) -> run_v2.Execution:
        ex = self.executions.get(name)
        if ex is None:
            raise _Abort("NOT_FOUND", f"Resource '{name}' was not found")
        return ex

    def _list(self, req: run_v2.ListExecutionsRequest) -> run_v2.ListExecutionsResponse:
        if req.parent not in self.jobs:
            raise _Abort("NOT_FOUND", f"Resource '{req.parent}' was not found")
        mine = sorted(
            (e for n, e in self.executions.items() if n.startswith(req.parent + "/")),
            key=lambda e: e.name,
            reverse=True,
        )
        start = int(req.page_token or "0")
        size = req.page_size or 100
        page = mine[start : start + size]
        nxt = str(start + size) if start + size < len(mine) else ""
        return run_v2.ListExecutionsResponse(executions=page, next_page_token=nxt)

    def _cancel(self, req: run_v2.CancelExecutionRequest) -> operations_pb2.Operation:
        ex = self._get(req.name)
        if ex.conditions[0].state != Condition.State.CONDITION_PENDING:
            raise _Abort("FAILED_PRECONDITION", "execution has already completed")
        proc = self.processes.get(req.name)
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._end(ex, False, "cancelled", Condition.ExecutionReason.CANCELLED)
        return self._operation(req.name, ex)

    def _handlers(self) -> tuple[Any, ...]:
        def unary(name: str, fn: Callable[[Any], Any], req_cls: Any, resp_ser: Any) -> Any:
            def handle(request: Any, context: Any) -> Any:
                try:
                    with self._lock:
                        faults = self._faults.get(name)
                        if faults:
                            code, message, after = faults.pop(0)
                            if after:
                                fn(request)
                            raise _Abort(code, message)
                        return fn(request)
                except _Abort as e:
                    context.abort(getattr(grpc.StatusCode, e.code), e.message)

            return grpc.unary_unary_rpc_method_handler(
                handle, request_deserializer=req_cls.deserialize, response_serializer=resp_ser
            )

        op_ser = operations_pb2.Operation.SerializeToString
        return (
            grpc.method_handlers_generic_handler(
                JOBS, {"RunJob": unary("RunJob", self._run_job, run_v2.RunJobRequest, op_ser)}
            ),
            grpc.method_handlers_generic_handler(
                EXECUTIONS,
                {
                    "GetExecution": unary(
                        "GetExecution",
                        lambda r: self._get(r.name),
                        run_v2.GetExecutionRequest,
                        run_v2.Execution.serialize,
                    ),
                    "ListExecutions": unary(
                        "ListExecutions",
                        self._list,
                        run_v2.ListExecutionsRequest,
                        run_v2.ListExecutionsResponse.serialize,
                    ),
                    "CancelExecution": unary(
                        "CancelExecution", self._cancel, run_v2.CancelExecutionRequest, op_ser
                    ),
                },
            ),
        )
