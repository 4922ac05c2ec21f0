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

:class:`Job` wraps the protocol: ``activate()``, ``depend(...)`` (may ask the
job to stop: dm runs it again once the dependencies finished), ``finish()``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format

from dmcore import fingerprint, ids
from dmcore.client import Client
from dmcore.proto import dm_pb2

ENV_AUTH = "DM_EXECUTION_AUTH"
ENV_HOME = "DM_HOME"
ENV_HOST = "DM_HOST"
ENV_STATE = "DM_STATE_FILE"
ENV_QUEST = "DM_QUEST_ID"
ENV_PARAMS = "DM_QUEST_PARAMETERS"
ENV_PARAMS_FILE = "DM_QUEST_PARAMETERS_FILE"
ENV_WORKDIR = "DM_WORKDIR"


class JobError(Exception):
    """The job's environment is incomplete or dm refused a call."""


def client_from_env(env: Mapping[str, str]) -> Client:
    """A client for the dm that started this job."""
    home = env.get(ENV_HOME)
    if home:
        from dmcore.runtime.backend import store_from_env
        from dmcore.runtime.embedded import Embedded, home_registry

        emb = Embedded(home, home_registry(home), store=store_from_env(env))
        from dmcore.client import LocalClient

        return LocalClient(emb.service)
    raise JobError(f"{ENV_HOME} is not set (remote dm hosts are not supported by this client yet)")


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
    """The running execution's handle on dm."""

    def __init__(
        self, client: Client, auth: dm_pb2.Execution.Auth, state_file: pathlib.Path | None
    ) -> None:
        self.client = client
        self.auth = auth
        self.state_file = state_file
        self.token = b""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Job:
        env = os.environ if env is None else env
        raw = env.get(ENV_AUTH)
        if not raw:
            raise JobError(f"{ENV_AUTH} is not set: not started by dm?")
        auth = dm_pb2.Execution.Auth()
        try:
            json_format.Parse(raw, auth)
        except json_format.ParseError as e:
            raise JobError(f"{ENV_AUTH}: {e}") from None
        state = env.get(ENV_STATE)
        return cls(client_from_env(env), auth, pathlib.Path(state) if state else None)

    @property
    def execution_id(self) -> ids.ExecutionID:
        return ids.ExecutionID.from_proto(self.auth.id)

    # -- state carried across executions of the attempt ---------------------------------

    @property
    def state(self) -> Any:
        if self.state_file is None or not self.state_file.exists():
            return {}
        text = self.state_file.read_text()
        return json.loads(text) if text.strip() else {}

    @state.setter
    def state(self, value: Any) -> None:
        if self.state_file is None:
            raise JobError(f"{ENV_STATE} is not set")
        self.state_file.write_text(json.dumps(value))

    # -- calls ------------------------------------------------------------------------

    def activate(self) -> None:
        """Swap the activation token for this job's own (call once, first)."""
        token = os.urandom(64)
        self.client.activate_execution(
            dm_pb2.ActivateExecutionReq(auth=self.auth, execution_token=token)
        )
        self.token = token

    def _auth(self) -> dm_pb2.Execution.Auth:
        if not self.token:
            raise JobError("activate() first")
        return dm_pb2.Execution.Auth(id=self.auth.id, token=self.token)

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
        return Dependencies(self.client.ensure_graph_data(req), wanted)

    def finish(self, result: Any) -> None:
        """Record the attempt's result (a JSON object); the job should then exit."""
        text = result if isinstance(result, str) else json.dumps(result)
        self.client.finish_attempt(
            dm_pb2.FinishAttemptReq(auth=self._auth(), data=dm_pb2.JsonResult(object=text))
        )
