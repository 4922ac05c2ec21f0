"""What a depender not yet over waits for when a dependee is re-opened (``dm retry``).

The re-open (:mod:`dmcore.engine.reopen`) opens each such depender's edge to the
re-opened dependee again. A halted depender resumes once no edge tagged with its
halted execution (``for_execution``) is open, so the tag the re-open leaves
decides whether it waits for the re-run. The rule (docs/behaviour.md, "Retrying
what failed"): the edge is opened for the depender's *current* execution, so a
depender halted, or halting later in the execution that runs, resumes only once
the re-opened dependee has ended again, whichever of its executions declared it
first; a depender resumed before the re-open reached it halts again when its next
execution names the dependee (DeclareDeps reads it in its transaction).

Cases: (a) halted on {A, B}, A over and re-opened; (b) halted on B, A declared by
an earlier execution (again by the halted one, or not); (c) running when A is
re-opened, halting later; and the re-open racing the depender's resume.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator

import pytest

from distributors.fake import Job, quest_desc
from dmcore.engine import docs
from dmcore.errors import InvalidArgument
from dmcore.ids import AttemptID
from dmcore.service import Caller
from dmcore.states import AttemptState
from tests.harness import Chaos, Harness, qid_of

Read = dict[str, str]
"""What one execution read of its dependencies: quest name -> state (or the value)."""


class Graph:
    """X depends on A, B and C (names are their quests' ``quest_desc`` names)."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.desc = {n: quest_desc(n) for n in ("x", "a", "b", "c")}
        self.aid = {n: AttemptID(qid_of(d), 1) for n, d in self.desc.items()}
        self.reads: list[Read] = []
        """What each of X's executions read, in play order (a halted one: nothing)."""
        h.ensure(self.desc["x"])

    def x_job(
        self, *calls: tuple[str, ...], before_last: Callable[[], None] | None = None
    ) -> Callable[[Job], None]:
        """X's job: one declaration per entry of ``calls`` (``before_last`` run before
        the last), stopping at the first that halts; else finishes with 1 + the values
        of those that finished (one that ended abnormally counts 0: X reads failures
        and goes on)."""

        def job(j: Job) -> None:
            j.activate()
            read: Read = {}
            total = 1
            for i, names in enumerate(calls):
                if i == len(calls) - 1 and before_last is not None:
                    before_last()
                aids = [self.aid[n] for n in names]
                rsp = j.dep_on(*aids, quests=[self.desc[n] for n in names])
                if rsp.should_halt:
                    return
                for n, a in zip(names, aids, strict=True):
                    data = rsp.result.quests[a.quest].attempts[a.num].data
                    kind = data.WhichOneof("attempt_type")
                    if kind == "finished":
                        v = json.loads(data.finished.data.object)["v"]
                        total += v
                        read[n] = str(v)
                    else:
                        read[n] = str(kind)
            self.reads.append(read)
            j.finish({"v": total})

        return job

    def leaf(self, name: str, execution: int, *, fail: bool = False) -> None:
        """Play leaf ``name``'s execution: it fails, or finishes with 1."""

        def job(j: Job) -> None:
            j.activate()
            if fail:
                raise RuntimeError("broken")
            j.finish({"v": 1})

        self.h.play(self.aid[name].execution(execution), job)
        self.h.settle()

    def x(
        self,
        execution: int,
        *calls: tuple[str, ...],
        before_last: Callable[[], None] | None = None,
    ) -> None:
        """Play X's execution ``execution`` (its job: :meth:`x_job`)."""
        job = self.x_job(*calls, before_last=before_last)
        self.h.play(self.aid["x"].execution(execution), job)
        self.h.settle()

    def retry(self, name: str) -> None:
        self.h.service.retry_attempt(self.aid[name], Caller.trusted())

    def edge(self, name: str) -> docs.Doc:
        e = self.h.store.get(docs.fwd_dep_path(self.aid["x"], self.aid[name]))
        assert e is not None
        return e

    def waiting(self, execution: int) -> bool:
        att = self.h.attempt(self.aid["x"])
        return bool(att["state"] == AttemptState.WAITING and int(att["cur_execution"]) == execution)

    def x_after_a_failed_and_c_finished(self) -> None:
        """X's first execution declared A and C; A failed, C finished: X resumed."""
        self.x(1, ("a", "c"))
        self.leaf("a", 1, fail=True)
        self.leaf("c", 1)
        assert self.h.state(self.aid["a"]) == AttemptState.ABNORMAL_FINISHED
        assert self.edge("a") == {**self.edge("a"), "satisfied": True, "for_execution": 1}
        assert not self.waiting(1)

    def waits_for_a_then_reads_it(self, execution: int) -> None:
        """X, halted in ``execution``: B's end does not resume it, A's next end does,
        and its next execution reads both as finished."""
        self.leaf("b", 1)
        assert self.waiting(execution)
        self.leaf("a", 2)
        self.x(execution + 1, ("a", "b"))
        assert self.reads[-1] == {"a": "1", "b": "1"}


@pytest.fixture
def g(tmp_path: pathlib.Path) -> Iterator[Graph]:
    h = Harness(tmp_path, queue="local")
    try:
        yield Graph(h)
        assert h.failures == []
    finally:
        h.close()


def test_a_halted_depender_waits_for_a_dependee_of_its_halt_reopened(g: Graph) -> None:
    """(a) X halted on A and B; A failed (its edge satisfied, for this execution);
    A re-opened: when B ends, X waits for A's re-run and reads its result."""
    g.x(1, ("a", "b"))
    g.leaf("a", 1, fail=True)
    assert g.waiting(1) and g.edge("a")["satisfied"]
    g.retry("a")
    g.h.settle()
    g.waits_for_a_then_reads_it(1)
    assert len(g.reads) == 1


def test_a_dependee_redeclared_by_the_halted_execution_keeps_it_waiting(g: Graph) -> None:
    """(b) A, over, declared again by X's second execution, which halts on B: the
    declaration leaves A's satisfied edge as the first execution tagged it. A
    re-opened: X's halt named A, so X must not resume before A's re-run ends
    (it would otherwise start an execution only to halt on A again)."""
    g.x_after_a_failed_and_c_finished()
    g.x(2, ("a", "b"))
    assert g.waiting(2) and g.edge("a")["for_execution"] == 1
    g.retry("a")
    g.h.settle()
    g.waits_for_a_then_reads_it(2)
    assert len(g.reads) == 1  # no execution spent on halting for A's re-run


def test_a_halted_depender_waits_for_a_reopened_dependee_of_an_earlier_execution(
    g: Graph,
) -> None:
    """(b) X's halted execution named only B; A was a dependency of an earlier one.
    A re-opened: X waits for A's re-run too (the edge opens for X's current
    execution): its next execution reads A's new result, not A running."""
    g.x_after_a_failed_and_c_finished()
    g.x(2, ("b",))
    assert g.waiting(2)
    g.retry("a")
    g.h.settle()
    g.waits_for_a_then_reads_it(2)


@pytest.mark.parametrize(
    "calls",
    [(("b",),), (("a", "b"),), (("a",), ("b",))],
    ids=["halts-on-b", "names-a-again", "told-a-failed-then-halts-on-b"],
)
def test_a_running_depender_halting_later_waits_for_the_reopened_dependee(
    g: Graph, calls: tuple[tuple[str, ...], ...]
) -> None:
    """(c) A, a failed dependency of X's first execution, re-opened while X's second
    runs, before its last declaration (after a first one that told it A had
    failed, in the last case); that declaration halts on B, naming A again or not:
    X resumes only once A's re-run has ended, and reads its result."""
    g.x_after_a_failed_and_c_finished()

    def reopen_a() -> None:
        g.retry("a")
        g.h.drain()  # the re-open's walk reaches X's edge before X declares

    g.x(2, *calls, before_last=reopen_a)
    assert g.waiting(2)
    assert g.edge("a") == {**g.edge("a"), "satisfied": False, "for_execution": 2}
    g.waits_for_a_then_reads_it(2)


def test_a_depender_resumed_before_the_reopen_reached_it_halts_on_its_next_declaration(
    tmp_path: pathlib.Path,
) -> None:
    """The re-open has committed (A SCHEDULING) but its walk has not reached X's
    edge when B's end resumes X. X's next execution, naming A, is not told A is
    over: it halts, and reads A's re-run once it ended (nothing lost)."""
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(reorder=False))
    try:
        g = Graph(h)
        g.x(1, ("a", "b"))
        g.leaf("a", 1, fail=True)
        assert g.waiting(1)
        g.retry("a")
        assert h.chaos is not None
        held = [(t, n) for t, n in h.chaos.pending if t.payload.get("kind") == "ReopenDependers"]
        assert len(held) == 1
        h.chaos.pending = [p for p in h.chaos.pending if p not in held]
        g.leaf("b", 1)  # X's last open edge acked: X resumes
        assert h.state(g.aid["x"]) != AttemptState.WAITING
        assert h.state(g.aid["a"]) == AttemptState.SCHEDULING
        h.chaos.pending += held
        h.settle()
        g.x(2, ("a", "b"))
        assert g.waiting(2) and g.reads == []
        g.leaf("a", 2)
        g.x(3, ("a", "b"))
        assert g.reads == [{"a": "1", "b": "1"}]
        assert h.failures == []
    finally:
        h.close()


def test_a_dependee_reopened_after_the_depender_finished_leaves_it_finished(g: Graph) -> None:
    """A FINISHED depender keeps its result and its edge: the re-open does not reach it."""
    g.x(1, ("a",))
    g.leaf("a", 1, fail=True)
    g.x(2, ("a",))
    assert g.reads == [{"a": "abnormal_finish"}]
    before = (g.h.attempt(g.aid["x"]), g.edge("a"))
    g.retry("a")
    g.h.settle()
    assert (g.h.attempt(g.aid["x"]), g.edge("a")) == before


def test_a_reopened_dependee_cannot_depend_on_a_depender_waiting_for_it(g: Graph) -> None:
    """X waits for A's re-run (its edge opened for X's halted execution): A's new
    execution declaring X would close a cycle, and is refused."""
    g.x_after_a_failed_and_c_finished()
    g.x(2, ("b",))
    g.retry("a")
    g.h.settle()
    refused: list[str] = []

    def a_job(j: Job) -> None:
        j.activate()
        with pytest.raises(InvalidArgument, match="cycle") as e:
            j.dep_on(g.aid["x"], quests=[g.desc["x"]])
        refused.append(str(e.value))
        j.finish({"v": 1})

    g.h.play(g.aid["a"].execution(2), a_job)
    g.h.settle()
    assert len(refused) == 1
    assert g.h.state(g.aid["a"]) == AttemptState.FINISHED
    g.leaf("b", 1)
    g.x(3, ("a", "b"))
    assert g.reads == [{"a": "1", "b": "1"}]
