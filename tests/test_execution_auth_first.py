"""dm_api checks an execution's token before it reads anything of the request's graph.

A caller without identity reaches EnsureGraphData (``for_execution``) and
WalkGraph (``auth``) on the strength of an execution token alone. A forged
one must cost about one document read and learn nothing: not whether the
quests it names exist, nor what they depend on. Counted on the Firestore
emulator, where every read is billed (:attr:`FirestoreStore.stats`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from distributors.fake import Job, quest_desc
from dmcore.errors import Unauthenticated
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.store.firestore import FirestoreStore
from tests.harness import Harness, qid_of

pytestmark = pytest.mark.emulator


@pytest.fixture
def fh(tmp_path: pathlib.Path, firestore_store: FirestoreStore) -> Iterator[Harness]:
    h = Harness(tmp_path, store=firestore_store)
    yield h
    h.close()


def _running(h: Harness) -> tuple[ExecutionID, bytes]:
    """A running execution and its real execution token."""
    (qid,) = h.ensure(quest_desc("waiter"))
    eid = AttemptID(qid, 1).execution(1)
    h.settle(max_seconds=1)
    seen: dict[str, bytes] = {}

    def activate(job: Job) -> None:
        job.activate()
        seen["token"] = job.auth.token

    h.world.run_task(eid, activate, notify=False)
    h.drain()
    return eid, seen["token"]


def _forged_ensure(eid: ExecutionID, token: bytes) -> dm_pb2.EnsureGraphDataReq:
    """Depends on a quest that does not exist and on one that does: both would say so."""
    req = dm_pb2.EnsureGraphDataReq()
    req.for_execution.id.CopyFrom(eid.to_proto())
    req.for_execution.token = token
    req.raw_attempts.to["Z" * 43].nums.append(1)  # an absent quest
    req.raw_attempts.to[eid.quest].nums.append(2)
    return req


@pytest.mark.parametrize("which", ["bad token", "no such execution"])
def test_forged_for_execution_costs_one_read_and_says_nothing(fh: Harness, which: str) -> None:
    eid, token = _running(fh)
    if which == "bad token":
        req = _forged_ensure(eid, b"f" * len(token))
    else:
        req = _forged_ensure(ExecutionID(eid.quest, 1, 7), token)
    store = fh.store
    assert isinstance(store, FirestoreStore)
    before = store.stats.snapshot()
    with pytest.raises(Unauthenticated) as err:
        fh.service.ensure_graph_data(req, Caller.anonymous())
    after = store.stats.snapshot()
    assert err.value.message == "bad execution auth"
    assert after["reads"] - before["reads"] == 1
    assert after["writes"] == before["writes"] and after["commits"] == before["commits"]


def test_forged_walk_auth_costs_one_read(fh: Harness) -> None:
    eid, token = _running(fh)
    req = dm_pb2.WalkGraphReq()
    req.auth.id.CopyFrom(eid.to_proto())
    req.auth.token = b"f" * len(token)
    req.query.attempt_list.to[eid.quest].nums.append(1)
    store = fh.store
    assert isinstance(store, FirestoreStore)
    before = store.stats.reads
    with pytest.raises(Unauthenticated, match="bad execution auth"):
        fh.service.walk_graph(req, Caller.anonymous())
    assert store.stats.reads - before == 1


def test_the_real_token_still_declares_dependencies(fh: Harness) -> None:
    eid, token = _running(fh)
    dep = quest_desc("dependency")
    req = dm_pb2.EnsureGraphDataReq()
    req.for_execution.id.CopyFrom(eid.to_proto())
    req.for_execution.token = token
    req.quest.append(dep)
    req.quest_attempt.add(nums=[1])
    rsp = fh.service.ensure_graph_data(req, Caller.anonymous())
    assert rsp.accepted and rsp.should_halt
    fh.drain()
    assert fh.store.get(f"attempts/{AttemptID(qid_of(dep), 1).encoded}") is not None
    # The halting call's retry (its answer lost) is still recognised (W-6).
    again = fh.service.ensure_graph_data(req, Caller.anonymous())
    assert again.accepted and again.should_halt
