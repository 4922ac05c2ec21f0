"""The seeded simulation: one test per seed, on the ChaosQueue and the real local queue.

Run ``uv run pytest tests/sim`` (seeds 0..999 on the ChaosQueue, fewer on the
local queue, with worker threads and on the Firestore emulator), ``--seeds N``
for more or fewer (``--seeds 100000`` for a long run), ``--seed S`` to replay
one. See ``tests/sim/sim.py`` for what is simulated and
:meth:`tests.sim.sim.Sim.check` for the invariants. Seeds that hit a known,
not yet fixed engine bug are listed in ``tests/sim/conftest.py``
(``KNOWN_BUGS``) and marked as strict xfails; each such bug gets a scripted
regression test here.

To drive a scenario of your own (another file may), build the harness with
:func:`tests.sim.sim.new_harness` and run :class:`tests.sim.sim.Sim` on it, or
call :func:`simulate`.

A seed that does not finish: do not watch it with ``faulthandler.dump_traceback_later``.
On CPython 3.11 its watchdog thread reads the running thread's frames unlocked and now
and then crashes the process (SIGSEGV in ``dump_traceback``, within seconds at a 0.02 s
interval; the report shows the main thread in ``dmcore/store/sqlite.py``, where a run
spends its time: not a store defect). gdb attached to the process is safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import pathlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from distributors.fake import Crash, Job, quest_desc
from dmcore import service
from dmcore.engine import base, deps, docs, layout, records, steps
from dmcore.engine.base import Ctx, Later, Mutation, Step
from dmcore.engine.core import Settings
from dmcore.ids import AttemptID, ExecutionID
from dmcore.states import AttemptState
from dmcore.store.base import Store
from dmcore.store.firestore import FirestoreStore
from tests.harness import Harness, qid_of
from tests.sim.observe import Observed
from tests.sim.sim import NotConverged, Plan, Sim, make_plan, new_harness, replay_hint

EXPECTED_FAILURES = ("CancelTask: TransientError",)
"""Tasks that may fail and be retried in this world: cancelling a task on a
distributor that answers "try later" (the queue retries it)."""


def simulate(
    seed: int,
    tmp_path: pathlib.Path,
    *,
    queue: str,
    store: Store | None = None,
    workers: int = 1,
    plan: Plan | None = None,
) -> str:
    """Run and check one seed; returns a fingerprint of the run (trace and outcome)."""
    plan = plan or make_plan(seed, workers=workers)
    h = new_harness(plan, tmp_path, queue=queue, store=store)
    what = f"seed {seed} ({queue}{f', {workers} workers' if workers > 1 else ''})"
    try:
        sim = Sim(plan, h)
        try:
            sim.run()
        except NotConverged as e:
            print("\n".join(sim.trace))  # shown by pytest under "Captured stdout call"
            raise AssertionError(f"{what}: {e}\n{replay_hint(seed)}") from None
        except Exception as e:  # the engine (or the harness) blew up mid-run
            print("\n".join(sim.trace))
            raise AssertionError(f"{what}: the run raised {e!r}; {replay_hint(seed)}") from e
        violations = sim.check()
        # Failed dispatches are swallowed by the engine (left to the sweep) and no
        # step fails in this world but those listed: the queue retried nothing else.
        violations += [
            f"a queued task failed: {f}" for f in h.failures if not f.startswith(EXPECTED_FAILURES)
        ]
        if violations:
            print("\n".join(sim.trace))
            shown = "\n  ".join(violations[:40])
            more = f"\n  ... and {len(violations) - 40} more" if len(violations) > 40 else ""
            raise AssertionError(
                f"{what}: {len(violations)} invariant violations; "
                f"{replay_hint(seed)}\nplan: {plan.summary()}\n  {shown}{more}"
            )
        return _fingerprint(sim)
    finally:
        h.close()


@pytest.fixture(autouse=True)
def _quiet_dispatch_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Failed dispatches are expected (ChaosQueue); keep their tracebacks out of reports."""
    caplog.set_level(logging.CRITICAL, logger="dm")


def test_simulation(seed: int, tmp_path: pathlib.Path) -> None:
    simulate(seed, tmp_path, queue="chaos")


def test_simulation_local(local_seed: int, tmp_path: pathlib.Path) -> None:
    simulate(local_seed, tmp_path, queue="local")


def test_simulation_threads(threaded_seed: int, tmp_path: pathlib.Path) -> None:
    """Several worker threads deliver the ChaosQueue's tasks at once (SQLite).

    Interleavings vary from run to run: a failure names its seed, but may need a
    few runs of ``--seed S`` to come back."""
    simulate(threaded_seed, tmp_path, queue="chaos", workers=3)


@pytest.mark.emulator
def test_simulation_firestore(
    firestore_seed: int, tmp_path: pathlib.Path, firestore_store: FirestoreStore
) -> None:
    """Seeds on the Firestore backend (the emulator), chaos queue; the odd ones with
    two worker threads (the emulator breaks lock conflicts by a 2 s timeout: few)."""
    workers = 2 if firestore_seed % 2 else 1
    simulate(firestore_seed, tmp_path, queue="chaos", store=firestore_store, workers=workers)


@pytest.fixture
def clean(tmp_path: pathlib.Path) -> Iterator[Sim]:
    """Seed 4 run to its end, every invariant holding (to plant faults into)."""
    plan = make_plan(4)
    h = new_harness(plan, tmp_path)
    try:
        sim = Sim(plan, h)
        sim.run()
        assert sim.check() == []
        yield sim
    finally:
        h.close()


def test_checker_catches_tampering(clean: Sim) -> None:
    """The invariant checker itself: each planted fault is reported."""
    sim = clean
    depender, dependees = next(iter(sim.declared.items()))
    dependee = next(iter(dependees))
    seen = Observed(sim.h.service, {a.quest for a in sim.known()})
    done = next(a for a, att in seen.attempts.items() if att.result)
    sim.internals.tamper(drop_back_edge=(dependee, depender), wrong_result=done)
    found = "\n".join(sim.check())
    assert "back record missing" in found
    assert "reference says" in found
    assert "outbox record left" in found


def test_checker_catches_a_task_left_running(clean: Sim) -> None:
    """A cancel that forgets the distributor's task is reported."""
    task = clean.h.world.task(clean.played[-1])
    task.result = None  # as if dm had ended it but never cancelled the task
    assert "left running" in "\n".join(clean.check())


PLANTED_SEED = 60
"""A default seed (tiny batches) in which the second client creates a declared attempt
unflagged while the declaration's EnsureAttempt waits in the queue, and lets it end
before that EnsureAttempt runs (re-find one with the planted bug below, and update this,
when the plan's draws change: of seeds 0..99, 60, 88 and 96 fail with it)."""


def test_the_second_client_finds_an_unflagged_dependee_that_ended_unseen(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulation itself: with the fix of this race taken out again (a declaration's
    EnsureAttempt that finds its attempt ended unflagged propagates nothing), a seed
    leaves the depender waiting for good.

    Whether the race is still there since a declaration reads its dependees in its own
    transaction (deps.declare_deps): an absent dependee is created there, flagged, its
    depender inline (EnsureAttempt ``depended``/``depender`` via MergeQuest), and a live
    one is flagged by the AddBackDep in the same commit, so no other caller can create
    the attempt unflagged in between, as long as those steps run in the declaration's
    transaction. They run there only while ``Settings.max_inline`` and the write budget
    (core.INLINE_WRITE_BUDGET) allow; past them the MergeQuest / EnsureAttempt is queued
    and the old window opens again: the forward edge is written, the attempt absent, a
    call without an execution creates it unflagged, it ends and looks for no depender,
    and only the queued EnsureAttempt (lifecycle.ensure_attempt: ended unflagged ->
    PropagateCompletion) reaches the depender. The simulation's tiny batches
    (max_inline 2) queue it; seed PLANTED_SEED passes without the second client.
    """
    real = base._ROLL_FORWARD[steps.EnsureAttempt]

    def planted(step: Mutation, ctx: Ctx) -> list[Step | Later]:
        assert isinstance(step, steps.EnsureAttempt)
        att = ctx.uow.get(docs.attempt_path(AttemptID.decode(step.aid)))
        if step.depended and records.attempt_is_terminal(att) and att and not att[docs.DEPENDED]:
            return []  # ended unflagged: its end looked for no back edge, nor does this
        return real(step, ctx)

    kind: type[Mutation] = steps.EnsureAttempt
    monkeypatch.setitem(base._ROLL_FORWARD, kind, planted)
    with pytest.raises(AssertionError, match="WAITING, not terminal"):
        simulate(PLANTED_SEED, tmp_path, queue="chaos")


UNFLAGGED_EDGE_SEED = 16
"""A default seed that fails when an edge into a live attempt does not flag it, the
depender left WAITING, with the second client off too (re-find one with the planted bug
below when the plan's draws change). Of seeds 0..99, 34 fail with it, every one with a
forward record left unsatisfied and 29 with a depender left WAITING: in the other five
the driver ends the depender another way (a cancel, or its job's FinishAttempt) before
the run's end. Seed 8 was one of the 29 until ``Harness.settle`` stopped following polls
past its end; the clock then moves less per settle, the driver's draws differ, and it
cancels that depender."""


def test_an_edge_into_a_live_unflagged_attempt_must_flag_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's mechanism: a declaration's AddBackDep, in its commit, flags a live
    dependee (docs.DEPENDED) that a call without an execution created unflagged. With
    that flag taken out, the dependee's end looks for no depender and a seed leaves the
    depender waiting for good (the attempts ensured from outside reach it already)."""
    real = base._ROLL_FORWARD[steps.AddBackDep]

    def planted(step: Mutation, ctx: Ctx) -> list[Step | Later]:
        assert isinstance(step, steps.AddBackDep)
        path = docs.attempt_path(AttemptID.decode(step.dependee))
        before = ctx.uow.get(path)
        unflagged = before is not None and before.get(docs.DEPENDED) is False
        out = real(step, ctx)
        after = ctx.uow.get(path)
        if unflagged and after is not None and after.get(docs.DEPENDED):
            ctx.uow.put(path, {**after, docs.DEPENDED: False})  # the edge flags nothing
        return out

    kind: type[Mutation] = steps.AddBackDep
    monkeypatch.setitem(base._ROLL_FORWARD, kind, planted)
    with pytest.raises(AssertionError, match="WAITING, not terminal") as caught:
        simulate(UNFLAGGED_EDGE_SEED, tmp_path, queue="chaos")
    assert "forward record not satisfied" in str(caught.value)  # the completion never came


CYCLE_BETWEEN_PARTS_SEED = 26
"""A default seed (declarations in parts of 2, other callers' work between parts) in
which a dependee's job, played between its depender's parts, declares its depender
before the part that records the reverse edge (re-find one with the planted bug
below, and update this, when the plan's draws change: of seeds 0..79, 0, 26, 37, 39,
47, 64, 65, 69, 73 and 75 fail with it since a memoised EnsureGraphData runs no
engine step (so draws no origin); 0, 26, 37, 39, 47, 69, 73 and 74 did before, since
another client asks for a later part's dependency between parts (Sim._later_closer))."""


def test_a_cycle_closed_between_a_declarations_parts_is_refused_to_its_closer(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the declaration's claim taken out (cycle walks ignore docs.DECLARING), the
    dependee's declaration of its depender, between the depender's parts, is accepted,
    and the depender's next part finds the cycle and is refused after its earlier parts
    committed (a partial write). The simulation catches it only through its hook
    between parts (Service.between_parts): the same seed passes without it."""
    real = deps.reject_cycles

    def planted(*args: Any, claims_at_us: int | None, **kwargs: Any) -> None:
        real(*args, claims_at_us=None, **kwargs)

    monkeypatch.setattr(deps, "reject_cycles", planted)
    plan = dataclasses.replace(make_plan(CYCLE_BETWEEN_PARTS_SEED), p_between_parts=0.0)
    simulate(CYCLE_BETWEEN_PARTS_SEED, tmp_path / "without", queue="chaos", plan=plan)
    with pytest.raises(AssertionError, match="a cycle"):
        simulate(CYCLE_BETWEEN_PARTS_SEED, tmp_path / "with", queue="chaos")


RESHARD_SEED = 14
"""A default seed that changes ``sweep_shards`` mid-run and fails when the sweep
forgets the shards of what was stamped before (of seeds 0..150, 14 fails with the
bug below, as do 4, 31, 47, 49, 56, 67, 72, 100, 105, 135, 147, 148, 149)."""


def test_a_lowered_sweep_shard_count_must_not_strand_what_was_stamped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout check raises the sweep to the largest count the records were stamped
    with (Settings.swept_shards). With that taken out, a lowered ``sweep_shards``
    leaves the timers and follow-ups of the higher shards unswept: the run does not
    settle. The same seed passes when the count never changes."""
    real = layout.check_settings

    def planted(store: Store, where: str, afresh: str, settings: Settings) -> None:
        real(store, where, afresh, settings)
        settings.swept_shards = 0  # the sweep forgets the shards stamped before

    monkeypatch.setattr(layout, "check_settings", planted)
    plan = dataclasses.replace(make_plan(RESHARD_SEED), reshard=False)
    simulate(RESHARD_SEED, tmp_path / "without", queue="chaos", plan=plan)
    with pytest.raises(AssertionError, match="keep coming back"):
        simulate(RESHARD_SEED, tmp_path / "with", queue="chaos")


def _fingerprint(sim: Sim) -> str:
    h = hashlib.sha256("\n".join(sim.trace).encode())
    seen = Observed(sim.h.service, {a.quest for a in sim.known()})
    for aid, att in sorted(seen.attempts.items(), key=lambda kv: (kv[0].quest, kv[0].num)):
        h.update(f"{aid} {att.state} {att.num_executions} {att.result}".encode())
    return h.hexdigest()


def test_simulation_is_deterministic(tmp_path: pathlib.Path) -> None:
    """The same seed replays the same run (what ``--seed S`` relies on)."""
    seed = 11
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert simulate(seed, tmp_path / "a", queue="chaos") == simulate(
        seed, tmp_path / "b", queue="chaos"
    )


def test_regression_halting_retry_with_carried_over_edge(tmp_path: pathlib.Path) -> None:
    """W-6 retry of a halting call with a carried-over edge (found by the sim, seed 197).

    Was an engine bug (fixed in 298cd3c): DeclareDeps kept an unsatisfied edge of
    an earlier execution whose dependee had meanwhile ended, so the retry check
    refused the repeated call with Unauthenticated.

    A|1|1 depends on new B|1 and C|1, halts, then crashes (retried): its edges
    stay armed for execution 1. B|1 finishes; its propagation is still queued
    (as when the commit that ends an attempt has no room left to run it) when
    A|1|2 declares the same dependencies: it halts on C|1, and the
    same call repeated (a client retry after a lost response, W-6) must be
    answered "halted" again, not refused.
    """
    h = Harness(tmp_path, queue="local")
    try:
        a, b, c = quest_desc("A", crashed=1), quest_desc("B"), quest_desc("C")
        a1, b1, c1 = (AttemptID(qid_of(d), 1) for d in (a, b, c))
        h.ensure(a)
        h.settle()

        def a_first(job: Job) -> None:
            job.activate()
            assert job.dep_on(b1, c1, quests=[b, c]).should_halt
            raise Crash("after halting")

        h.play(a1.execution(1), a_first)
        h.settle()
        assert h.attempt(a1)["cur_execution"] == 2

        def b_job(job: Job) -> None:
            job.activate()
            job.finish({"v": 1})

        h.world.run_task(b1.execution(1), b_job)
        data, attrs = h.inbox.pop()
        inline, h.engine.settings.max_inline = h.engine.settings.max_inline, 1
        h.engine.receive_notification(data, attrs)  # B|1 FINISHED; the queue not drained
        h.engine.settings.max_inline = inline
        assert h.state(b1) == AttemptState.FINISHED
        edge = h.store.get(docs.fwd_dep_path(a1, b1))
        assert edge is not None and not edge["satisfied"] and edge["for_execution"] == 1

        halted: list[bool] = []

        def a_second(job: Job) -> None:
            job.activate()
            halted.append(job.dep_on(b1, c1, quests=[b, c]).should_halt)
            halted.append(job.dep_on(b1, c1, quests=[b, c]).should_halt)  # the retry

        result = h.world.run_task(a1.execution(2), a_second)
        assert not result.HasField("abnormal_finish"), result.abnormal_finish.reason
        assert halted == [True, True]

        # And the graph still completes: C, then A|1|3 with both results.
        h.settle()
        h.play(c1.execution(1), b_job)
        h.settle()
        seen: list[bool] = []

        def a_third(job: Job) -> None:
            job.activate()
            seen.append(job.dep_on(b1, c1, quests=[b, c]).should_halt)
            job.finish({"v": 3})

        h.play(a1.execution(3), a_third)
        h.settle()
        assert seen == [False]
        assert h.state(a1) == AttemptState.FINISHED
        assert h.result(a1) == {"v": 3}
        assert h.failures == []
    finally:
        h.close()


OWN_CALL_SEED = 29
"""A default seed in which the declaring execution makes another declaration between its
own parts, and which fails when the claim forgets which call took it (re-find one with
the planted bug below, and update this, when the plan's draws change: of seeds 0..79,
29, 37, 47, 65, 69, 73 and 75 fail with it)."""


def test_another_call_of_the_declaring_execution_must_leave_its_claim_alone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim names its call (deps._claim_holds): with that taken out, another
    declaration of the same execution between the first call's parts (Sim._own_call:
    a second thread of the job, in parts too) takes the claim over, and is accepted,
    or refused after dropping it, where it must be told to try again. (The same
    declaration made again, a client retrying while the first call still runs, is
    the same call since the claim is named by what it declares: it takes the claim
    over, rightly, and Sim._own_call checks it is answered as the first call.) The
    same seed passes without that other call."""
    real = deps._claim_holds

    def planted(att: docs.Doc, eid: ExecutionID, call: str, now_us: int) -> bool:
        return real(att, eid, (att.get(docs.DECLARING) or {}).get("call", call), now_us)

    monkeypatch.setattr(deps, "_claim_holds", planted)
    plan = dataclasses.replace(make_plan(OWN_CALL_SEED), p_own_call=0.0)
    simulate(OWN_CALL_SEED, tmp_path / "without", queue="chaos", plan=plan)
    with pytest.raises(AssertionError, match="first call's claim"):
        simulate(OWN_CALL_SEED, tmp_path / "with", queue="chaos")


DROPPED_CALL_SEED = 9
"""A default seed in which a declaration's call dies between its parts and its job makes
the same declaration again (Plan.p_dropped_call), and which fails when the call is not
named by what it declares (a random nonce, as before: of seeds 0..99, 9, 20, 64, 66, 82,
87 and 92 fail with it, without another call of their own; or by its dependees in the
order given: 4, 9, 45, 50, 64 and others). Re-find one, and update this, when the
plan's draws change."""


_CALLS = itertools.count()


def _nonce(eid: ExecutionID, token: bytes, aids: Iterable[AttemptID], quests: Any) -> str:
    return f"call-{next(_CALLS)}"  # a new name each call, as the random nonce was


def _in_its_order(eid: ExecutionID, token: bytes, aids: Iterable[AttemptID], quests: Any) -> str:
    return hashlib.sha256(repr((str(eid), token, [a.encoded for a in aids])).encode()).hexdigest()


@pytest.mark.parametrize("naming", [_nonce, _in_its_order])
def test_a_declaration_made_again_after_its_call_died_must_take_its_claim_over(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, naming: Callable[..., str]
) -> None:
    """The claim of a declaration in parts names the call by what it declares, its
    dependees in any order (service._declaration_call): named otherwise, the job's
    retry of a declaration whose call died between its parts (Sim._declare; its
    dependees maybe in reverse) is told to wait for the dead call's claim until its
    lease runs out. The same seed passes without the dropped call."""
    monkeypatch.setattr(service, "_declaration_call", naming)
    plan = dataclasses.replace(make_plan(DROPPED_CALL_SEED), p_dropped_call=0.0)
    simulate(DROPPED_CALL_SEED, tmp_path / "without", queue="chaos", plan=plan)
    with pytest.raises(AssertionError, match=r"EnsureGraphData raised Unavailable.*another call"):
        simulate(DROPPED_CALL_SEED, tmp_path / "with", queue="chaos")


@pytest.mark.parametrize(
    ("queue", "plan_seed"), [("local", 0), ("local", 3), ("chaos", 0), ("chaos", 1)]
)
def test_each_sqlite_connection_serves_one_thread(
    queue: str, plan_seed: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs on three worker threads (the local queue's batches on a pool's threads,
    the ChaosQueue's tasks on threads at once): every statement a SQLite connection
    runs, it runs on the thread that opened it. The store and the local queue open
    theirs with ``check_same_thread=False`` (so that ``close`` may close them from
    any thread), so sqlite3 itself would not object to one shared between threads."""
    opened: list[tuple[threading.Thread, set[threading.Thread]]] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real_connect(*args, **kwargs)
        used: set[threading.Thread] = set()
        opened.append((threading.current_thread(), used))
        # Runs on the thread that runs the statement.
        conn.set_trace_callback(lambda _sql: used.add(threading.current_thread()))
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    simulate(plan_seed, tmp_path, queue=queue, workers=3)
    assert len({t for t, _ in opened}) > 1  # the premise: several threads had their own
    shared = [(t.name, sorted(u.name for u in used)) for t, used in opened if used - {t}]
    assert not shared, f"connections used by other threads than their opener's: {shared}"
