"""Parallel deliveries on Firestore (issue 11, "Measurement"): several workers, one graph.

On Google Cloud many ``dm_tasks`` instances run a graph's tasks at once, and
Cloud Tasks may hand the same task to two of them together. Here the real
engine runs on the Firestore emulator with jobsim jobs, and the harness's
ChaosQueue (a test double of the TaskQueue port: no Cloud Tasks emulator
exists) delivers due tasks from several threads at once: a quarter of them twice
at the same moment (``twin``, so two workers may run one step together),
some again later, reordered and delayed. The graph must end as it would on
one worker:

* every attempt FINISHED with the value its job computes (worked out here
  from the phrases, not read from dm);
* every execution ended (FINISHED), none lost or left behind; an attempt ran
  one execution more than the times it waited for dependencies (at most that
  many where a dependency may have finished before it asked);
* ``D.run`` called exactly once per execution, duplicates notwithstanding;
* nothing left armed (outbox records, timers, polls);
* and the premise: some task really ran on two workers at the same moment.

Everything is read through the dm.Deps API (WalkGraph) and the simulation's
observers (``tests/sim/observe.py``, the one place that knows dm's document
layout), never through document paths, so the test outlives a change of
layout. Interleavings vary from run to run; the outcome may not.
"""

from __future__ import annotations

import collections
import json
import pathlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from distributors import jobsim
from distributors.jobsim import config_pb2
from dmcore import distributor as dist
from dmcore.engine.core import Engine
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AttemptState, ExecutionState
from dmcore.store.firestore import FirestoreStore
from tests.harness import Chaos, Harness
from tests.sim.observe import AttemptView, Internals, Observed

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

WORKERS = 4
CHAOS = Chaos(duplicate=0.2, delay=0.2, twin=0.25, reorder=True)
"""A quarter of the tasks handed to two workers at once: enough to race every kind
of step many times over. More costs time, not coverage: each race lost on the
emulator waits out its 2 s lock timeout."""


class Runs:
    """Which executions jobsim's ``D.run`` was called for, and which tasks ran on two
    workers at the same moment, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: collections.Counter[ExecutionID] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.overlaps = 0

    def watch(self, engine: Engine) -> None:
        """Count deliveries of a task that start while another of it is running."""
        handle = engine.handle_task

        def watched(target: str, payload: Any, delivery: int = 1, name: str = "") -> None:
            with self.lock:
                self.overlaps += bool(self.in_flight[name])
                self.in_flight[name] += 1
            try:
                handle(target, payload, delivery, name)
            finally:
                with self.lock:
                    self.in_flight[name] -= 1

        engine.handle_task = watched  # type: ignore[method-assign]

    def factory(self) -> dist.Factory:
        runs = self

        class Counted(jobsim.JobsimDistributor):
            """jobsim itself, each ``run`` noted first (nothing faked)."""

            def run(
                self,
                desc: dm_pb2.Quest.Desc,
                auth: dm_pb2.Execution.Auth,
                prev_result: dm_pb2.JsonResult | None,
            ) -> dist.Started:
                with runs.lock:
                    runs.count[ExecutionID.from_proto(auth.id)] += 1
                return super().run(desc, auth, prev_result)

        return Counted


@pytest.fixture
def ph(tmp_path: pathlib.Path, firestore_store: FirestoreStore) -> Iterator[tuple[Harness, Runs]]:
    """The engine on Firestore, jobsim counted, tasks delivered by WORKERS threads."""
    h = Harness(tmp_path, queue="chaos", seed=11, chaos=CHAOS, store=firestore_store)
    runs = Runs()
    h.registry.register(jobsim.KIND, config_pb2.Config, runs.factory(), in_process=True)
    h.registry.set_config(
        h.registry.config_from_dict({"distributor_configs": {"jobsim": {"jobsim": {"pool": "p"}}}}),
        version="v1",
    )
    h.workers = WORKERS
    runs.watch(h.engine)
    yield h, runs
    h.close()


def graph(h: Harness, roots: Sequence[str]) -> dict[AttemptID, AttemptView]:
    """Every attempt reachable from ``roots`` (forward edges), as WalkGraph shows it."""
    quests = set(roots)
    while True:
        seen = Observed(h.service, quests).attempts
        more = {d.quest for a in seen.values() for d in a.fwd} - quests
        if not more:
            return seen
        quests |= more


def phrase_of(h: Harness, aid: AttemptID) -> config_pb2.Phrase:
    """The jobsim phrase of ``aid``'s quest (its parameters), through WalkGraph."""
    req = dm_pb2.WalkGraphReq()
    req.query.attempt_list.to[aid.quest].nums.append(aid.num)
    req.include.quest.data = True
    req.limit.max_depth = 0
    rsp = h.service.walk_graph(req, Caller.trusted())
    return jobsim.parse_phrase(rsp.quests[aid.quest].data.desc.parameters)


def halts(p: config_pb2.Phrase) -> int:
    """How many times a job of phrase ``p`` may halt for dependencies (at most)."""
    return sum(
        1
        for s in p.stages
        if (s.HasField("deps") and s.deps.deps) or (s.HasField("chain") and s.chain.links)
    )


def run_graph(
    h: Harness,
    runs: Runs,
    phrases: Sequence[dict[str, Any]],
    value: Callable[[config_pb2.Phrase], int],
    *,
    exact: bool = True,
) -> dict[AttemptID, AttemptView]:
    """Ensure ``phrases`` (attempt 1 each), run the graph to its end, check it.

    ``value(phrase)``: what the job of each quest of the graph computes.
    ``exact``: every halt really waits (no dependency found finished already), so an
    attempt runs exactly ``halts + 1`` executions; else at most that many.
    Returns the attempts as the API shows them.
    """
    roots = h.ensure(*(jobsim.quest_desc(p) for p in phrases))
    internals = Internals(h.store)
    for _ in range(20):
        h.settle()
        if not internals.pending_outbox(h.clock()):
            break
    seen = graph(h, roots)
    problems: list[str] = []
    for aid, a in sorted(seen.items()):
        p = phrase_of(h, aid)
        what = f"{p.name} ({aid})"
        if a.state != AttemptState.FINISHED:
            problems.append(f"{what}: attempt {a.state.name} ({a.reason})")
            continue
        if json.loads(a.result) != {"success": True, "value": value(p)}:
            problems.append(f"{what}: result {a.result}, want value {value(p)}")
        most = halts(p) + 1
        if sorted(a.executions) != list(range(1, a.num_executions + 1)) or not (
            a.num_executions == most if exact else 1 <= a.num_executions <= most
        ):
            problems.append(f"{what}: executions {sorted(a.executions)}, want {most}")
        problems += [
            f"{what}: execution {n} {e.state.name} ({e.reason})"
            for n, e in a.executions.items()
            if e.state != ExecutionState.FINISHED
        ]
    expected_runs = {aid.execution(n): 1 for aid, a in seen.items() for n in a.executions}
    if dict(runs.count) != expected_runs:
        wrong = {str(e): c for e, c in runs.count.items() if expected_runs.get(e) != c}
        never = [str(e) for e in expected_runs if e not in runs.count]
        problems.append(f"D.run not once per execution: {wrong} called, {never} never")
    problems += internals.leftovers(h.clock())
    if not runs.overlaps:
        problems.append("no task ran on two workers at once: the test missed its point")
    assert problems == [], "\n".join(problems[:20])
    return seen


def test_fan_in_of_200(ph: tuple[Harness, Runs]) -> None:
    """200 shards onto one waiter, their ends racing on 4 workers."""
    h, runs = ph
    n = 200
    leaf = {"name": "leaf", "return_stage": {"retval": 3}}
    root = {
        "name": "fan",
        "stages": [{"deps": {"deps": [{"shards": n, "phrase": leaf}]}}],
        "return_stage": {"retval": 5},
    }
    seen = run_graph(h, runs, [root], lambda p: 3 * n + 5 if p.name == "fan" else 3)
    assert len(seen) == n + 1
    assert sum(a.num_executions for a in seen.values()) == n + 2


def test_chain_of_30(ph: tuple[Harness, Runs]) -> None:
    """30 links, each waiting for the one below: every resume raced by its twin."""
    h, runs = ph
    top = {"name": "chain", "stages": [{"chain": {"links": 29}}]}
    # Each link adds its default return value (1) to the one below.
    seen = run_graph(h, runs, [top], lambda p: p.stages[0].chain.links + 1)
    assert len(seen) == 30
    assert sum(a.num_executions for a in seen.values()) == 30 + 29


def test_mixed_graph(ph: tuple[Harness, Runs]) -> None:
    """A fan-in, a chain, a shared dependency (a diamond) and two roots, at once.

    Whether a depender halts for the shared quest depends on whether it has
    finished by then, which the interleaving decides: executions are bounded.
    """
    h, runs = ph
    shared = {"name": "shared", "return_stage": {"retval": 7}}
    mid = {"name": "mid", "stages": [{"deps": {"deps": [{"phrase": shared}]}}]}
    part = {"name": "part", "return_stage": {"retval": 2}}
    chain = {"name": "chainy", "stages": [{"chain": {"links": 4}}]}
    root = {
        "name": "mix",
        "stages": [
            {"deps": {"deps": [{"shards": 20, "phrase": part}, {"phrase": shared}]}},
            {"deps": {"deps": [{"phrase": chain}, {"phrase": mid}]}},
        ],
        "return_stage": {"retval": 0},
    }
    other = {"name": "other", "stages": [{"deps": {"deps": [{"phrase": mid}]}}]}
    values = {"shared": 7, "mid": 7 + 1, "part": 2, "other": 8 + 1}
    values["mix"] = 20 * 2 + 7 + 5 + values["mid"]

    def value(p: config_pb2.Phrase) -> int:
        if p.name == "chainy":
            return p.stages[0].chain.links + 1
        return values[p.name.rsplit("_", 1)[0] if p.name.startswith("part_") else p.name]

    seen = run_graph(h, runs, [root, other], value, exact=False)
    assert len(seen) == 20 + 5 + 4  # parts, chain links, shared + mid + the two roots
