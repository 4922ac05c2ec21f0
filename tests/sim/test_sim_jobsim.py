"""The simulation played by jobsim (distributors/jobsim) instead of the fake distributor.

jobsim's jobs are queued tasks that talk to dm through its client, so its own
handling runs under the queue's faults here: duplicated, delayed, reordered
deliveries and dispatches failing after the commit (the ChaosQueue), dm telling a
declaration to try again (UNAVAILABLE: between the parts of another declaration,
whose claim a walk meets, or a busy dm, :class:`BusyClient`), stalls, claims of
its own task documents, finishes and notifications or polls; and a duplicate
delivery of a job's task played inside the job's accepted FinishAttempt, before
the job records its end, whose own FinishAttempt a busy dm fails
(:class:`DuplicatePlays`).

Each seed draws a forest of phrases (deps stages with shards, sub-phrases shared
between parents, stalls; no failure stage: every attempt must finish) and the
faults. The invariants: every root attempt FINISHED with the value computed here
from the phrase (its retval plus each dependency's value, once per shard and per
stage naming it); every jobsim task ended finished; dm left nothing armed and the
queue is empty. ``--seeds N`` runs a fortieth of N (at least conftest's ``JOBSIM_SEEDS``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import random
from typing import Any

import pytest

from distributors import jobsim
from dmcore.client import LocalClient
from dmcore.distributor import backoff
from dmcore.engine.core import DISTRIBUTOR_TARGET_PREFIX
from dmcore.errors import Unavailable
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.queue.base import Task
from dmcore.states import AttemptState
from tests.harness import Chaos, Harness
from tests.sim.observe import Internals
from tests.sim.planted import replanted
from tests.sim.sim import replay_hint

CONFIGS = {
    "jobsim": {"jobsim": {"pool": "p"}},
    "jobsim_poll": {"jobsim": {"pool": "p/poll", "do_pollback": True}},
}
MAX_NODES = 40
"""Phrases (before shards) one seed's forest has at most."""
DISPATCH_FAILED = "TransientError('jobsim enqueue: chaos: dispatch failed')"
ROUNDS = 400
"""Settles (each up to a day of dm's clock) before a run that does not end fails."""


@dataclasses.dataclass
class JobsimPlan:
    seed: int
    roots: list[tuple[dict[str, Any], str]]  # (phrase, config)
    chaos: Chaos
    declare_chunk: int
    p_between_parts: float
    p_busy: float
    p_duplicate_play: float = 0.0
    """How often a duplicate of a job's task plays inside its accepted FinishAttempt."""
    carry_job: bool = False
    """Whether a job that only finishes travels in its task body (``DM_JOBSIM_TASK_BODY=job``)
    rather than as its task ID (the default, which an older dm reads)."""

    def summary(self) -> str:
        return (
            f"{len(self.roots)} roots; {self.chaos}; declare_chunk={self.declare_chunk} "
            f"between_parts={self.p_between_parts} busy={self.p_busy} "
            f"duplicate_play={self.p_duplicate_play} carry_job={self.carry_job}"
        )


def make_jobsim_plan(seed: int) -> JobsimPlan:
    rng = random.Random(f"dm-sim-jobsim/{seed}")
    shared: list[dict[str, Any]] = []
    count = [0]

    def phrase(depth: int, name: str) -> dict[str, Any]:
        count[0] += 1
        p: dict[str, Any] = {"name": name}
        if rng.random() < 0.8:
            p["return_stage"] = {"retval": rng.randint(0, 9)}
        stages: list[dict[str, Any]] = []
        if depth < 3 and count[0] < MAX_NODES and rng.random() < 0.75:
            for s in range(rng.randint(1, 2)):
                deps: list[dict[str, Any]] = []
                named: set[str] = set()
                for k in range(rng.randint(1, 5)):
                    if shared and rng.random() < 0.3:
                        sub = rng.choice(shared)
                        if sub["name"] in named:
                            continue  # a stage names an attempt once
                    else:
                        sub = phrase(depth + 1, f"{name}.{s}{k}")
                    named.add(sub["name"])
                    dep: dict[str, Any] = {"phrase": sub}
                    if rng.random() < 0.2:
                        dep["shards"] = rng.randint(2, 6)
                    deps.append(dep)
                stages.append({"deps": {"deps": deps}})
                if rng.random() < 0.25:
                    stages.append({"stall": {"delay": f"{rng.randint(1, 90)}s"}})
        if stages:
            p["stages"] = stages
        shared.append(p)
        return p

    roots = [
        (phrase(0, f"r{seed}.{i}"), rng.choice(["jobsim", "jobsim", "jobsim_poll"]))
        for i in range(rng.randint(1, 3))
    ]
    if rng.random() < 0.15:
        chaos = Chaos(reorder=rng.random() < 0.5)
    else:
        chaos = Chaos(
            duplicate=rng.choice([0.0, 0.1, 0.3]),
            delay=rng.choice([0.0, 0.2, 0.5]),
            fail_dispatch=rng.choice([0.0, 0.05, 0.2]),
        )
    chaos.dedupe_s = 3600.0
    chaos.fail_partway = rng.random() < 0.5
    return JobsimPlan(
        seed=seed,
        roots=roots,
        chaos=chaos,
        declare_chunk=rng.choice([2, 3, 32]),
        p_between_parts=rng.choice([0.0, 0.5, 1.0]),
        p_busy=rng.choice([0.0, 0.1, 0.3]),
        # Drawn apart, so that every seed keeps the plan it had before this knob.
        p_duplicate_play=random.Random(f"{seed}/duplicate_play").choice([0.0, 0.3, 0.7]),
        # Odd seeds: half the default seeds play each body (a draw gave 20 of 25 one way).
        carry_job=seed % 2 == 1,
    )


def value(p: dict[str, Any]) -> int:
    """What jobsim's job of phrase ``p`` finishes with, every dependency finished."""
    total = int(p["return_stage"]["retval"]) if "return_stage" in p else jobsim.DEFAULT_RETVAL
    for stage in p.get("stages", []):
        for dep in stage.get("deps", {}).get("deps", []):
            total += int(dep.get("shards", 1)) * value(dep["phrase"])
    return total


BUSY_FINISH = "dm is busy; finish again later"
"""What the busy dm answers a duplicate play's FinishAttempt (:class:`DuplicatePlays`)."""


class DuplicatePlays:
    """A job's task delivered twice at once: right after dm accepts one play's
    FinishAttempt, before that play records the job's end, a duplicate delivery of
    the same task plays, and a busy dm fails its FinishAttempt (UNAVAILABLE). A job
    that only finishes is played unclaimed by both (jobsim.only_finishes): the
    duplicate must not record its failure, which would end a finished job as failed;
    its delivery fails and the queue makes it again."""

    def __init__(self, h: Harness, p: float, seed: int) -> None:
        self.h, self.p = h, p
        self.rng = random.Random(f"dm-sim-jobsim-duplicate/{seed}")
        self.delivering: list[tuple[str, dict[str, Any], int, str]] = []
        """The tasks being handled, innermost last: (target, payload, delivery, name)."""
        self.refusing = False
        self.played = 0
        real = h.engine.handle_task

        def handle_task(target: str, payload: Any, delivery: int = 1, name: str = "") -> None:
            self.delivering.append((target, dict(payload), delivery, name))
            try:
                real(target, payload, delivery, name)
            finally:
                self.delivering.pop()

        h.engine.handle_task = handle_task  # type: ignore[method-assign]

    def after_finish(self) -> None:
        """A play's FinishAttempt was accepted: maybe the duplicate plays now."""
        if self.refusing or not self.delivering or self.rng.random() >= self.p:
            return
        target, payload, delivery, name = self.delivering[-1]
        if not target.startswith(DISTRIBUTOR_TARGET_PREFIX):
            return
        self.refusing, self.played = True, self.played + 1
        h = self.h
        try:
            h.engine.handle_task(target, payload, delivery + 1, name)
        except Exception:
            # As the queue has it: a failed delivery is made again, with backoff.
            assert h.chaos is not None
            eta = h.clock() + int(backoff(delivery + 1) * 1e6)
            h.chaos.retry(Task(name, target, payload, eta), delivery + 1, eta)
        finally:
            self.refusing = False


class BusyClient(LocalClient):
    """A dm that is sometimes too busy for a declaration (test double): it answers
    UNAVAILABLE before anything of the call is done, as dm does; and busy for the
    FinishAttempt of a duplicate play (:class:`DuplicatePlays`)."""

    def __init__(
        self,
        h: Harness,
        rng: random.Random,
        p_busy: float,
        told: list[str],
        duplicates: DuplicatePlays | None = None,
    ) -> None:
        super().__init__(h.service)
        self.rng, self.p_busy, self.told = rng, p_busy, told
        self.duplicates = duplicates

    def finish_attempt(self, req: dm_pb2.FinishAttemptReq) -> None:
        dup = self.duplicates
        if dup is not None and dup.refusing:
            self.told.append("busy finish")
            raise Unavailable(BUSY_FINISH)
        super().finish_attempt(req)
        if dup is not None:
            dup.after_finish()

    def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
        if req.HasField("for_execution") and self.rng.random() < self.p_busy:
            self.told.append("busy")
            raise Unavailable("dm is busy; try again")
        try:
            return super().ensure_graph_data(req)
        except Unavailable:
            self.told.append("claim")
            raise


def simulate_jobsim(seed: int, tmp_path: pathlib.Path, plan: JobsimPlan | None = None) -> list[str]:
    """Run and check one seed; returns the UNAVAILABLE answers jobsim was given (each
    "busy" or "claim")."""
    plan = plan or make_jobsim_plan(seed)
    h = Harness(tmp_path, queue="chaos", seed=seed, chaos=plan.chaos)
    told: list[str] = []
    body = os.environ.get(jobsim.BODY_ENV)
    os.environ[jobsim.BODY_ENV] = jobsim.BODY_JOB if plan.carry_job else jobsim.BODY_ID
    try:
        jobsim.register(h.registry)
        h.registry.set_config(
            h.registry.config_from_dict({"distributor_configs": CONFIGS}), version="v1"
        )
        busy_rng = random.Random(f"dm-sim-jobsim-busy/{seed}")
        dups = DuplicatePlays(h, plan.p_duplicate_play, seed) if plan.p_duplicate_play else None
        h.registry.client = lambda: BusyClient(h, busy_rng, plan.p_busy, told, dups)
        h.service.declare_chunk = plan.declare_chunk
        parts_rng = random.Random(f"dm-sim-jobsim-parts/{seed}")
        nested = [False]

        def between_parts(eid: ExecutionID, part: int) -> None:
            # Other jobs run meanwhile: their declarations may meet this one's claim.
            if nested[0] or parts_rng.random() >= plan.p_between_parts:
                return
            nested[0] = True
            try:
                for _ in range(parts_rng.randint(1, 8)):
                    if not h.deliver_one():
                        break
            finally:
                nested[0] = False

        h.service.between_parts = between_parts
        aids: list[tuple[AttemptID, int]] = []
        for p, config in plan.roots:
            (qid,) = h.ensure(jobsim.quest_desc(p, config))
            aids.append((AttemptID(qid, 1), value(p)))
        internals = Internals(h.store)
        for _ in range(ROUNDS):
            try:
                h.settle(max_seconds=24 * 3600)
            except ConnectionError:
                continue  # a sweep that could not queue: the next one does
            if not internals.pending_outbox(h.clock()) and h.next_due_us() is None:
                break
        v: list[str] = []
        for aid, want in aids:
            att = h.attempt(aid)
            if h.state(aid) != AttemptState.FINISHED:
                v.append(f"root {aid}: {h.state(aid).name} {att.get('abnormal')}")
            elif (got := h.result(aid)) != {"success": True, "value": want}:
                v.append(f"root {aid}: result {json.dumps(got)}, want value {want}")
        v += [
            f"jobsim task {p}: {d['status']} {d.get('reason', '')}"
            for p, d in h.store.query(jobsim.TASKS)
            if d["status"] != jobsim.FINISHED
        ]
        v += internals.leftovers(h.clock())
        if h.next_due_us() is not None:
            v.append(f"queue still holds tasks (next due at {h.next_due_us()})")
        # A job's own enqueue (its wake-up, its run) that the ChaosQueue failed fails
        # the delivery, which the queue retries: nothing else may fail.
        v += [f"a queued task failed: {f}" for f in h.failures if DISPATCH_FAILED not in f]
        if v:
            shown = "\n  ".join(v[:30])
            raise AssertionError(
                f"jobsim seed {seed}: {len(v)} invariant violations; {replay_hint(seed)}"
                f" (tests/sim/test_sim_jobsim.py)\nplan: {plan.summary()}\n  {shown}"
            )
        return told
    finally:
        h.close()
        if body is None:
            del os.environ[jobsim.BODY_ENV]
        else:
            os.environ[jobsim.BODY_ENV] = body


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="dm")


def test_simulation_jobsim(jobsim_seed: int, tmp_path: pathlib.Path) -> None:
    simulate_jobsim(jobsim_seed, tmp_path)


UNAVAILABLE_SEED = 4
"""A default seed in which jobsim is told UNAVAILABLE by a busy dm and by a claim: a
walk of its declaration meets another declaration in parts (with the busy dm taken
out, by the claim alone). Re-find one with the planted bug below when the plan's draws
change: of seeds 0..19, 15 fail with it; of 0..39 with no busy dm, 4, 13, 34, 35)."""


def test_jobsim_failing_its_execution_on_unavailable_fails_the_simulation(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last session's mistake, planted again: a deps stage told UNAVAILABLE (nothing of
    the call written, worth asking again) fails the job instead of stalling and asking
    again later, so its execution ends FAILED and its root never finishes."""
    real = jobsim._Job.deps

    def planted(self: Any, index: int) -> int | None:
        try:
            return real(self, index)
        except Unavailable as e:
            raise RuntimeError(f"told {e}") from e

    monkeypatch.setattr(jobsim._Job, "deps", planted)
    with pytest.raises(AssertionError, match="RuntimeError: told"):
        simulate_jobsim(UNAVAILABLE_SEED, tmp_path / "busy")
    quiet = dataclasses.replace(make_jobsim_plan(UNAVAILABLE_SEED), p_busy=0.0)
    with pytest.raises(AssertionError, match=r"RuntimeError: told attempt .* recording a decl"):
        simulate_jobsim(UNAVAILABLE_SEED, tmp_path / "claim", quiet)
    monkeypatch.undo()
    assert simulate_jobsim(UNAVAILABLE_SEED, tmp_path / "fixed", quiet) == ["claim"]


DUPLICATE_PLAY_SEED = 2
"""A default seed in which a duplicate play of a job that only finishes fails inside
the first play's accepted FinishAttempt, and which fails when that play records
FAILED (re-find one with the planted bug below when the plan's draws change)."""


def plant_failing_duplicate(module: Any) -> Any:
    """jobsim's handling of a task with the fix of last session taken out: an unclaimed
    play whose job breaks records FAILED, as a claimed run does."""
    return replanted(
        module.JobsimDistributor.handle_task_queue_task, r'if what == "play":', "if False:"
    )


def test_a_duplicate_play_recording_its_failure_fails_the_simulation(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last session's mistake, planted again: a duplicate play of a job that only
    finishes, failing (dm busy) while the first play's FinishAttempt is accepted,
    records FAILED: the job dm has FINISHED ends failed in jobsim, and the first play's
    end records nothing. The same seed passes without the duplicate plays."""
    planted = plant_failing_duplicate(jobsim)
    monkeypatch.setattr(jobsim.JobsimDistributor, "handle_task_queue_task", planted)
    quiet = dataclasses.replace(make_jobsim_plan(DUPLICATE_PLAY_SEED), p_duplicate_play=0.0)
    simulate_jobsim(DUPLICATE_PLAY_SEED, tmp_path / "without", quiet)
    with pytest.raises(AssertionError, match=r"jobsim task .*: failed"):
        simulate_jobsim(DUPLICATE_PLAY_SEED, tmp_path / "with")


def test_duplicate_plays_fail_inside_accepted_finishes(tmp_path: pathlib.Path) -> None:
    """The mechanism does what it is for: duplicates play, their FinishAttempt is
    failed by the busy dm, and every invariant holds."""
    told = simulate_jobsim(DUPLICATE_PLAY_SEED, tmp_path)
    assert "busy finish" in told
