"""The local distributor end to end: real subprocesses through the real engine.

Each job is a small Python script written to ``tmp_path`` and run with
``sys.executable``, talking to dm through :class:`dmcore.job.Job` (it opens
the same embedded home). ``SAFETY_S`` bounds every wait so that a broken
build fails instead of hanging; no test asserts on timing.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from distributors.local import tasks
from dmcore import distributor as dist
from dmcore import fingerprint, ids
from dmcore.engine import docs
from dmcore.errors import InvalidArgument
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.runtime.embedded import Embedded, home_registry
from dmcore.service import Caller
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the local distributor is POSIX-only")

CONFIG: dict[str, Any] = {"distributor_configs": {"local": {"local": {}}}}
SAFETY_S = 60.0
PRELUDE = "import json, os, signal, sys, time\nfrom dmcore.job import Job\n\n"


@pytest.fixture
def emb(tmp_path: pathlib.Path) -> Iterator[Embedded]:
    home = tmp_path / "home"
    e = Embedded(home, home_registry(home, CONFIG))
    yield e
    e.close()


# -- helpers -----------------------------------------------------------------------------


def script(tmp_path: pathlib.Path, name: str, body: str) -> pathlib.Path:
    path = tmp_path / f"{name}.py"
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def quest(
    path: pathlib.Path,
    name: str = "q",
    *,
    params: Mapping[str, Any] | None = None,
    local: Mapping[str, Any] | None = None,
    retry: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A quest running ``path`` on the local distributor (protobuf JSON)."""
    return {
        "distributor_config_name": "local",
        "parameters": {"name": name, **(params or {})},
        "distributor_parameters": {"command": [sys.executable, str(path)], **(local or {})},
        "meta": {"retry": dict(retry or {})},
    }


def submit(emb: Embedded, q: Mapping[str, Any]) -> AttemptID:
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(ids.desc_from_json(q))
    req.quest_attempt.add(nums=[1])
    rsp = emb.service.ensure_graph_data(req, Caller.trusted())
    assert rsp.accepted
    return AttemptID(rsp.quest_ids[0].id, 1)


def attempt(emb: Embedded, aid: AttemptID) -> dict[str, Any]:
    doc = emb.store.get(docs.attempt_path(aid))
    assert doc is not None, f"no attempt {aid}"
    return doc


def execution(emb: Embedded, eid: ExecutionID) -> dict[str, Any]:
    doc = docs.read_execution(emb.store, eid)
    assert doc is not None, f"no execution {eid}"
    return doc


def ended(emb: Embedded, aid: AttemptID) -> dict[str, Any]:
    """Drive dm until attempt ``aid`` is FINISHED or ABNORMAL_FINISHED."""

    def done() -> bool:
        doc = emb.store.get(docs.attempt_path(aid))
        return doc is not None and AttemptState(doc["state"]) in (
            AttemptState.FINISHED,
            AttemptState.ABNORMAL_FINISHED,
        )

    assert emb.drive(done, timeout_s=SAFETY_S), f"attempt {aid} did not end"
    return attempt(emb, aid)


def result(emb: Embedded, aid: AttemptID) -> Any:
    doc = docs.read_result(emb.store, aid)
    assert doc is not None, f"no result for {aid}"
    return json.loads(doc["object"])


def dist_result(ex: Mapping[str, Any]) -> Any:
    return json.loads(ex["result"]["data"]["object"])


def abnormal(doc: Mapping[str, Any]) -> tuple[AbnormalStatus, str]:
    return AbnormalStatus(doc["abnormal"]["status"]), str(doc["abnormal"]["reason"])


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie does not (orphans wait for init to reap them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = pathlib.Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True  # no /proc: take kill()'s word for it


def local_d(emb: Embedded) -> dist.D:
    d, _ = emb.engine.registry.build_named("local")
    return d


def task_doc(emb: Embedded, token: str) -> dict[str, Any]:
    doc = emb.store.get(tasks.task_path(token))
    assert doc is not None, f"no task record {token}"
    return doc


def supervisor_gone(emb: Embedded, token: str) -> None:
    """Wait for the task's supervisor to exit (so nothing outlives the test)."""
    lock = pathlib.Path(task_doc(emb, token)["lock"])
    wait_for(lambda: not tasks.supervisor_alive(lock), f"the supervisor of {token}")


# -- through the engine ---------------------------------------------------------------------


def test_success(emb: Embedded, tmp_path: pathlib.Path) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    job = script(
        tmp_path,
        "ok",
        """
        job = Job.from_env()
        job.activate()
        params = json.loads(os.environ["DM_QUEST_PARAMETERS"])
        print("hello from the job")
        job.finish({
            "double": params["x"] * 2,
            "greeting": os.environ["GREETING"],
            "cwd": os.path.realpath(os.getcwd()),
            "quest": os.environ["DM_QUEST_ID"],
        })
        """,
    )
    aid = submit(
        emb, quest(job, params={"x": 21}, local={"env": {"GREETING": "hi"}, "cwd": str(wd)})
    )
    att = ended(emb, aid)
    assert AttemptState(att["state"]) == AttemptState.FINISHED
    assert result(emb, aid) == {
        "double": 42,
        "greeting": "hi",
        "cwd": os.path.realpath(wd),
        "quest": aid.quest,
    }
    ex = execution(emb, aid.execution(1))
    assert ExecutionState(ex["state"]) == ExecutionState.FINISHED
    assert dist_result(ex) == {"exit_code": 0, "state": {}}
    url = local_d(emb).info_url(ex["dist_token"])
    assert url.startswith("file:///") and url.endswith(".log")
    log = pathlib.Path(url.removeprefix("file://"))
    assert log == pathlib.Path(task_doc(emb, ex["dist_token"])["log"])
    assert "hello from the job" in log.read_text()


def test_halt_for_deps_then_resume_with_state(emb: Embedded, tmp_path: pathlib.Path) -> None:
    b = script(
        tmp_path,
        "b",
        """
        job = Job.from_env()
        job.activate()
        job.finish({"b": 7})
        """,
    )
    a = script(
        tmp_path,
        "a",
        """
        job = Job.from_env()
        job.activate()
        seen = job.state
        if not seen:
            job.state = {"stage": 1}
        dep = json.loads(os.environ["DM_QUEST_PARAMETERS"])["dep"]
        deps = job.depend([dep])
        if deps.should_halt:
            sys.exit(0)  # dm runs us again once B has finished
        job.finish({"seen": seen, "deps": list(deps.results.values())})
        """,
    )
    qb = quest(b, "b")
    aid = submit(emb, quest(a, "a", params={"dep": qb}))
    att = ended(emb, aid)
    assert AttemptState(att["state"]) == AttemptState.FINISHED
    assert result(emb, aid) == {"seen": {"stage": 1}, "deps": [{"b": 7}]}
    assert att["cur_execution"] == 2
    first = execution(emb, aid.execution(1))
    assert dist_result(first) == {"exit_code": 0, "state": {"stage": 1}}
    bid = AttemptID(ids.quest_id(fingerprint.add(qb)), 1)  # as Job.depend made it
    assert AttemptState(attempt(emb, bid)["state"]) == AttemptState.FINISHED
    assert result(emb, bid) == {"b": 7}


def test_nonzero_exit_fails_and_is_retried(emb: Embedded, tmp_path: pathlib.Path) -> None:
    job = script(
        tmp_path,
        "flaky",
        """
        job = Job.from_env()
        job.activate()
        marker = json.loads(os.environ["DM_QUEST_PARAMETERS"])["marker"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            print("failing on purpose", file=sys.stderr)
            sys.exit(3)
        job.finish({"ok": True})
        """,
    )
    marker = tmp_path / "failed-once"
    aid = submit(emb, quest(job, params={"marker": str(marker)}, retry={"failed": 1}))
    att = ended(emb, aid)
    assert AttemptState(att["state"]) == AttemptState.FINISHED
    assert att["cur_execution"] == 2
    assert result(emb, aid) == {"ok": True}
    first = execution(emb, aid.execution(1))
    assert ExecutionState(first["state"]) == ExecutionState.ABNORMAL_FINISHED
    assert abnormal(first) == (AbnormalStatus.FAILED, "exit code 3")
    log = pathlib.Path(task_doc(emb, first["dist_token"])["log"])
    assert "failing on purpose" in log.read_text()


def test_nonzero_exit_without_retries_fails_the_attempt(
    emb: Embedded, tmp_path: pathlib.Path
) -> None:
    job = script(tmp_path, "bad", "sys.exit(5)\n")
    aid = submit(emb, quest(job))
    att = ended(emb, aid)
    assert AttemptState(att["state"]) == AttemptState.ABNORMAL_FINISHED
    assert abnormal(att) == (AbnormalStatus.FAILED, "exit code 5")


def test_killed_by_a_signal_is_a_crash(emb: Embedded, tmp_path: pathlib.Path) -> None:
    job = script(
        tmp_path,
        "crash",
        """
        job = Job.from_env()
        job.activate()
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    aid = submit(emb, quest(job))
    att = ended(emb, aid)
    assert AttemptState(att["state"]) == AttemptState.ABNORMAL_FINISHED
    status, reason = abnormal(att)
    assert status == AbnormalStatus.CRASHED
    assert reason.startswith("killed by signal 9")


def test_cancel_stops_the_process(emb: Embedded, tmp_path: pathlib.Path) -> None:
    job = script(
        tmp_path,
        "sleeper",
        """
        job = Job.from_env()
        job.activate()
        pidfile = json.loads(os.environ["DM_QUEST_PARAMETERS"])["pidfile"]
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(600)
        """,
    )
    pidfile = tmp_path / "pid"
    aid = submit(emb, quest(job, params={"pidfile": str(pidfile)}))
    assert emb.drive(pidfile.exists, timeout_s=SAFETY_S)
    pid = int(pidfile.read_text())
    assert pid_alive(pid)

    req = dm_pb2.CancelAttemptReq(attempt=aid.to_proto(), reason="enough")
    emb.service.cancel_attempt(req, Caller.trusted())
    att = attempt(emb, aid)
    assert AttemptState(att["state"]) == AttemptState.ABNORMAL_FINISHED
    assert abnormal(att)[0] == AbnormalStatus.CANCELLED
    ex = execution(emb, aid.execution(1))
    assert ExecutionState(ex["state"]) == ExecutionState.ABNORMAL_FINISHED
    wait_for(lambda: not pid_alive(pid), "the cancelled job to go")
    token = ex["dist_token"]
    supervisor_gone(emb, token)
    assert task_doc(emb, token)["status"] == tasks.CANCELLED
    emb.drain()  # the supervisor's late notification is dropped quietly
    assert AttemptState(attempt(emb, aid)["state"]) == AttemptState.ABNORMAL_FINISHED
    # Cancelling again is fine.
    desc = emb.engine.quest_desc(aid.quest)
    assert desc is not None
    local_d(emb).cancel(desc, token)


def test_timeout_kills_the_command(emb: Embedded, tmp_path: pathlib.Path) -> None:
    job = script(
        tmp_path,
        "slow",
        """
        job = Job.from_env()
        job.activate()
        time.sleep(600)
        """,
    )
    aid = submit(emb, quest(job, local={"timeout": "1s"}))
    att = ended(emb, aid)
    assert AttemptState(att["state"]) == AttemptState.ABNORMAL_FINISHED
    status, reason = abnormal(att)
    assert status == AbnormalStatus.TIMED_OUT
    assert "timed out after 1s" in reason
    token = execution(emb, aid.execution(1))["dist_token"]
    assert task_doc(emb, token)["status"] == tasks.TIMED_OUT


def test_exit_without_finishing_fails(emb: Embedded, tmp_path: pathlib.Path) -> None:
    job = script(
        tmp_path,
        "quitter",
        """
        job = Job.from_env()
        job.activate()
        """,
    )
    aid = submit(emb, quest(job))
    att = ended(emb, aid)
    assert AttemptState(att["state"]) == AttemptState.ABNORMAL_FINISHED
    assert abnormal(att) == (
        AbnormalStatus.FAILED,
        "the command exited 0 without reporting a result (call Job.finish)",
    )


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ({"command": ["/no/such/program"]}, "cannot start '/no/such/program'"),
        ({"command": ["true"], "cwd": "/no/such/dir"}, "cwd: /no/such/dir is not a directory"),
    ],
)
def test_unstartable_command_is_rejected(
    emb: Embedded, local: dict[str, Any], expected: str
) -> None:
    q = {
        "distributor_config_name": "local",
        "parameters": {"name": "unstartable"},
        "distributor_parameters": local,
    }
    aid = submit(emb, q)
    att = ended(emb, aid)
    status, reason = abnormal(att)
    assert status == AbnormalStatus.REJECTED
    assert expected in reason
    assert emb.store.count(tasks.COLLECTION) == 0  # nothing left half-started


# -- the distributor on its own ---------------------------------------------------------------


def test_run_is_idempotent_and_hands_over_the_state(emb: Embedded, tmp_path: pathlib.Path) -> None:
    job = script(
        tmp_path,
        "counter",
        """
        path = os.environ["DM_STATE_FILE"]
        with open(path) as f:
            state = json.load(f)
        state["n"] += 1
        with open(path, "w") as f:
            json.dump(state, f)
        """,
    )
    desc = ids.normalize_desc(quest(job))
    eid = ExecutionID(ids.quest_id(desc), 1, 1)
    auth = dm_pb2.Execution.Auth(id=eid.to_proto(), token=b"activation token")
    prev = dist.result_json({"exit_code": 0, "state": {"n": 41}})
    d = local_d(emb)
    first = d.run(desc, auth, prev)
    again = d.run(desc, auth, prev)
    token = f"{eid.quest}.1.1"
    assert first.token == again.token == token
    assert emb.store.count(tasks.COLLECTION) == 1

    wait_for(lambda: d.get_status(desc, token) is not None, "the task to end")
    res = d.get_status(desc, token)
    assert res is not None and res.HasField("data")
    assert json.loads(res.data.object) == {"exit_code": 0, "state": {"n": 42}}
    doc = task_doc(emb, token)
    assert doc["status"] == tasks.EXITED and doc["exit_code"] == 0
    assert doc["pid"] and doc["command_pid"]
    assert d.info_url(token) == pathlib.Path(doc["log"]).as_uri()
    assert pathlib.Path(doc["log"]).parent == (tmp_path / "home").resolve() / "logs"
    supervisor_gone(emb, token)

    d.cancel(desc, token)  # an ended task stays as it was
    assert task_doc(emb, token)["status"] == tasks.EXITED
    missing = d.get_status(desc, "nope")
    assert missing is not None
    assert missing.abnormal_finish.status == dm_pb2.AbnormalFinish.MISSING
    d.cancel(desc, "nope")  # nothing to stop


def test_supervisor_death_is_a_crash(emb: Embedded, tmp_path: pathlib.Path) -> None:
    job = script(tmp_path, "forever", "time.sleep(600)\n")
    desc = ids.normalize_desc(quest(job))
    eid = ExecutionID(ids.quest_id(desc), 1, 1)
    d = local_d(emb)
    token = d.run(desc, dm_pb2.Execution.Auth(id=eid.to_proto(), token=b"t"), None).token
    assert d.get_status(desc, token) is None
    doc = task_doc(emb, token)
    os.kill(int(doc["pid"]), 9)
    supervisor_gone(emb, token)
    res = d.get_status(desc, token)
    assert res is not None
    assert res.abnormal_finish.status == dm_pb2.AbnormalFinish.CRASHED
    assert res.abnormal_finish.reason.startswith("supervisor died")
    if sys.platform.startswith("linux"):  # the command dies with its supervisor
        wait_for(lambda: not pid_alive(int(doc["command_pid"])), "the orphaned command")
    else:
        tasks.stop_group(int(doc["command_pid"]))


# -- the bound on commands running at once -----------------------------------------------------

GATED = """
job = Job.from_env()
job.activate()  # RUNNING for dm from here
params = json.loads(os.environ["DM_QUEST_PARAMETERS"])
running = params["running"]
mine = os.path.join(running, str(os.getpid()))
open(mine, "w").close()
with open(params["seen"], "a") as f:  # how many commands run now, this one included
    f.write(f"{len(os.listdir(running))}\\n")
deadline = time.monotonic() + 60
while not os.path.exists(params["go"]) and time.monotonic() < deadline:
    time.sleep(0.02)
os.remove(mine)  # before exiting: its supervisor frees the slot only after that
job.finish({"i": params["i"]})
"""


class Gated:
    """Jobs running GATED under a home whose local distributor runs ``max_jobs`` at once."""

    def __init__(self, tmp_path: pathlib.Path, max_jobs: int) -> None:
        self.job = script(tmp_path, "gated", GATED)
        self.running, self.seen, self.go = tmp_path / "running", tmp_path / "seen", tmp_path / "go"
        self.running.mkdir()
        home = tmp_path / "bounded"
        config = {"distributor_configs": {"local": {"local": {"max_jobs": max_jobs}}}}
        self.emb = Embedded(home, home_registry(home, config))

    def quest(self, i: int) -> dict[str, Any]:
        where = {"running": str(self.running), "seen": str(self.seen), "go": str(self.go)}
        return quest(self.job, f"q{i}", params={"i": i, **where})


def test_at_most_max_jobs_commands_run_at_once(tmp_path: pathlib.Path) -> None:
    g = Gated(tmp_path, 2)
    emb, running = g.emb, g.running
    try:
        aids = [submit(emb, g.quest(i)) for i in range(6)]
        # Every execution is handed to the distributor (run() returned a token for each)...
        assert emb.drive(lambda: emb.store.count(tasks.COLLECTION) == 6, timeout_s=SAFETY_S)
        wait_for(lambda: len(os.listdir(running)) == 2, "two commands to start")
        records = dict(emb.store.query(tasks.COLLECTION))
        # ...and all six supervisors live, but only two commands started: the rest wait.
        assert all(tasks.supervisor_alive(pathlib.Path(d["lock"])) for d in records.values())
        queued = sorted(d["command_pid"] is None for d in records.values())
        assert queued == [False] * 2 + [True] * 4
        assert tasks.slots_taken(emb.home / "logs" / "slots", 2) == 2
        # For dm the waiting ones are still SCHEDULING (their start timeout applies).
        states = sorted(ExecutionState(execution(emb, a.execution(1))["state"]) for a in aids)
        assert states == [ExecutionState.SCHEDULING] * 4 + [ExecutionState.RUNNING] * 2
        g.go.touch()
        for a in aids:
            assert AttemptState(ended(emb, a)["state"]) == AttemptState.FINISHED
        assert sorted(result(emb, a)["i"] for a in aids) == list(range(6))
        counts = [int(n) for n in g.seen.read_text().split()]
        assert len(counts) == 6
        assert max(counts) == 2
        for path in records:
            supervisor_gone(emb, path.rpartition("/")[2])
    finally:
        emb.close()


def test_cancel_while_queued_never_starts_the_command(tmp_path: pathlib.Path) -> None:
    g = Gated(tmp_path, 1)
    emb = g.emb
    try:
        first = submit(emb, g.quest(1))
        assert emb.drive(lambda: len(os.listdir(g.running)) == 1, timeout_s=SAFETY_S)
        second = submit(emb, g.quest(2))
        assert emb.drive(lambda: emb.store.count(tasks.COLLECTION) == 2, timeout_s=SAFETY_S)
        token = execution(emb, second.execution(1))["dist_token"]
        assert task_doc(emb, token)["command_pid"] is None  # queued

        req = dm_pb2.CancelAttemptReq(attempt=second.to_proto(), reason="not now")
        emb.service.cancel_attempt(req, Caller.trusted())
        supervisor_gone(emb, token)
        assert task_doc(emb, token)["status"] == tasks.CANCELLED
        assert "before starting" in pathlib.Path(task_doc(emb, token)["log"]).read_text()
        g.go.touch()
        assert AttemptState(ended(emb, first)["state"]) == AttemptState.FINISHED
        assert g.seen.read_text().split() == ["1"]  # the second command never ran
        assert AttemptState(attempt(emb, second)["state"]) == AttemptState.ABNORMAL_FINISHED
        supervisor_gone(emb, execution(emb, first.execution(1))["dist_token"])
    finally:
        emb.close()


# -- validate -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "command: required"),
        ({"command": []}, "command: required"),
        ({"command": [""]}, "command[0]: must not be empty"),
        ({"command": "ls"}, "command: "),
        ({"command": ["ls"], "env": {"": "x"}}, "env: empty key"),
        ({"command": ["ls"], "env": {"A=B": "x"}}, "env: key 'A=B' contains \"=\""),
        ({"command": ["ls"], "env": {"A": 1}}, "env: "),
        ({"command": ["ls"], "cwd": 3}, "cwd: "),
        ({"command": ["ls"], "timeout": "-1s"}, "timeout: must not be negative"),
        ({"command": ["ls"], "timeout": "soon"}, "timeout: "),
        ({"command": ["ls"], "shell": True}, "shell: unknown field"),
        ([], "must be a JSON object"),
    ],
)
def test_validate_names_the_field(emb: Embedded, params: Any, expected: str) -> None:
    d = local_d(emb)
    with pytest.raises(ValueError, match=re.escape(expected)):
        d.validate(json.dumps(params))


def test_validate_accepts_a_full_spec(emb: Embedded) -> None:
    params = {"command": ["ls", ""], "env": {"A": "b"}, "cwd": "sub", "timeout": "1.5s"}
    local_d(emb).validate(json.dumps(params))
    local_d(emb).validate(json.dumps({"command": ["ls"], "timeout": "0s"}))


def test_bad_parameters_are_refused_at_submission(emb: Embedded) -> None:
    q = {
        "distributor_config_name": "local",
        "parameters": {"name": "x"},
        "distributor_parameters": {"command": ["ls"], "env": {"": "x"}},
    }
    with pytest.raises(
        InvalidArgument, match=r"quest\[0\]\.distributor_parameters: env: empty key"
    ):
        submit(emb, q)
