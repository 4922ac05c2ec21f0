"""Committed follow-ups with a queue apart from the store (Cloud Tasks; here the
ChaosQueue test double), when the dispatch after the commit is lost.

A step's follow-ups wait on an attempt the step writes anyway (``pending``: no
write of their own), are dropped from it by a later write of that attempt
while one of them is delivered, and are re-sent by the sweep when left past
the staleness limit. A step that writes no attempt keeps them in one outbox
record (one write and one delete per step, not per follow-up), cut into
several only when they would not fit one document.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import pytest

from distributors.fake import Job, quest_desc
from dmcore.engine import core, docs
from dmcore.engine.base import Ctx, Later, Mutation, Step
from dmcore.ids import AttemptID
from dmcore.queue.base import Task
from dmcore.states import AttemptState
from tests.harness import Chaos, Harness


@dataclasses.dataclass
class Fan(Mutation):
    """Test step: touch a counter, then follow up with ``n`` Touch steps elsewhere."""

    KIND = "TestOutboxFan"
    n: int
    pad: str = ""

    def root(self) -> str:
        return "test_fan/root"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        ctx.uow.put(self.root(), {"n": self.n})
        return [Touch(i=i, pad=self.pad) for i in range(self.n)]


@dataclasses.dataclass
class Touch(Mutation):
    KIND = "TestOutboxTouch"
    i: int
    pad: str = ""

    def root(self) -> str:
        return f"test_touch/{self.i}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        ctx.uow.put(self.root(), {"i": self.i})
        return []


@dataclasses.dataclass
class Hold(Mutation):
    """Test step: write attempt ``aid``'s document, follow up with ``n`` Touch steps
    (about other records) and, with ``visit``, a Visit of that same attempt."""

    KIND = "TestHold"
    aid: str
    n: int = 0
    visit: bool = False

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        doc = ctx.uow.get(self.root()) or {}
        ctx.uow.put(self.root(), {**doc, "held": True})
        out: list[Step | Later] = [Touch(i=i) for i in range(self.n)]
        if self.visit:
            # Queued (a Later), not a tail call: a delivery of its own, as a step
            # about another record would be.
            out.append(Later(Visit(aid=self.aid), eta_us=ctx.now_us + 1))
        return out


@dataclasses.dataclass
class Visit(Mutation):
    """Test step: write attempt ``aid``'s document (as a follow-up's own step does)."""

    KIND = "TestVisit"
    aid: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        doc = ctx.uow.get(self.root()) or {}
        ctx.uow.put(self.root(), {**doc, "visits": int(doc.get("visits", 0)) + 1})
        return []


@pytest.fixture
def down(tmp_path: pathlib.Path) -> Iterator[Harness]:
    """Every dispatch fails after the commit: follow-ups wait in the outbox."""
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(fail_dispatch=1.0, reorder=False))
    yield h
    h.close()


def outbox(h: Harness) -> list[tuple[str, docs.Doc]]:
    return h.store.query(docs.OUTBOX)


def test_a_steps_follow_ups_share_one_record(down: Harness) -> None:
    down.engine.run(Fan(n=3))
    ((_, record),) = outbox(down)
    assert [t["payload"]["i"] for t in record["tasks"]] == [0, 1, 2]
    assert down.store.count("test_touch") == 0

    assert down.chaos is not None
    down.chaos.chaos.fail_dispatch = 0.0  # the queue is back
    down.clock.advance(6)  # past the staleness limit
    assert down.engine.sweep()["outbox"] == 1
    down.drain()
    assert outbox(down) == []
    assert down.store.count("test_touch") == 3


def test_records_are_cut_to_fit_a_document(down: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "OUTBOX_RECORD_BYTES", 3000)
    down.engine.run(Fan(n=5, pad="x" * 1000))
    records = [r for _, r in outbox(down)]
    assert len(records) >= 2
    assert all(len(r["tasks"]) >= 1 for r in records)
    assert sorted(t["payload"]["i"] for r in records for t in r["tasks"]) == [0, 1, 2, 3, 4]


def test_groups_by_count_and_size() -> None:
    tasks = [Task(f"t{i}", "mutation", {"i": i}) for i in range(250)]
    groups = core._outbox_groups(tasks)
    assert [len(g) for g in groups] == [100, 100, 50]
    assert [t for g in groups for t in g] == tasks
    big = [Task(f"b{i}", "mutation", {"pad": "y" * 300_000}) for i in range(3)]
    assert [len(g) for g in core._outbox_groups(big)] == [1, 1, 1]


def test_a_record_of_the_older_one_task_form_is_swept(down: Harness) -> None:
    task = {"name": "legacy", "target": "mutation", "eta_us": 0}
    task["payload"] = Touch(i=7).to_payload()
    down.store.transaction(
        lambda tx: tx.set(
            docs.outbox_path("legacy"),
            {
                "task": task,
                "created_us": 0,
                docs.SWEEP_SHARD: docs.sweep_shard("outbox/legacy", core.SWEEP_SHARDS),
            },
        )
    )
    assert down.chaos is not None
    down.chaos.chaos.fail_dispatch = 0.0
    down.clock.advance(6)
    assert down.engine.sweep()["outbox"] == 1
    down.drain()
    assert down.store.get("test_touch/7") == {"i": 7}
    assert outbox(down) == []


def test_a_swept_record_keeps_each_tasks_shard_key(down: Harness) -> None:
    """A task the sweep sends again keeps its root record as shard key, so it goes to
    the Cloud Tasks queue of its first copy (whose name de-duplication then holds)."""
    down.engine.run(Fan(n=3))
    assert down.chaos is not None
    down.chaos.chaos.fail_dispatch = 0.0
    down.clock.advance(6)
    assert down.engine.sweep()["outbox"] == 1
    keys = {}
    while (item := down.chaos.take()) is not None:
        task, _ = item
        keys[task.payload.get("i", task.name)] = task.shard_key
    assert keys == {i: f"test_touch/{i}" for i in range(3)}, keys


def pending(h: Harness, aid: str = "a") -> list[docs.Doc]:
    doc = h.store.get(f"{docs.ATTEMPTS}/{aid}") or {}
    out: list[docs.Doc] = doc.get(docs.PENDING) or []
    return out


def test_follow_ups_wait_on_the_written_attempt_and_the_sweep_delivers_them(
    down: Harness,
) -> None:
    """The dispatch after the commit is lost (as if the process died there): the
    follow-ups committed with the step, on its attempt, and the sweep sends them."""
    down.engine.run(Hold(aid="a", n=3))
    assert outbox(down) == []  # no document of their own
    entries = pending(down)
    assert [e["payload"]["i"] for e in entries] == [0, 1, 2]
    att = down.store.get(f"{docs.ATTEMPTS}/a")
    assert att is not None and att[docs.PENDING_DUE] == min(e["due_us"] for e in entries)
    assert att[docs.SWEEP_SHARD] == docs.sweep_shard(f"{docs.ATTEMPTS}/a", core.SWEEP_SHARDS)
    assert down.chaos is not None
    down.chaos.chaos.fail_dispatch = 0.0  # the queue is back
    assert down.engine.sweep()["outbox"] == 0  # not stale yet: perhaps queued already
    down.clock.advance(6)  # past the staleness limit
    assert down.engine.sweep()["outbox"] == 3
    assert pending(down) == []
    down.drain()
    assert down.store.count("test_touch") == 3
    att = down.store.get(f"{docs.ATTEMPTS}/a")
    assert att is not None and docs.PENDING_DUE not in att


def test_a_follow_ups_own_step_drops_it_without_a_write_of_its_own(
    tmp_path: pathlib.Path,
) -> None:
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(reorder=False))
    try:
        h.engine.run(Hold(aid="a", visit=True))
        (entry,) = pending(h)
        assert entry["payload"]["kind"] == Visit.KIND
        h.clock.advance(1)
        h.drain()  # Visit writes the attempt, and drops its own entry in that write
        att = h.store.get(f"{docs.ATTEMPTS}/a")
        assert att is not None and att["visits"] == 1
        assert docs.PENDING not in att and docs.PENDING_DUE not in att
        h.clock.advance(6)
        assert h.engine.sweep()["outbox"] == 0  # nothing left to re-send
    finally:
        h.close()


def test_a_redelivery_keeps_the_entries_of_other_follow_ups(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(reorder=False))
    try:
        h.engine.run(Hold(aid="a", n=2, visit=True))
        assert len(pending(h)) == 3
        h.clock.advance(1)
        h.drain()
        # The Touches write other records: their entries stay for the sweep, which
        # re-sends them (refused as duplicates by name) and clears them.
        assert sorted(e["payload"]["i"] for e in pending(h)) == [0, 1]
        h.clock.advance(6)
        assert h.engine.sweep()["outbox"] == 2
        assert pending(h) == []
        assert h.drain() == 0  # the re-sent copies were refused: queued once already
    finally:
        h.close()


def test_follow_ups_beyond_an_attempts_room_go_to_an_outbox_record(
    down: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "PENDING_TASKS", 2)
    down.engine.run(Hold(aid="a", n=3))
    assert [e["payload"]["i"] for e in pending(down)] == [0, 1]
    ((_, record),) = outbox(down)
    assert [t["payload"]["i"] for t in record["tasks"]] == [2]
    assert down.chaos is not None
    down.chaos.chaos.fail_dispatch = 0.0
    down.clock.advance(6)
    assert down.engine.sweep()["outbox"] == 1 + 2
    down.drain()
    assert down.store.count("test_touch") == 3
    assert outbox(down) == [] and pending(down) == []


def test_a_leaf_whose_first_dispatch_is_lost_finishes_by_the_sweep(down: Harness) -> None:
    """dm's own steps on the Firestore-shaped path: the RunExecution that MergeQuest
    commits is lost with every dispatch; the sweep sends it once the queue is back."""
    (qid,) = down.ensure(quest_desc("lost"))
    aid = AttemptID(qid, 1)
    assert outbox(down) == []
    (entry,) = pending(down, aid.encoded)
    assert entry["payload"]["kind"] == "RunExecution"
    assert down.chaos is not None
    down.chaos.chaos.fail_dispatch = 0.0
    assert down.drain() == 0  # nothing was queued
    down.settle(max_seconds=10)  # the sweep re-sends it

    def finish(job: Job) -> None:
        job.activate()
        job.finish({"ok": True})

    down.play(aid.execution(1), finish)
    down.settle(max_seconds=10)
    assert down.state(aid) == AttemptState.FINISHED
    assert pending(down, aid.encoded) == []


def test_the_sweep_finds_due_attempts_in_every_shard(down: Harness) -> None:
    aids = [f"s{i}" for i in range(64)]
    shards = {docs.sweep_shard(f"{docs.ATTEMPTS}/{a}", core.SWEEP_SHARDS) for a in aids}
    assert shards == set(range(core.SWEEP_SHARDS))  # the test covers every shard
    for a in aids:
        down.engine.run(Hold(aid=a, n=1))
    assert down.chaos is not None
    down.chaos.chaos.fail_dispatch = 0.0
    down.clock.advance(6)
    assert down.engine.sweep()["outbox"] == len(aids)
    assert all(pending(down, a) == [] for a in aids)


def test_sweep_shards_spread_evenly() -> None:
    counts = [0] * core.SWEEP_SHARDS
    for i in range(16_000):
        counts[docs.sweep_shard(f"{docs.ATTEMPTS}/q{i}|fffffffe", core.SWEEP_SHARDS)] += 1
    assert max(counts) < 1.1 * 1000 and min(counts) > 0.9 * 1000, counts
