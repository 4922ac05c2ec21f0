"""A declaration in parts (W-14) and another declaration closing a cycle between its
parts: the refused one leaves nothing behind, the accepted one is whole.

A declaration of more than ``declare_chunk`` dependencies commits in parts. Before
the first, it takes its attempt's claim (docs.DECLARING) and checks the whole
declaration for cycles; another declaration whose cycle walk reaches the claimed
attempt meanwhile is told to try again (Unavailable), as its edge could close a
cycle with a part not recorded yet. The claim names the declaration, so the same
declaration made again (a retry of a call that died between its parts, or one made
while the first still runs) takes it over and goes on. The interleavings are set
by the service's ``between_parts`` hook, on SQLite and on the Firestore emulator.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator

import pytest

from distributors.fake import quest_desc
from dmcore.engine import docs, steps
from dmcore.engine.base import Mutation
from dmcore.errors import DMError, InvalidArgument, Unauthenticated, Unavailable
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AttemptState, ExecutionState
from dmcore.store.base import Store
from tests.harness import Chaos, Harness
from tests.test_service import (
    activate,
    aid_of,
    attempt_msg,
    complete,
    declare,
    end,
    fail,
    finish,
    start,
)


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def h(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Harness]:
    store: Store | None = None
    if request.param == "firestore":
        store = request.getfixturevalue("firestore_store")
    harness = Harness(tmp_path, queue="chaos", seed=3, chaos=Chaos(duplicate=0.3), store=store)
    harness.service.declare_chunk = 2
    yield harness
    harness.close()


def _edges(h: Harness, aid: AttemptID) -> dict[str, docs.Doc]:
    return {docs.last_id(p): d for p, d in h.store.query(docs.fwd_deps_collection(aid))}


def _graph(h: Harness) -> tuple[dm_pb2.Quest.Desc, list[dm_pb2.Quest.Desc], AttemptID, AttemptID]:
    """A runs and is about to declare X0, X1 (new: the first part) and B (the second
    part); B runs (ensured by a user) and has not declared anything."""
    a, b = quest_desc("A"), quest_desc("B")
    xs = [quest_desc(f"X{i}") for i in range(2)]
    start(h, a, b)
    return b, xs, aid_of(a), aid_of(b)


class Died(Exception):
    """The call's process stopped, or its connection dropped, between two parts."""


def _die(eid: ExecutionID, part: int) -> None:
    raise Died


Hook = Callable[[ExecutionID, int], None]


def _once(h: Harness, hook: Hook) -> Hook:
    """``hook`` between the first call's parts only (not in the calls it makes)."""

    def between(eid: ExecutionID, part: int) -> None:
        h.service.between_parts = None
        hook(eid, part)

    return between


def _listed_once(h: Harness, depender: AttemptID, *dependees: AttemptID) -> None:
    """Each dependee lists ``depender`` once (inline or as a back edge), not twice."""
    for d in dependees:
        inline = h.attempt(d).get(docs.DEPENDERS, []).count(depender.encoded)
        back = h.store.get(docs.back_dep_path(d, depender)) is not None
        assert inline + back == 1, (d, inline, back)


def test_a_cycle_closed_between_parts_is_refused_to_its_closer(h: Harness) -> None:
    """B's declaration of A between A's parts would close A -> B -> A once A's second
    part is recorded: B is told to try again (nothing of it written), A's declaration
    is accepted whole, and B's retry is refused as a cycle."""
    b, xs, a1, b1 = _graph(h)
    ta, tb = activate(h, a1.execution(1)), activate(h, b1.execution(1))
    told: list[DMError] = []

    def closer(eid: ExecutionID, part: int) -> None:
        assert (eid, part) == (a1.execution(1), 1)
        with pytest.raises(Unavailable) as info:
            declare(h, b1.execution(1), tb, a1)
        told.append(info.value)
        assert _edges(h, b1) == {}  # nothing of B's refused call

    h.service.between_parts = closer
    rsp = declare(h, a1.execution(1), ta, *(aid_of(x) for x in xs), b1, quests=(*xs, b))
    h.service.between_parts = None
    assert told and "recording a declaration in parts" in told[0].message
    assert rsp.should_halt
    assert set(_edges(h, a1)) == {aid_of(x).encoded for x in xs} | {b1.encoded}
    assert docs.DECLARING not in h.attempt(a1)
    with pytest.raises(InvalidArgument, match="cycle"):
        declare(h, b1.execution(1), tb, a1)
    assert _edges(h, b1) == {}
    # Everything unwinds: B and the Xs finish, then A.
    h.settle()
    for x in xs:
        complete(h, aid_of(x), {"x": 1})
    finish(h, b1.execution(1), tb, {"b": 1})
    end(h, b1.execution(1))
    end(h, a1.execution(1))
    assert h.state(a1) == AttemptState.EXECUTING
    complete(h, a1, {"a": 1})


def test_a_walk_through_a_claimed_attempt_waits_only_while_it_declares(h: Harness) -> None:
    """C depends on A, A's declaration in parts under way: C is told to try again
    (no cycle, but A's edges yet to come could make one); once A's call returned,
    C's same call is accepted. A claim left by a call that died between its parts
    stops others only until its lease runs out."""
    _b, xs, a1, b1 = _graph(h)
    c = quest_desc("C")
    start(h, c)
    c1 = aid_of(c)
    ta, tc = activate(h, a1.execution(1)), activate(h, c1.execution(1))
    tb = activate(h, b1.execution(1))
    assert declare(h, b1.execution(1), tb, a1).should_halt  # B -> A: A's walk is C's
    calls: list[str] = []

    def other(eid: ExecutionID, part: int) -> None:
        try:
            declare(h, c1.execution(1), tc, b1)
        except Unavailable:
            calls.append("unavailable")

    h.service.between_parts = other
    ys = (*xs, quest_desc("Y"))
    assert declare(h, a1.execution(1), ta, *(aid_of(y) for y in ys), quests=ys).should_halt
    h.service.between_parts = None
    assert calls == ["unavailable"]
    assert declare(h, c1.execution(1), tc, b1).should_halt


def test_a_claim_left_by_a_dead_call_lapses(h: Harness) -> None:
    """A's call dies after its first part (the process stopped): its claim keeps
    others' declarations through A waiting for the lease only; A's own repeated
    call completes the declaration (at once, too: see the identical-retry tests)."""
    b, xs, a1, b1 = _graph(h)
    c = quest_desc("C")
    start(h, c)
    c1 = aid_of(c)
    ta, tc = activate(h, a1.execution(1)), activate(h, c1.execution(1))

    deps_of_a = (*(aid_of(x) for x in xs), b1)
    h.service.between_parts = _die
    with pytest.raises(Died):
        declare(h, a1.execution(1), ta, *deps_of_a, quests=(*xs, b))
    h.service.between_parts = None
    assert h.exec_state(a1.execution(1)) == ExecutionState.RUNNING
    with pytest.raises(Unavailable):
        declare(h, c1.execution(1), tc, a1)
    h.clock.advance(121)
    assert declare(h, c1.execution(1), tc, a1).should_halt
    # A's repeated call: the cycle A -> B is none (B does not reach A); accepted whole.
    assert declare(h, a1.execution(1), ta, *deps_of_a, quests=(*xs, b)).should_halt
    assert set(_edges(h, a1)) == {d.encoded for d in deps_of_a}


def test_a_declaration_refused_for_a_cycle_drops_its_claim_even_after_a_failure(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A declaration in parts that closes a cycle is refused before any part; its
    claim is dropped. If dropping it fails, the call fails (the claim stays, until
    its lease runs out); another declaration of A is told to try again while that
    claim holds; the client's retry of the same declaration is the same call: it
    takes the claim over at once, is refused the same way and drops it: nothing
    refused stays."""
    b, xs, a1, b1 = _graph(h)
    ta, tb = activate(h, a1.execution(1)), activate(h, b1.execution(1))
    assert declare(h, b1.execution(1), tb, a1).should_halt  # B -> A
    before = {aid_of(x): h.store.get(docs.attempt_path(aid_of(x))) for x in xs}
    run = h.engine.run
    fail_next_drop = [True]

    class Lost(Exception):
        pass

    def run_losing_the_drop(mutation: Mutation, *, origin: str | None = None) -> None:
        # The store fails the drop's commit once (a lost connection, a crash).
        if isinstance(mutation, steps.DeclareDeps) and mutation.unclaim and fail_next_drop[0]:
            fail_next_drop[0] = False
            raise Lost
        run(mutation, origin=origin)

    monkeypatch.setattr(h.engine, "run", run_losing_the_drop)
    with pytest.raises(Lost):
        declare(h, a1.execution(1), ta, *(aid_of(x) for x in xs), b1, quests=(*xs, b))
    assert docs.DECLARING in h.attempt(a1)
    with pytest.raises(Unavailable, match="another call"):
        declare(h, a1.execution(1), ta, *(aid_of(x) for x in xs), b1, quests=(b,))
    with pytest.raises(InvalidArgument, match="cycle"):
        declare(h, a1.execution(1), ta, *(aid_of(x) for x in xs), b1, quests=(*xs, b))
    monkeypatch.undo()
    assert docs.DECLARING not in h.attempt(a1)
    assert _edges(h, a1) == {}
    assert before == {aid_of(x): None for x in xs}
    assert all(h.store.get(docs.attempt_path(a)) is None for a in before)
    # A runs on, and may still declare what closes no cycle (in parts).
    assert h.exec_state(a1.execution(1)) == ExecutionState.RUNNING
    ys = (*xs, quest_desc("Y"))
    assert declare(h, a1.execution(1), ta, *(aid_of(y) for y in ys), quests=ys).should_halt


def test_another_call_of_the_same_execution_between_parts_waits(h: Harness) -> None:
    """C -> A exists. Between the parts of A's declaration, a second call by A itself
    (another thread of its job, or a client retry while the first call still runs)
    would close A -> C -> A; it is told to try again and leaves the first call's
    claim alone: B -> A is still told to wait, and A's first call is accepted whole
    (no part refused after another committed). A single-part second call waits too."""
    b, xs, a1, b1 = _graph(h)
    c = quest_desc("C")
    zs = [quest_desc(f"Z{i}") for i in range(2)]
    start(h, c)
    c1 = aid_of(c)
    ta, tb, tc = (activate(h, x.execution(1)) for x in (a1, b1, c1))
    assert declare(h, c1.execution(1), tc, a1).should_halt  # C -> A
    told: list[str] = []

    def second_calls(eid: ExecutionID, part: int) -> None:
        claim = h.attempt(a1)[docs.DECLARING]
        with pytest.raises(Unavailable) as in_parts:
            declare(h, a1.execution(1), ta, *(aid_of(z) for z in zs), c1, quests=tuple(zs))
        with pytest.raises(Unavailable) as single:
            declare(h, a1.execution(1), ta, aid_of(zs[0]), quests=(zs[0],))
        told.extend([in_parts.value.message, single.value.message])
        assert h.attempt(a1)[docs.DECLARING] == claim  # still the first call's
        with pytest.raises(Unavailable):
            declare(h, b1.execution(1), tb, a1)  # B -> A would close A -> B -> A
        assert _edges(h, b1) == {}

    h.service.between_parts = second_calls
    rsp = declare(h, a1.execution(1), ta, *(aid_of(x) for x in xs), b1, quests=(*xs, b))
    h.service.between_parts = None
    assert len(told) == 2 and all("another call" in m for m in told)
    assert rsp.should_halt
    assert set(_edges(h, a1)) == {aid_of(x).encoded for x in xs} | {b1.encoded}
    assert docs.DECLARING not in h.attempt(a1)
    assert all(h.store.get(docs.attempt_path(aid_of(z))) is None for z in zs)
    with pytest.raises(InvalidArgument, match="cycle"):
        declare(h, b1.execution(1), tb, a1)


def test_a_part_whose_claim_lapsed_checks_the_whole_declaration_again(h: Harness) -> None:
    """A's call stalls between its parts past the lease: its next part finds the
    claim gone, writes nothing, and the whole declaration is checked again under a
    new claim; meanwhile B -> A (no cycle yet: A's part with B is not recorded) was
    accepted, so the check refuses A's call as a cycle before its second part."""
    b, xs, a1, b1 = _graph(h)
    ta, tb = activate(h, a1.execution(1)), activate(h, b1.execution(1))

    def stall(eid: ExecutionID, part: int) -> None:
        h.clock.advance(121)
        assert declare(h, b1.execution(1), tb, a1).should_halt  # the claim lapsed

    h.service.between_parts = stall
    with pytest.raises(InvalidArgument, match="cycle"):
        declare(h, a1.execution(1), ta, *(aid_of(x) for x in xs), b1, quests=(*xs, b))
    h.service.between_parts = None
    assert set(_edges(h, a1)) == {aid_of(x).encoded for x in xs}  # the first part only
    assert docs.DECLARING not in h.attempt(a1)
    assert h.exec_state(a1.execution(1)) == ExecutionState.RUNNING

    # Without another declaration meanwhile, the new check passes and the call is whole
    # (recorded again from its first part, whose edges it finds recorded).
    h.service.between_parts = _once(h, lambda eid, part: h.clock.advance(121))
    ys = (*xs, quest_desc("Y"))
    assert declare(h, a1.execution(1), ta, *(aid_of(y) for y in ys), quests=ys).should_halt
    h.service.between_parts = None
    assert set(_edges(h, a1)) == {aid_of(y).encoded for y in ys}


@pytest.mark.parametrize("parts", [True, False])
def test_a_forged_token_learns_nothing_of_absent_quests(h: Harness, parts: bool) -> None:
    """A forged token naming an absent quest is refused for its token (before the
    quest is looked up), in parts or not; nothing is written or claimed."""
    _b, _xs, a1, _b1 = _graph(h)
    activate(h, a1.execution(1))
    nowhere = aid_of(quest_desc("Nowhere")).quest  # never ensured
    absent = [AttemptID(nowhere, n) for n in (1, 2, 3)]
    with pytest.raises(Unauthenticated):
        declare(h, a1.execution(1), b"forged" * 4, *absent[: 3 if parts else 1])
    assert docs.DECLARING not in h.attempt(a1)
    assert _edges(h, a1) == {}


@pytest.mark.parametrize("when", ["after B's part", "before B's part", "after the halt"])
def test_a_halting_declaration_retried_after_a_dependee_was_reopened(h: Harness, when: str) -> None:
    """W-6 and ``dm retry``: A's second execution declares B (failed: its edge, left
    by A's first execution, acked) and new Xs. A user re-opens B, which opens A's
    edge to B again: between the declaration's parts, after B's part (the edge stays
    A's first execution's) or before it (written for the second), or after the
    declaration (in one part) halted. Its retry, the same call with the same token
    (its answer lost), is answered "halted" again, not refused as a bad token."""
    b, xs, a1, b1 = _graph(h)
    ta = activate(h, a1.execution(1))
    assert declare(h, a1.execution(1), ta, b1, quests=(b,)).should_halt
    fail(h, b1.execution(1))
    assert h.state(b1) == AttemptState.ABNORMAL_FINISHED
    end(h, a1.execution(1))
    assert h.state(a1) == AttemptState.EXECUTING
    a2 = a1.execution(2)
    ta2 = activate(h, a2)
    reopened: list[int] = []

    def reopen(eid: ExecutionID, part: int) -> None:
        h.service.between_parts = None
        h.service.retry_attempt(b1, Caller.trusted())
        h.settle()
        # Another client's EnsureGraphData naming B, as where this was seen (not needed).
        h.ensure(b)
        h.settle()
        reopened.append(part)

    h.service.between_parts = reopen
    if when == "after the halt":
        h.service.declare_chunk = 32
    named = (*xs, b) if when == "before B's part" else (b, *xs)  # in parts of two
    deps_of_a = tuple(aid_of(q) for q in named)
    assert declare(h, a2, ta2, *deps_of_a, quests=named).should_halt
    if when == "after the halt":
        assert not reopened  # one part
        reopen(a2, 0)
    assert reopened
    assert h.state(b1) != AttemptState.ABNORMAL_FINISHED
    assert h.exec_state(a2) == ExecutionState.STOPPING
    # The client retries the halting call: the same answer.
    assert declare(h, a2, ta2, *deps_of_a, quests=named).should_halt
    assert h.exec_state(a2) == ExecutionState.STOPPING
    # Another declaration of the halted execution is still refused.
    with pytest.raises(Unauthenticated):
        declare(h, a2, ta2, aid_of(quest_desc("Other")), quests=(quest_desc("Other"),))


@pytest.mark.parametrize("order", ["same", "reversed"])
def test_an_identical_retry_of_a_call_that_died_between_parts_goes_on_at_once(
    h: Harness, order: str
) -> None:
    """A's call dies after its first part, its claim left held. The job's retry of
    the same declaration (a new delivery, a client's retry; its dependees in the
    same order or not) is the same call: it takes the claim over and goes on at
    once, not after the claim's lease (2 minutes), and ends as one uninterrupted
    call would: every edge once, the claim dropped, "halted". A different
    declaration of A still waits for the claim."""
    b, xs, a1, b1 = _graph(h)
    ta = activate(h, a1.execution(1))
    deps_of_a = (*(aid_of(x) for x in xs), b1)
    h.service.between_parts = _die
    with pytest.raises(Died):
        declare(h, a1.execution(1), ta, *deps_of_a, quests=(*xs, b))
    h.service.between_parts = None
    claim = h.attempt(a1)[docs.DECLARING]
    assert set(_edges(h, a1)) == {aid_of(x).encoded for x in xs}  # the first part
    with pytest.raises(Unavailable, match="another call"):
        declare(h, a1.execution(1), ta, *deps_of_a[:2], quests=tuple(xs))  # not the same
    assert h.attempt(a1)[docs.DECLARING] == claim

    again = deps_of_a if order == "same" else deps_of_a[::-1]
    assert declare(h, a1.execution(1), ta, *again, quests=(*xs, b)).should_halt
    assert set(_edges(h, a1)) == {d.encoded for d in deps_of_a}
    assert docs.DECLARING not in h.attempt(a1)
    assert h.exec_state(a1.execution(1)) == ExecutionState.STOPPING
    h.settle()
    _listed_once(h, a1, *deps_of_a)
    # And it unwinds as any halted declaration: the dependees end, A resumes.
    for x in xs:
        complete(h, aid_of(x), {"x": 1})
    complete(h, b1, {"b": 1})
    end(h, a1.execution(1))
    assert h.state(a1) == AttemptState.EXECUTING


def test_an_identical_retry_answers_as_the_uninterrupted_call(h: Harness) -> None:
    """Every dependee over: A's call dies after its first part; the retry is accepted
    at once with the results, the same answer (and edges) as the same call made
    again uninterrupted."""
    cs = [quest_desc(f"C{i}") for i in range(3)]
    a = quest_desc("A")
    start(h, a, *cs)
    a1 = aid_of(a)
    for i, c in enumerate(cs):
        complete(h, aid_of(c), {"c": i})
    ta = activate(h, a1.execution(1))
    deps_of_a = tuple(aid_of(c) for c in cs)
    h.service.between_parts = _die
    with pytest.raises(Died):
        declare(h, a1.execution(1), ta, *deps_of_a, quests=tuple(cs))
    h.service.between_parts = None
    assert docs.DECLARING in h.attempt(a1)

    rsp = declare(h, a1.execution(1), ta, *deps_of_a, quests=tuple(cs))
    assert not rsp.should_halt
    assert docs.DECLARING not in h.attempt(a1)
    assert declare(h, a1.execution(1), ta, *deps_of_a, quests=tuple(cs)) == rsp
    assert set(_edges(h, a1)) == {d.encoded for d in deps_of_a}
    assert all(e["satisfied"] for e in _edges(h, a1).values())
    for i, d in enumerate(deps_of_a):
        assert json.loads(attempt_msg(rsp.result, d).data.finished.data.object) == {"c": i}
    h.settle()
    _listed_once(h, a1, *deps_of_a)
    assert h.exec_state(a1.execution(1)) == ExecutionState.RUNNING


def test_two_identical_calls_at_once_halt_alike(h: Harness) -> None:
    """The client retries while its first call still runs: between the first call's
    parts, the identical second call takes the claim over and records every part
    (each part is idempotent: an edge recorded by the other call is left as it
    is), and its last part halts the execution and drops the claim. The first
    call's next part finds the declaration halted: "halted" too, no edge lost
    or listed twice."""
    b, xs, a1, b1 = _graph(h)
    ta = activate(h, a1.execution(1))
    deps_of_a = (*(aid_of(x) for x in xs), b1)
    second: list[dm_pb2.EnsureGraphDataRsp] = []

    def retry(eid: ExecutionID, part: int) -> None:
        second.append(declare(h, a1.execution(1), ta, *deps_of_a, quests=(*xs, b)))
        assert docs.DECLARING not in h.attempt(a1)

    h.service.between_parts = _once(h, retry)
    first = declare(h, a1.execution(1), ta, *deps_of_a, quests=(*xs, b))
    assert second and second[0].should_halt
    assert first.should_halt
    assert set(_edges(h, a1)) == {d.encoded for d in deps_of_a}
    assert docs.DECLARING not in h.attempt(a1)
    assert h.exec_state(a1.execution(1)) == ExecutionState.STOPPING
    h.settle()
    _listed_once(h, a1, *deps_of_a)


def test_two_identical_calls_at_once_answer_alike_when_a_dependee_ends_between(
    h: Harness,
) -> None:
    """The first call's first part finds C0 running (that part would halt); C0 then
    finishes, and the identical second call, every dependee over now, is answered
    with the results: the job goes on. The first call's next part finds the claim
    gone (the second call's last part dropped it) and records the declaration
    again from its first part: it too is answered with the results, and must not
    halt the execution (which the second answer let go on) for what its first
    part read before."""
    cs = [quest_desc(f"C{i}") for i in range(3)]
    a = quest_desc("A")
    start(h, a, *cs)
    a1, c0 = aid_of(a), aid_of(cs[0])
    for i, c in enumerate(cs[1:], 1):
        complete(h, aid_of(c), {"c": i})
    ta = activate(h, a1.execution(1))
    deps_of_a = tuple(aid_of(c) for c in cs)
    second: list[dm_pb2.EnsureGraphDataRsp] = []

    def c0_ends_then_retry(eid: ExecutionID, part: int) -> None:
        complete(h, c0, {"c": 0})
        second.append(declare(h, a1.execution(1), ta, *deps_of_a, quests=tuple(cs)))

    h.service.between_parts = _once(h, c0_ends_then_retry)
    first = declare(h, a1.execution(1), ta, *deps_of_a, quests=tuple(cs))
    assert second and not second[0].should_halt
    assert not first.should_halt
    assert first == second[0]
    assert h.exec_state(a1.execution(1)) == ExecutionState.RUNNING
    assert docs.DECLARING not in h.attempt(a1)
    assert set(_edges(h, a1)) == {d.encoded for d in deps_of_a}
    assert all(e["satisfied"] for e in _edges(h, a1).values())
    h.settle()
    _listed_once(h, a1, *deps_of_a)
    finish(h, a1.execution(1), ta, {"a": 1})  # the job goes on with what it was told
    end(h, a1.execution(1))
    assert h.state(a1) == AttemptState.FINISHED


def test_an_identical_call_refused_before_its_first_part_keeps_the_live_calls_claim(
    h: Harness,
) -> None:
    """A's call is between its parts; the client's identical retry takes A's claim
    over (the same declaration), then its whole-declaration check meets B's claim
    (B records a declaration in parts) and is told to try again. It must leave the
    claim to A's call, which goes on and halts: dropping it would let another
    declaration close a cycle through A's edges not recorded yet, and A's next part
    would find its claim gone."""
    b, xs, a1, b1 = _graph(h)
    c = quest_desc("C")
    start(h, c)
    c1 = aid_of(c)
    ta, tb, tc = (activate(h, x.execution(1)) for x in (a1, b1, c1))
    assert declare(h, c1.execution(1), tc, a1).should_halt  # A is depended on
    deps_of_a = (*(aid_of(x) for x in xs), b1)
    ys = [quest_desc(f"Y{i}") for i in range(3)]
    seen: list[str] = []

    def b_declares_then_retry(eid: ExecutionID, part: int) -> None:
        h.service.between_parts = _die
        with pytest.raises(Died):  # B's declaration in parts, its claim left held
            declare(h, b1.execution(1), tb, *(aid_of(y) for y in ys), quests=tuple(ys))
        h.service.between_parts = None
        with pytest.raises(Unavailable):  # the identical retry meets B's claim
            declare(h, a1.execution(1), ta, *deps_of_a, quests=(*xs, b))
        seen.append("claim kept" if docs.DECLARING in h.attempt(a1) else "claim dropped")

    h.service.between_parts = _once(h, b_declares_then_retry)
    try:
        rsp = declare(h, a1.execution(1), ta, *deps_of_a, quests=(*xs, b))
        first = "halted" if rsp.should_halt else "on"
    except Unavailable as e:
        first = f"Unavailable: {e.message}"
    assert (seen, first) == (["claim kept"], "halted")
