"""Wide graphs: more edges than one step handles, under duplicate delivery.

A finished attempt reaches its dependers a batch of back edges per step
(``Settings.propagate_batch``), up to ``Settings.max_inline`` steps per
transaction; the rest chains through the queue. Both are shrunk here so that a
few dozen dependers take several transactions and several queued links of the
chain.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from distributors.fake import Job, quest_desc
from dmcore.ids import AttemptID
from dmcore.queue.base import Task
from dmcore.states import AttemptState
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
