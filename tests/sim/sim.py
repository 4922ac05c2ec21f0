"""A deterministic simulation of the whole engine, driven by one integer seed.

Everything random comes from the seed: the graph (a DAG of fake quests, node
``i`` depending on attempts of lower-numbered nodes: chains, fan-out hubs,
wide fan-in, diamonds; some quests with several attempts), the quest metadata
(retry limits, stop and start timeouts), what every execution does (succeed,
fail, crash, exit early; notify or leave it to the STOPPING poll; repeat its
halting or finishing call as a client would after a lost response), the
queue's faults (:class:`tests.harness.ChaosQueue`: duplicates, delays,
reordering, dispatch failures after commit), duplicated notifications, and the
driver's moves: the order in which it plays the pending executions, when it
settles, and when it stalls (leaves executions unplayed while the clock jumps
past their start timeout, then plays them late, as stale executions). The
same seed replays the same run exactly (for the same engine code: a change in
how the engine draws random bytes reshuffles what a seed does), so a failure is
reproduced with ``uv run pytest tests/sim --seed N``.

A job of node ``i`` activates, declares its dependencies (creating their
quests; in one EnsureGraphData call or in several batches) and, unless dm
tells it to halt, finishes with ``{"v": 1 + sum of its dependencies' values}``
where a dependency that ended abnormally counts 0 (dm unblocks the dependers
of abnormal dependencies, W-1).

After the run, :meth:`Sim.check` verifies the invariants listed in its
docstring against the store, independently of the engine's own bookkeeping.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections.abc import Callable
from typing import Any, TypeVar

from distributors.fake import Crash, Job, quest_desc
from dmcore.engine import docs
from dmcore.errors import PermissionDenied
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState, is_terminal_attempt
from tests.harness import Chaos, Harness, qid_of

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

    def summary(self) -> str:
        edges = sum(len(n.deps) for n in self.nodes)
        multi = sum(1 for n in self.nodes if n.attempts > 1)
        return (
            f"{len(self.nodes)} quests ({multi} with several attempts), {edges} edges, "
            f"{len(self.ensures)} ensured from outside; {self.chaos}; "
            f"fail={self.p_fail} crash={self.p_crash} early_exit={self.p_early_exit} "
            f"silent={self.p_silent} renotify={self.p_renotify} retry_call={self.p_retry_call} "
            f"stall={self.p_stall}"
        )


def make_plan(seed: int, *, min_nodes: int = 5, max_nodes: int = 40) -> Plan:
    rng = random.Random(f"dm-sim-plan/{seed}")
    # Mostly small graphs, a quarter up to max_nodes: keeps 200 seeds near a minute.
    big = rng.random() < 0.25
    n = rng.randint(min_nodes, max_nodes if big else max(min_nodes, (max_nodes * 3) // 5))
    p_chain = rng.choice([0.0, 0.3, 0.7, 0.95])
    p_extra = rng.choice([0.1, 0.3, 0.6])
    hubs = rng.sample(range(n), k=rng.randint(0, min(3, n)))
    attempts = [1 if rng.random() < 0.8 else rng.randint(2, 3) for _ in range(n)]
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
                if hub < i and rng.random() < 0.3:
                    chosen[hub] = None
            if rng.random() < 0.06:  # wide fan-in
                for j in rng.sample(range(i), k=min(i, rng.randint(4, 12))):
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
        desc = quest_desc(
            f"n{i}", failed=retry["failed"], crashed=retry["crashed"], timed_out=retry["timed_out"]
        )
        desc.meta.timeouts.stop.FromSeconds(stop_s)
        if start_s:
            desc.meta.timeouts.start.FromSeconds(start_s)
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
    activated: bool = False
    halted: bool = False
    finished: bool = False
    error: str = ""  # an unexpected error from a dm call
    stale: AbnormalStatus | None = None  # the execution had ended (timed out) before its play
    value: int | None = None
    state_out: dict[str, Any] | None = None

    @property
    def reached_stopping(self) -> bool:
        return self.halted or self.finished

    def expected(self) -> AbnormalStatus | None:
        """How dm must end this execution: None = FINISHED, else the abnormal status."""
        if self.stale is not None:
            return AbnormalStatus.TIMED_OUT
        if self.error or self.outcome == FAIL:
            return AbnormalStatus.FAILED
        if self.outcome == CRASH:
            return AbnormalStatus.CRASHED
        return None if self.reached_stopping else AbnormalStatus.FAILED

    def describe(self) -> str:
        bits = [self.outcome, f"stop={self.stop}"]
        bits += [b for b, on in (("halted", self.halted), ("finished", self.finished)) if on]
        if self.silent:
            bits.append("silent")
        if self.stale is not None:
            bits.append(f"stale({self.stale.name})")
        if self.error:
            bits.append(f"error={self.error}")
        return " ".join(bits)


class JobCallError(Exception):
    """A dm call made by a simulated job failed unexpectedly (also a violation)."""


class NotConverged(AssertionError):
    pass


# -- the run ----------------------------------------------------------------------------


class Sim:
    """One seeded run: drive the harness, then check the invariants."""

    def __init__(self, plan: Plan, h: Harness, *, max_iterations: int | None = None) -> None:
        self.plan = plan
        self.h = h
        self.rng = random.Random(f"dm-sim-drive/{plan.seed}")
        self.by_qid = {n.qid: n for n in plan.nodes}
        self.max_iterations = max_iterations or 60 + 25 * len(plan.nodes)
        self.records: dict[ExecutionID, ExecRecord] = {}
        self.played: list[ExecutionID] = []
        self.activations: dict[ExecutionID, int] = {}
        self.runs: dict[ExecutionID, int] = {}
        self.declared: dict[AttemptID, dict[AttemptID, None]] = {}
        self.ensured: dict[AttemptID, None] = {}
        # Distributor state returned by each normally ended execution, per attempt.
        self.states: dict[AttemptID, dict[int, dict[str, Any]]] = {}
        self.violations: list[str] = []
        self.sweep_errors: list[str] = []
        self.trace: list[str] = []
        self.iterations = 0

    def aid(self, node: int, num: int) -> AttemptID:
        return AttemptID(self.plan.nodes[node].qid, num)

    def violation(self, text: str) -> None:
        self.violations.append(text)

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
            self._settle()
            pending = self.h.world.pending()
            if not pending:
                nxt = self.h.next_due_us()
                if nxt is not None:
                    # Only timers are left (e.g. a STOPPING poll). No execution waits
                    # to be played, so no start timeout can fire early: skip ahead.
                    self.h.clock.now_us = max(self.h.clock.now_us, nxt)
                    continue
                if todo:
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
                if eid in stalled:
                    continue
                self._play(eid)
                if self.rng.random() < self.plan.p_settle_between:
                    self._settle()
            if stalled:
                self.trace.append(f"stall {len(stalled)} for {STALL_S}s")
                self.h.clock.advance(STALL_S)
            self._renotify()
        self._settle()

    def _settle(self) -> None:
        """``h.settle()`` until no outbox record is left (the sweep itself may fail)."""
        for _ in range(200):
            try:
                self.h.settle(max_seconds=SETTLE_S)
            except ConnectionError as e:
                # A sweep that cannot reach the queue is retried by the next one
                # (the sweep is periodic); recorded, not a violation.
                self.sweep_errors.append(repr(e))
                continue
            if not self.h.store.query(docs.OUTBOX, limit=1):
                return
        raise NotConverged("outbox records keep coming back after 200 settles")

    def _play(self, eid: ExecutionID) -> None:
        p = self.plan
        r = self.rng.random()
        outcome = FAIL if r < p.p_fail else CRASH if r < p.p_fail + p.p_crash else OK
        if outcome == OK:
            early = self.rng.random() < p.p_early_exit
            stop = self.rng.choice([START, ACTIVATED, DEPS]) if early else DONE
        else:
            stop = self.rng.choice([START, ACTIVATED, DEPS, DONE])
        rec = ExecRecord(
            eid,
            outcome,
            stop,
            silent=self.rng.random() < p.p_silent,
            retry_calls=self.rng.random() < p.p_retry_call,
            batches=self.rng.choice([1, 1, 2, 3]),
        )
        ex = self.h.store.get(docs.execution_path(eid))
        if ex is not None and ex["state"] == ExecutionState.ABNORMAL_FINISHED:
            # Ended before it was played: only the start timeout may do that here.
            rec.stale = AbnormalStatus(ex["abnormal"]["status"])
            if rec.stale != AbnormalStatus.TIMED_OUT:
                self.violation(f"{self.ename(eid)}: ended {rec.stale.name} before it was played")
        self.records[eid] = rec
        self.runs[eid] = self.runs.get(eid, 0) + 1
        self.h.world.run_task(eid, lambda job: self._job(rec, job), notify=False)
        self.played.append(eid)
        if rec.expected() is None and rec.state_out is not None:
            self.states.setdefault(eid.attempt_id, {})[eid.num] = rec.state_out
        if not (rec.silent and rec.reached_stopping):
            self.h.world.notify(eid)
        self.trace.append(f"play {self.ename(eid)}: {rec.describe()}")
        self.h.drain()

    def _renotify(self) -> None:
        if not self.played or self.rng.random() >= self.plan.p_renotify:
            return
        for eid in self.rng.sample(self.played, k=min(3, len(self.played))):
            self.h.world.notify(eid)  # a distributor repeating itself: must change nothing
            self.trace.append(f"renotify {self.ename(eid)}")
        self.h.drain()

    # -- the job --

    def _call(self, rec: ExecRecord, what: str, fn: Callable[[], T]) -> T:
        try:
            got = fn()
        except PermissionDenied as e:
            if rec.stale is None or what != "ActivateExecution":
                rec.error = f"{what}: {e!r}"
                self.violation(f"{self.ename(rec.eid)}: job's {what} raised {e!r}")
            raise JobCallError(f"{what}: {e!r}") from e
        except Exception as e:
            rec.error = f"{what}: {e!r}"
            self.violation(f"{self.ename(rec.eid)}: job's {what} raised {e!r}")
            raise JobCallError(rec.error) from e
        if rec.stale is not None:
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
        self._call(rec, "ActivateExecution", job.activate)
        rec.activated = True
        self.activations[eid] = self.activations.get(eid, 0) + 1
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
            rsp = self._call(rec, "EnsureGraphData", declare)
            self.declared.setdefault(aid, {}).update(dict.fromkeys(aids))
            if rsp.should_halt:
                rec.halted = True
                job.state["halts"] = int(job.state.get("halts", 0)) + 1
                job.state["last"] = eid.num
                if rec.retry_calls:
                    again = self._call(rec, "EnsureGraphData (retry)", declare)
                    if not again.should_halt:
                        self.violation(
                            f"{self.ename(eid)}: a retried halting EnsureGraphData did not halt"
                        )
                return self._end(rec, job)
            for a in aids:
                value += self._dep_value(rec, rsp, a)
        if rec.stop == DEPS:
            return self._end(rec, job)
        self._call(rec, "FinishAttempt", lambda: job.finish({"v": value}))
        rec.finished = True
        rec.value = value
        if rec.retry_calls:
            self._call(rec, "FinishAttempt (retry)", lambda: job.finish({"v": value}))
        return self._end(rec, job)

    def _dep_value(self, rec: ExecRecord, rsp: dm_pb2.EnsureGraphDataRsp, a: AttemptID) -> int:
        quests = rsp.result.quests
        if a.quest not in quests or a.num not in quests[a.quest].attempts:
            self.violation(f"{self.ename(rec.eid)}: EnsureGraphData did not halt and lacks {a}")
            return 0
        data = quests[a.quest].attempts[a.num].data
        kind = data.WhichOneof("attempt_type")
        if kind == "finished" and data.finished.data.object:
            return int(json.loads(data.finished.data.object)["v"])
        if kind == "abnormal_finish":
            return 0
        self.violation(
            f"{self.ename(rec.eid)}: EnsureGraphData did not halt but {self.name(a)} is {kind}"
        )
        return 0

    # -- after the run --

    def _not_terminal(self) -> str:
        rows = []
        for path, att in self.h.store.query(docs.ATTEMPTS):
            state = AttemptState(att["state"])
            if is_terminal_attempt(state):
                continue
            aid = AttemptID.decode(docs.last_id(path))
            node = self.by_qid[aid.quest]
            cur = int(att["cur_execution"])
            ex = self.h.store.get(docs.execution_path(aid.execution(cur))) if cur else None
            ex_state = ExecutionState(ex["state"]).name if ex else "-"
            open_edges = [
                docs.last_id(p)
                for p, e in self.h.store.query(docs.fwd_deps_collection(aid))
                if not e["satisfied"]
            ]
            rows.append(
                f"  {node.name}|{aid.num} {state.name} execution {cur} {ex_state}"
                f" open edges {len(open_edges)}"
            )
        if not rows:
            return "every attempt is terminal"
        return "non-terminal attempts:\n" + "\n".join(rows)

    def check(self) -> list[str]:
        """Check the invariants; returns the violations (empty = all hold).

        * the jobs saw nothing wrong: their dm calls succeeded (including the
          W-6 retries), the distributor state handed to each execution is the
          one of the attempt's last normally ended execution (§2.4), and an
          EnsureGraphData that did not halt returned every dependency terminal;
        * each execution was played (its fake task run) and activated at most once;
        * exactly the attempts ensured or declared as dependencies exist, and
          every one is terminal (FINISHED or ABNORMAL_FINISHED);
        * an attempt's executions are numbered 1..cur_execution, each terminal
          and ended as the job behaved (FINISHED, or FAILED / CRASHED);
        * the retry policy (§1.8), replayed over those executions, ends the
          attempt exactly where dm did, in the state dm gave it;
        * each FINISHED attempt has its one result document, written by its
          last execution, whose value equals the reference value computed here
          bottom-up from which attempts ended abnormally; ``is_abnormal`` is set
          exactly on ABNORMAL_FINISHED attempts (W-7);
        * no edge lost or invented: each declared edge has its forward record
          (satisfied) and its back record (propagated), every forward record was
          declared, and every terminal attempt's back-edge group is finished;
        * nothing left over: no outbox record, no armed timer, no queued task,
          no unplayed execution.
        """
        store = self.h.store
        v = self.violations[:]
        atts: dict[AttemptID, dict[str, Any]] = {
            AttemptID.decode(docs.last_id(p)): d for p, d in store.query(docs.ATTEMPTS)
        }

        # Executions played and activated once.
        v += [f"{self.ename(e)}: played {n} times" for e, n in self.runs.items() if n != 1]
        v += [
            f"{self.ename(e)}: activated {n} times" for e, n in self.activations.items() if n != 1
        ]

        # Exactly the expected attempts exist, all terminal.
        expected_aids = dict(self.ensured)
        for deps in self.declared.values():
            expected_aids.update(deps)
        v += [
            f"attempt {self.name(a)} was ensured or declared but does not exist"
            for a in expected_aids
            if a not in atts
        ]
        v += [
            f"attempt {self.name(a)} exists, nobody asked" for a in atts if a not in expected_aids
        ]
        states = {a: AttemptState(d["state"]) for a, d in atts.items()}
        v += [
            f"attempt {self.name(a)} is {s.name}, not terminal"
            for a, s in states.items()
            if not is_terminal_attempt(s)
        ]

        for aid, att in atts.items():
            v += self._check_executions(aid, att)

        v += self._check_values(atts, states)
        v += self._check_edges(states)

        # Nothing left over.
        v += [f"outbox record left: {p}" for p, _ in store.query(docs.OUTBOX)]
        v += [f"timer left armed: {p}" for p, _ in store.query(docs.TIMERS)]
        v += [f"poll left scheduled: {p}" for p, _ in store.query(docs.POLLS)]
        if self.h.next_due_us() is not None:
            v.append(f"queue still holds tasks (next due at {self.h.next_due_us()})")
        v += [f"{self.ename(e)}: handed to the fake, never played" for e in self.h.world.pending()]
        return v

    def name(self, aid: AttemptID) -> str:
        node = self.by_qid.get(aid.quest)
        return f"{node.name if node else aid.quest}|{aid.num}"

    def ename(self, eid: ExecutionID) -> str:
        return f"{self.name(eid.attempt_id)}|{eid.num}"

    def _check_executions(self, aid: AttemptID, att: dict[str, Any]) -> list[str]:
        """Contiguous numbering, outcomes as played, and the retry policy replayed."""
        v: list[str] = []
        me = self.name(aid)
        node = self.by_qid[aid.quest]
        cur = int(att["cur_execution"])
        rows = self.h.store.query(docs.executions_collection(aid))
        execs = sorted((int(d["num"]), d) for _, d in rows)
        nums = [n for n, _ in execs]
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
        reopened = {int(r["after_execution"]) for r in att.get("reopened", [])}
        for k, (num, ex) in enumerate(execs, 1):
            eid = aid.execution(num)
            en = self.ename(eid)
            if k - 1 in reopened:
                if ends != AttemptState.ABNORMAL_FINISHED:
                    v.append(f"{en}: re-opened after execution {k - 1}, which did not end it")
                counters, ends = dict.fromkeys(limits, 0), None
            if ends is not None:
                v.append(f"{en}: exists although the attempt ended with execution {k - 1}")
                break
            rec = self.records.get(eid)
            task = self.h.world.tasks.get(self.h.world.token_of(eid))
            if task is None or not task.ran or rec is None:
                v.append(f"{en}: never handed to the fake and played ({ex.get('abnormal')})")
                continue
            state = ExecutionState(ex["state"])
            want = rec.expected()
            got: AbnormalStatus | None = None
            if state == ExecutionState.ABNORMAL_FINISHED:
                got = AbnormalStatus(ex["abnormal"]["status"])
            elif state != ExecutionState.FINISHED:
                v.append(f"{en}: {state.name}, not terminal")
                continue
            if got != want:
                v.append(
                    f"{en}: ended {got.name if got else 'FINISHED'}, want "
                    f"{want.name if want else 'FINISHED'} (job: {rec.describe()})"
                )
                continue
            if got is None:
                counters = {f: 0 for f in counters}
                if rec.finished:
                    ends = AttemptState.FINISHED
            else:
                field = RETRY_FIELD[got]
                used = counters[field]
                counters[field] = used + 1
                if used >= limits[field]:
                    ends = AttemptState.ABNORMAL_FINISHED
        if ends is not None and ends != AttemptState(att["state"]):
            v.append(f"{me}: is {AttemptState(att['state']).name}, retry policy says {ends.name}")
        elif ends is None and is_terminal_attempt(AttemptState(att["state"])) and not v:
            v.append(f"{me}: is {AttemptState(att['state']).name}, retry policy says not ended")
        if ends == AttemptState.ABNORMAL_FINISHED and execs:
            last_ab = execs[-1][1].get("abnormal")
            if att.get("abnormal") != last_ab:
                v.append(f"{me}: abnormal {att.get('abnormal')} != last execution's {last_ab}")
        return v

    def _check_values(
        self, atts: dict[AttemptID, dict[str, Any]], states: dict[AttemptID, AttemptState]
    ) -> list[str]:
        """Results of FINISHED attempts against a reference computed bottom-up."""
        v: list[str] = []
        ref: dict[AttemptID, int] = {}
        for node in self.plan.nodes:  # dependencies are lower-numbered: already computed
            for num in range(1, node.attempts + 1):
                aid = AttemptID(node.qid, num)
                state = states.get(aid)
                if state is None:
                    continue
                att = atts[aid]
                me = self.name(aid)
                if bool(att.get("is_abnormal")) != (state == AttemptState.ABNORMAL_FINISHED):
                    v.append(f"{me}: is_abnormal={att.get('is_abnormal')} but {state.name}")
                if state != AttemptState.FINISHED:
                    continue
                want = 1
                for j, a in node.deps:
                    dep = self.aid(j, a)
                    dep_state = states.get(dep)
                    if dep_state is None or not is_terminal_attempt(dep_state):
                        v.append(f"{me}: FINISHED while dependency {self.name(dep)} is {dep_state}")
                    elif dep_state == AttemptState.FINISHED:
                        want += ref[dep]
                ref[aid] = want
                doc = self.h.store.get(docs.result_path(aid))
                if doc is None:
                    v.append(f"{me}: FINISHED without a result document")
                    continue
                got = json.loads(doc["object"]).get("v")
                if got != want:
                    v.append(f"{me}: result v={got}, reference says {want}")
                if doc.get("execution") != att["cur_execution"]:
                    v.append(
                        f"{me}: result written by execution {doc.get('execution')}, "
                        f"the last is {att['cur_execution']}"
                    )
                if (att.get("result") or {}).get("size") != doc["size"]:
                    v.append(f"{me}: result size {att.get('result')} != document's {doc['size']}")
        return v

    def _check_edges(self, states: dict[AttemptID, AttemptState]) -> list[str]:
        """Every declared edge recorded both ways and propagated; no invented edges."""
        v: list[str] = []
        store = self.h.store
        for depender, dependees in self.declared.items():
            for dependee in dependees:
                edge = f"{self.name(depender)} -> {self.name(dependee)}"
                fwd = store.get(docs.fwd_dep_path(depender, dependee))
                back = store.get(docs.back_dep_path(dependee, depender))
                if fwd is None:
                    v.append(f"edge {edge}: forward record missing")
                elif not fwd["satisfied"]:
                    v.append(f"edge {edge}: forward record not satisfied: {fwd}")
                if back is None:
                    v.append(f"edge {edge}: back record missing")
                elif not back["propagated"] and is_terminal_attempt(states[dependee]):
                    v.append(f"edge {edge}: back record of a terminal dependee not propagated")
        for aid, state in states.items():
            for p, _ in store.query(docs.fwd_deps_collection(aid)):
                dependee = AttemptID.decode(docs.last_id(p))
                if dependee not in self.declared.get(aid, {}):
                    v.append(f"edge {self.name(aid)} -> {self.name(dependee)}: never declared")
            if is_terminal_attempt(state):
                group = store.get(docs.back_dep_group_path(aid))
                if group is None or not group["attempt_finished"]:
                    v.append(f"{self.name(aid)}: {state.name} but its back-edge group is {group}")
        return v
