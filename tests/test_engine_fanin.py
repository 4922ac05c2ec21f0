"""Wide graphs: more edges than one step handles, under duplicate delivery.

A finished attempt reaches its dependers a batch of back edges per step
(``Settings.propagate_batch``), up to ``Settings.max_inline`` steps per
transaction; the rest chains through the queue. Both are shrunk here so that a
few dozen dependers take several transactions and several queued links of the
chain.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest

from distributors.fake import Job, quest_desc
from dmcore.engine import core, docs
from dmcore.ids import AttemptID
from dmcore.queue.base import Task
from dmcore.states import AttemptState
from dmcore.store.base import MAX_COMMIT_WRITES
from tests.harness import Chaos, Harness, qid_of

DEPENDERS = 40
INLINE, BATCH = 2, 3
"""6 back edges per transaction: 40 dependers take 7 transactions, 6 queued links."""


@pytest.fixture
def hd(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """The ChaosQueue in order, every PropagateCompletion delivered twice in a row."""
    h = Harness(tmp_path, queue="chaos", seed=5, chaos=Chaos(reorder=False))
    h.engine.settings.max_inline = INLINE
    h.engine.settings.propagate_batch = BATCH
    assert h.chaos is not None
    chaos = h.chaos

    def twice(task: Task, delivery: int) -> None:
        if delivery == 1 and task.payload.get("kind") == "PropagateCompletion":
            chaos.pending.insert(0, (task, 2))  # the very next delivery

    monkeypatch.setattr(chaos, "maybe_duplicate", twice)
    yield h
    h.close()


def test_fan_in_beyond_one_transaction_with_duplicate_deliveries(hd: Harness) -> None:
    """Every depender of a widely depended-on attempt resumes, though each link of
    the completion chain is delivered twice (follow-ups are named by what they do,
    so a redelivery's different work is not refused as a duplicate)."""
    h = hd
    b = quest_desc("B")
    b1 = AttemptID(qid_of(b), 1)
    dependers = [quest_desc(f"D{i}") for i in range(DEPENDERS)]
    h.ensure(b, *dependers)
    h.settle()

    def halt_on_b(job: Job) -> None:
        job.activate()
        assert job.dep_on(b1).should_halt

    for d in dependers:
        h.play(AttemptID(qid_of(d), 1).execution(1), halt_on_b)
    h.settle()
    assert all(h.state(AttemptID(qid_of(d), 1)) == AttemptState.WAITING for d in dependers)

    def finish(job: Job) -> None:
        job.activate()
        job.finish({"b": 1})

    h.play(b1.execution(1), finish)
    h.settle()
    stuck = [
        d.parameters
        for d in dependers
        if h.state(AttemptID(qid_of(d), 1)) != AttemptState.EXECUTING
    ]
    assert stuck == []
    for d in dependers:
        assert h.attempt(AttemptID(qid_of(d), 1))["cur_execution"] == 2
    assert h.failures == []


@pytest.fixture
def hw(tmp_path: pathlib.Path) -> Iterator[Harness]:
    """The ChaosQueue (follow-ups go through outbox records, as on Firestore); the
    harness's store refuses any commit of more than 500 writes, as Firestore does."""
    h = Harness(tmp_path, queue="chaos", seed=9, chaos=Chaos(duplicate=0.3, reorder=True))
    assert h.store.max_writes == MAX_COMMIT_WRITES
    yield h
    h.close()


def test_no_transaction_exceeds_firestores_write_limit(hw: Harness) -> None:
    """W-14: an execution declaring 600 dependencies (new attempts of a new quest), and
    600 dependers resumed by one attempt finishing, stay under 500 writes per commit
    (a larger commit raises TooManyWrites: the job's call, or a queued step, fails)."""
    h = hw
    n = 600
    wide, top = quest_desc("wide"), quest_desc("top")
    wide_q = qid_of(wide)
    h.ensure(top)
    h.settle()
    top1 = AttemptID(qid_of(top), 1)
    shards = [AttemptID(wide_q, k) for k in range(1, n + 1)]

    def declare(job: Job) -> None:
        job.activate()
        assert job.dep_on(*shards, quests=[wide]).should_halt

    h.play(top1.execution(1), declare)
    h.settle()
    assert h.state(top1) == AttemptState.WAITING

    leaf = quest_desc("leaf")
    leaf1 = AttemptID(qid_of(leaf), 1)

    def on_leaf(job: Job) -> None:
        job.activate()
        assert job.dep_on(leaf1, quests=[leaf]).should_halt

    for a in shards:
        h.play(a.execution(1), on_leaf)
    h.settle()

    def done(job: Job) -> None:
        job.activate()
        job.finish({"leaf": 1})

    h.play(leaf1.execution(1), done)
    h.settle()
    assert all(h.state(a) == AttemptState.EXECUTING for a in shards)  # all resumed
    assert h.failures == []


def test_a_declaration_in_parts_is_atomic_in_effect(h: Harness) -> None:
    """A declaration recorded in several transactions (W-14) behaves as one: the job
    halts once, an identical retry (W-6) is answered "halted" again, and once every
    dependency finished the re-issued declaration does not halt and sees them all."""
    h.service.declare_chunk = 3
    deps = [quest_desc(f"part{i}") for i in range(10)]
    aids = [AttemptID(qid_of(d), 1) for d in deps]
    top = quest_desc("top")
    top1 = AttemptID(qid_of(top), 1)
    h.ensure(top)
    h.settle()
    halted: list[bool] = []

    def declare(job: Job) -> None:
        job.activate()
        halted.append(job.dep_on(*aids, quests=deps).should_halt)
        halted.append(job.dep_on(*aids, quests=deps).should_halt)  # a client retry

    h.play(top1.execution(1), declare)
    h.settle()
    assert halted == [True, True]
    assert h.state(top1) == AttemptState.WAITING

    def leaf(job: Job) -> None:
        job.activate()
        job.finish({"v": 1})

    for a in aids:
        h.play(a.execution(1), leaf)
    h.settle()
    seen: list[int] = []

    def again(job: Job) -> None:
        job.activate()
        rsp = job.dep_on(*aids, quests=deps)
        assert not rsp.should_halt
        seen.append(
            sum(
                json.loads(rsp.result.quests[a.quest].attempts[1].data.finished.data.object)["v"]
                for a in aids
            )
        )
        job.finish({"sum": seen[-1]})

    h.play(top1.execution(2), again)
    h.settle()
    assert seen == [10]
    assert h.state(top1) == AttemptState.FINISHED


def test_an_attempt_created_unflagged_meanwhile_still_reaches_its_depender(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X declares a dependency on D's attempt 2 (D exists, the attempt does not). The
    declaration creates it in its own commit, unless its write budget is spent: then
    the MergeQuest (the attempt's EnsureAttempt, with X's reverse edge, in one commit)
    is queued, and here held while a call without an execution creates the attempt
    unflagged (docs.DEPENDED false), which ends reading no back edge. The held
    MergeQuest, delivered last, finds it ended: X resumes."""
    monkeypatch.setattr(core, "INLINE_WRITE_BUDGET", 0)  # every follow-up queued
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(reorder=False))
    try:
        assert h.chaos is not None
        x, d = quest_desc("x"), quest_desc("d")
        x1, d2 = AttemptID(qid_of(x), 1), AttemptID(qid_of(d), 2)
        h.ensure(x, d)

        def job(j: Job) -> None:
            j.activate()
            assert j.dep_on(d2).should_halt

        h.world.run_task(x1.execution(1), job)
        monkeypatch.undo()
        held = []
        while (item := h.chaos.take()) is not None:
            task, _ = item
            if task.payload.get("kind") == "MergeQuest":
                held.append(item)
            else:
                h._deliver(*item)
        assert [[(s["kind"], s["aid"]) for s in t.payload["and_then"]] for t, _ in held] == [
            [("EnsureAttempt", d2.encoded)]
        ]
        h.drain()
        h.ensure(d, attempts=(2,))
        assert h.attempt(d2)[docs.DEPENDED] is False
        h.play(d2.execution(1), lambda j: j.finish({"v": 1}))
        h.settle()
        assert h.state(x1) == AttemptState.WAITING  # its end looked for no back edge
        for item in held:
            h._deliver(*item)
        h.settle()
        assert h.state(x1) != AttemptState.WAITING
        assert h.attempt(x1)["cur_execution"] == 2
    finally:
        h.close()
