"""The attempt and execution state machines, as explicit transition tables.

Why tables: every state change in the engine goes through
:func:`check_attempt_transition` / :func:`check_execution_transition`, so an
illegal move (a bug or a stale, racing writer) fails loudly instead of
corrupting the graph. Identity moves (X -> X) are always allowed no-ops so
that retried, idempotent writes stay harmless.

The integer values are persisted; never renumber them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "ATTEMPT_REOPEN_TRANSITIONS",
    "ATTEMPT_TRANSITIONS",
    "EXECUTION_TRANSITIONS",
    "INITIAL_ATTEMPT_STATE",
    "INITIAL_EXECUTION_STATE",
    "RETRYABLE",
    "AbnormalStatus",
    "AttemptState",
    "ExecutionState",
    "IllegalTransition",
    "check_attempt_transition",
    "check_execution_transition",
    "is_retryable",
    "is_terminal_attempt",
    "is_terminal_execution",
]


class AttemptState(enum.IntEnum):
    """Lifecycle of an attempt (one memoised run of a quest with given args)."""

    SCHEDULING = 0
    EXECUTING = 1
    WAITING = 2
    FINISHED = 3
    ABNORMAL_FINISHED = 4


class ExecutionState(enum.IntEnum):
    """Lifecycle of one execution (one try of an attempt on a distributor)."""

    SCHEDULING = 0
    RUNNING = 1
    STOPPING = 2
    FINISHED = 3
    ABNORMAL_FINISHED = 4


class AbnormalStatus(enum.IntEnum):
    """Why an attempt or execution ended abnormally."""

    INVALID = 0
    FAILED = 1
    CRASHED = 2
    EXPIRED = 3
    TIMED_OUT = 4
    CANCELLED = 5
    REJECTED = 6
    MISSING = 7
    RESULT_MALFORMED = 8


# Transient failures: running the attempt again may succeed.
RETRYABLE: frozenset[AbnormalStatus] = frozenset(
    {
        AbnormalStatus.FAILED,
        AbnormalStatus.CRASHED,
        AbnormalStatus.EXPIRED,
        AbnormalStatus.TIMED_OUT,
    }
)

INITIAL_ATTEMPT_STATE = AttemptState.SCHEDULING
INITIAL_EXECUTION_STATE = ExecutionState.SCHEDULING

_A = AttemptState
_E = ExecutionState

# state -> states reachable in one step (identity excluded; it is always allowed).
ATTEMPT_TRANSITIONS: Mapping[AttemptState, frozenset[AttemptState]] = MappingProxyType(
    {
        _A.SCHEDULING: frozenset({_A.EXECUTING, _A.ABNORMAL_FINISHED}),
        _A.EXECUTING: frozenset({_A.SCHEDULING, _A.WAITING, _A.FINISHED, _A.ABNORMAL_FINISHED}),
        _A.WAITING: frozenset({_A.SCHEDULING, _A.ABNORMAL_FINISHED}),
        _A.FINISHED: frozenset(),
        _A.ABNORMAL_FINISHED: frozenset(),
    }
)

ATTEMPT_REOPEN_TRANSITIONS: Mapping[AttemptState, frozenset[AttemptState]] = MappingProxyType(
    {_A.ABNORMAL_FINISHED: frozenset({_A.SCHEDULING})}
)
"""Moves only a user's re-open makes (``dm retry``, the ``ReopenAttempt`` step):
an attempt that ended abnormally gets a new execution. Not in DM, where
ABNORMAL_FINISHED is final (docs/behaviour.md). Kept apart from
:data:`ATTEMPT_TRANSITIONS` so that no other step can leave a terminal state:
for the engine's own steps FINISHED and ABNORMAL_FINISHED stay terminal, and
FINISHED is never re-opened (a finished result is immutable)."""

EXECUTION_TRANSITIONS: Mapping[ExecutionState, frozenset[ExecutionState]] = MappingProxyType(
    {
        _E.SCHEDULING: frozenset({_E.RUNNING, _E.ABNORMAL_FINISHED}),
        _E.RUNNING: frozenset({_E.STOPPING, _E.ABNORMAL_FINISHED}),
        _E.STOPPING: frozenset({_E.FINISHED, _E.ABNORMAL_FINISHED}),
        _E.FINISHED: frozenset(),
        _E.ABNORMAL_FINISHED: frozenset(),
    }
)


class IllegalTransition(Exception):
    """A state change that the state machine does not allow."""

    def __init__(self, machine: str, frm: enum.Enum, to: enum.Enum) -> None:
        super().__init__(f"illegal {machine} state transition {frm.name} -> {to.name}")
        self.machine = machine
        self.frm = frm
        self.to = to


def is_retryable(status: AbnormalStatus) -> bool:
    """Whether an abnormal end is transient, so a new execution may be tried."""
    return status in RETRYABLE


def check_attempt_transition(frm: AttemptState, to: AttemptState, *, reopen: bool = False) -> None:
    """Raise :class:`IllegalTransition` unless ``frm -> to`` is allowed for attempts.

    ``reopen``: the caller is a user's re-open, which may also make the moves
    of :data:`ATTEMPT_REOPEN_TRANSITIONS`.
    """
    frm, to = AttemptState(frm), AttemptState(to)  # ValueError on unknown raw ints
    if frm == to or to in ATTEMPT_TRANSITIONS[frm]:
        return
    if reopen and to in ATTEMPT_REOPEN_TRANSITIONS.get(frm, frozenset()):
        return
    raise IllegalTransition("attempt", frm, to)


def check_execution_transition(frm: ExecutionState, to: ExecutionState) -> None:
    """Raise :class:`IllegalTransition` unless ``frm -> to`` is allowed for executions."""
    frm, to = ExecutionState(frm), ExecutionState(to)  # ValueError on unknown raw ints
    if frm != to and to not in EXECUTION_TRANSITIONS[frm]:
        raise IllegalTransition("execution", frm, to)


def is_terminal_attempt(state: AttemptState) -> bool:
    """Whether an attempt in ``state`` is over: no step of the engine changes it
    again (a user may still re-open an ABNORMAL_FINISHED one)."""
    return not ATTEMPT_TRANSITIONS[state]


def is_terminal_execution(state: ExecutionState) -> bool:
    """Whether an execution in ``state`` can never change again."""
    return not EXECUTION_TRANSITIONS[state]
