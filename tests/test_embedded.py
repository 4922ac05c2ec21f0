"""Embedded mode's worker: one leased batch of tasks per commit, and the home's files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pytest

from distributors import jobsim
from distributors.jobsim import config_pb2 as jobsim_pb2
from dmcore import distributor as dist
from dmcore.engine import core, steps
from dmcore.engine.base import Mutation
from dmcore.proto import dm_pb2
from dmcore.queue.base import Task
from dmcore.queue.local import LocalQueue
from dmcore.runtime.embedded import QUEST_CACHE, Embedded, build_registry, run_batch
from dmcore.service import DECLARE_CHUNK, Caller, Service
from dmcore.states import AttemptState
from dmcore.store import sqlite as sqlite_store
from dmcore.store.base import MAX_COMMIT_WRITES, BufferedTransaction
from tests.lock_watch import watched

CONFIG = {"distributor_configs": {"jobsim": {"jobsim": {"pool": "t"}}}}


ONE_DEP = [
    {
        "deps": {
            "deps": [
                {
                    "shards": 1,
                    "attempts": {"items": [{"single": 1}]},
                    "phrase": {"name": "leaf", "return_stage": {"retval": 1}},
                }
            ]
        }
    }
]
"""Stages of a quest that depends on one leaf (its completion is a follow-up mutation)."""


def _ensure(emb: Embedded, name: str, retval: int, stages: list[Any] | None = None) -> str:
    params: dict[str, Any] = {"name": name, "return_stage": {"retval": retval}}
    if stages:
        params["stages"] = stages
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.add(
        distributor_config_name="jobsim",
        parameters=json.dumps(params),
        distributor_parameters="{}",
    )
    req.quest_attempt.add(nums=[1])
    rsp = emb.service.ensure_graph_data(req, Caller.trusted())
    return str(rsp.quest_ids[0].id)


def _state(emb: Embedded, qid: str) -> AttemptState:
    doc = emb.store.get(f"attempts/{qid}|fffffffe")
    assert doc is not None
    return AttemptState(doc["state"])


def test_a_failing_task_is_put_back_the_others_commit(tmp_path: Path) -> None:
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        qid = _ensure(emb, "ok", 5)
        emb.queue.enqueue(Task("broken", "no-such-target", {}))
        failed: list[str] = []
        ran = run_batch(emb.engine, emb.queue, 100, lambda t, e: failed.append(t.name))
        assert ran >= 2
        assert failed == ["broken"]
        # The batch committed: another connection sees the quest's progress and
        # the broken task due again later, with its delivery counted.
        conn = sqlite3.connect(emb.store.path)  # type: ignore[attr-defined]
        try:
            row = conn.execute(
                "SELECT attempts, eta_us > ?, done_us FROM tasks WHERE name = 'broken'",
                (emb.clock(),),
            ).fetchone()
        finally:
            conn.close()
        assert row == (1, 1, None)
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
    finally:
        emb.close()


def test_tasks_commit_with_their_step_no_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:

        def unreachable(tasks: object) -> list[bool]:
            raise RuntimeError("a separate dispatch: the queue is down")

        # Were follow-ups dispatched after the commit, this failure would leave them
        # as outbox records for the sweep; here they are queued by the commit itself.
        monkeypatch.setattr(emb.queue, "enqueue_many", unreachable)
        qid = _ensure(emb, "leaf", 1)
        assert emb.store.query("outbox") == []
        assert emb.queue.pending_count() > 0
        monkeypatch.undo()
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
        assert emb.store.query("outbox") == []
    finally:
        emb.close()


def test_pending_tasks_of_a_former_queue_file_are_kept(tmp_path: Path) -> None:
    old = LocalQueue(tmp_path / "queue.sqlite", clock=lambda: 1)
    old.enqueue(Task("pending", "mutation", {"kind": "x"}, eta_us=7))
    old.enqueue(Task("done", "mutation", {}))
    old.ack([lt.task.name for lt in old.lease(10) if lt.task.name == "done"])
    old.close()
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        assert not (tmp_path / "queue.sqlite").exists()
        got = [lt.task for lt in emb.queue.lease(10)]
        assert got == [Task("pending", "mutation", {"kind": "x"}, eta_us=7)]
    finally:
        emb.close()


def test_ensure_graph_data_writes_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmcore.engine import steps as mu

    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        real = mu.MergeQuest.roll_forward
        seen: list[str] = []

        def third_fails(self: mu.MergeQuest, ctx: Any) -> Any:
            seen.append(self.qid)
            if len(seen) == 3:
                raise OSError("disk full")
            return real(self, ctx)

        monkeypatch.setattr(mu.MergeQuest, "roll_forward", third_fails)
        req = dm_pb2.EnsureGraphDataReq()
        for i in range(5):
            req.quest.add(
                distributor_config_name="jobsim",
                parameters=json.dumps({"name": f"q{i}"}),
                distributor_parameters="{}",
            )
            req.quest_attempt.add(nums=[1])
        with pytest.raises(OSError):
            emb.service.ensure_graph_data(req, Caller.trusted())
        # The two quests merged before the failure went with the request's one commit.
        assert emb.store.query("quests") == []
        assert emb.store.query("attempts") == []
        assert emb.queue.pending_count() == 0
    finally:
        emb.close()


def _queued_kinds(emb: Embedded) -> list[str]:
    conn = sqlite3.connect(emb.store.path)  # type: ignore[attr-defined]
    try:
        rows = conn.execute("SELECT payload FROM tasks WHERE target = 'mutation'").fetchall()
    finally:
        conn.close()
    return sorted(json.loads(p)["kind"] for (p,) in rows)


def test_follow_up_mutations_run_in_the_batch_not_the_queue(tmp_path: Path) -> None:
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        qid = _ensure(emb, "inline", 2)
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
        # Only actions (calls to the distributor) went through the queue; the
        # mutations they led to ran in the batch that committed them.
        assert _queued_kinds(emb) == ["RunExecution"]
        assert emb.engine.stats["ScheduleExecution"] == 1
    finally:
        emb.close()


def test_a_failing_inline_follow_up_is_queued_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmcore.engine import steps as mu

    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        real = mu.CheckDeps.roll_forward
        fails = [OSError("once")]

        def flaky(self: mu.CheckDeps, ctx: Any) -> Any:
            if fails:
                raise fails.pop()
            return real(self, ctx)

        monkeypatch.setattr(mu.CheckDeps, "roll_forward", flaky)
        qid = _ensure(emb, "flaky", 3, ONE_DEP)
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
        assert "CheckDeps" in _queued_kinds(emb)
        assert not fails
    finally:
        emb.close()


def test_follow_ups_beyond_the_batch_cap_are_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmcore.engine import core

    monkeypatch.setattr(core, "MAX_BATCH_INLINE", 0)
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        qid = _ensure(emb, "capped", 4, ONE_DEP)
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
        assert emb.drive(lambda: emb.engine.stats.get("CheckDeps", 0) == 1, timeout_s=60)
        kinds = _queued_kinds(emb)
        # A declaration creates its dependees in its own commit (no MergeQuest task);
        # the waiter's check, a mutation due now, went through the queue.
        assert "CheckDeps" in set(kinds)
    finally:
        emb.close()


def test_no_delete_of_records_that_were_never_written(tmp_path: Path) -> None:
    """A leaf deletes no record: its timers (the STOPPING hedge) are fields of its
    attempt, armed and disarmed with the steps that write it anyway (on Firestore
    a delete is a billed write, found or not)."""
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        deletes: list[str] = []
        emb.store.connection().set_trace_callback(  # type: ignore[attr-defined]
            lambda sql: deletes.append(sql) if sql.startswith("DELETE FROM docs") else None
        )
        qid = _ensure(emb, "no-timers", 5)
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
        assert deletes == []
        assert emb.store.query("attempts", order_by="timer_due_us") == []
        assert emb.store.query("attempts", order_by="poll_due_us") == []
    finally:
        emb.close()


@pytest.mark.parametrize("body, task_reads", [(jobsim.BODY_ID, 3), (jobsim.BODY_JOB, 2)])
def test_a_leafs_execution_in_the_worker_batch_reads_and_writes_its_attempt_so_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, task_reads: int
) -> None:
    """The documents a jobsim leaf's execution asks of the store in the embedded worker
    (counts are deterministic): its attempt is read by the claim, RecordRun,
    FinishAttempt and FinishExecution, and written by the last three (the claim, held
    by the batch, writes nothing; the notification is handled without reading it
    first); jobsim's task is written by its run and its end only (a job that only
    finishes is not claimed) and read by them, and by its delivery unless the task's
    body carries the job (DM_JOBSIM_TASK_BODY=job)."""
    monkeypatch.setenv(jobsim.BODY_ENV, body)
    reads: list[str] = []
    writes: list[str] = []
    tx_get, store_get = sqlite_store._SqliteTransaction.get, sqlite_store.SqliteStore.get
    tx_set, tx_create = BufferedTransaction.set, BufferedTransaction.create

    def read(get: Any) -> Any:
        def counted(self: Any, path: str) -> Any:
            reads.append(path)
            return get(self, path)

        return counted

    def write(put: Any) -> Any:
        def counted(self: Any, path: str, doc: Any) -> Any:
            writes.append(path)
            return put(self, path, doc)

        return counted

    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        qid = _ensure(emb, "counted", 3)
        monkeypatch.setattr(sqlite_store._SqliteTransaction, "get", read(tx_get))
        monkeypatch.setattr(sqlite_store.SqliteStore, "get", read(store_get))
        monkeypatch.setattr(BufferedTransaction, "set", write(tx_set))
        monkeypatch.setattr(BufferedTransaction, "create", write(tx_create))
        assert run_batch(emb.engine, emb.queue, 100) == 1
        monkeypatch.undo()
        assert _state(emb, qid) == AttemptState.FINISHED
        attempt = f"attempts/{qid}|fffffffe"
        assert (reads.count(attempt), writes.count(attempt)) == (4, 3)
        tasks = [p for p in reads if p.startswith(jobsim.TASKS + "/")]
        task_writes = [p for p in writes if p.startswith(jobsim.TASKS + "/")]
        assert (len(tasks), len(task_writes)) == (task_reads, 2)
    finally:
        emb.close()


# -- the write lock and distributor calls ------------------------------------------------------


CALLS: list[tuple[str, bool]] = []
"""Each jobsim call, and whether the worker held the store's write lock then."""
EVERY_CALL = sorted(["handle_notification", "handle_task_queue_task", "run"] * 3)
"""jobsim's calls for 3 executions (sorted): run, its task, the notification it makes."""


def _probed_home(tmp_path: Path, *, in_process: bool) -> Embedded:
    registry = build_registry(CONFIG)
    factory = watched(jobsim.JobsimDistributor, CALLS)
    registry.register("jobsim", jobsim_pb2.Config, factory, in_process=in_process)
    CALLS.clear()
    return Embedded(tmp_path, registry)


@pytest.mark.parametrize("in_process", [False, True])
def test_distributors_are_called_outside_the_batch_unless_in_process(
    tmp_path: Path, in_process: bool
) -> None:
    """A distributor that starts processes or asks servers is never called while the
    worker's batch holds the write lock; an in-process one (jobsim) is, in the batch."""
    emb = _probed_home(tmp_path, in_process=in_process)
    try:
        qids = [_ensure(emb, f"q{i}", i) for i in range(3)]
        assert emb.drive(
            lambda: all(_state(emb, q) == AttemptState.FINISHED for q in qids), timeout_s=60
        )
        assert sorted(what for what, _ in CALLS) == EVERY_CALL
        assert {held for _, held in CALLS} == {in_process}
        for q in qids:
            att = emb.store.get(f"attempts/{q}|fffffffe")
            assert att is not None
            # The claim to run (with the first try's time) is written only where
            # the batch does not hold the run to its record.
            assert ("run_first_us" in att["ex"]) is not in_process
            assert "run_claim" not in att["ex"]
    finally:
        emb.close()


def _with_jobsim(tmp_path: Path, cls: type[jobsim.JobsimDistributor]) -> Embedded:
    """An embedded dm whose jobsim configs are played, in process, by ``cls``."""
    registry = build_registry(CONFIG)
    registry.register("jobsim", jobsim_pb2.Config, cls, in_process=True)
    return Embedded(tmp_path, registry)


class _FlakyRun(jobsim.JobsimDistributor):
    """jobsim whose D.run fails transiently the first time for each execution."""

    failed: ClassVar[list[str]] = []

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        eid = str(auth.id)
        if eid not in _FlakyRun.failed:
            _FlakyRun.failed.append(eid)
            raise dist.TransientError("pool busy")
        return super().run(desc, auth, prev_result)


def test_a_run_held_by_the_batch_that_fails_transiently_is_tried_again(tmp_path: Path) -> None:
    """Claimed without a write (the batch holds it), a run that fails transiently is
    recorded as a failed try (with the first try's time, for the outage window) and
    tried again after its backoff."""
    _FlakyRun.failed.clear()
    emb = _with_jobsim(tmp_path, _FlakyRun)
    try:
        qid = _ensure(emb, "flaky-run", 4)
        assert run_batch(emb.engine, emb.queue, 100) == 1
        att = emb.store.get(f"attempts/{qid}|fffffffe")
        assert att is not None
        assert att["ex"]["run_errors"] == 1 and att["ex"]["run_first_us"] > 0
        assert att["ex"]["dist_token"] == ""
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
        assert len(_FlakyRun.failed) == 1
    finally:
        emb.close()


class _FlakyWorker(jobsim.JobsimDistributor):
    """jobsim whose worker task fails on its first delivery (before it claims the task)."""

    failed: ClassVar[list[bytes]] = []

    def handle_task_queue_task(self, request: dist.TaskRequest) -> list[dist.Notification]:
        if request.body not in _FlakyWorker.failed:
            _FlakyWorker.failed.append(request.body)
            raise RuntimeError("worker lost its connection")
        return super().handle_task_queue_task(request)


def test_an_in_process_task_run_in_the_batch_that_fails_is_queued(tmp_path: Path) -> None:
    """The task an in-process distributor queues for now runs in the batch, not through
    the queue; if it fails, the queue has it (nothing accepted is lost)."""
    _FlakyWorker.failed.clear()
    emb = _with_jobsim(tmp_path, _FlakyWorker)
    try:
        qid = _ensure(emb, "flaky", 3)
        assert run_batch(emb.engine, emb.queue, 100) == 1  # the run; its task failed in the batch
        assert len(_FlakyWorker.failed) == 1
        assert _state(emb, qid) == AttemptState.EXECUTING
        assert emb.queue.pending_count() == 1  # the task, queued to be delivered again
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
        assert len(_FlakyWorker.failed) == 1
    finally:
        emb.close()


def test_a_batch_runs_few_jobs_itself_the_rest_go_through_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs and in-process tasks past ``MAX_BATCH_ACTIONS`` are queued: the worker's
    batch commits between leases (after ``HOLD_S``), not at the end of a long chain."""
    monkeypatch.setattr(core, "MAX_BATCH_ACTIONS", 2)
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        qid = _ensure(emb, "chain", 1, [{"chain": {"links": 5}}])
        assert run_batch(emb.engine, emb.queue, 100) == 1
        assert _state(emb, qid) == AttemptState.WAITING
        assert emb.queue.pending_count() >= 1  # the rest of the chain, queued
        assert emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=60)
    finally:
        emb.close()


def test_a_batch_out_of_time_gives_back_the_tasks_it_did_not_start(tmp_path: Path) -> None:
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        for i in range(4):
            _ensure(emb, f"q{i}", i)
        due = emb.queue.pending_count()
        assert due > 1
        assert run_batch(emb.engine, emb.queue, 100, hold_s=0) == 1  # one task, then time's up
        conn = sqlite3.connect(emb.store.path)  # type: ignore[attr-defined]
        try:
            rows = conn.execute(
                "SELECT attempts, leased_until FROM tasks WHERE done_us IS NULL"
            ).fetchall()
        finally:
            conn.close()
        # The rest are due again at once, and were not counted as delivered.
        assert len(rows) >= due - 1 and set(rows) == {(0, 0)}
    finally:
        emb.close()


def test_a_batch_runs_what_its_own_steps_queue_in_the_same_commit(tmp_path: Path) -> None:
    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        # One lease runs only the tasks due when it started, and what they cause
        # in the batch without the queue: with an in-process distributor (jobsim)
        # a job's task due now, the runs of its dependencies, their jobs, the
        # resume. A task queued for later (a stalled job's wake-up) waits for
        # another lease.
        root = _ensure(emb, "root", 1, [{"deps": {"deps": [{"phrase": {"name": "dep"}}]}}])
        one = _ensure(emb, "one", 1, [{"stall": {"delay": "0.001s"}}])
        assert run_batch(emb.engine, emb.queue, 100) == 2  # the two runs the request queued
        assert _state(emb, root) == AttemptState.FINISHED
        assert _state(emb, one) == AttemptState.EXECUTING
        assert emb.queue.pending_count() == 1
        # With time to hold the lock, the batch leases again what its steps
        # queued, to the end of the execution: one batch, one commit.
        two = _ensure(emb, "two", 2)
        assert run_batch(emb.engine, emb.queue, 100, hold_s=600) >= 2
        assert _state(emb, one) == _state(emb, two) == AttemptState.FINISHED
        assert not emb.queue.any_due()
    finally:
        emb.close()


def test_distributor_calls_out_of_time_are_given_back(tmp_path: Path) -> None:
    emb = _probed_home(tmp_path, in_process=False)
    try:
        qids = [_ensure(emb, f"q{i}", i) for i in range(3)]
        # The batch schedules the 3 executions; then one run call, and time's up.
        assert run_batch(emb.engine, emb.queue, 100, calls_s=0) >= 1
        assert CALLS == [("run", False)]
        while run_batch(emb.engine, emb.queue, 100, calls_s=0):
            pass
        assert sorted(w for w, _ in CALLS) == EVERY_CALL
        assert all(_state(emb, q) == AttemptState.FINISHED for q in qids)
    finally:
        emb.close()


def test_a_sqlite_store_takes_declarations_in_large_parts(tmp_path: Path) -> None:
    """Parts sized for the store: Firestore's ~100 documents (32 dependencies) where
    the store keeps Firestore's write limit (the tests' harness), the SQLite store's
    ``transaction_docs`` (1,000 dependencies) where it has none."""
    declare = steps.DeclareDeps(eid="q|1|1", token_b64="", deps=[])
    other = steps.MergeQuest(qid="q", desc_b64="")
    small = (core.MAX_INLINE, core.INLINE_WRITE_BUDGET)
    emb = Embedded(tmp_path / "home", build_registry(CONFIG))
    try:
        assert emb.store.max_writes is None
        assert emb.store.transaction_docs == sqlite_store.TRANSACTION_DOCS
        assert emb.service.declare_chunk == sqlite_store.TRANSACTION_DOCS // 3
        assert emb.engine._inline_limits(declare) > small
        # Only a declaration's part: any other transaction keeps the small limits.
        assert emb.engine._inline_limits(other) == small
    finally:
        emb.close()
    limited = sqlite_store.SqliteStore(tmp_path / "limited.sqlite")
    limited.max_writes = MAX_COMMIT_WRITES
    assert limited.transaction_docs is None
    engine = core.Engine(
        limited,
        LocalQueue(store=limited, clock=lambda: 0),
        dist.Registry(),
        clock=lambda: 0,
        rand=bytes,
    )
    assert Service(engine).declare_chunk == DECLARE_CHUNK
    assert engine._inline_limits(declare) == small
    limited.close()


def test_a_declaration_part_runs_all_its_steps_in_its_own_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part of ``transaction_docs`` documents creates its dependees (quest, attempt,
    execution, back edge) in its transaction: none of those steps takes a transaction
    of its own after it, though a part's 100 new dependees are far more tail calls
    (and writes) than Firestore's limits allow one transaction."""
    monkeypatch.setattr(sqlite_store, "TRANSACTION_DOCS", 300)  # parts of 100
    width = 250
    emb = Embedded(tmp_path / "home", build_registry(CONFIG))
    first: list[str] = []
    run = emb.engine.run

    def spy(mutation: Mutation, *, origin: str | None = None) -> None:
        claims = isinstance(mutation, steps.DeclareDeps) and (mutation.claim or mutation.unclaim)
        first.append("claim" if claims else mutation.KIND)
        run(mutation, origin=origin)

    monkeypatch.setattr(emb.engine, "run", spy)
    try:
        assert emb.service.declare_chunk == 100
        dep = {
            "shards": width,
            "attempts": {"items": [{"single": 1}]},
            "phrase": {"name": "leaf", "return_stage": {"retval": 1}},
        }
        qid = _ensure(emb, "root", 0, [{"deps": {"deps": [dep]}}])
        emb.drive(lambda: _state(emb, qid) == AttemptState.FINISHED, timeout_s=120)
        assert _state(emb, qid) == AttemptState.FINISHED
    finally:
        emb.close()
    # Two declarations (the first halts, the resumed execution's is answered at once),
    # three parts each, each in parts claiming its attempt first (docs/behaviour.md);
    # the dependees' own steps only in the parts' transactions.
    assert first.count("DeclareDeps") == 6
    assert first.count("claim") == 2
    for kind in ("MergeQuest", "EnsureAttempt", "ScheduleExecution", "AddBackDep"):
        assert kind not in first, kind
    assert emb.engine.stats["MergeQuest"] == width + 1  # and the root's


def test_an_embedded_engine_keeps_the_quests_of_a_large_graph(tmp_path: Path) -> None:
    """One process runs the whole graph: it keeps 100,000 quests' descriptions (each
    step of a quest past the engine's default 10,000 would read it again); settings
    given are kept as they are."""
    emb = Embedded(tmp_path / "home", build_registry(CONFIG))
    try:
        assert emb.engine.settings.quest_cache == QUEST_CACHE
        assert QUEST_CACHE >= 100_000 > core.Settings().quest_cache
    finally:
        emb.close()
    given = core.Settings(quest_cache=7)
    emb = Embedded(tmp_path / "other", build_registry(CONFIG), settings=given)
    try:
        assert emb.engine.settings.quest_cache == 7
    finally:
        emb.close()
