"""End-to-end engine scenarios with the fake distributor (spec §2.3 and friends).

Each scenario runs on the real local queue and on the ChaosQueue, which
duplicates, reorders and delays deliveries: the outcome must be the same.
"""

from __future__ import annotations

import json
import pathlib

from distributors.fake import Job, quest_desc
from dmcore.ids import AttemptID
from dmcore.states import AttemptState, ExecutionState
from tests.harness import Harness, qid_of


def test_worked_sequence(h: Harness) -> None:
    """Spec §2.3: A depends on a new B, waits, resumes with its previous state."""
    a_desc, b_desc = quest_desc("A"), quest_desc("B")
    (qa,) = h.ensure(a_desc)
    a1, b1 = AttemptID(qa, 1), AttemptID(qid_of(b_desc), 1)
    h.settle()
    assert h.state(a1) == AttemptState.EXECUTING
    assert h.world.pending() == [a1.execution(1)]

    def a_first(job: Job) -> None:
        job.activate()
        rsp = job.dep_on(b1, quests=[b_desc])
        assert rsp.accepted and rsp.should_halt and not rsp.HasField("result")
        job.state["stage"] = 1

    h.play(a1.execution(1), a_first)
    h.settle()
    assert h.exec_state(a1.execution(1)) == ExecutionState.FINISHED
    assert h.state(a1) == AttemptState.WAITING
    assert h.state(b1) == AttemptState.EXECUTING

    def b_job(job: Job) -> None:
        job.activate()
        job.finish({"answer": 42})

    h.play(b1.execution(1), b_job)
    h.settle()
    assert h.state(b1) == AttemptState.FINISHED
    assert h.state(a1) == AttemptState.EXECUTING
    assert h.attempt(a1)["cur_execution"] == 2

    seen: dict[str, object] = {}

    def a_second(job: Job) -> None:
        seen["state"] = dict(job.state)
        job.activate()
        rsp = job.dep_on(b1)
        assert not rsp.should_halt
        b_result = rsp.result.quests[b1.quest].attempts[1].data.finished.data.object
        seen["b"] = b_result
        job.finish({"sum": 1})

    h.play(a1.execution(2), a_second)
    h.settle()
    assert seen["state"] == {"stage": 1}  # prev_result = A|1|1's distributor result
    assert seen["b"] == '{"answer":42}'
    assert h.state(a1) == AttemptState.FINISHED
    assert h.result(a1) == {"sum": 1}
    assert h.failures == [] or h.chaos is not None


def test_diamond_runs_shared_dependency_once(h: Harness) -> None:
    """A→B, A→C, B→D, C→D: D runs once and its result is reused by B and C."""
    a, b, c, d = (quest_desc(n) for n in "ABCD")
    ids = {n: AttemptID(qid_of(x), 1) for n, x in zip("ABCD", (a, b, c, d), strict=True)}
    h.ensure(a)
    h.settle()

    def depends(*names: str) -> object:
        descs = {"B": b, "C": c, "D": d}

        def job(j: Job) -> None:
            j.activate()
            rsp = j.dep_on(*(ids[n] for n in names), quests=[descs[n] for n in names])
            if not rsp.should_halt:
                total = 0
                for n in names:
                    obj = rsp.result.quests[ids[n].quest].attempts[1].data.finished.data.object
                    import json

                    total += json.loads(obj)["v"]
                j.finish({"v": total + 1})

        return job

    runs: dict[str, int] = {n: 0 for n in "ABCD"}
    for _ in range(20):
        pending = h.world.pending()
        if not pending:
            break
        for eid in pending:
            name = next(n for n, x in ids.items() if x.quest == eid.quest)
            runs[name] += 1
            if name == "D":

                def leaf(j: Job) -> None:
                    j.activate()
                    j.finish({"v": 1})

                h.play(eid, leaf)
            else:
                deps = {"A": ("B", "C"), "B": ("D",), "C": ("D",)}[name]
                h.play(eid, depends(*deps))  # type: ignore[arg-type]
        h.settle()
    assert all(h.state(x) == AttemptState.FINISHED for x in ids.values())
    assert runs["D"] == 1
    assert h.attempt(ids["D"])["cur_execution"] == 1
    assert h.result(ids["A"]) == {"v": 2 + 2 + 1}


def test_quest_cache_is_bounded(tmp_path: pathlib.Path) -> None:
    """Quests are immutable and cached, but a long-lived engine sees unboundedly many."""
    h = Harness(tmp_path)
    try:
        h.engine.settings.quest_cache = 3
        descs = [quest_desc(f"q{i}") for i in range(8)]
        qids = h.ensure(*descs)
        for _ in range(2):
            for qid, d in zip(qids, descs, strict=True):
                got = h.engine.quest_desc(qid)
                assert got is not None and qid_of(got) == qid
                assert json.loads(got.parameters) == json.loads(d.parameters)
                assert len(h.engine._quests) <= 3
    finally:
        h.close()
