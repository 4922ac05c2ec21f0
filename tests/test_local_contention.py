"""Many local jobs at once against one embedded home: real processes, one SQLite file.

A root quest depends on ``LEAVES`` leaves; the worker starts every leaf as a
process (a supervisor, then the command), and each of them opens the home,
activates, finishes, and its supervisor records the exit and tells dm, all
while the worker goes on. None may die of a busy store: every leaf finishes
on its first execution. The distributor calls are watched: none is made
while the worker's batch holds the write lock (what let one batch hold it for
minutes while a hundred jobs started, and jobs gave up after 30 s).
"""

from __future__ import annotations

import json
import os
import pathlib
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from distributors.local import config_pb2 as local_pb2
from distributors.local.distributor import LocalDistributor
from dmcore import ids
from dmcore.cli import app
from dmcore.engine import docs
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2
from dmcore.runtime import embedded
from dmcore.runtime.embedded import Embedded, home_registry
from dmcore.service import Caller
from dmcore.states import AttemptState
from dmcore.store.sqlite import SqliteStore
from tests.lock_watch import watched

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the local distributor is POSIX-only")

LEAVES = 30
SAFETY_S = 900.0
"""Bounds the wait on a very busy machine; no assertion depends on time."""
CONFIG: dict[str, Any] = {"distributor_configs": {"local": {"local": {}}}}
FANOUT = pathlib.Path(__file__).resolve().parent.parent / "examples" / "jobsim_fanout.yaml"

JOB = """
import json, os, sys
from dmcore.job import Job

job = Job.from_env()
job.activate()
params = json.loads(os.environ["DM_QUEST_PARAMETERS"])
leaves = params.get("leaves", [])
if not leaves:
    job.finish({"value": params["i"]})
    sys.exit(0)
deps = job.depend(leaves)
if deps.should_halt:
    sys.exit(0)  # run again once every leaf has finished
job.finish({"value": sum(r["value"] for r in deps.results.values())})
"""

CALLS: list[tuple[str, bool]] = []
"""Each local distributor call the worker made, and whether it held the write lock then."""


@pytest.fixture
def emb(tmp_path: pathlib.Path) -> Iterator[Embedded]:
    home = tmp_path / "home"
    registry = home_registry(home, CONFIG)
    # Only this process (the worker) watches; the jobs open the home with the real one.
    registry.register("local", local_pb2.Config, watched(LocalDistributor, CALLS))
    CALLS.clear()
    e = Embedded(home, registry)
    yield e
    e.close()


def _quest(script: pathlib.Path, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "distributor_config_name": "local",
        "parameters": params,
        "distributor_parameters": {"command": [sys.executable, str(script)]},
    }


def _state(emb: Embedded, aid: AttemptID) -> dict[str, Any]:
    doc = emb.store.get(docs.attempt_path(aid))
    assert doc is not None, f"no attempt {aid}"
    return doc


def test_many_local_jobs_share_one_home(emb: Embedded, tmp_path: pathlib.Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB))
    leaves = [_quest(script, {"i": i}) for i in range(1, LEAVES + 1)]
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(ids.desc_from_json(_quest(script, {"leaves": leaves})))
    req.quest_attempt.add(nums=[1])
    rsp = emb.service.ensure_graph_data(req, Caller.trusted())
    root = AttemptID(rsp.quest_ids[0].id, 1)

    def ended() -> bool:
        state = AttemptState(_state(emb, root)["state"])
        return state in (AttemptState.FINISHED, AttemptState.ABNORMAL_FINISHED)

    assert emb.drive(ended, timeout_s=SAFETY_S), "the root did not end"
    logs = sorted((emb.home / "logs").glob("*.log"))
    locked = [p.name for p in logs if "database is locked" in p.read_text()]
    assert locked == []
    att = _state(emb, root)
    assert AttemptState(att["state"]) == AttemptState.FINISHED, att.get("abnormal")
    result = docs.read_result(emb.store, root)
    assert result is not None
    assert json.loads(result["object"]) == {"value": LEAVES * (LEAVES + 1) // 2}
    assert att["cur_execution"] == 2  # halted once, resumed once
    # Every leaf finished on its first execution: no job died and was run again.
    attempts = dict(emb.store.query(docs.ATTEMPTS))
    del attempts[docs.attempt_path(root)]
    assert len(attempts) == LEAVES
    ends = {(AttemptState(d["state"]), d["cur_execution"]) for d in attempts.values()}
    assert ends == {(AttemptState.FINISHED, 1)}
    runs = [held for what, held in CALLS if what == "run"]
    assert len(runs) == LEAVES + 2
    assert [c for c in CALLS if c[1]] == []  # no call while the worker held the lock


class _Impatient(SqliteStore):
    """The home's store, giving up on the write lock after 0.3 s instead of minutes."""

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(path, **{**kwargs, "busy_timeout": 0.05, "lock_wait": 0.3})


def test_dm_run_on_a_home_kept_locked_names_the_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    Embedded(home, home_registry(home)).close()
    monkeypatch.setattr(embedded, "SqliteStore", _Impatient)
    blocker = sqlite3.connect(home / "dm.sqlite", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # a stuck writer elsewhere
        r = CliRunner().invoke(app, ["run", str(FANOUT), "--home", str(home)])
    finally:
        blocker.close()
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit)  # plain words, no traceback
    assert f"error: {home / 'dm.sqlite'}: could not take the write lock" in r.stderr
