"""A deterministic simulation of the whole engine, driven by one integer seed.

Everything random comes from the seed:

* the graph: a DAG of fake quests, node ``i`` depending on attempts of
  lower-numbered nodes (chains, fan-out hubs, wide fan-ins, diamonds; some
  quests with several attempts), each quest's retry limits, start, run and
  stop timeouts, and distributor config: notifying (``fake``), a poll timeout
  from run (``fake_poll``), or polled while running (``fake_watch``);
* what every execution does: succeed, fail, crash, exit early; notify or leave
  it to the STOPPING poll; repeat its halting or finishing call as a client
  would after a lost response; finish without activating (a job with nothing
  to declare, as :mod:`dmcore.job` does); have a duplicate instance of the job
  call dm second (its activation, or its direct FinishAttempt, is refused);
  finish with a result that expires (already, or later); let dm's timers,
  dependency completions, sweeps and cancels happen in the middle of the job;
* the queue's faults (:class:`tests.harness.ChaosQueue`): duplicates (at once,
  or hours later, past the dedupe window), delays, reordering, dispatch
  failures after commit (the follow-ups committed with the step are then left
  to the sweep: none, or only some, were queued); duplicated and hours-late notifications;
* the distributor's faults (:mod:`tests.sim.faults`): transient and final
  errors of run, get_status and cancel, runs that time out having started the
  task (the distributor then busy while the job runs and stops, its stop timer
  falling due before dm records the run; on the ChaosQueue with one worker,
  sometimes recorded by another delivery between that timer's read and its commit,
  :mod:`tests.sim.recorded_between`), outages longer than dm's retry window,
  tasks the distributor loses;
* a second client: right after a job declares its dependencies, another
  caller (a user's ``dm ensure``) asks for one of them without an execution,
  between two deliveries of the declaration's follow-ups, and the distributor
  runs what that starts at once, so the dependee may be created unflagged
  after its depender's AddBackDep and end before the declaration's
  EnsureAttempt arrives;
* inside a service call: between two parts of a declaration (then in parts of
  2 dependencies; the service's ``between_parts`` hook), other callers' work:
  deliveries of the earlier parts' follow-ups, and a dependee's job that first
  tries to depend on its declaring depender, a cycle dm must refuse (now, or
  told to try again) without a trace while the declaration is accepted whole
  (often a dependency of a part still to come, which another client has just
  asked for: only the declaration's claim stops it; declarations then sometimes
  in parts of one dependency, so that one of two has parts);
  and another call of the declaring execution itself: the same declaration (a
  client retrying while the first call still runs), which takes the claim over
  and must get the answer the first call gets, or one of its dependencies, which
  must be told to try again and leave the first call's claim as it was; or the
  call dies there (its connection dropped, its dm process stopped) and the job
  retries it, which must go on at once (not wait for the dead call's claim);
* an operator changing ``sweep_shards`` mid-run (checked as a server's next
  request does: ``layout.check_settings``), so the sweep must still find what
  was stamped for another count;
* the driver's moves: the order in which it plays pending executions, when it
  settles, when it stalls (leaves executions unplayed while the clock jumps
  past their start timeout, then plays them late), when it cancels an attempt
  (between steps, in the middle of a job, or inside D.run: between dm's read
  and the task's start);
* the engine's batch sizes (tiny ones make a few dozen edges take several
  transactions and chained steps) and, for some runs, several worker threads
  delivering tasks at once (those runs vary from one replay to the next);
* on the local queue, several dm processes on one home (:class:`tests.sim.stores.Processes`:
  each its own connections, kept bodies and lock): the driver's moves are one
  process's or another's, and right after one's batch commits, before it goes on,
  another may deliver tasks (:meth:`Sim._other_process`);
* the store's: SQLite's own sizes (no write limit, declarations in parts of a
  few documents with their large inline limits), or a home an older dm (record
  layout 4, no ordered columns) writes until dm of this layout opens it mid-run,
  the first open sometimes stopping before it records its layout
  (:mod:`tests.sim.stores`).

The same seed replays the same run exactly when it runs on one worker (for the
same engine code: a change in how the engine draws random bytes reshuffles
what a seed does), so a failure is reproduced with ``uv run pytest tests/sim
--seed N``.

A job of node ``i`` activates, declares its dependencies (creating their
quests; in one EnsureGraphData call or in several batches) and, unless dm
tells it to halt, finishes with ``{"v": 1 + sum of its dependencies' values}``
where a dependency that ended abnormally, or whose result dm reports expired,
counts 0.

After the run, :meth:`Sim.check` verifies the invariants listed in its
docstring, stated on what the API shows (:class:`tests.sim.observe.Observed`),
what the fake distributor saw, and a few engine records read through
:class:`tests.sim.observe.Internals` (the one place that knows dm's layout).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from distributors.fake import Crash, Job, quest_desc
from dmcore.engine import core, docs, layout
from dmcore.engine.core import Settings
from dmcore.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState
from dmcore.store.sqlite import SqliteStore
from tests.harness import Chaos, Harness, qid_of
from tests.sim.faults import Faults, FaultyWorld
from tests.sim.observe import AttemptView, ExecutionView, Internals, Observed, attempt_now, look
from tests.sim.recorded_between import RecordedBetween
from tests.sim.stores import OlderDmStore, Processes, SmallPartsStore
from tests.test_store_ordered import disagreements

T = TypeVar("T")

OK, FAIL, CRASH = "ok", "fail", "crash"
# Where a job stops: before activating, after activating, after declaring its
# dependencies, or after FinishAttempt ("done"). An "ok" job that stops early
# returns without a result, which dm turns into FAILED.
START, ACTIVATED, DEPS, DONE = "start", "activated", "deps", "done"
RETRY_FIELD = {
    AbnormalStatus.FAILED: "failed",
    AbnormalStatus.CRASHED: "crashed",
    AbnormalStatus.TIMED_OUT: "timed_out",
}
STALL_S = 700
"""How far the clock jumps when the driver leaves executions unplayed (> any start timeout)."""
SETTLE_S = 60
"""How far one settle may move the clock (< any start timeout, so only stalls time out)."""
MIDJOB_S = 20
"""How far the clock may move in the middle of a job (< any run or start timeout)."""
CONFIGS = {
    "fake": {"fake": {}},
    "fake_poll": {"fake": {"poll_timeout": "60s"}},
    "fake_watch": {"fake": {"poll_interval": "30s"}},
    "fake_tq": {"fake": {}},  # reports through dm's queue (tests.sim.faults)
}
POLL_TIMEOUT_S = {"fake_poll": 60}
"""The poll timeout run gives, by config: the stop phase lasts that long (§4.5)."""
SLACK_S = 20
"""How late a timer may fire here: a delayed delivery, an outbox left to the sweep."""
REPOLL_S = 30
P_DIRECT_FINISH = 0.5
"""How often a job with nothing to declare finishes without activating first."""
P_DUPLICATE_JOB = 0.2
"""How often a second instance of a job calls dm after the job's first call."""
P_SQLITE_SIZES = 0.12
"""Seeds run at SQLite's own sizes (``Plan.parts_docs``)."""
P_UPGRADE = 0.12
"""Seeds that start on a layout-4 home and upgrade it mid-run (``Plan.upgrade_at``)."""
P_PROCESSES = 0.5
"""Seeds run by several processes on one home, on the local queue (``Plan.processes``)."""
P_OTHER_COMMITS = 0.3
"""How often another process works right after a process's batch commits."""
OLDER_LAYOUT = 4
"""The record layout of the older dm (``layout.TAKEN_UP``): no ordered columns."""
US = 1_000_000
EXPIRED = dm_pb2.Attempt.Partial.EXPIRED


def replay_hint(seed: int) -> str:
    return f"replay with: uv run pytest tests/sim --seed {seed}"


# -- the plan: everything drawn from the seed before the run ----------------------------


@dataclasses.dataclass
class Node:
    index: int
    desc: dm_pb2.Quest.Desc
    qid: str
    attempts: int
    deps: list[tuple[int, int]]  # (node index, attempt number), no duplicates
    retry_failed: int
    retry_crashed: int
    retry_timed_out: int
    stop_s: int
    start_s: int  # 0 = no start timeout
    run_s: int = 0  # 0 = no run timeout
    config: str = "fake"

    @property
    def name(self) -> str:
        return f"n{self.index}"


@dataclasses.dataclass
class Plan:
    seed: int
    nodes: list[Node]
    ensures: list[tuple[int, int, list[int]]]  # (driver iteration, node, attempt numbers)
    chaos: Chaos
    p_fail: float
    p_crash: float
    p_early_exit: float
    p_silent: float
    p_renotify: float
    p_retry_call: float
    p_settle_between: float
    p_stall: float
    faults: Faults = dataclasses.field(default_factory=Faults)
    p_late_notify: float = 0.0
    p_expire: float = 0.0
    p_midjob: float = 0.0
    p_cancel: float = 0.0
    p_cancel_in_run: float = 0.0
    tiny_batches: bool = False
    """max_inline 2, propagate_batch 2, declarations in parts of 3 dependencies."""
    workers: int = 1
    p_fast: float = 0.0
    """A job that runs to its end inside D.run, before dm has recorded the run."""
    p_new_config: float = 0.0
    """The service's configs are replaced (same content, a new version) between steps."""
    out_of_process: bool = False
    """The faulty distributor registered as not in-process: on the local queue the
    embedded worker refuses its calls inside a batch and makes them after the commit."""
    p_second_client: float = 0.0
    """After a job's declaration, another client ensures one of the declared attempts
    amid the declaration's follow-ups (:meth:`Sim._second_client`)."""
    p_between_parts: float = 0.0
    """Between two parts of a declaration (in parts of 2 dependencies then), other
    callers' work: deliveries, and a dependee's job that first tries to close a
    cycle onto the declaring attempt (:meth:`Sim._between_parts`)."""
    p_later_closer: float = 0.0
    """Between two parts of a declaration, another client asks for a dependency of
    a later part and its job tries to close a cycle (:meth:`Sim._later_closer`);
    and (with ``p_between_parts``) as often, a declaration is made in parts of one
    dependency, so that a declaration of two has parts."""
    reshard: bool = False
    """``sweep_shards`` changes now and then during the run (:meth:`Sim._reshard`)."""
    p_own_call: float = 0.0
    """Between two parts of a declaration, the declaring execution calls again
    (:meth:`Sim._own_call`)."""
    p_dropped_call: float = 0.0
    """Between two parts of a declaration, the call dies (:class:`DroppedCall`) and
    the job makes it again (:meth:`Sim._declare`)."""
    parts_docs: int = 0
    """SQLite's own sizes (:class:`tests.sim.stores.SmallPartsStore`): no write limit,
    declarations in parts of this many documents and their large inline limits,
    with ``max_inline`` 2 (0: Firestore's, which the harness holds every store to)."""
    upgrade_at: int = 0
    """The run starts on a home of record layout 4 (:class:`tests.sim.stores.OlderDmStore`,
    no ordered columns) and dm of this layout opens it at this driver iteration (0:
    never; the ChaosQueue on SQLite only), :meth:`Sim._upgrade`."""
    upgrade_crash: bool = False
    """The first open stops before recording the layout: the older dm runs on, over
    the columns that open added, until a second open."""
    processes: int = 0
    """On the local queue (one worker thread, the harness's kind of store), this many
    dm processes share the home (:class:`tests.sim.stores.Processes`; 0: one)."""
    p_other_commits: float = 0.0
    """How often another process works right after a batch commits (:meth:`Sim._other_process`)."""

    def summary(self) -> str:
        edges = sum(len(n.deps) for n in self.nodes)
        multi = sum(1 for n in self.nodes if n.attempts > 1)
        return (
            f"{len(self.nodes)} quests ({multi} with several attempts), {edges} edges, "
            f"{len(self.ensures)} ensured from outside; {self.chaos}; {self.faults}; "
            f"fail={self.p_fail} crash={self.p_crash} early_exit={self.p_early_exit} "
            f"silent={self.p_silent} renotify={self.p_renotify} late_notify={self.p_late_notify} "
            f"retry_call={self.p_retry_call} stall={self.p_stall} expire={self.p_expire} "
            f"midjob={self.p_midjob} cancel={self.p_cancel}/{self.p_cancel_in_run} "
            f"fast={self.p_fast} new_config={self.p_new_config} "
            f"tiny_batches={self.tiny_batches} workers={self.workers} "
            f"out_of_process={self.out_of_process} second_client={self.p_second_client} "
            f"between_parts={self.p_between_parts}/{self.p_later_closer} "
            f"own_call={self.p_own_call} dropped_call={self.p_dropped_call} "
            f"reshard={self.reshard} parts_docs={self.parts_docs} "
            f"upgrade_at={self.upgrade_at} upgrade_crash={self.upgrade_crash} "
            f"processes={self.processes}/{self.p_other_commits}"
        )


def make_plan(seed: int, *, min_nodes: int = 5, max_nodes: int = 40, workers: int = 1) -> Plan:
    rng = random.Random(f"dm-sim-plan/{seed}")
    # Mostly small graphs, a quarter up to max_nodes: keeps the seeds cheap.
    big = rng.random() < 0.25
    n = rng.randint(min_nodes, max_nodes if big else max(min_nodes, (max_nodes * 3) // 5))
    p_chain = rng.choice([0.0, 0.3, 0.7, 0.95])
    p_extra = rng.choice([0.1, 0.3, 0.6])
    hubs = rng.sample(range(n), k=rng.randint(0, min(3, n)))
    p_hub = rng.choice([0.3, 0.3, 0.8])  # 0.8: hubs with many dependers (wide completions)
    attempts = [1 if rng.random() < 0.8 else rng.randint(2, 3) for _ in range(n)]
    p_wide = rng.choice([0.06, 0.06, 0.2])
    configs = rng.choice([["fake"], ["fake"], ["fake", "fake_poll", "fake_watch", "fake_tq"]])
    nodes: list[Node] = []
    for i in range(n):
        chosen: dict[int, None] = {}
        if i > 0 and rng.random() >= 0.12:  # else a leaf
            if rng.random() < p_chain:
                chosen[i - 1] = None
            for _ in range(3):
                if rng.random() < p_extra:
                    chosen[rng.randrange(i)] = None
            for hub in hubs:  # fan-out
                if hub < i and rng.random() < p_hub:
                    chosen[hub] = None
            if rng.random() < p_wide:  # wide fan-in
                for j in rng.sample(range(i), k=min(i, rng.randint(4, 16))):
                    chosen[j] = None
            if not chosen:
                chosen[rng.randrange(i)] = None
        deps: list[tuple[int, int]] = []
        for j in chosen:
            nums = {rng.randint(1, attempts[j])}
            if attempts[j] > 1 and rng.random() < 0.2:
                nums.add(rng.randint(1, attempts[j]))
            deps += [(j, a) for a in sorted(nums)]
        retry = {k: rng.choice([0, 1, 2, 3]) for k in ("failed", "crashed", "timed_out")}
        stop_s = rng.choice([5, 30, 90])
        start_s = rng.choice([0, 0, 120, 600])
        run_s = rng.choice([0, 0, 0, 900])
        config = rng.choice(configs)
        desc = quest_desc(
            f"n{i}",
            config,
            failed=retry["failed"],
            crashed=retry["crashed"],
            timed_out=retry["timed_out"],
        )
        desc.meta.timeouts.stop.FromSeconds(stop_s)
        if start_s:
            desc.meta.timeouts.start.FromSeconds(start_s)
        if run_s:
            desc.meta.timeouts.run.FromSeconds(run_s)
        nodes.append(
            Node(
                i,
                desc,
                qid_of(desc),
                attempts[i],
                deps,
                retry["failed"],
                retry["crashed"],
                retry["timed_out"],
                stop_s,
                start_s,
                run_s,
                config,
            )
        )

    depended = {j for node in nodes for j, _ in node.deps}
    ensures: list[tuple[int, int, list[int]]] = []
    for node in nodes:
        late = 0 if rng.random() < 0.7 else rng.randint(1, 4)
        if node.index not in depended:  # a root: every attempt from outside
            ensures.append((late, node.index, list(range(1, node.attempts + 1))))
        elif rng.random() < 0.1:  # an inner quest also asked for from outside
            ensures.append((late, node.index, [rng.randint(1, node.attempts)]))

    if rng.random() < 0.15:
        chaos = Chaos(reorder=rng.random() < 0.5)
    else:
        chaos = Chaos(
            duplicate=rng.choice([0.0, 0.1, 0.3, 0.6]),
            delay=rng.choice([0.0, 0.2, 0.5]),
            fail_dispatch=rng.choice([0.0, 0.05, 0.2, 0.4]),
        )
    chaos.dedupe_s = 3600.0  # as Cloud Tasks: a name is free again an hour after
    # Drawn apart, so that every seed keeps the plan it had before this knob.
    chaos.fail_partway = random.Random(f"{seed}/fail_partway").random() < 0.5
    chaos.late_duplicate = rng.choice([0.0, 0.0, 0.02, 0.1])
    chaos.twin = rng.choice([0.0, 0.1, 0.3]) if workers > 1 else 0.0
    if rng.random() < 0.3:
        faults = Faults()
    else:
        faults = Faults(
            run_transient=rng.choice([0.0, 0.1, 0.3]),
            run_timeout=rng.choice([0.0, 0.05, 0.2]),
            # Drawn apart, so that every seed keeps the plan it had before this knob.
            # With several workers it also shows a stop timer delivered with no token
            # while another worker records the run (timers._recorded_since).
            slow_record=random.Random(f"{seed}/slow_record").choice([0.0, 0.5, 1.0]),
            # Drawn apart too: the stop timer's commit preceded by another delivery's
            # RecordRun, on one worker (timers._recorded_since).
            record_between=random.Random(f"{seed}/record_between").choice([0.0, 0.5, 1.0]),
            run_reject=rng.choice([0.0, 0.0, 0.03]),
            outage=rng.choice([0.0, 0.0, 0.0, 0.02]),
            status_transient=rng.choice([0.0, 0.2, 0.5]),
            lost=rng.choice([0.0, 0.0, 0.1]),
            cancel_transient=rng.choice([0.0, 0.3]),
            cancel_refuse=rng.choice([0.0, 0.1, 0.3]),
        )
    # Drawn apart, so that every seed keeps the plan it had before these knobs.
    sizes = random.Random(f"{seed}/sqlite_sizes")
    upgrade = random.Random(f"{seed}/upgrade")
    processes = random.Random(f"{seed}/processes")
    return Plan(
        seed=seed,
        nodes=nodes,
        ensures=ensures,
        chaos=chaos,
        p_fail=rng.choice([0.0, 0.05, 0.15, 0.25]),
        p_crash=rng.choice([0.0, 0.05, 0.15, 0.25]),
        p_early_exit=rng.choice([0.0, 0.0, 0.05]),
        p_silent=rng.choice([0.0, 0.1, 0.4]),
        p_renotify=rng.choice([0.0, 0.1, 0.3]),
        p_retry_call=rng.choice([0.0, 0.2]),
        p_settle_between=rng.choice([0.0, 0.1, 0.5]),
        p_stall=rng.choice([0.0, 0.0, 0.1, 0.3]),
        faults=faults,
        p_late_notify=rng.choice([0.0, 0.0, 0.05]),
        p_expire=rng.choice([0.0, 0.0, 0.3, 0.7]),
        p_midjob=rng.choice([0.0, 0.1, 0.4]),
        p_cancel=rng.choice([0.0, 0.0, 0.05, 0.15]),
        p_cancel_in_run=rng.choice([0.0, 0.0, 0.05]),
        tiny_batches=rng.random() < 0.3,
        workers=workers,
        p_fast=rng.choice([0.0, 0.0, 0.1, 0.3]),
        p_new_config=rng.choice([0.0, 0.0, 0.1]),
        # Drawn apart, so that every seed keeps the plan it had before this knob.
        out_of_process=random.Random(f"{seed}/out_of_process").random() < 0.5,
        p_second_client=random.Random(f"{seed}/second_client").choice([0.0, 0.3, 0.6]),
        p_between_parts=random.Random(f"{seed}/between_parts").choice([0.0, 0.0, 0.5, 1.0]),
        p_later_closer=random.Random(f"{seed}/later_closer").choice([0.0, 0.5, 1.0]),
        reshard=random.Random(f"{seed}/reshard").random() < 0.3,
        p_own_call=random.Random(f"{seed}/own_call").choice([0.0, 0.5, 1.0]),
        p_dropped_call=random.Random(f"{seed}/dropped_call").choice([0.0, 0.0, 0.3, 0.6]),
        parts_docs=sizes.choice([6, 9, 12]) if sizes.random() < P_SQLITE_SIZES else 0,
        upgrade_at=upgrade.randint(1, 6) if upgrade.random() < P_UPGRADE else 0,
        upgrade_crash=upgrade.random() < 0.5,
        processes=processes.randint(2, 3) if processes.random() < P_PROCESSES else 0,
        p_other_commits=P_OTHER_COMMITS,
    )


# -- what each execution did -----------------------------------------------------------


@dataclasses.dataclass
class ExecRecord:
    eid: ExecutionID
    outcome: str  # OK | FAIL | CRASH
    stop: str  # START | ACTIVATED | DEPS | DONE
    silent: bool  # no notification: dm must learn the end from the STOPPING poll
    retry_calls: bool  # repeat the halting EnsureGraphData / FinishAttempt (W-6)
    batches: int = 1  # declare the dependencies in this many EnsureGraphData calls
    expires_in_s: float | None = None  # the result's expiration, from FinishAttempt's time
    activated: bool = False
    direct: bool = False  # finished without activating (the activation token's FinishAttempt)
    halted: bool = False
    finished: bool = False
    error: str = ""  # an unexpected error from a dm call
    # dm had ended the execution when the job (or one of its calls) got to it
    ended_by_dm: tuple[AbnormalStatus, str] | None = None
    cancelled: bool = False  # ended by a cancel of the simulation's after it was played
    lost: bool = False  # the distributor lost the task (get_status: not found)
    value: int | None = None
    expiration_us: int | None = None
    saw_expired: set[AttemptID] = dataclasses.field(default_factory=set)
    state_out: dict[str, Any] | None = None
    stopped_us: int | None = None  # when the job stopped (finished, or halted)
    polls_before_stop: int = 0  # get_status calls about it made before it stopped
    fast: bool = False  # played inside D.run

    @property
    def reached_stopping(self) -> bool:
        return self.halted or self.finished

    def expected(self) -> AbnormalStatus | None:
        """How dm must end this execution: None = FINISHED, else the abnormal status."""
        if self.ended_by_dm is not None:
            return self.ended_by_dm[0]
        if self.cancelled:
            return AbnormalStatus.CANCELLED
        if self.lost:
            return AbnormalStatus.MISSING
        if self.error or self.outcome == FAIL:
            return AbnormalStatus.FAILED
        if self.outcome == CRASH:
            return AbnormalStatus.CRASHED
        return None if self.reached_stopping else AbnormalStatus.FAILED

    def describe(self) -> str:
        bits = [self.outcome, f"stop={self.stop}"]
        bits += [b for b, on in (("halted", self.halted), ("finished", self.finished)) if on]
        if self.direct:
            bits.append("direct")
        if self.silent:
            bits.append("silent")
        if self.ended_by_dm is not None:
            bits.append(f"ended_by_dm({self.ended_by_dm[0].name})")
        if self.cancelled:
            bits.append("cancelled")
        if self.lost:
            bits.append("lost")
        if self.fast:
            bits.append("fast")
        if self.error:
            bits.append(f"error={self.error}")
        return " ".join(bits)


@dataclasses.dataclass
class CancelRecord:
    """A cancel the simulation asked for, and what it ended."""

    aid: AttemptID
    reason: str
    at_us: int
    accepted: bool
    was_terminal: bool | None = None
    ended: ExecutionID | None = None  # the execution it ended CANCELLED, if any


@dataclasses.dataclass(frozen=True)
class Declaring:
    """A job's declaration under way: what another call of the same job would repeat."""

    eid: ExecutionID
    aids: list[AttemptID]
    job: Job
    quests: list[dm_pb2.Quest.Desc]


def _answer(rsp: dm_pb2.EnsureGraphDataRsp, aids: list[AttemptID]) -> str:
    """A declaration's answer, briefly (for a violation's message)."""
    if rsp.should_halt:
        return "halted"
    got = []
    for a in aids:
        quest = rsp.result.quests.get(a.quest)
        att = None if quest is None else quest.attempts.get(a.num)
        got.append("absent" if att is None else att.data.WhichOneof("attempt_type") or "no data")
    return f"with {', '.join(got)}"


def _answered_alike(
    one: dm_pb2.EnsureGraphDataRsp, other: dm_pb2.EnsureGraphDataRsp, aids: list[AttemptID]
) -> bool:
    """Whether two answers to the same declaration agree: both halted, or neither,
    with the same data for each dependee."""
    if one.should_halt or other.should_halt:
        return one.should_halt == other.should_halt

    def data(rsp: dm_pb2.EnsureGraphDataRsp, a: AttemptID) -> bytes | None:
        quest = rsp.result.quests.get(a.quest)
        att = None if quest is None else quest.attempts.get(a.num)
        return None if att is None else att.data.SerializeToString(deterministic=True)

    return all(data(one, a) == data(other, a) for a in aids)


class DroppedCall(Exception):
    """A declaration's call died between its parts (its connection dropped, or the dm
    process serving it stopped): its claim stays, what its parts recorded stays."""


class JobCallError(Exception):
    """A dm call made by a simulated job failed (expected or not; see the record)."""


class NotConverged(AssertionError):
    pass


# -- the run ----------------------------------------------------------------------------


def new_harness(plan: Plan, tmp_path: Any, *, queue: str = "chaos", store: Any = None) -> Harness:
    """The harness a plan runs on: its chaos, the faulty distributor, its batch sizes,
    and its store when the plan asks for another than the harness's (on SQLite)."""
    world = FaultyWorld(plan.faults, f"dm-sim-faults/{plan.seed}")
    world.in_process = not plan.out_of_process
    upgrading = bool(plan.upgrade_at) and queue == "chaos" and store is None
    if store is None and upgrading:
        store = OlderDmStore(_home(tmp_path), indexed_fields=docs.INDEXED_FIELDS, durable=False)
        store.transaction(
            lambda tx: tx.set(
                layout.PATH,
                {"version": OLDER_LAYOUT, layout.SHARDS: Settings().sweep_shards},
            )
        )
    elif store is None and plan.parts_docs:
        store = SmallPartsStore(_home(tmp_path), parts_docs=plan.parts_docs, **AS_HARNESS)
    elif store is None and plan.processes and queue == "local" and plan.workers == 1:
        store = Processes(_home(tmp_path), processes=plan.processes, **AS_HARNESS)
    h = Harness(
        tmp_path,
        queue=queue,
        seed=plan.seed,
        chaos=plan.chaos,
        configs=CONFIGS,
        store=store,
        world=world,
    )
    world.rand, world.clock = h.rng.randbytes, h.clock
    h.workers = plan.workers
    if plan.tiny_batches:
        h.engine.settings.max_inline = 2
        h.engine.settings.propagate_batch = 2
        h.service.declare_chunk = 3
    if plan.p_between_parts:
        h.service.declare_chunk = 2  # most declarations in parts
    if isinstance(h.store, SmallPartsStore):
        h.store.max_writes = None  # the store's own limits (the harness set Firestore's)
        h.engine.settings.max_inline = 2  # Firestore's 256, to scale with parts_docs
        h.engine.settings.propagate_batch = 2
        # The service's rule (transaction_docs // 3), without Firestore's 32 as a floor.
        h.service.declare_chunk = plan.parts_docs // 3
        if plan.workers == 1:
            h.store.steps = lambda: h.engine.stats
    if plan.reshard and not upgrading:
        # The store's layout recorded (as a home's open or a server's first request
        # does), so that a later change of sweep_shards is checked against it.
        layout.check_settings(h.store, "sim", "a new run", h.engine.settings)
    return h


AS_HARNESS: dict[str, Any] = {
    "indexed_fields": docs.INDEXED_FIELDS,
    "ordered_fields": docs.SWEPT,
    "durable": False,
}
"""How the harness opens its own SQLite store (the plan's other stores open alike)."""


def _home(tmp_path: Any) -> Path:
    return Path(tmp_path) / "dm.sqlite"  # where the harness's own store would be


class Sim:
    """One seeded run: drive the harness, then check the invariants."""

    def __init__(self, plan: Plan, h: Harness, *, max_iterations: int | None = None) -> None:
        self.plan = plan
        self.h = h
        assert isinstance(h.world, FaultyWorld), "build the harness with new_harness(plan, ...)"
        self.world: FaultyWorld = h.world
        self.world.before_run = self._in_run
        self.world.after_start = self._fast
        self.world.after_slow_start = self._slow_start
        between = plan.faults.record_between
        self.recorded_between = RecordedBetween(h, self.world, between, plan.seed)
        if between and h.chaos is not None and plan.workers == 1:
            self.recorded_between.install()
        self.jumps: list[tuple[int, int]] = []  # the driver's blind clock jumps: (from, to)
        self.config_version = 1
        self.internals = Internals(h.store)
        self.rng = random.Random(f"dm-sim-drive/{plan.seed}")
        self.lock = threading.RLock()  # cancels may come from worker threads (in D.run)
        self.run_rng = random.Random(f"dm-sim-in-run/{plan.seed}")
        # Its own stream: a seed without a second client keeps the run it had.
        self.client_rng = random.Random(f"dm-sim-second-client/{plan.seed}")
        self.parts_rng = random.Random(f"dm-sim-between-parts/{plan.seed}")
        self.later_rng = random.Random(f"dm-sim-later-closer/{plan.seed}")
        self.chunk_rng = random.Random(f"dm-sim-parts-of-one/{plan.seed}")
        self.shards_rng = random.Random(f"dm-sim-reshard/{plan.seed}")
        self.declaring: Declaring | None = None
        """The declaration a job's call is recording (its hook's other callers' work)."""
        self.own_rng = random.Random(f"dm-sim-own-call/{plan.seed}")
        self.drop_rng = random.Random(f"dm-sim-dropped-call/{plan.seed}")
        self.own_called = False
        """The declaration under way was made again already, by another call of its
        job or its retry after a dropped call: once per declaration."""
        self.same_answer: dict[ExecutionID, dm_pb2.EnsureGraphDataRsp] = {}
        """The answer another call of the same declaration got between its parts."""
        self.closer_of: dict[ExecutionID, AttemptID] = {}
        """Executions played between another's parts: the attempt to try to depend on."""
        self.in_parts = False
        h.service.between_parts = self._between_parts
        self.older = h.store if isinstance(h.store, OlderDmStore) else None
        """The older dm's store while it runs (until :meth:`_upgrade` switches)."""
        self.upgrade_next = plan.upgrade_at
        self.upgrade_rng = random.Random(f"dm-sim-upgrade/{plan.seed}")
        self.processes = h.store if isinstance(h.store, Processes) else None
        """The processes sharing the home, if several (:meth:`_other_process`)."""
        self.proc_rng = random.Random(f"dm-sim-processes/{plan.seed}")
        self.in_other = False
        if self.processes is not None:
            for i, s in enumerate(self.processes.stores):
                s.after_commit = functools.partial(self._other_process, i)
        self.opens = 0
        self.by_qid = {n.qid: n for n in plan.nodes}
        self.max_iterations = max_iterations or 200 + 40 * len(plan.nodes)
        self.records: dict[ExecutionID, ExecRecord] = {}
        self.played: list[ExecutionID] = []
        self.activations: dict[ExecutionID, int] = {}
        self.runs: dict[ExecutionID, int] = {}
        self.declared: dict[AttemptID, dict[AttemptID, None]] = {}
        self.ensured: dict[AttemptID, None] = {}
        self.cancels: list[CancelRecord] = []
        self.late_notes: list[tuple[int, ExecutionID]] = []  # notifications due hours later
        # Distributor state returned by each normally ended execution, per attempt.
        self.states: dict[AttemptID, dict[int, dict[str, Any]]] = {}
        self.violations: list[str] = []
        self.sweep_errors: list[str] = []
        self.trace: list[str] = []
        self.iterations = 0
        self.in_job = False

    def aid(self, node: int, num: int) -> AttemptID:
        return AttemptID(self.plan.nodes[node].qid, num)

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    def known(self) -> list[AttemptID]:
        """Attempts asked for so far (ensured or declared), in a stable order."""
        out = dict(self.ensured)
        for deps in self.declared.values():
            out.update(deps)
        return sorted(out, key=lambda a: (a.quest, a.num))

    # -- driving --

    def run(self) -> None:
        todo = sorted(self.plan.ensures, key=lambda e: e[0])
        while True:
            self.iterations += 1
            if self.iterations > self.max_iterations:
                raise NotConverged(
                    f"no convergence after {self.max_iterations} iterations; {self._not_terminal()}"
                )
            while todo and todo[0][0] < self.iterations:
                _, i, nums = todo.pop(0)
                self.h.ensure(self.plan.nodes[i].desc, attempts=nums)
                self.ensured.update((self.aid(i, a), None) for a in nums)
                self.trace.append(f"ensure n{i} {nums}")
            if self.older is not None and self.iterations >= self.upgrade_next:
                self._upgrade()
            if self.processes is not None:
                # The driver's moves of this iteration (its deliveries, the jobs' calls)
                # are one process's; the others act right after its commits.
                self.processes.current = self.proc_rng.randrange(len(self.processes.stores))
            self._settle()
            if self.plan.reshard and self.shards_rng.random() < 0.15 and self.older is None:
                self._reshard()
            if self.rng.random() < self.plan.p_cancel:
                self._cancel_some("between steps")
            if self.rng.random() < self.plan.p_new_config:
                self._new_config()
            pending = self._playable()
            if not pending:
                nxt = self._next_due()
                if nxt is not None:
                    # Only timers are left (e.g. a STOPPING poll, a late duplicate). No
                    # execution waits to be played, so no start timeout fires early.
                    self.h.clock.now_us = max(self.h.clock.now_us, nxt)
                    continue
                if todo:
                    continue
                if self.older is not None:
                    self._upgrade()  # the run ended first: the last opens come now
                    continue
                break
            self.rng.shuffle(pending)
            stalled: list[ExecutionID] = []
            if self.rng.random() < self.plan.p_stall:
                # Leave some executions unplayed (a slow distributor) while the
                # clock jumps past every start timeout: those time out, are
                # retried, and are played late (stale) in a later iteration.
                stalled = [e for e in pending if self.rng.random() < 0.5]
            for eid in pending:
                if eid in stalled or eid not in self._playable():
                    continue  # stalled, or cancelled since the list was made
                self._play(eid)
                if self.rng.random() < self.plan.p_settle_between:
                    self._settle()
            if stalled:
                # What is under way lands first (a report queued through dm's queue,
                # a delayed delivery): the stall is about the unplayed executions.
                self._settle()
                self.trace.append(f"stall {len(stalled)} for {STALL_S}s")
                self._jump(STALL_S)
            self._renotify()
        self._settle()

    def _jump(self, seconds: float) -> None:
        """Move the clock without running what falls due meanwhile (a stall, time
        passing in the middle of a job): timers fire late by up to the jump."""
        start = self.h.clock()
        self.h.clock.advance(seconds)
        self.jumps.append((start, self.h.clock()))

    def _new_config(self) -> None:
        """Replace the service's configs by the same under a new version: executions
        started before keep theirs (W-11), which the fake checks on every call."""
        self.config_version += 1
        reg = self.h.registry
        reg.set_config(
            reg.config_from_dict({"distributor_configs": CONFIGS}),
            version=f"sim-v{self.config_version}",
        )
        self.trace.append(f"configs replaced (sim-v{self.config_version})")

    def _reshard(self) -> None:
        """An operator changes ``sweep_shards`` (to another count above 1: a switch from
        or to 1 is refused) and the next request's layout check records it: the sweep
        must still find what was stamped for the old count."""
        settings = self.h.engine.settings
        new = self.shards_rng.choice(
            [n for n in (2, 3, 5, 8, 16, 40) if n != settings.sweep_shards]
        )
        settings.sweep_shards = new
        layout.check_settings(self.h.store, "sim", "a new run", settings)
        self.trace.append(f"sweep_shards -> {new}")

    def _upgrade(self) -> None:
        """dm of this layout opens the older dm's home: the store adds the ordered
        columns, filled from the documents, and the layout is recorded (5), after
        which dm of this layout runs. With ``upgrade_crash``, the first open stops
        before recording it: the older dm runs on (its bodies only, over the new
        columns) and a later open must fill them again before they are used."""
        older = self.older
        assert older is not None
        self.opens += 1
        new = SqliteStore(
            older.path,
            indexed_fields=docs.INDEXED_FIELDS,
            ordered_fields=docs.SWEPT,
            durable=False,
        )
        if self.plan.upgrade_crash and self.opens == 1:
            new.close()
            self.upgrade_next = self.iterations + self.upgrade_rng.randint(1, 4)
            self.trace.append(f"upgrade: opened, stopped before recording layout {layout.VERSION}")
            return
        new.max_writes = older.max_writes
        layout.check_settings(new, "sim", "a new run", self.h.engine.settings)
        self.h.store = self.h.engine.store = self.h.registry.store = new
        self.internals.store = new
        self.older = None
        older.close()
        self.trace.append(f"upgrade: opened, layout {layout.VERSION} recorded")

    def _other_process(self, committed: int) -> None:
        """Right after a batch of process ``committed`` commits, before that process
        goes on (notes what it keeps, or starts its next batch), maybe another
        process works and commits: it plays the job of a task the first has just
        started (a fast distributor; the job's calls are the other process's), or
        delivers a few tasks. The first process's next batch must see those commits,
        not take up the bodies its last batch kept as still true."""
        procs = self.processes
        assert procs is not None
        prng = self.proc_rng
        if self.in_other or self.in_parts or prng.random() >= self.plan.p_other_commits:
            return
        other = prng.choice([p for p in range(len(procs.stores)) if p != committed])
        self.in_other = True
        try:
            with procs.acting_as(other):
                pending = [e for e in self._playable() if e not in self.runs]
                if pending and prng.random() < 0.7:
                    eid = prng.choice(sorted(pending, key=str))
                    self.trace.append(f"process {other} plays {self.ename(eid)}")
                    self._play(eid)
                    return
                n = 0
                for _ in range(prng.randint(1, 3)):
                    if not self.h.deliver_one():
                        break
                    n += 1
                if n:
                    self.trace.append(f"process {other} delivers {n}")
        finally:
            self.in_other = False

    def _fast(self, eid: ExecutionID) -> None:
        """Inside D.run, the task started: maybe the job runs to its end right now."""
        with self.lock:
            if self.run_rng.random() >= self.plan.p_fast or eid not in self._playable():
                return
            if self.in_parts:
                return  # between a declaration's parts, only _between_parts plays
            self._play(eid, fast=True)

    def _slow_start(self, eid: ExecutionID) -> None:
        """Inside a D.run that started the task and will time out, the distributor busy
        after it (``Faults.slow_record``): the job runs to its end now, quietly, so that
        its stop timer falls due before dm records the run."""
        with self.lock:
            if eid not in self._playable() or self.in_parts:
                return
            self._play(eid, fast=True, quiet=True)

    def _playable(self) -> list[ExecutionID]:
        """Tasks the fake holds unplayed, except those dm cancelled (a cancelled task
        does not run; if dm failed to cancel it, it runs and is refused by dm)."""
        out = []
        for eid in self.h.world.pending():
            log = self.world.log(eid)
            if any(c.ended == eid for c in self.cancels) and not log.cancel_refused:
                continue  # left for the invariant: dm must have cancelled it
            out.append(eid)
        return out

    def _next_due(self) -> int | None:
        now = self.h.clock()
        due = [
            self.h.next_due_us(),
            min((t for t, _ in self.late_notes), default=None),
            self.internals.next_armed_us(now),  # the sweep runs every minute in production
        ]
        return min((t for t in due if t is not None), default=None)

    def _settle(self) -> None:
        """``h.settle()`` until no outbox record is left (the sweep itself may fail)."""
        for _ in range(200):
            self._deliver_late()
            try:
                self.h.settle(max_seconds=SETTLE_S)
            except ConnectionError as e:
                # A sweep that cannot reach the queue is retried by the next one
                # (the sweep is periodic); recorded, not a violation.
                self.sweep_errors.append(repr(e))
                continue
            self._deliver_late()
            # The sweep's own queueing may have failed: sweep again until nothing is
            # left behind (an outbox record, or an armed timer, poll or expiry due).
            now = self.h.clock()
            if not self.internals.pending_outbox(now) and not self.internals.due_armed(now):
                return
        raise NotConverged("outbox records or due timers keep coming back after 200 settles")

    def _deliver_late(self) -> None:
        now = self.h.clock()
        due = [e for t, e in self.late_notes if t <= now]
        if not due:
            return
        self.late_notes = [(t, e) for t, e in self.late_notes if t > now]
        for eid in due:
            self.h.world.notify(eid)  # hours late: must change nothing
            self.trace.append(f"late notify {self.ename(eid)}")
        self.h.drain()

    def _play(self, eid: ExecutionID, *, fast: bool = False, quiet: bool = False) -> None:
        """Play the job of ``eid``; ``fast``: inside D.run (dm has not recorded the run;
        nothing else of dm's happens meanwhile, the engine is inside a step); ``quiet``:
        the distributor tells nothing of its end (dm learns it by polling)."""
        p = self.plan
        r = self.rng.random()
        outcome = FAIL if r < p.p_fail else CRASH if r < p.p_fail + p.p_crash else OK
        if outcome == OK:
            early = self.rng.random() < p.p_early_exit
            stop = self.rng.choice([START, ACTIVATED, DEPS]) if early else DONE
        else:
            stop = self.rng.choice([START, ACTIVATED, DEPS, DONE])
        expires: float | None = None
        if self.rng.random() < p.p_expire:
            expires = self.rng.choice([-5.0, 20.0, 300.0, 4000.0, 30000.0])
        rec = ExecRecord(
            eid,
            outcome,
            stop,
            silent=self.rng.random() < p.p_silent or quiet,
            retry_calls=self.rng.random() < p.p_retry_call,
            batches=self.rng.choice([1, 1, 2, 3]),
            expires_in_s=expires,
            fast=fast,
        )
        now = look(self.h.service, eid)
        if now is not None and now.state == ExecutionState.ABNORMAL_FINISHED:
            # Ended before it was played (timed out while stalled, cancelled, ...).
            assert now.status is not None
            rec.ended_by_dm = (now.status, now.reason)
        self.records[eid] = rec
        self.runs[eid] = self.runs.get(eid, 0) + 1
        self.in_job = True
        try:
            self.h.world.run_task(eid, lambda job: self._job(rec, job), notify=False)
        finally:
            self.in_job = False
        self.played.append(eid)
        quiet = rec.silent and rec.reached_stopping
        if quiet and self.world.lose(eid):
            rec.lost = True
        if rec.expected() is None and rec.state_out is not None:
            self.states.setdefault(eid.attempt_id, {})[eid.num] = rec.state_out
        if not quiet:
            self.h.world.notify(eid)
        if self.rng.random() < p.p_late_notify:
            self.late_notes.append((self.h.clock() + self.rng.randint(3600, 6 * 3600) * US, eid))
        self.trace.append(f"play {self.ename(eid)}: {rec.describe()}")
        if not fast:
            # Between a declaration's parts this thread may be inside a job played in
            # D.run (_fast), holding self.lock: worker threads would wait for it in
            # _in_run while this one waits for them. There, deliver on this thread.
            self.h.drain(workers=1 if self.in_parts else None)

    def _renotify(self) -> None:
        if not self.played or self.rng.random() >= self.plan.p_renotify:
            return
        for eid in self.rng.sample(self.played, k=min(3, len(self.played))):
            self.h.world.notify(eid)  # a distributor repeating itself: must change nothing
            self.trace.append(f"renotify {self.ename(eid)}")
        self.h.drain()

    # -- cancels --

    def _cancel_some(self, where: str, rng: random.Random | None = None) -> None:
        """Cancel one attempt asked for so far, chosen at random (terminal ones too)."""
        rng = rng or self.rng
        known = self.known()
        if known:
            self.cancel(rng.choice(known), where)

    def cancel(self, aid: AttemptID, where: str) -> CancelRecord:
        """Cancel ``aid`` through the API and check at once what it did."""
        svc = self.h.service
        before = attempt_now(svc, aid)
        with self.lock:
            reason = f"sim cancel #{len(self.cancels)} ({where})"
            rec = CancelRecord(aid, reason, self.h.clock(), accepted=False)
            self.cancels.append(rec)
        rec.was_terminal = before is None or before.terminal
        try:
            svc.cancel_attempt(dm_pb2.CancelAttemptReq(attempt=aid.to_proto(), reason=reason),
                               Caller.trusted())  # fmt: skip
        except InvalidArgument as e:
            if before is not None:
                self.violation(f"cancel of {self.name(aid)} refused: {e}")
            self.trace.append(f"cancel {self.name(aid)} ({where}): does not exist yet")
            return rec
        except Unavailable:  # the distributor could not cancel yet: nothing changed
            after = attempt_now(svc, aid)
            if (before and before.state) != (after and after.state):
                self.violation(f"cancel of {self.name(aid)} refused (Unavailable) yet changed it")
            self.trace.append(f"cancel {self.name(aid)} ({where}): unavailable")
            return rec
        rec.accepted = True
        after = attempt_now(svc, aid)
        if after is None or not after.terminal:
            self.violation(f"{self.name(aid)} is {after and after.state.name} after a cancel")
        elif not rec.was_terminal:
            if after.status != AbnormalStatus.CANCELLED or not after.reason.startswith(reason):
                self.violation(
                    f"{self.name(aid)} cancelled ({where}) but ended {after.status} {after.reason}"
                )
            cur = after.executions.get(after.num_executions)
            if (
                cur is not None
                and cur.status == AbnormalStatus.CANCELLED
                and cur.reason.startswith(reason)
            ):
                rec.ended = aid.execution(cur.num)
                played = self.records.get(rec.ended)
                if played is not None and played.ended_by_dm is None:
                    played.cancelled = True
        self.trace.append(f"cancel {self.name(aid)} ({where}): ended {rec.ended}")
        return rec

    def _in_run(self, eid: ExecutionID) -> None:
        """Inside D.run, before the task starts: maybe cancel that very attempt."""
        with self.lock:
            go = self.run_rng.random() < self.plan.p_cancel_in_run
        if go:
            self.cancel(eid.attempt_id, "inside D.run")

    # -- the job --

    def _midjob(self, rec: ExecRecord) -> None:
        """dm's work goes on while the job runs: tasks, a bit of time, a sweep, a cancel.
        Not in a job played by another process right after a commit
        (:meth:`_other_process`): the committing process's next work (a distributor
        call it put off until after the commit) would wait for the clock to move."""
        if rec.fast or self.in_parts or self.in_other or self.rng.random() >= self.plan.p_midjob:
            return
        if self.rng.random() < 0.5:
            self._jump(self.rng.uniform(0, MIDJOB_S))
            try:
                self.h.engine.sweep()
            except ConnectionError as e:
                self.sweep_errors.append(repr(e))
        self.h.drain()
        if self.rng.random() < self.plan.p_cancel * 2:
            self._cancel_some("in the middle of a job")

    def _call(self, rec: ExecRecord, what: str, fn: Callable[[], T]) -> T:
        try:
            got = fn()
        except (PermissionDenied, Unauthenticated) as e:
            now = look(self.h.service, rec.eid)
            if now is not None and now.state == ExecutionState.ABNORMAL_FINISHED:
                assert now.status is not None
                if rec.ended_by_dm is None:
                    rec.ended_by_dm = (now.status, now.reason)
                raise JobCallError(f"{what}: refused, dm ended it ({now.status.name})") from e
            rec.error = f"{what}: {e!r}"
            self.violation(f"{self.ename(rec.eid)}: job's {what} raised {e!r}")
            raise JobCallError(rec.error) from e
        except Exception as e:
            rec.error = f"{what}: {e!r}"
            self.violation(f"{self.ename(rec.eid)}: job's {what} raised {e!r}")
            raise JobCallError(rec.error) from e
        if rec.ended_by_dm is not None:
            self.violation(f"{self.ename(rec.eid)}: {what} accepted for an ended execution")
        return got

    def _end(self, rec: ExecRecord, job: Job) -> None:
        if rec.outcome == FAIL:
            raise RuntimeError("sim: planned failure")
        if rec.outcome == CRASH:
            raise Crash("sim: planned crash")
        rec.state_out = dict(job.state)

    def _job(self, rec: ExecRecord, job: Job) -> None:
        eid = job.eid
        aid = eid.attempt_id
        node = self.by_qid[aid.quest]
        earlier = self.states.get(aid, {})
        last_ok = max((n for n in earlier if n < eid.num), default=0)
        want = earlier.get(last_ok, {})  # of the last normally ended execution before it
        if job.state != want:
            self.violation(
                f"{self.ename(eid)}: got distributor state {job.state}, want {want} (§2.4)"
            )
        if rec.stop == START:
            return self._end(rec, job)
        # Drawn apart (per execution), so that every seed keeps the rest of its run.
        own = random.Random(f"dm-sim-job/{self.plan.seed}/{eid}")
        if rec.stop == DONE and not node.deps and own.random() < P_DIRECT_FINISH:
            # A job whose first call is FinishAttempt (dmcore.job activates lazily):
            # the activation token activates and finishes in one transaction.
            rec.direct = True
            return self._finish(rec, job, 1, own)
        self._call(rec, "ActivateExecution", job.activate)
        rec.activated = True
        self.activations[eid] = self.activations.get(eid, 0) + 1
        if eid in self.closer_of:
            self._close_a_cycle(rec, job, self.closer_of.pop(eid))
        self._duplicate(rec, job, own)
        self._midjob(rec)
        if rec.stop == ACTIVATED:
            return self._end(rec, job)
        value = 1
        k = min(rec.batches, len(node.deps)) or 1
        for b in range(k):  # in batches, as a job declaring more as it goes would
            batch = node.deps[b * len(node.deps) // k : (b + 1) * len(node.deps) // k]
            if not batch:
                continue
            aids = [self.aid(j, a) for j, a in batch]
            quests = [self.plan.nodes[j].desc for j in dict.fromkeys(j for j, _ in batch)]
            declare = functools.partial(job.dep_on, *aids, quests=quests)
            fresh = [a for a in aids if a not in set(self.known())]
            outer, self.declaring = self.declaring, Declaring(eid, aids, job, quests)
            chunk = self.h.service.declare_chunk
            if self.plan.p_between_parts and self.chunk_rng.random() < self.plan.p_later_closer:
                self.h.service.declare_chunk = 1  # a part per dependency: parts even of two
            # (A job played inside this call, in D.run, declares too: its own flag.)
            outer_called, self.own_called = self.own_called, False
            try:
                rsp = self._call(rec, "EnsureGraphData", functools.partial(self._declare, rec))
            finally:
                self.declaring, self.own_called = outer, outer_called
                self.h.service.declare_chunk = chunk
            same = self.same_answer.pop(eid, None)
            if same is not None and not _answered_alike(rsp, same, aids):
                self.violation(
                    f"{self.ename(eid)}: its declaration was answered {_answer(rsp, aids)}, the"
                    f" same declaration made meanwhile {_answer(same, aids)}"
                )
            self.declared.setdefault(aid, {}).update(dict.fromkeys(aids))
            if rsp.should_halt:
                rec.halted = True
                self._stopped(rec)
                self._second_client(rec, fresh or aids)
                job.state["halts"] = int(job.state.get("halts", 0)) + 1
                job.state["last"] = eid.num
                if self._after_halt(rec, aids) or rec.retry_calls:
                    again = self._call(rec, "EnsureGraphData (retry)", declare)
                    if not again.should_halt:
                        self.violation(
                            f"{self.ename(eid)}: a retried halting EnsureGraphData did not halt"
                        )
                self._midjob(rec)
                return self._end(rec, job)
            for a in aids:
                value += self._dep_value(rec, rsp, a)
            self._second_client(rec, fresh or aids)
            self._midjob(rec)
        if rec.stop == DEPS:
            return self._end(rec, job)
        return self._finish(rec, job, value, own)

    def _declare(self, rec: ExecRecord) -> dm_pb2.EnsureGraphDataRsp:
        """The job's declaration (``self.declaring``); if the call dies between its
        parts (:meth:`_between_parts`), a few tasks are delivered (the parts'
        follow-ups) and the job makes the same declaration again, its dependees
        maybe in another order: it must go on at once (the dead call's claim is
        its own), ending as one uninterrupted call would."""
        d = self.declaring
        assert d is not None
        try:
            return d.job.dep_on(*d.aids, quests=d.quests)
        except DroppedCall:
            pass
        for _ in range(self.drop_rng.randint(0, 3)):
            if not self.h.deliver_one():
                break
        turned = self.drop_rng.random() < 0.5
        self.trace.append(
            f"{self.ename(rec.eid)} makes its dropped declaration again"
            f"{' (its dependees in reverse)' if turned else ''}"
        )
        if turned:
            return d.job.dep_on(*d.aids[::-1], quests=d.quests[::-1])
        return d.job.dep_on(*d.aids, quests=d.quests)

    def _finish(self, rec: ExecRecord, job: Job, value: int, own: random.Random) -> None:
        exp = None
        if rec.expires_in_s is not None:
            exp = self.h.clock() + int(rec.expires_in_s * US)
        self._call(rec, "FinishAttempt", lambda: job.finish({"v": value}, expiration_us=exp))
        if rec.direct:
            rec.activated = True
            self.activations[rec.eid] = self.activations.get(rec.eid, 0) + 1
        rec.finished = True
        self._stopped(rec)
        rec.value = value
        rec.expiration_us = exp
        if rec.retry_calls:
            finish = functools.partial(job.finish, {"v": value}, expiration_us=exp)
            self._call(rec, "FinishAttempt (retry)", finish)
        if rec.direct:
            self._duplicate(rec, job, own)
        self._midjob(rec)
        return self._end(rec, job)

    def _duplicate(self, rec: ExecRecord, job: Job, own: random.Random) -> None:
        """Maybe a second instance of the job (the distributor ran the task twice, or
        redelivered it) comes second to the execution: its activation, or a direct
        FinishAttempt with the activation token and another result, must be refused.
        (Which instance comes first does not matter: the first is the job.)"""
        if own.random() >= P_DUPLICATE_JOB:
            return
        dup = Job(self.h.world, self.h.world.task(rec.eid))
        if own.random() < 0.5:
            what, call = "ActivateExecution", dup.activate
        else:
            what = "FinishAttempt with the activation token"
            call = functools.partial(dup.finish, {"v": -1, "duplicate": True})
        try:
            call()
        except (PermissionDenied, Unauthenticated):
            self.trace.append(f"duplicate of {self.ename(rec.eid)}: {what} refused")
            return
        self.violation(f"{self.ename(rec.eid)}: a duplicate job instance's {what} was accepted")

    def _after_halt(self, rec: ExecRecord, declared: list[AttemptID]) -> bool:
        """Right after a declaration of ``declared`` halted the job, before the job may
        call again: what others do there (none here; the retry simulation's user
        re-opens a dependee). Whether the job then calls again, its answer lost,
        whatever its plan (``ExecRecord.retry_calls``)."""
        return False

    def _second_client(self, rec: ExecRecord, declared: list[AttemptID]) -> None:
        """Maybe another client asks for one of the attempts a job just declared
        (``declared``: those the declaration asked for first, if any).

        A few of the declaration's follow-ups are delivered first (its AddBackDep
        may find no attempt yet), then the other client's EnsureGraphData (no
        execution: it creates the attempt unflagged, docs.DEPENDED), then the
        engine goes on one task at a time and the distributor runs the attempt's
        job as soon as it is handed over: the attempt may end before the
        declaration's own EnsureAttempt is delivered, and its end must still
        reach the depender.
        """
        crng = self.client_rng
        if rec.fast or self.in_parts or not declared or crng.random() >= self.plan.p_second_client:
            return
        target = crng.choice(declared)
        for _ in range(crng.randint(0, 4)):
            if not self.h.deliver_one():
                break
        job = self._asked_from_outside(target, "second client")
        if job is not None:
            self._play(job)  # a fast distributor: its job runs at once

    def _asked_from_outside(self, target: AttemptID, who: str) -> ExecutionID | None:
        """Another client asks for ``target`` without an execution (a user's ``dm
        ensure``), then the engine goes on one task at a time until the distributor
        holds a job of it not played yet: that execution (None: none came)."""
        req = dm_pb2.EnsureGraphDataReq()
        req.quest.append(self.by_qid[target.quest].desc)
        req.quest_attempt.add(nums=[target.num])
        self.h.service.ensure_graph_data(req, Caller.trusted())
        self.ensured[target] = None
        self.trace.append(f"{who} ensures {self.name(target)}")
        for _ in range(200):
            mine = [e for e in self._playable() if e.attempt_id == target and e not in self.runs]
            if mine:
                return mine[0]
            if not self.h.deliver_one():
                return None
        return None

    def _between_parts(self, eid: ExecutionID, part: int) -> None:
        """The service's hook between two parts of a declaration: maybe other callers
        work there. A few tasks are delivered (the earlier parts' follow-ups: new
        dependees scheduled, run, maybe ended before the declaration decides), maybe
        another call of the declaring execution itself (:meth:`_own_call`), then
        one of the declaration's dependees whose job was handed over is played, and
        its job first tries to depend on the declaring attempt: a cycle once the
        declaration is whole, which dm must refuse (now, or told to try again) and
        leave no trace of, while the declaration itself is accepted whole.

        Nothing else runs meanwhile (no clock move, cancel or second client), and no
        other declaration's parts nest in here.
        """
        if (
            self.plan.p_dropped_call
            and not self.in_parts
            and not self.own_called
            and self.declaring is not None
            and self.declaring.eid == eid
            and self.drop_rng.random() < self.plan.p_dropped_call
        ):
            self.own_called = True
            self.trace.append(f"between parts {part} of {self.ename(eid)}: the call dies")
            raise DroppedCall(f"{eid}: between parts {part}")
        prng = self.parts_rng
        if self.in_parts or self.declaring is None or prng.random() >= self.plan.p_between_parts:
            return
        declaring = self.declaring
        declarer, dependees = declaring.eid, declaring.aids
        if declarer != eid:
            return
        self.in_parts = True
        try:
            for _ in range(prng.randint(0, 6)):
                if not self.h.deliver_one():
                    break
            if not self.own_called and self.own_rng.random() < self.plan.p_own_call:
                self.own_called = True  # (a third would find the claim lost twice: Unavailable)
                self._own_call(self.declaring, part)
            wanted = set(dependees)
            for _ in range(50):
                mine = [
                    e for e in self._playable() if e.attempt_id in wanted and e not in self.runs
                ]
                if mine:
                    closer = prng.choice(sorted(mine, key=str))
                    self.closer_of[closer] = eid.attempt_id
                    self.trace.append(
                        f"between parts {part} of {self.ename(eid)}: play {self.ename(closer)}"
                    )
                    self._play(closer)
                    self.closer_of.pop(closer, None)  # its job never activated
                    return
                if prng.random() < 0.5 or not self.h.deliver_one():
                    break
            later = self._later_closer(declaring, part)
            if later is not None:
                self.closer_of[later] = eid.attempt_id
                self.trace.append(
                    f"between parts {part} of {self.ename(eid)}: another client's "
                    f"{self.ename(later)} plays"
                )
                self._play(later)
                self.closer_of.pop(later, None)
        finally:
            self.in_parts = False

    def _later_closer(self, d: Declaring, part: int) -> ExecutionID | None:
        """Maybe another client asks for a dependency of the declaration's parts still
        to come (absent yet: no edge to it is recorded), and dm hands its job over;
        returns that execution, to be played as a closer. Its declaration of the
        declaring attempt closes no cycle yet: only the declaration's claim stops it
        (told to try again); accepted, the later part would find the cycle and be
        refused after the earlier parts committed (a partial write)."""
        lrng = self.later_rng
        if lrng.random() >= self.plan.p_later_closer:
            return None
        known = set(self.known())
        later = [a for a in d.aids if a not in known]
        later = [a for a in later if self.internals.edge_satisfied(d.eid.attempt_id, a) is None]
        if not later:
            return None
        return self._asked_from_outside(lrng.choice(later), f"between parts {part}: another client")

    def _own_call(self, d: Declaring, part: int) -> None:
        """Between its parts, another call of the declaring execution itself: the same
        declaration (its client retrying while the first call still runs), or another
        (another thread of its job): some of its dependencies (in parts too, its own
        claim to take), or one alone.

        The same declaration is the same call (the claim names what it declares): it
        takes the claim over and is accepted, and the first call must get the same
        answer (halted, or the same results; checked in :meth:`_job`). Another one
        is told to try again (Unavailable) while the first call's claim holds, and
        the first call's claim stays: were it taken or dropped by this call, a cycle
        could be closed under the first call's later parts (a partial write)."""
        claim = self.internals.claim(d.eid.attempt_id)
        if claim is None or claim.get("execution") != d.eid.num:
            return  # no claim (a retry of a declaration that halted): nothing to wait for
        r = self.own_rng.random()
        whole = r < 0.6
        if whole:
            aids, kind = d.aids, "the same declaration"
        elif r < 0.8 and len(d.aids) > self.h.service.declare_chunk + 1:
            aids, kind = d.aids[:-1], "all but one of its dependencies (in parts)"
        else:
            aids, kind = [self.own_rng.choice(d.aids)], "one of its dependencies"
        quests = [q for q in d.quests if qid_of(q) in {a.quest for a in aids}]
        what = f"another call of {self.ename(d.eid)} between its parts {part}: {kind}"
        try:
            rsp = d.job.dep_on(*aids, quests=quests)
        except Unavailable as e:
            if whole and "another call" in e.message:
                self.violation(f"{what} waited for the first call's claim: {e!r}")
            self.trace.append(f"{what}: {e!r}")
        except (PermissionDenied, Unauthenticated) as e:
            now = look(self.h.service, d.eid)
            if now is None or now.state != ExecutionState.ABNORMAL_FINISHED:
                self.violation(f"{what} refused although it runs: {e!r}")
        except Exception as e:
            self.violation(f"{what} raised {e!r}, not Unavailable")
        else:
            if whole:
                self.trace.append(f"{what}: accepted, {_answer(rsp, aids)}")
                self.same_answer[d.eid] = rsp
                return
            self.violation(f"{what} was accepted while the first call's claim holds")
        if not whole and self.internals.claim(d.eid.attempt_id) != claim:
            self.violation(f"{what}: the first call's claim {claim} changed")

    def _close_a_cycle(self, rec: ExecRecord, job: Job, onto: AttemptID) -> None:
        """The job of a dependee of ``onto``'s declaration under way tries to depend on
        ``onto``: refused, for a cycle or to try again, and nothing of it stays."""
        try:
            job.dep_on(onto)
        except (InvalidArgument, Unavailable) as e:
            self.trace.append(f"{self.ename(rec.eid)} -> {self.name(onto)} refused: {e!r}")
            return
        self.violation(
            f"{self.ename(rec.eid)}: its declaration of {self.name(onto)}, which declares it"
            " (a cycle), was accepted"
        )

    def _stopped(self, rec: ExecRecord) -> None:
        rec.stopped_us = self.h.clock()
        rec.polls_before_stop = len(self.world.log(rec.eid).status_calls)

    def _dep_value(self, rec: ExecRecord, rsp: dm_pb2.EnsureGraphDataRsp, a: AttemptID) -> int:
        quests = rsp.result.quests
        if a.quest not in quests or a.num not in quests[a.quest].attempts:
            self.violation(f"{self.ename(rec.eid)}: EnsureGraphData did not halt and lacks {a}")
            return 0
        att = quests[a.quest].attempts[a.num]
        data = att.data
        kind = data.WhichOneof("attempt_type")
        now = self.h.clock()
        if kind == "finished":
            exp = data.finished.data.expiration
            due = exp.ToMicroseconds() if data.finished.data.HasField("expiration") else None
            expired_now = due is not None and due <= now
            if data.expired != expired_now:
                self.violation(
                    f"{self.ename(rec.eid)}: {self.name(a)} shown expired={data.expired}, "
                    f"its expiration {due} and now {now} say {expired_now}"
                )
            if data.expired:
                if data.finished.data.object or att.partial.result != EXPIRED:
                    self.violation(f"{self.ename(rec.eid)}: expired {self.name(a)} was served")
                rec.saw_expired.add(a)
                return 0
            for d in self.declared.get(a, {}):
                if d.quest not in quests or d.num not in quests[d.quest].attempts:
                    self.violation(
                        f"{self.ename(rec.eid)}: the answer lacks {self.name(d)}, a direct "
                        f"dependency of {self.name(a)} (EnsureGraphData answers with depth 1)"
                    )
            if data.finished.data.object:
                return int(json.loads(data.finished.data.object)["v"])
        if kind == "abnormal_finish":
            return 0
        self.violation(
            f"{self.ename(rec.eid)}: EnsureGraphData did not halt but {self.name(a)} is {kind}"
        )
        return 0

    # -- after the run --

    def _not_terminal(self) -> str:
        seen = Observed(self.h.service, {a.quest for a in self.known()})
        rows = []
        for aid, att in sorted(seen.attempts.items(), key=lambda kv: self.name(kv[0])):
            if att.terminal:
                continue
            cur = att.executions.get(att.num_executions)
            rows.append(
                f"  {self.name(aid)} {att.state.name} execution {att.num_executions} "
                f"{cur.state.name if cur else '-'} open edges "
                f"{self.internals.open_edges(aid, att.num_executions)}"
            )
        if not rows:
            return "every attempt is terminal"
        return "non-terminal attempts:\n" + "\n".join(rows)

    def check(self) -> list[str]:
        """Check the invariants; returns the violations (empty = all hold).

        On what the jobs and the driver saw during the run:

        * the jobs' dm calls succeeded (including the W-6 retries), or were
          refused only once dm had ended the execution; the distributor state
          handed to each execution is the one of the attempt's last normally
          ended execution (§2.4); an EnsureGraphData that did not halt returned
          every dependency terminal, an expired one flagged (and only when its
          expiration had passed) and never with its result;
        * a cancel accepted for a non-terminal attempt ended it CANCELLED at once.

        On the distributor (the fake's records):

        * each execution was played at most once and activated at most once;
        * D.run returned a token at most once per execution (calls that failed
          are retries; one that timed out after starting the task started the
          same task, the fake's being named by the execution);
        * no task is left running for an execution dm ended (except one dm
          never learned of, or whose cancel the distributor refused).

        On the graph through the API (:class:`Observed`):

        * exactly the attempts ensured or declared exist, every one terminal;
        * an attempt's executions are numbered 1..n, each terminal, each ended as
          its job behaved or as dm had to end it (a timeout while stalled, a
          cancel, a rejected run or an outage past the window, a lost task);
        * the retry policy (§1.8), replayed over those executions, ends the
          attempt exactly where dm did, in the state dm gave it;
        * each FINISHED attempt's value equals the reference computed here
          bottom-up from which dependencies ended abnormally or were seen
          expired; only ABNORMAL_FINISHED attempts are flagged abnormal (W-7);
        * every declared edge is shown both ways, none invented;
        * every result whose expiration has passed is shown expired.

        On the engine's records (:class:`Internals`) and the store:

        * each result was written by its attempt's last execution; every
          expired result is marked; forward edges satisfied, back edges
          propagated, completions recorded; nothing left over (outbox records,
          armed timers, polls, due expiries); the queue is empty;
        * on SQLite, the ordered columns agree with the documents; at SQLite's
          sizes, no transaction but a declaration's ran more steps than
          ``max_inline`` (:meth:`_check_store`).
        """
        v = self.violations[:]
        seen = Observed(self.h.service, {a.quest for a in self.known()} | set(self.by_qid))
        atts = seen.attempts

        v += [f"{self.ename(e)}: played {n} times" for e, n in self.runs.items() if n != 1]
        v += [
            f"{self.ename(e)}: activated {n} times" for e, n in self.activations.items() if n != 1
        ]
        v += self._check_distributor(atts)
        v += self._check_timing(atts)

        expected_aids = dict.fromkeys(self.known())
        v += [
            f"attempt {self.name(a)} was ensured or declared but does not exist"
            for a in expected_aids
            if a not in atts
        ]
        v += [
            f"attempt {self.name(a)} exists, nobody asked" for a in atts if a not in expected_aids
        ]
        v += [
            f"attempt {self.name(a)} is {att.state.name}, not terminal"
            for a, att in atts.items()
            if not att.terminal
        ]
        for aid, att in atts.items():
            v += self._check_executions(aid, att)
        v += self._check_values(atts, seen.flagged_abnormal)
        v += self._check_edges(atts)
        v += self._check_expiry(atts)

        v += self.internals.leftovers(self.h.clock())
        v += self._check_store()
        if self.h.next_due_us() is not None:
            v.append(f"queue still holds tasks (next due at {self.h.next_due_us()})")
        v += [f"{self.ename(e)}: handed to the fake, never played" for e in self._playable()]
        return v

    def _check_store(self) -> list[str]:
        """On SQLite, the ordered columns agree with the documents (what the sweep
        reads is what they say; after an upgrade too). At SQLite's sizes, only a
        declaration's transaction runs more steps than ``max_inline`` (its large
        inline limits, ``core.INLINE_ROOM`` per document of a part); any other keeps
        the small ones, so that none holds the write lock for thousands of steps."""
        store = self.h.store
        if self.older is not None:
            return ["the run ended on the older dm's store: never upgraded"]
        if not isinstance(store, SqliteStore):
            return []
        v = [f"ordered columns disagree: {d}" for d in disagreements(store)[:10]]
        if isinstance(store, SmallPartsStore) and store.steps is not None:
            small = self.h.engine.settings.max_inline
            large = max(small, core.INLINE_ROOM * store.parts_docs)
            for ran in store.ran:
                most = large if ran.declaration else small
                if ran.total > most:
                    v.append(f"a transaction ran {ran.total} steps, at most {most}: {ran.steps}")
                    break
        return v

    def name(self, aid: AttemptID) -> str:
        node = self.by_qid.get(aid.quest)
        return f"{node.name if node else aid.quest}|{aid.num}"

    def ename(self, eid: ExecutionID) -> str:
        return f"{self.name(eid.attempt_id)}|{eid.num}"

    def _cancelled(self, eid: ExecutionID) -> bool:
        return any(c.ended == eid for c in self.cancels)

    def _justified(
        self, eid: ExecutionID, status: AbnormalStatus, reason: str, ended_us: int | None = None
    ) -> str:
        """Why dm may have ended ``eid`` with ``status`` on its own ("" if it may not)."""
        node = self.by_qid[eid.quest]
        log = self.world.log(eid)
        if status == AbnormalStatus.REJECTED and log.outage and not log.rejected:
            window = self.h.engine.settings.run_retry_window_us
            first = log.first_try_us or 0
            if ended_us is not None and ended_us - first < window:
                return ""  # rejected before the outage window had passed
        if status == AbnormalStatus.TIMED_OUT:
            if "SCHEDULING" in reason and node.start_s:
                return "start timeout"
            if "RUNNING" in reason and node.run_s:
                return "run timeout"
        if status == AbnormalStatus.CANCELLED and self._cancelled(eid):
            return "cancelled"
        if status == AbnormalStatus.REJECTED and (log.rejected or log.outage):
            return "run refused" if log.rejected else "outage past the window"
        if status == AbnormalStatus.MISSING and log.lost:
            return "task lost"
        return ""

    def _timed_out_first(self, eid: ExecutionID, ex: ExecutionView) -> bool:
        """dm timed ``eid`` out (as its quest allows) before the distributor told it how
        the job ended: a report still on its way (a queued one, delayed) loses.

        "Told" is the distributor's answer (handle_notification, get_status), given
        outside any transaction: dm records the result in a transaction after it. With
        several workers, the timer's task delivered at the same instant on another
        thread may commit in between, and the result is then dropped (both orders
        are valid). The clock stands still while tasks are delivered, so only a told
        at the very instant of the timeout can have raced it; with one worker the
        told's own delivery records the result before any other task runs."""
        if ex.status != AbnormalStatus.TIMED_OUT or not self._justified(
            eid, ex.status, ex.reason, ex.modified_us
        ):
            return False
        told = self.world.log(eid).told_us
        if self.plan.workers > 1:
            return not any(t < ex.modified_us for t in told)
        return not any(t <= ex.modified_us for t in told)

    def _check_timing(self, atts: dict[AttemptID, AttemptView]) -> list[str]:
        """The stop phase of an execution that stopped quietly lasts its poll timeout
        from run, else its quest's stop timeout (§4.5), from when it stopped: the
        first get_status comes no earlier, and (dispatches not failing) no later
        than a timely timer would, or than dm's recording of the run if that came
        after (the driver's clock jumps aside); re-polls are 30 s
        apart (one worker only: concurrent duplicate deliveries may poll twice)."""
        v: list[str] = []
        for eid, rec in self.records.items():
            if rec.stopped_us is None or not rec.silent or rec.ended_by_dm or rec.cancelled:
                continue
            node = self.by_qid[eid.quest]
            phase = POLL_TIMEOUT_S.get(node.config, node.stop_s) * US
            log = self.world.log(eid)
            calls = log.status_calls[rec.polls_before_stop :]
            if not calls:
                continue  # dm learned the end otherwise (a late notification)
            due = rec.stopped_us + phase
            # dm has nothing to ask before it has the task's token: a job may stop
            # before the run that started it is recorded (a run that timed out, then
            # retried with backoff), and the first poll then comes once it is.
            latest = max(due, log.last_try_us or 0) if log.runs_ok else due
            for start, end in self.jumps:
                if start <= latest < end:
                    latest = end  # the clock jumped over the deadline
            # Never early; late only by a delayed delivery, unless dispatches fail
            # (then the sweep re-sends the timer's task, minutes later at worst).
            on_time = self.plan.chaos.fail_dispatch == 0
            if calls[0] < due or (on_time and calls[0] > latest + SLACK_S * US):
                v.append(
                    f"{self.ename(eid)}: first stop poll {(calls[0] - rec.stopped_us) / US:.0f}s "
                    f"after it stopped, its stop phase is {phase // US}s"
                )
            if self.plan.workers == 1:
                for a, b in itertools.pairwise(calls):
                    if b - a < REPOLL_S * US:
                        v.append(f"{self.ename(eid)}: stop polls {(b - a) / US:.0f}s apart")
                        break
        return v

    def _check_distributor(self, atts: dict[AttemptID, AttemptView]) -> list[str]:
        v: list[str] = list(self.world.config_drift)
        for eid, log in sorted(self.world.logs.items(), key=lambda kv: self.ename(kv[0])):
            if log.runs_ok > 1:
                v.append(f"{self.ename(eid)}: D.run returned a token {log.runs_ok} times")
            task = self.h.world.tasks.get(self.h.world.token_of(eid))
            att = atts.get(eid.attempt_id)
            ex = att.executions.get(eid.num) if att else None
            if (
                task is None
                or ex is None
                or ex.state
                not in (
                    ExecutionState.FINISHED,
                    ExecutionState.ABNORMAL_FINISHED,
                )
            ):
                continue
            if task.result is None and ex.token and not log.cancel_refused:
                v.append(
                    f"{self.ename(eid)}: its task is left running although dm ended it "
                    f"({ex.status.name if ex.status else 'FINISHED'})"
                )
        return v

    def _check_executions(self, aid: AttemptID, att: AttemptView) -> list[str]:
        """Contiguous numbering, outcomes as played, and the retry policy replayed."""
        v: list[str] = []
        me = self.name(aid)
        node = self.by_qid[aid.quest]
        cur = att.num_executions
        nums = sorted(att.executions)
        if nums != list(range(1, cur + 1)):
            v.append(f"{me}: executions {nums}, want 1..{cur}")
        limits = {
            "failed": node.retry_failed,
            "crashed": node.retry_crashed,
            "timed_out": node.retry_timed_out,
        }
        counters = dict.fromkeys(limits, 0)
        ends: AttemptState | None = None  # where the retry policy ends the attempt
        # A re-open (dm retry) after an abnormal end starts the policy afresh.
        reopened = self.internals.reopened_after(aid)
        for k, num in enumerate(nums, 1):
            ex = att.executions[num]
            eid = aid.execution(num)
            en = self.ename(eid)
            if k - 1 in reopened:
                if ends != AttemptState.ABNORMAL_FINISHED:
                    v.append(f"{en}: re-opened after execution {k - 1}, which did not end it")
                counters, ends = dict.fromkeys(limits, 0), None
            if ends is not None:
                v.append(f"{en}: exists although the attempt ended with execution {k - 1}")
                break
            if ex.state not in (ExecutionState.FINISHED, ExecutionState.ABNORMAL_FINISHED):
                v.append(f"{en}: {ex.state.name}, not terminal")
                continue
            got = ex.status
            rec = self.records.get(eid)
            if rec is None:
                # Never played: only dm ending it first (a refused run, an outage, a
                # cancel) leaves an execution unplayed.
                if got is None or not self._justified(eid, got, ex.reason, ex.modified_us):
                    v.append(f"{en}: never played, yet ended {got} ({ex.reason})")
                    continue
            else:
                want = rec.expected()
                if got != want and self._timed_out_first(eid, ex):
                    want = got  # the job's end was reported too late: the timeout won
                if got != want:
                    v.append(
                        f"{en}: ended {got.name if got else 'FINISHED'}, want "
                        f"{want.name if want else 'FINISHED'} (job: {rec.describe()})"
                    )
                    continue
                if rec.ended_by_dm is not None and not self._justified(
                    eid, *rec.ended_by_dm, ex.modified_us
                ):
                    v.append(f"{en}: dm ended it {rec.ended_by_dm} before its job, for no reason")
            if got is None:
                counters = {f: 0 for f in counters}
                if rec is not None and rec.finished:
                    ends = AttemptState.FINISHED
            elif got in RETRY_FIELD:
                field = RETRY_FIELD[got]
                used = counters[field]
                counters[field] = used + 1
                if used >= limits[field]:
                    ends = AttemptState.ABNORMAL_FINISHED
            else:  # CANCELLED, REJECTED, MISSING: never retried
                ends = AttemptState.ABNORMAL_FINISHED
        if ends is None and att.terminal and not v:
            # Ended with no execution ending it: cancelled while SCHEDULING or WAITING.
            by_us = any(c.aid == aid and att.reason.startswith(c.reason) for c in self.cancels)
            if att.status != AbnormalStatus.CANCELLED or not by_us:
                v.append(f"{me}: is {att.state.name}, retry policy says not ended")
        elif ends is not None and ends != att.state:
            v.append(f"{me}: is {att.state.name}, retry policy says {ends.name}")
        if ends == AttemptState.ABNORMAL_FINISHED and nums:
            last = att.executions[nums[-1]]
            if (att.status, att.reason) != (last.status, last.reason):
                v.append(
                    f"{me}: abnormal {att.status} {att.reason!r} != last execution's "
                    f"{last.status} {last.reason!r}"
                )
        return v

    def _check_values(
        self, atts: dict[AttemptID, AttemptView], flagged: set[AttemptID]
    ) -> list[str]:
        """Results of FINISHED attempts against a reference computed bottom-up."""
        v: list[str] = []
        ref: dict[AttemptID, int] = {}
        for node in self.plan.nodes:  # dependencies are lower-numbered: already computed
            for num in range(1, node.attempts + 1):
                aid = AttemptID(node.qid, num)
                att = atts.get(aid)
                if att is None:
                    continue
                me = self.name(aid)
                if (aid in flagged) != (att.state == AttemptState.ABNORMAL_FINISHED):
                    v.append(f"{me}: flagged abnormal={aid in flagged} but {att.state.name}")
                if att.state != AttemptState.FINISHED:
                    continue
                last = self.records.get(aid.execution(att.num_executions))
                saw_expired = last.saw_expired if last else set()
                want = 1
                for j, a in node.deps:
                    dep = self.aid(j, a)
                    dep_att = atts.get(dep)
                    if dep_att is None or not dep_att.terminal:
                        state = dep_att.state.name if dep_att else None
                        v.append(f"{me}: FINISHED while dependency {self.name(dep)} is {state}")
                    elif dep_att.state == AttemptState.FINISHED and dep not in saw_expired:
                        want += ref[dep]
                ref[aid] = want
                got = json.loads(att.result)["v"] if att.result else None
                if att.expired:
                    got = last.value if last else None  # not served any more: the job's own
                if got != want:
                    v.append(f"{me}: result v={got}, reference says {want}")
                writer = self.internals.result_writer(aid)
                if writer != att.num_executions:
                    v.append(
                        f"{me}: result written by execution {writer}, the last is "
                        f"{att.num_executions}"
                    )
                if got is not None and att.result_size != len(
                    json.dumps({"v": got}, separators=(",", ":"))
                ):
                    v.append(f"{me}: result size {att.result_size} for v={got}")
        return v

    def _check_edges(self, atts: dict[AttemptID, AttemptView]) -> list[str]:
        """Every declared edge shown and recorded both ways, and propagated; none invented."""
        v: list[str] = []
        for depender, dependees in self.declared.items():
            for dependee in dependees:
                edge = f"{self.name(depender)} -> {self.name(dependee)}"
                d, e = atts.get(depender), atts.get(dependee)
                if d is None or dependee not in d.fwd:
                    v.append(f"edge {edge}: not among the depender's dependencies")
                if e is None or depender not in e.back:
                    v.append(f"edge {edge}: not among the dependee's dependers")
                sat = self.internals.edge_satisfied(depender, dependee)
                if sat is None:
                    v.append(f"edge {edge}: forward record missing")
                elif not sat:
                    v.append(f"edge {edge}: forward record not satisfied")
                prop = self.internals.back_edge_propagated(dependee, depender)
                if prop is None:
                    v.append(f"edge {edge}: back record missing")
                elif not prop and e is not None and e.terminal:
                    v.append(f"edge {edge}: back record of a terminal dependee not propagated")
        for aid, att in atts.items():
            for dependee in att.fwd:
                if dependee not in self.declared.get(aid, {}):
                    v.append(f"edge {self.name(aid)} -> {self.name(dependee)}: never declared")
            if att.terminal and not self.internals.completion_recorded(aid):
                v.append(f"{self.name(aid)}: {att.state.name} but its completion is not recorded")
        return v

    def _check_expiry(self, atts: dict[AttemptID, AttemptView]) -> list[str]:
        """Every result whose expiration passed is shown expired and marked; none early."""
        v: list[str] = []
        now = self.h.clock()
        for aid, att in atts.items():
            if att.state != AttemptState.FINISHED:
                continue
            due = att.expiration_us is not None and att.expiration_us <= now
            marked = self.internals.marked_expired(aid)
            if att.expired != due:
                v.append(f"{self.name(aid)}: shown expired={att.expired}, expiration passed={due}")
            if marked != due:
                v.append(f"{self.name(aid)}: marked expired={marked}, expiration passed={due}")
            if att.result and due:
                v.append(f"{self.name(aid)}: expired result still served")
            last = self.records.get(aid.execution(att.num_executions))
            if last is not None and last.expiration_us != att.expiration_us:
                v.append(
                    f"{self.name(aid)}: expiration {att.expiration_us}, its job gave "
                    f"{last.expiration_us}"
                )
        return v
