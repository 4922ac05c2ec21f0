"""The outbox of a queue apart from the store (Cloud Tasks; here the ChaosQueue test double).

A step's follow-ups share one outbox record (one write and one delete per step
on Firestore, not per follow-up), cut into several only when they would not
fit one document.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import pytest

from dmcore.engine import core, docs
from dmcore.engine.base import Ctx, Later, Mutation, Step
from dmcore.queue.base import Task
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
        lambda tx: tx.set(docs.outbox_path("legacy"), {"task": task, "created_us": 0})
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
