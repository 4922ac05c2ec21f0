"""What a job started by dm uses to talk to it (local distributor, scripts).

A distributor that runs a program hands it, in environment variables:

``DM_EXECUTION_AUTH``  the execution's ID and activation token (protobuf JSON of Execution.Auth)
``DM_HOME``            the embedded home of the dm that runs it (or ``DM_HOST``: a dm_api URL);
                       its store is the one ``DM_STORE`` names (inherited; dmcore.runtime.backend)
``DM_STATE_FILE``      a JSON file holding the previous execution's state; what the job
                       leaves there becomes this execution's state, handed to the next
                       execution of the attempt (e.g. after a halt for dependencies)
``DM_QUEST_ID``, ``DM_QUEST_PARAMETERS``  the quest and its parameters (a JSON object)
``DM_QUEST_PARAMETERS_FILE``  instead of ``DM_QUEST_PARAMETERS`` when the parameters are
                       too large for the environment: a file holding them
``DM_WORKDIR``         dm's working directory, where quests without a ``cwd`` run
                       (:meth:`Job.depend` fingerprints the files they run from there)

A job that runs away from dm (started by a remote distributor: ``http``,
``cloud_run_jobs``) gets instead of ``DM_HOME`` and ``DM_STATE_FILE``:

``DM_API_URL``         dm_api's base URL: the job calls it over pRPC (:mod:`dmcore.remote`),
                       with a Google ID token when it is https (a private dm_api)
``DM_API_AUDIENCE``    the ID token's audience, if not the URL's origin (a Cloud
                       Function's ``cloudfunctions.net`` URL: the function's URL)
``DM_API_RETRY_BUDGET_S`` how long a call to dm answered UNAVAILABLE is retried
                       (seconds, default 60; set by whoever runs the worker, if at all;
                       a job of an embedded dm reads it too)
``DM_QUEST_PARAMETERS`` / ``DM_QUEST_PARAMETERS_FILE`` as above; with neither, the job
                       reads the parameters through the API
``DM_PREVIOUS_STATE``  the previous execution's state (JSON); absent: read through the API
``DM_REPORT_AUTH_TOKEN`` with ``DM_REPORT_TOPIC`` (Pub/Sub) or ``DM_REPORT_URL`` (push)
                       where the job reports its state when its execution stops
``LUCI_CONTEXT``       a Swarming task's context file: without ``DM_EXECUTION_AUTH`` the
                       auth is its ``swarming.secret_bytes`` (the ``swarming_v1`` distributor)

:class:`Job` wraps the protocol: ``activate()`` (``lazy=True``: with the
first call that needs it), ``depend(...)`` (may ask the
job to stop: dm runs it again once the dependencies finished), ``finish()``;
``parameters`` and ``state``. :func:`worker` turns a function of a Job into an
HTTP target for functions-framework (the ``http`` distributor's worker).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from dmcore import fingerprint, ids, remote
from dmcore.errors import DMError, PermissionDenied, Unauthenticated, Unavailable
from dmcore.proto import dm_pb2

if TYPE_CHECKING:
    from dmcore.client import Client

log = logging.getLogger("dm.job")

ENV_AUTH = "DM_EXECUTION_AUTH"
ENV_HOME = "DM_HOME"
ENV_HOST = "DM_HOST"
ENV_STATE = "DM_STATE_FILE"
ENV_QUEST = "DM_QUEST_ID"
ENV_PARAMS = "DM_QUEST_PARAMETERS"
ENV_PARAMS_FILE = "DM_QUEST_PARAMETERS_FILE"
ENV_WORKDIR = "DM_WORKDIR"
ENV_API_URL = "DM_API_URL"
ENV_API_AUDIENCE = "DM_API_AUDIENCE"
ENV_PREVIOUS_STATE = "DM_PREVIOUS_STATE"
ENV_REPORT_TOKEN = "DM_REPORT_AUTH_TOKEN"
ENV_REPORT_TOPIC = "DM_REPORT_TOPIC"
ENV_REPORT_URL = "DM_REPORT_URL"
ENV_LUCI_CONTEXT = "LUCI_CONTEXT"
ENV_API_RETRY_BUDGET = remote.RETRY_BUDGET_ENV
"""How long a call to dm retries (seconds; :data:`remote.DEFAULT_RETRY_BUDGET_S`)."""


class JobError(Exception):
    """The job's environment is incomplete or dm refused a call."""


def client_from_env(env: Mapping[str, str]) -> Client:
    """A client for the dm that started this job: remote with ``DM_API_URL``, else embedded."""
    url = env.get(ENV_API_URL, "").strip()
    budget_s = remote.retry_budget_from_env(env)
    if url:
        audience = env.get(ENV_API_AUDIENCE, "").strip()
        token = remote.default_token_source(url, audience)
        return remote.RemoteClient(url, remote.HttpCaller(token, budget_s=budget_s))
    home = env.get(ENV_HOME)
    if home:
        # Only here: a job of an embedded dm runs dm's engine itself, on the
        # home's store; a remote job (and `import dmcore.job`) does without.
        from dmcore.client import LocalClient, RetryingClient
        from dmcore.runtime.backend import store_from_env
        from dmcore.runtime.embedded import Embedded, home_registry

        emb = Embedded(home, home_registry(home), store=store_from_env(env))
        return RetryingClient(LocalClient(emb.service), budget_s=budget_s)  # as a remote one
    raise JobError(f"neither {ENV_API_URL} nor {ENV_HOME} is set: not started by dm?")


def reporter_from_env(env: Mapping[str, str], execution: str) -> remote.Reporter | None:
    """Where a remote job reports how it ended (None: its distributor does not ask)."""
    token = env.get(ENV_REPORT_TOKEN, "")
    if not token:
        return None
    notify = remote.Notify(token, env.get(ENV_REPORT_TOPIC, ""), env.get(ENV_REPORT_URL, ""))
    if not (notify.topic or notify.url):
        raise JobError(f"{ENV_REPORT_TOKEN} needs {ENV_REPORT_TOPIC} or {ENV_REPORT_URL}")
    return remote.Reporter(notify, execution)


def _luci_context_auth(env: Mapping[str, str]) -> str:
    """The execution's auth a Swarming task gets: ``secret_bytes`` in its LUCI_CONTEXT file."""
    path = env.get(ENV_LUCI_CONTEXT, "")
    if not path:
        return ""
    try:
        ctx = json.loads(pathlib.Path(path).read_text())
        secret = ctx["swarming"]["secret_bytes"]
        return base64.b64decode(secret).decode()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise JobError(f"{ENV_LUCI_CONTEXT}: no swarming.secret_bytes in {path}: {e}") from None


def worker_token(activation: bytes) -> bytes:
    """The execution token a worker derives from its activation token.

    Deterministic, so that a redelivery of the same task (Cloud Tasks retries
    after a crash or a timeout) activates again (dm accepts a repeated
    activation with the same token) and carries on; unguessable without the
    activation token, which only dm and the task hold.
    """
    return hashlib.sha256(b"dm-worker-execution-token\0" + activation).digest()


class Dependencies:
    """What :meth:`Job.depend` returns."""

    def __init__(self, rsp: dm_pb2.EnsureGraphDataRsp, wanted: Sequence[tuple[str, int]]) -> None:
        self.should_halt = rsp.should_halt
        self.quest_ids = [q.id for q in rsp.quest_ids]
        self.results: dict[tuple[str, int], Any] = {}
        self.abnormal: dict[tuple[str, int], str] = {}
        for qid, num in wanted:
            att = rsp.result.quests[qid].attempts[num] if qid in rsp.result.quests else None
            if att is None:
                continue
            if att.data.HasField("finished") and att.data.finished.data.object:
                self.results[(qid, num)] = json.loads(att.data.finished.data.object)
            elif att.data.HasField("abnormal_finish"):
                af = att.data.abnormal_finish
                self.abnormal[(qid, num)] = (
                    f"{dm_pb2.AbnormalFinish.Status.Name(af.status)}: {af.reason}"
                )


class Job:
    """The running execution's handle on dm.

    ``state`` is what the next execution of the attempt starts from (after a
    halt for dependencies, or a retry). A local job keeps it in its state
    file; a remote job holds it in memory and, with a ``reporter``, reports it
    when the execution stops (``finish``, or a ``depend`` that halts): set it
    before those calls.
    """

    def __init__(
        self,
        client: Client,
        auth: dm_pb2.Execution.Auth,
        state_file: pathlib.Path | None,
        *,
        parameters: str | None = None,
        parameters_file: pathlib.Path | None = None,
        state: Any = None,
        reporter: remote.Reporter | None = None,
    ) -> None:
        self.client = client
        self.auth = auth
        self.state_file = state_file
        self.token = b""
        """This job's execution token once dm activated the execution with it."""
        self._wanted_token = b""  # asked for by activate(), sent at the first call needing it
        self.refused: DMError | None = None
        """dm refused this job's activation (or its finish with the activation
        token): another instance acts for the execution, or it ended."""
        self.reporter = reporter
        self.stopped = False
        """True once the execution stopped (finished, or halted for dependencies)."""
        self.maybe_stopped = False
        """A call that may stop the execution (``finish``, ``depend``) got no word from
        dm (:class:`remote.Unanswered`): dm may have done it."""
        self._parameters_text = parameters
        self._parameters_file = parameters_file
        self._state = state

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Job:
        env = os.environ if env is None else env
        raw = env.get(ENV_AUTH) or _luci_context_auth(env)
        if not raw:
            raise JobError(f"{ENV_AUTH} is not set: not started by dm?")
        auth = dm_pb2.Execution.Auth()
        try:
            json_format.Parse(raw, auth)
        except json_format.ParseError as e:
            raise JobError(f"{ENV_AUTH}: {e}") from None
        state_path = env.get(ENV_STATE)
        state: Any = None
        if not state_path and env.get(ENV_PREVIOUS_STATE):
            try:
                state = json.loads(env[ENV_PREVIOUS_STATE])
            except ValueError as e:
                raise JobError(f"{ENV_PREVIOUS_STATE}: not JSON: {e}") from None
        params_file = env.get(ENV_PARAMS_FILE)
        return cls(
            client_from_env(env),
            auth,
            pathlib.Path(state_path) if state_path else None,
            parameters=env.get(ENV_PARAMS),
            parameters_file=pathlib.Path(params_file) if params_file else None,
            state=state,
            reporter=reporter_from_env(env, str(ids.ExecutionID.from_proto(auth.id))),
        )

    @classmethod
    def from_order(cls, order: remote.WorkOrder, client: Client | None = None) -> Job:
        """The job of a remote distributor's work order (the ``http`` worker)."""
        eid = ids.ExecutionID.from_proto(order.auth.id)
        reporter = remote.Reporter(order.notify, str(eid)) if order.notify else None
        return cls(
            client or remote.RemoteClient(order.dm_api_url),
            order.auth,
            None,
            parameters=order.parameters,
            state=order.state,
            reporter=reporter,
        )

    @property
    def execution_id(self) -> ids.ExecutionID:
        return ids.ExecutionID.from_proto(self.auth.id)

    # -- what the quest asks for ----------------------------------------------------------

    @property
    def parameters(self) -> Any:
        """The quest's parameters, parsed (from the environment, a file or the API)."""
        if self._parameters_text is None:
            if self._parameters_file is not None:
                self._parameters_text = self._parameters_file.read_text()
            else:
                self._parameters_text = self._quest_desc().parameters
        return json.loads(self._parameters_text)

    def _own_attempt(self, *, executions: bool) -> dm_pb2.Attempt:
        """This execution's attempt as dm's graph shows it (needs ``activate()`` first)."""
        eid = self.execution_id
        req = dm_pb2.WalkGraphReq(auth=self._auth())
        req.query.attempt_list.to[eid.quest].nums.append(eid.attempt)
        req.limit.max_depth = 0
        req.include.quest.data = True
        req.include.attempt.data = True
        if executions:
            req.include.execution.data = True
            req.include.execution.result = True
            req.include.num_executions = 1_000_000
        graph = self.client.walk_graph(req)
        quest = graph.quests[eid.quest]
        self._desc = quest.data.desc
        return quest.attempts[eid.attempt]

    def _quest_desc(self) -> dm_pb2.Quest.Desc:
        desc: dm_pb2.Quest.Desc | None = getattr(self, "_desc", None)
        if desc is None:
            self._own_attempt(executions=False)
            desc = self._desc
        return desc

    # -- state carried across executions of the attempt ---------------------------------

    @property
    def state(self) -> Any:
        if self.state_file is not None:
            if not self.state_file.exists():
                return {}
            text = self.state_file.read_text()
            return json.loads(text) if text.strip() else {}
        if self._state is None:
            self._state = self._previous_state()
        return self._state

    @state.setter
    def state(self, value: Any) -> None:
        if self.state_file is not None:
            self.state_file.write_text(json.dumps(value))
            return
        self._state = value

    def _previous_state(self) -> Any:
        """The state in the result of the attempt's last execution that ended normally."""
        if isinstance(self.client, remote.RemoteClient) and (self.token or self._wanted_token):
            att = self._own_attempt(executions=True)
            for num in sorted(att.executions, reverse=True):
                ex = att.executions[num].data
                if num < self.execution_id.num and ex.HasField("finished"):
                    got = remote.state_of(ex.finished.data)
                    return {} if got is None else got
        return {}

    # -- calls ------------------------------------------------------------------------

    def activate(self, token: bytes | None = None, *, lazy: bool = False) -> None:
        """Swap the activation token for this job's own (call once, first).

        ``token``: this job's execution token (at least 32 bytes; default: random).

        At once by default, as Dungeon Master does: a second instance of the job
        (a task delivered twice) is refused here, before it does any work, and
        the execution is RUNNING, under the quest's run timeout. ``lazy=True``
        defers it to the first call that needs an activated execution
        (``depend``, the state or parameters read through the API); a job whose
        first call is ``finish`` then never activates: its FinishAttempt, with
        the activation token, activates and finishes in one transaction (one
        Firestore write and one function call less). The price: until then the
        execution stays SCHEDULING, under the *start* timeout, and a duplicate
        instance does the work before it is refused (:attr:`refused`) at
        ``finish``. For short, idempotent jobs only.
        """
        self._wanted_token = os.urandom(64) if token is None else token
        if not lazy:
            self._activated_token()

    def _activated_token(self) -> bytes:
        if not self.token:
            if not self._wanted_token:
                raise JobError("activate() first")
            req = dm_pb2.ActivateExecutionReq(auth=self.auth, execution_token=self._wanted_token)
            self._refusable(lambda: self.client.activate_execution(req))
            self.token = self._wanted_token
        return self.token

    def _refusable(self, call: Callable[[], Any]) -> None:
        """Make a call with the activation token; a refusal is kept in :attr:`refused`."""
        try:
            call()
        except (PermissionDenied, Unauthenticated) as e:
            self.refused = e
            raise

    def _auth(self) -> dm_pb2.Execution.Auth:
        return dm_pb2.Execution.Auth(id=self.auth.id, token=self._activated_token())

    def depend(
        self, quests: Sequence[Mapping[str, Any]], attempts: Sequence[int] = (1,)
    ) -> Dependencies:
        """Depend on attempts of ``quests`` (protobuf JSON quest descriptions).

        Returns their results when all have finished; otherwise
        ``should_halt`` is true and the job should exit at once: dm runs the
        attempt again (a new execution, with this one's state) once they have.
        A quest that names a ``command`` (``local``) gets the fingerprint of the
        files it runs (:mod:`dmcore.fingerprint`), as in ``dm run``.
        """
        req = dm_pb2.EnsureGraphDataReq()
        req.include.attempt.result = True
        wanted: list[tuple[str, int]] = []
        workdir = os.environ.get(ENV_WORKDIR)
        base = pathlib.Path(workdir) if workdir else None
        for q in quests:
            desc = ids.desc_from_json(fingerprint.add(q, base) if fingerprint.enabled() else q)
            req.quest.append(desc)
            req.quest_attempt.add(nums=list(attempts))
            qid = ids.quest_id(desc)
            wanted += [(qid, n) for n in attempts]
        req.for_execution.CopyFrom(self._auth())
        self._keep_state()
        with self._stopping_call():
            deps = Dependencies(self.client.ensure_graph_data(req), wanted)
        if deps.should_halt:
            self._stopped()
        return deps

    def finish(self, result: Any) -> None:
        """Record the attempt's result (a JSON object); the job should then exit."""
        text = result if isinstance(result, str) else json.dumps(result)
        self._keep_state()
        data = dm_pb2.JsonResult(object=text)
        if self.token or not self._wanted_token:
            req = dm_pb2.FinishAttemptReq(auth=self._auth(), data=data)
            with self._stopping_call():
                self.client.finish_attempt(req)
        else:  # not activated yet: the activation token activates and finishes at once
            req = dm_pb2.FinishAttemptReq(auth=self.auth, data=data)
            with self._stopping_call():
                self._refusable(lambda: self.client.finish_attempt(req))
        self._stopped()

    @contextlib.contextmanager
    def _stopping_call(self) -> Iterator[None]:
        """Around a call that may stop the execution: notes in :attr:`maybe_stopped`
        when it ended without dm's word on whether it was done."""
        try:
            yield
        except remote.Unanswered:
            self.maybe_stopped = True
            raise

    def _keep_state(self) -> None:
        """Load the previous state while the token still reads it: stopping revokes it,
        and the report after the stop carries the state."""
        if self.reporter is not None and self.state_file is None and self._state is None:
            self._state = self._previous_state()

    def _stopped(self) -> None:
        """The execution is STOPPING: report the state to the distributor (remote jobs)."""
        self.stopped = True
        if self.reporter is not None:
            self.reporter.send(remote.Report(remote.REPORT_STOPPED, state=self.state))

    def report(self, kind: str, reason: str) -> None:
        """Report a failure (``remote.REPORT_FAILED`` / ``REPORT_CRASHED``) to the distributor."""
        if self.reporter is None:
            raise JobError("this job has nowhere to report to")
        self.reporter.send(remote.Report(kind, reason=reason))


# -- the http distributor's worker ------------------------------------------------------------

RETRY_COUNT_HEADER = "X-CloudTasks-TaskRetryCount"

JobFunction = Callable[[Job], Any]


def run_order(
    order: remote.WorkOrder, fn: JobFunction, delivery: int = 1, client: Client | None = None
) -> tuple[int, str]:
    """Run ``fn`` on the job of ``order``; the HTTP answer the worker gives: (status, text).

    ``delivery``: which delivery of the task this is (1 the first; Cloud Tasks'
    X-CloudTasks-TaskRetryCount + 1, which counts every earlier attempt, 5xx
    answers included, as the queue's ``max_attempts`` does). The last one is
    ``order.max_attempts`` (0: unknown, none is the last).

    * the job stopped (finished, or halted for dependencies): 200; the job
      reported its state itself when it stopped.
    * ``fn`` returned without stopping: FAILED "worker returned without
      finishing" is reported; 200 (a retry would not do better). But if its
      ``finish`` or ``depend`` got no word from dm (:attr:`Job.maybe_stopped`),
      "stopped" with the state, here and where it raises on the last delivery:
      dm may have stopped the execution.
    * dm stayed unavailable past the client's retries (``DM_API_RETRY_BUDGET_S``),
      at the activation or in ``fn`` (Unavailable raised): 503, delivered again,
      not counted as the worker's crash; on the last delivery, CRASHED "dm
      unavailable" is reported and the answer is 200. dm's trouble is no
      failure of the job's: CRASHED is retried under ``meta.retry.crashed``,
      where the task gone without a report would end the execution FAILED.
      But when ``finish`` or ``depend`` got no word from dm at all (it may have
      stopped the execution), the last delivery reports "stopped" with the
      state instead: FINISHED if dm did stop it, else FAILED.
    * ``fn`` raised otherwise: 500, so Cloud Tasks delivers the task again; on the last
      delivery CRASHED is reported and the answer is 200, so no queue setting
      can make it go on.
    * dm refused the activation: another delivery activated this execution
      with another token, or it has stopped already: 200, nothing to do (also
      when ``fn`` activated lazily and was refused at its first call).
    * the report could not be delivered: 503 (delivered again; after the last
      delivery dm finds the task gone without a report: FAILED).
    """
    job = Job.from_order(order, client)
    eid = job.execution_id
    last = order.max_attempts > 0 and delivery >= order.max_attempts
    of = f"delivery {delivery}" + (f" of {order.max_attempts}" if order.max_attempts else "")
    try:
        try:
            job.activate(worker_token(order.auth.token))
        except (PermissionDenied, Unauthenticated) as e:
            log.warning("execution %s: activation refused (%s): nothing to do", eid, e.message)
            return 200, f"execution {eid} is not ours to run: {e.message}"
        except Unavailable as e:
            return _dm_unavailable(job, e, last, of)
        try:
            fn(job)
        except Exception as e:
            if job.refused is not None:
                msg = job.refused.message
                log.warning("execution %s: activation refused (%s): nothing to do", eid, msg)
                return 200, f"execution {eid} is not ours to run: {msg}"
            if job.stopped:
                log.exception("execution %s: the worker raised after the execution stopped", eid)
                return 200, "stopped (the worker raised afterwards; see its log)"
            if isinstance(e, Unavailable):
                return _dm_unavailable(job, e, last, of)
            log.exception("execution %s: the worker raised (%s)", eid, of)
            if not last:
                return 500, f"the worker raised {type(e).__name__}; to be retried"
            if job.maybe_stopped and job.reporter is not None:
                return _report_maybe_stopped(job, of)
            job.report(
                remote.REPORT_CRASHED,
                f"worker raised on {of}: {type(e).__name__}: {e}",
            )
            return 200, "crashed (reported)"
        if not job.stopped:
            if job.maybe_stopped and job.reporter is not None:
                return _report_maybe_stopped(job, of)
            job.report(remote.REPORT_FAILED, "worker returned without finishing")
            return 200, "returned without finishing (reported as FAILED)"
    except Unavailable as e:
        return 503, f"cannot deliver the report: {e.message}"
    except DMError as e:
        log.error("execution %s: dm refused a call: %s", eid, e.message)
        return 500, f"dm refused a call: {e.message}"
    return 200, "ok"


def _report_maybe_stopped(job: Job, of: str) -> tuple[int, str]:
    """The job's ``finish`` or ``depend`` got no word from dm (:attr:`Job.maybe_stopped`)
    and the job did not get to stop otherwise: dm may have stopped the execution,
    and a CRASHED or FAILED report would throw its result away. Reports "stopped",
    with the state: dm ends the execution FINISHED if it did stop, FAILED if not."""
    assert job.reporter is not None
    log.warning("execution %s: no answer to a stopping call (%s): reported as stopped",
                job.execution_id, of)  # fmt: skip
    job.reporter.send(remote.Report(remote.REPORT_STOPPED, state=job.state))
    return 200, "no answer to a stopping call (reported as stopped)"


def _dm_unavailable(job: Job, e: Unavailable, last: bool, of: str) -> tuple[int, str]:
    """dm stayed unavailable past the client's retries (a long declaration's claim, an
    overloaded front end): not the worker's fault, so no crash of the worker's is
    counted; 503 and delivered again, but on the last delivery the execution is
    reported CRASHED (dm retries it under meta.retry.crashed), not left to end FAILED
    when dm finds the task gone. Raises Unavailable if the report cannot go.

    Unless the job's ``finish`` or ``depend`` got no word from dm
    (:attr:`Job.maybe_stopped`): dm may have stopped the execution, and a CRASHED
    report would throw its result away. The report is then "stopped", with the
    state: dm ends the execution FINISHED if it did stop, FAILED if not (as it would
    finding the task gone, but with the state, and without waiting)."""
    eid = job.execution_id
    if not last or job.reporter is None:
        log.warning("execution %s: dm is unavailable (%s): to be redelivered", eid, e)
        return 503, f"dm is unavailable: {e.message}"
    if job.maybe_stopped:
        log.warning("execution %s: dm unavailable on the last %s (%s)", eid, of, e)
        return _report_maybe_stopped(job, of)
    log.warning("execution %s: dm is unavailable on the last %s (%s): crashed", eid, of, e)
    job.report(remote.REPORT_CRASHED, f"dm unavailable on {of}: {e.message}")
    return 200, "dm unavailable on the last delivery (reported as CRASHED)"


def worker(fn: JobFunction) -> Callable[[Any], Any]:
    """A functions-framework HTTP target running ``fn(job)`` for each task the
    ``http`` distributor sends (the body is a :class:`~dmcore.remote.WorkOrder`)::

        from dmcore.job import Job, worker

        @worker
        def main(job: Job) -> None:
            job.finish({"sum": sum(job.parameters["numbers"])})

    then ``functions-framework --target main``. See :func:`run_order` for the answers.
    """
    from werkzeug.wrappers import Response

    def handle(request: Any) -> Response:
        if request.method != "POST":
            return Response("POST a dm work order\n", status=405, headers={"Allow": "POST"})
        try:
            retries = int(request.headers.get(RETRY_COUNT_HEADER, "0") or "0")
            order = remote.WorkOrder.from_bytes(request.get_data())
        except ValueError as e:
            return Response(f"bad work order: {e}\n", status=400)
        status, text = run_order(order, fn, delivery=retries + 1)
        return Response(text + "\n", status=status, mimetype="text/plain")

    handle.__name__ = getattr(fn, "__name__", "worker")
    handle.__doc__ = fn.__doc__
    return handle
