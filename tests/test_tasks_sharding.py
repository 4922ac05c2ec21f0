"""Tasks sharded over several Cloud Tasks queues (``DM_TASKS_QUEUES``, issue 11).

One Cloud Tasks queue dispatches at most 500 tasks/s, so a deployment that
needs more names N queues and the Cloud Tasks adapter puts a task on
``queues[sha256(shard key) mod N]``. The issue asks for the key to be the
root record a step is about: every task of one root on one queue (a root
record takes about one write per second on Firestore, far under one queue's
500 dispatches, so nothing is lost by keeping it on one), roots spread over
the queues. What is checked here, with the fake Cloud Tasks server (a TEST
DOUBLE: no Cloud Tasks emulator exists) and the official client:

* the spread: 1,000 roots over 4 queues, each queue within 10% of an even
  share (the choice is a hash, so the figures are deterministic);
* every task of one root on one queue, over the wire;
* a jobsim graph run to its end by the real engine through 4 queues, every
  queue taking a share of its deliveries;
* that the engine gives its tasks their root record as shard key (kept in
  outbox records, so a task the sweep sends again meets its first copy).
"""

from __future__ import annotations

import collections
import hashlib
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from distributors import jobsim
from dmcore.engine.base import Step
from dmcore.ids import AttemptID
from dmcore.queue.base import Task
from dmcore.queue.cloudtasks import CloudTasksQueue, shard_of
from dmcore.states import AttemptState
from tests.fake_cloudtasks import FakeCloudTasksServer
from tests.harness import Harness
from tests.sim.observe import Internals, Observed
from tests.test_queue_cloudtasks import LOCATION, PROJECT, Receiver, make_queue

QUEUES = [f"dm-tasks-{i}" for i in range(4)]
PATHS = [f"projects/{PROJECT}/locations/{LOCATION}/queues/{q}" for q in QUEUES]
TOLERANCE = 0.10
"""How far from an even share (1/N of the roots) a queue may be."""


def root_keys(n: int) -> list[str]:
    """``n`` keys shaped like root records: an attempt of a quest (quest ids are hashes)."""
    return [
        f"attempts/{AttemptID(hashlib.sha256(b'%d' % i).hexdigest()[:43], 1).encoded}"
        for i in range(n)
    ]


def queue_of(path: str) -> str:
    """The queue id of a Cloud Tasks task or queue path."""
    return path.split("/queues/", 1)[1].split("/", 1)[0]


@pytest.fixture
def harness(tmp_path: pathlib.Path) -> Iterator[Harness]:
    """The engine on SQLite (a fake clock) with jobsim; its queue is set by the test."""
    h = Harness(tmp_path, queue="chaos", seed=3)
    jobsim.register(h.registry)
    h.registry.set_config(
        h.registry.config_from_dict({"distributor_configs": {"jobsim": {"jobsim": {"pool": "p"}}}}),
        version="v1",
    )
    yield h
    h.close()


@pytest.fixture
def fake(harness: Harness) -> Iterator[FakeCloudTasksServer]:
    with FakeCloudTasksServer(clock=harness.clock, queues=PATHS, max_attempts=20) as server:
        yield server


@pytest.fixture
def sharded(harness: Harness, fake: FakeCloudTasksServer) -> Iterator[CloudTasksQueue]:
    """The engine's queue: 4 Cloud Tasks queues on the fake, delivering to the engine.

    The receiver plays dm_tasks: it decodes each delivery and runs it on the
    engine, answering 500 when the engine raises (Cloud Tasks then retries).
    """
    engine = harness.engine
    receiver = Receiver(on_task=lambda d: engine.handle_task(d[0], d[1], d[2], d[3]))
    q = make_queue(fake.client(), harness.clock, receiver.url, queue=QUEUES)
    engine.queue = q
    yield q
    receiver.close()


def test_a_thousand_roots_spread_evenly_over_four_queues(
    fake: FakeCloudTasksServer, harness: Harness
) -> None:
    keys = root_keys(1000)
    per_queue = collections.Counter(QUEUES[shard_of(k, len(QUEUES))] for k in keys)
    share = len(keys) / len(QUEUES)
    assert set(per_queue) == set(QUEUES)
    for queue, n in per_queue.items():
        assert abs(n - share) <= TOLERANCE * share, (queue, n, dict(per_queue))
    # The choice is the key's alone: the adapter picks the same queue for it.
    q = make_queue(fake.client(), harness.clock, "http://127.0.0.1:1", queue=QUEUES)
    assert [q.shard(k) for k in keys] == [shard_of(k, len(QUEUES)) for k in keys]


def test_every_task_of_one_root_on_one_queue_over_the_wire(
    fake: FakeCloudTasksServer, harness: Harness
) -> None:
    receiver = Receiver()
    try:
        q = make_queue(fake.client(), harness.clock, receiver.url, queue=QUEUES)
        keys = root_keys(200)
        tasks = [
            Task(f"s{step}-{i}", "mutation", {"root": k}, shard_key=k)
            for i, k in enumerate(keys)
            for step in range(3)
        ]
        assert all(q.enqueue_many(tasks))
        queues_of_root: dict[str, set[str]] = collections.defaultdict(set)
        for t in fake.tasks():
            root = json.loads(t.created.http_request.body)["payload"]["root"]
            queues_of_root[root].add(queue_of(t.queue))
        assert len(queues_of_root) == len(keys)
        assert all(len(qs) == 1 for qs in queues_of_root.values())
        share = len(keys) / len(QUEUES)
        per_queue = collections.Counter(next(iter(qs)) for qs in queues_of_root.values())
        assert all(abs(n - share) <= 0.25 * share for n in per_queue.values()), per_queue
    finally:
        receiver.close()


LEAF = {"name": "leaf", "return_stage": {"retval": 2}}
CHAIN = {"name": "chain", "stages": [{"chain": {"links": 3}}]}
FAN_IN = {
    "name": "root",
    "stages": [{"deps": {"deps": [{"shards": 12, "phrase": LEAF}, {"phrase": CHAIN}]}}],
}
"""12 shards of value 2 and a chain of 4 quests (its top's value: 4), onto one root
(its value: 12 x 2 + 4 + its own 1)."""


def run_to_end(h: Harness, fake: FakeCloudTasksServer, rounds: int = 200) -> None:
    """Deliver what is due, sweep, move the clock to the next due task; until none is left."""
    internals = Internals(h.store)
    for _ in range(rounds):
        while fake.run_due():
            pass
        h.clock.advance(6)  # past the outbox staleness limit
        h.engine.sweep()
        if fake.run_due():
            continue
        nxt = fake.next_due_us()
        if nxt is None and not internals.pending_outbox(h.clock()):
            return
        if nxt is not None:
            h.clock.now_us = max(h.clock.now_us, nxt)
    raise AssertionError(f"the graph did not settle in {rounds} rounds")


def test_a_graph_runs_to_its_end_through_four_queues(
    harness: Harness, fake: FakeCloudTasksServer, sharded: CloudTasksQueue
) -> None:
    (root,) = harness.ensure(jobsim.quest_desc(FAN_IN))
    run_to_end(harness, fake)
    seen = Observed(harness.service, [root]).attempts
    top = seen[AttemptID(root, 1)]
    assert top.state == AttemptState.FINISHED
    assert json.loads(top.result) == {"success": True, "value": 12 * 2 + 4 + 1}
    assert Internals(harness.store).leftovers(harness.clock()) == []
    # Every queue took a share of the deliveries, each under its own name.
    per_queue = collections.Counter(d.headers["X-CloudTasks-QueueName"] for d in fake.dispatches)
    assert set(per_queue) == set(QUEUES), per_queue
    assert all(d.status == 200 for d in fake.dispatches)


def _root_of(url: str, payload: dict[str, Any]) -> str | None:
    """The root record of the engine step a task runs (None: a distributor's task)."""
    if not url.endswith("/mutation"):
        return None
    step = Step.from_payload(payload)
    root = getattr(step, "root", None)
    return None if root is None else str(root())


def test_the_engine_shards_its_tasks_by_root_record(
    harness: Harness, fake: FakeCloudTasksServer, sharded: CloudTasksQueue
) -> None:
    harness.ensure(jobsim.quest_desc(FAN_IN))
    run_to_end(harness, fake)
    queues_of_root: dict[str, set[str]] = collections.defaultdict(set)
    for t in fake.tasks(state=None):
        http = t.created.http_request
        root = _root_of(http.url, json.loads(http.body)["payload"])
        if root is not None:
            queues_of_root[root].add(queue_of(t.queue))
    assert queues_of_root, "no engine step was queued"
    spread = {r: sorted(qs) for r, qs in queues_of_root.items() if len(qs) > 1}
    assert spread == {}, f"roots whose steps went to several queues: {spread}"
