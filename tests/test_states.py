"""The state machines, checked against transition lists written out by hand here.

Why hand-written lists: deriving expectations from the module's own tables would
test nothing; these lists are the spec.
"""

from __future__ import annotations

import itertools

import pytest

from dmcore.states import (
    ATTEMPT_REOPEN_TRANSITIONS,
    ATTEMPT_TRANSITIONS,
    EXECUTION_TRANSITIONS,
    INITIAL_ATTEMPT_STATE,
    INITIAL_EXECUTION_STATE,
    RETRYABLE,
    AbnormalStatus,
    AttemptState,
    ExecutionState,
    IllegalTransition,
    check_attempt_transition,
    check_execution_transition,
    is_retryable,
    is_terminal_attempt,
    is_terminal_execution,
)

A = AttemptState
E = ExecutionState

LEGAL_ATTEMPT: list[tuple[AttemptState, AttemptState]] = [
    (A.SCHEDULING, A.EXECUTING),
    (A.SCHEDULING, A.ABNORMAL_FINISHED),
    (A.EXECUTING, A.SCHEDULING),
    (A.EXECUTING, A.WAITING),
    (A.EXECUTING, A.FINISHED),
    (A.EXECUTING, A.ABNORMAL_FINISHED),
    (A.WAITING, A.SCHEDULING),
    (A.WAITING, A.ABNORMAL_FINISHED),
]

LEGAL_EXECUTION: list[tuple[ExecutionState, ExecutionState]] = [
    (E.SCHEDULING, E.RUNNING),
    (E.SCHEDULING, E.ABNORMAL_FINISHED),
    (E.RUNNING, E.STOPPING),
    (E.RUNNING, E.ABNORMAL_FINISHED),
    (E.STOPPING, E.FINISHED),
    (E.STOPPING, E.ABNORMAL_FINISHED),
]

ILLEGAL_ATTEMPT = [
    (f, t)
    for f, t in itertools.product(list(A), repeat=2)
    if f != t and (f, t) not in LEGAL_ATTEMPT
]
ILLEGAL_EXECUTION = [
    (f, t)
    for f, t in itertools.product(list(E), repeat=2)
    if f != t and (f, t) not in LEGAL_EXECUTION
]


def _ids(pair: tuple[AttemptState, AttemptState] | tuple[ExecutionState, ExecutionState]) -> str:
    return f"{pair[0].name}->{pair[1].name}"


def test_enum_values_are_stable() -> None:
    """Values are persisted, so they are pinned here."""
    assert [(s.name, s.value) for s in A] == [
        ("SCHEDULING", 0),
        ("EXECUTING", 1),
        ("WAITING", 2),
        ("FINISHED", 3),
        ("ABNORMAL_FINISHED", 4),
    ]
    assert [(s.name, s.value) for s in E] == [
        ("SCHEDULING", 0),
        ("RUNNING", 1),
        ("STOPPING", 2),
        ("FINISHED", 3),
        ("ABNORMAL_FINISHED", 4),
    ]
    assert [(s.name, s.value) for s in AbnormalStatus] == [
        ("INVALID", 0),
        ("FAILED", 1),
        ("CRASHED", 2),
        ("EXPIRED", 3),
        ("TIMED_OUT", 4),
        ("CANCELLED", 5),
        ("REJECTED", 6),
        ("MISSING", 7),
        ("RESULT_MALFORMED", 8),
    ]


def test_initial_states() -> None:
    assert INITIAL_ATTEMPT_STATE is A.SCHEDULING
    assert INITIAL_EXECUTION_STATE is E.SCHEDULING


def test_illegal_pair_counts() -> None:
    """25 pairs, minus 5 identities, minus the legal ones."""
    assert len(ILLEGAL_ATTEMPT) == 25 - 5 - 8
    assert len(ILLEGAL_EXECUTION) == 25 - 5 - 6


@pytest.mark.parametrize("pair", LEGAL_ATTEMPT, ids=_ids)
def test_legal_attempt_transition(pair: tuple[AttemptState, AttemptState]) -> None:
    check_attempt_transition(*pair)


@pytest.mark.parametrize("pair", LEGAL_EXECUTION, ids=_ids)
def test_legal_execution_transition(pair: tuple[ExecutionState, ExecutionState]) -> None:
    check_execution_transition(*pair)


@pytest.mark.parametrize("state", list(A), ids=lambda s: s.name)
def test_attempt_identity_is_allowed(state: AttemptState) -> None:
    check_attempt_transition(state, state)


@pytest.mark.parametrize("state", list(E), ids=lambda s: s.name)
def test_execution_identity_is_allowed(state: ExecutionState) -> None:
    check_execution_transition(state, state)


@pytest.mark.parametrize("pair", ILLEGAL_ATTEMPT, ids=_ids)
def test_illegal_attempt_transition(pair: tuple[AttemptState, AttemptState]) -> None:
    frm, to = pair
    with pytest.raises(IllegalTransition) as info:
        check_attempt_transition(frm, to)
    msg = str(info.value)
    assert "attempt" in msg
    assert f"{frm.name} -> {to.name}" in msg


@pytest.mark.parametrize("pair", ILLEGAL_EXECUTION, ids=_ids)
def test_illegal_execution_transition(pair: tuple[ExecutionState, ExecutionState]) -> None:
    frm, to = pair
    with pytest.raises(IllegalTransition) as info:
        check_execution_transition(frm, to)
    msg = str(info.value)
    assert "execution" in msg
    assert f"{frm.name} -> {to.name}" in msg


def test_message_format() -> None:
    with pytest.raises(
        IllegalTransition, match=r"^illegal attempt state transition FINISHED -> SCHEDULING$"
    ):
        check_attempt_transition(A.FINISHED, A.SCHEDULING)


def test_tables_match_spec() -> None:
    """The exported tables hold exactly the hand-written legal moves."""
    got_a = {(f, t) for f, tos in ATTEMPT_TRANSITIONS.items() for t in tos}
    got_e = {(f, t) for f, tos in EXECUTION_TRANSITIONS.items() for t in tos}
    assert got_a == set(LEGAL_ATTEMPT)
    assert got_e == set(LEGAL_EXECUTION)
    assert set(ATTEMPT_TRANSITIONS) == set(A)
    assert set(EXECUTION_TRANSITIONS) == set(E)


def test_terminal_states() -> None:
    assert [s for s in A if is_terminal_attempt(s)] == [A.FINISHED, A.ABNORMAL_FINISHED]
    assert [s for s in E if is_terminal_execution(s)] == [E.FINISHED, E.ABNORMAL_FINISHED]


def test_raw_ints_accepted_and_unknown_rejected() -> None:
    """Values read back from storage are plain ints."""
    check_attempt_transition(0, 1)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition, match="FINISHED -> SCHEDULING"):
        check_attempt_transition(3, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_execution_transition(0, 9)  # type: ignore[arg-type]


def test_retryable_set() -> None:
    expected = {
        AbnormalStatus.FAILED,
        AbnormalStatus.CRASHED,
        AbnormalStatus.EXPIRED,
        AbnormalStatus.TIMED_OUT,
    }
    assert set(RETRYABLE) == expected
    assert isinstance(RETRYABLE, frozenset)
    for s in AbnormalStatus:
        assert is_retryable(s) == (s in expected)


def test_reopen_is_a_move_of_its_own() -> None:
    """ABNORMAL_FINISHED -> SCHEDULING only for a re-open; FINISHED never leaves."""
    with pytest.raises(IllegalTransition):
        check_attempt_transition(A.ABNORMAL_FINISHED, A.SCHEDULING)
    check_attempt_transition(A.ABNORMAL_FINISHED, A.SCHEDULING, reopen=True)
    assert dict(ATTEMPT_REOPEN_TRANSITIONS) == {A.ABNORMAL_FINISHED: {A.SCHEDULING}}
    for to in A:
        if to != A.FINISHED:
            with pytest.raises(IllegalTransition):
                check_attempt_transition(A.FINISHED, to, reopen=True)
    for frm, to in ILLEGAL_ATTEMPT:
        if (frm, to) != (A.ABNORMAL_FINISHED, A.SCHEDULING):
            with pytest.raises(IllegalTransition):
                check_attempt_transition(frm, to, reopen=True)
    assert is_terminal_attempt(A.ABNORMAL_FINISHED)  # for the engine's own steps
