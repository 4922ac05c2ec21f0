"""Every step dm queues (spec §7.2's mutations, plus actions), declared: its
kind, its fields (the task payload) and, for a mutation, its root record.

What each one does lives with the records it touches (see
:mod:`dmcore.engine.base`): :mod:`~dmcore.engine.lifecycle` (quests, attempts
and an execution's life), :mod:`~dmcore.engine.deps` (dependency edges),
:mod:`~dmcore.engine.completion` (a finished attempt reaching its dependers),
:mod:`~dmcore.engine.timers` (timeouts and polls) and
:mod:`~dmcore.engine.notify` (distributor notifications and tasks).
Field names and kinds are persisted in queued tasks: never rename them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from dmcore.engine import docs
from dmcore.engine.base import Action, Later, Mutation, task_name
from dmcore.ids import ExecutionID

# -- quests and attempts -----------------------------------------------------------------


@dataclasses.dataclass
class MergeQuest(Mutation):
    """Create the quest if absent (merge ``built_by``), then run ``and_then``."""

    KIND = "MergeQuest"
    qid: str
    desc_b64: str
    and_then: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def root(self) -> str:
        return docs.quest_path(self.qid)


@dataclasses.dataclass
class EnsureGraph(Mutation):
    """A part of an EnsureGraphData without an execution, in one transaction: read the
    documents of ``quests`` and of ``attempts`` (and their quests), then create what
    is missing (:class:`MergeQuest`, :class:`EnsureAttempt`, run inline: no second read).

    Sets ``seen``, for the answer: each quest's document as read, each attempt's
    :attr:`ANSWERED` fields as read (None: absent, created here).
    Run by the API only, never queued.
    """

    KIND = "EnsureGraph"
    ANSWERED: ClassVar[tuple[str, ...]] = (
        "state",
        "created",
        "modified",
        "cur_execution",
        "result",
        "abnormal",
        "is_abnormal",
        "is_expired",
        docs.DECLARED,
    )
    """The attempt fields EnsureGraphData's answer reads (its attempts, their data and
    results, no executions): a present attempt is read only for them (its current
    execution, most of its bytes, is not decoded), as a read-only part
    (:meth:`~dmcore.store.base.Transaction.peek_many`)."""
    quests: dict[str, str]  # quest ID -> its description (base64), as supplied
    attempts: list[str]
    seen: dict[str, Any] = dataclasses.field(default_factory=dict)

    def root(self) -> str:
        # Quest IDs all have 43 characters, so the least "<quest>|<num>" names the
        # least quest: one split, not one per attempt (the engine asks this often).
        first = min(self.attempts).partition("|")[0] if self.attempts else None
        return docs.quest_path(min(filter(None, (first, *self.quests))))


@dataclasses.dataclass
class EnsureAttempt(Mutation):
    """Create attempt ``aid`` (SCHEDULING) if absent and schedule its first execution."""

    KIND = "EnsureAttempt"
    aid: str
    depended: bool = False  # created for a dependency: flag it (docs.DEPENDED)
    depender: str = ""
    """A declaration's: the depender's reverse edge (AddBackDep), in the same commit,
    after the attempt exists (so an AddBackDep never finds its dependee absent)."""

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"


# -- an execution's life -----------------------------------------------------------------


@dataclasses.dataclass
class ScheduleExecution(Mutation):
    """SCHEDULING attempt -> EXECUTING with a new execution; D.run follows outside."""

    KIND = "ScheduleExecution"
    aid: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"


@dataclasses.dataclass
class RunExecution(Action):
    """Call D.run for a new execution, outside any transaction (W-8), once it holds
    the claim to (ClaimRun); a transient error is retried later (RunFailed)."""

    KIND = "RunExecution"
    eid: str
    activation_b64: str


@dataclasses.dataclass
class ClaimRun(Mutation):
    """Claim the right to call D.run for ``eid`` for a while (one delivery at a time).

    Sets ``outcome``: "run" (claimed), "done" (run already, or no longer needed)
    or "busy" (another delivery holds the claim: tried again when it expires);
    and, read in the same transaction for the caller, the execution's
    ``config`` snapshot and the attempt's ``last_ok_execution``. A run the open
    batch holds (:meth:`Engine.batch_holds_run`) is claimed without a write: then
    ``claim`` is set to "".
    """

    KIND = "ClaimRun"
    eid: str
    activation_b64: str
    claim: str
    outcome: str = ""
    config: dict[str, Any] | None = None
    last_ok_execution: int = 0

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


@dataclasses.dataclass
class RunFailed(Mutation):
    """D.run failed transiently: release the claim and try again after a backoff,
    or REJECT once the outage window (from the first try) has passed."""

    KIND = "RunFailed"
    eid: str
    activation_b64: str
    claim: str
    error: str

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


@dataclasses.dataclass
class RecordRun(Mutation):
    """Store the distributor's token; arm the start timer (or shorten a stop already
    under way); cancel the task if the execution has ended meanwhile."""

    KIND = "RecordRun"
    eid: str
    dist_token: str
    poll_timeout_us: int
    poll_interval_us: int = 0
    claim: str = ""

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


@dataclasses.dataclass
class CancelTask(Action):
    """Cancel the distributor's task of an execution that had ended before its run was
    recorded (a cancel racing D.run): nothing of it may be left running."""

    KIND = "CancelTask"
    eid: str


@dataclasses.dataclass
class ActivateExecution(Mutation):
    """SCHEDULING -> RUNNING, swapping the activation token for the execution's own."""

    KIND = "ActivateExecution"
    eid: str
    activation_b64: str
    execution_token_b64: str

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


@dataclasses.dataclass
class FinishAttempt(Mutation):
    """Record the attempt's result; the execution goes STOPPING until its distributor confirms."""

    KIND = "FinishAttempt"
    eid: str
    token_b64: str
    object: str
    size: int
    expiration_us: int | None = None

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


@dataclasses.dataclass
class FinishExecution(Mutation):
    """The only way an execution ends (spec §4.6), with the retry policy (§1.8)."""

    KIND = "FinishExecution"
    eid: str
    result: dict[str, Any]

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


@dataclasses.dataclass
class CancelWaiting(Mutation):
    """Cancel an attempt with no live execution (SCHEDULING or WAITING)."""

    KIND = "CancelWaiting"
    aid: str
    reason: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"


# -- dependencies ------------------------------------------------------------------------


@dataclasses.dataclass
class DeclareDeps(Mutation):
    """An execution's dependencies (EnsureGraphData with for_execution, spec §2.1).

    ``deps`` are encoded dependee attempt IDs; ``quests`` maps quest ID -> desc
    (base64 wire) for the quests the caller supplied (created with their first
    new attempt, or alone when it names none of theirs). The dependees are read
    in this transaction, once: an absent one is created (flagged depended), its
    edge written open without a read. Sets ``halted`` (and keeps the execution
    RUNNING when False) and ``seen``: each dependee's attempt document as read
    (None: absent), for the answer.

    ``part``: only record these edges and their follow-ups, one part of a
    declaration too large for one transaction (W-14); the execution stays
    RUNNING and the edges inert until the last part (not ``part``) decides. A
    part sets ``halted`` when the declaration must halt for one of its own
    dependees; the last part is told so (``parts_halt``), so no transaction
    reads more than its own part.

    A declaration in parts first takes the attempt's claim (``claim``, no
    ``deps``: docs.DECLARING, which makes others' cycle checks through it wait),
    then checks the whole declaration for cycles, then runs its parts
    (``claimed``: they ignore others' claims, and the last one drops its own);
    ``unclaim`` drops the claim of a declaration refused before its first part.
    ``call``: names the declaration that claims (a hash of the execution, its token,
    the dependees and the described quests: the same declaration made again is the
    same call and takes the claim over): only it renews or drops its claim, and
    each of its parts refuses to write once the claim is not its own or has lapsed
    (another declaration of the same execution is told to try again).
    Run by the API only, never queued.
    """

    KIND = "DeclareDeps"
    eid: str
    token_b64: str
    deps: list[str]
    quests: dict[str, str] = dataclasses.field(default_factory=dict)
    halted: bool = False
    part: bool = False
    parts_halt: bool = False
    seen: dict[str, Any] = dataclasses.field(default_factory=dict)
    claim: bool = False
    unclaim: bool = False
    claimed: bool = False
    call: str = ""
    took_over: bool = False
    """Set by a ``claim``: the claim held was this call's own, live (the same
    declaration made again while another call of it runs, or after it died)."""

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


@dataclasses.dataclass
class AddBackDep(Mutation):
    """Record the reverse edge under the dependee; ack at once if it already ended."""

    KIND = "AddBackDep"
    dependee: str
    depender: str
    needs_ack: bool

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.dependee}/back_deps/{self.depender}"


@dataclasses.dataclass
class AckFwdDep(Mutation):
    """Mark one edge satisfied on its own record; the ack closing the last open edge
    of the execution checks the depender."""

    KIND = "AckFwdDep"
    depender: str
    dependee: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.depender}/fwd_deps/{self.dependee}"


@dataclasses.dataclass
class CheckDeps(Mutation):
    """WAITING -> SCHEDULING once no edge of the execution that halted is open."""

    KIND = "CheckDeps"
    aid: str
    execution: int

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"


# -- completion propagation --------------------------------------------------------------


@dataclasses.dataclass
class PropagateCompletion(Mutation):
    """Ack up to 64 unpropagated back edges per step, chaining until none are left."""

    KIND = "PropagateCompletion"
    aid: str
    more: bool = False
    """A chained step: the inline dependers were acked by the first."""

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}#propagate"


# -- timers and polls --------------------------------------------------------------------


@dataclasses.dataclass
class TimerFired(Mutation):
    """Apply a timer's outcome if the timer is still the armed one.

    ``result`` ends the execution; otherwise the STOPPING poll is re-armed
    ``STOPPING_REPOLL_INTERVAL`` later with one more poll counted (none when
    ``polled`` is False: the run was not recorded yet, nothing could be asked).
    """

    KIND = "TimerFired"
    eid: str
    state: int
    deadline_us: int
    result: dict[str, Any] | None = None
    polled: bool = True

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


@dataclasses.dataclass
class TimeoutExecution(Action):
    """A timer is due: time the execution out, or (STOPPING) poll get_status first."""

    KIND = "TimeoutExecution"
    eid: str
    state: int
    deadline_us: int


@dataclasses.dataclass
class PollExecution(Action):
    """Ask the distributor how a scheduled or running execution is doing."""

    KIND = "PollExecution"
    eid: str
    due_us: int


@dataclasses.dataclass
class PollDone(Mutation):
    """Apply a poll: end the execution, poll again later, or stop polling."""

    KIND = "PollDone"
    eid: str
    due_us: int
    result: dict[str, Any] | None = None
    again: bool = False

    def root(self) -> str:
        return docs.attempt_path(ExecutionID.parse(self.eid).attempt_id)


# -- expiring results --------------------------------------------------------------------


@dataclasses.dataclass
class ExpireResult(Mutation):
    """Mark finished attempt ``aid`` expired once its result's expiration (``due_us``) passed."""

    KIND = "ExpireResult"
    aid: str
    due_us: int

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"


# -- notifications and distributor tasks -------------------------------------------------


@dataclasses.dataclass
class NotifyExecution(Action):
    """Let the execution's distributor interpret a notification; end the execution if it says so."""

    KIND = "NotifyExecution"
    eid: str
    data_b64: str
    attrs: dict[str, str]
    config_name: str = ""


@dataclasses.dataclass
class HandleDistributorTask(Action):
    """A task a distributor queued for itself (Config.enqueue_task).

    ``config`` is the snapshot of the config the distributor was built from
    (absent in tasks queued by older versions: then the config named
    ``config_name`` is used).
    """

    KIND = "HandleDistributorTask"
    config_name: str
    body_b64: str
    config: dict[str, Any] | None = None


# -- the tasks that fire timers and polls -----------------------------------------------


def timer_step(timer: Mapping[str, Any]) -> tuple[TimeoutExecution, str]:
    """The task that fires ``timer`` and its name (shared by arming and the sweep)."""
    step = TimeoutExecution(
        eid=str(timer["eid"]), state=int(timer["state"]), deadline_us=int(timer["deadline_us"])
    )
    name = task_name("timer", step.eid, str(step.state), str(step.deadline_us))
    return step, name


def timer_later(timer: Mapping[str, Any]) -> Later:
    step, name = timer_step(timer)
    return Later(step, eta_us=int(timer["deadline_us"]), name=name)


def poll_later(poll: Mapping[str, Any]) -> Later:
    step = PollExecution(eid=str(poll["eid"]), due_us=int(poll["due_us"]))
    return Later(step, eta_us=step.due_us, name=task_name("poll", step.eid, str(step.due_us)))


# -- re-opening an attempt that ended abnormally (dm retry) ------------------------------


@dataclasses.dataclass
class ReopenAttempt(Mutation):
    """ABNORMAL_FINISHED -> SCHEDULING, if the attempt still ended with ``after_execution``.

    ``cause``: the encoded dependee whose re-open reached this depender ("" when
    a user asked). The new execution is scheduled once :class:`ReopenDependers`
    has gone through the attempt's back edges.
    """

    KIND = "ReopenAttempt"
    aid: str
    after_execution: int
    cause: str = ""

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}"


@dataclasses.dataclass
class ReopenDependers(Mutation):
    """Un-propagate up to 64 back edges of a re-opened attempt per step, chaining;
    the last step schedules the attempt's new execution."""

    KIND = "ReopenDependers"
    aid: str
    after_execution: int
    first: bool = True
    """The first step of the walk: it also un-acks the inline dependers."""

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.aid}#reopen"


@dataclasses.dataclass
class UnackFwdDep(Mutation):
    """Open the edge again, for the depender's current execution, on a re-opened
    dependee; re-open a depender that ended abnormally after being told of the
    dependee's end."""

    KIND = "UnackFwdDep"
    depender: str
    dependee: str

    def root(self) -> str:
        return f"{docs.ATTEMPTS}/{self.depender}/fwd_deps/{self.dependee}"


def reopen_later(aid: str, after_execution: int, cause: str = "") -> Later:
    """The re-open of ``aid`` as a named task: requests for the same re-open collapse."""
    step = ReopenAttempt(aid=aid, after_execution=after_execution, cause=cause)
    return Later(step, name=task_name("reopen", aid, str(after_execution)))


def expiry_later(record: Mapping[str, Any]) -> Later:
    """The task that marks a result expired when due (shared by arming and the sweep)."""
    step = ExpireResult(aid=str(record["aid"]), due_us=int(record["due_us"]))
    return Later(step, eta_us=step.due_us, name=task_name("expire", step.aid, str(step.due_us)))
