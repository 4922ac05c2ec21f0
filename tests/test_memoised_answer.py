"""A memoised EnsureGraphData (every quest and asked attempt there): each attempt
keeps its quest's creation time (docs.QUEST_CREATED), so the answer shows a supplied
quest from the request and its attempt, and reads no quest document. What it cannot
know so (an attempt made before the copy was kept, a quest named only by
``raw_attempts``, whose description the answer shows) it reads, and the answer is
the one the generic walk gives."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from distributors.fake import quest_desc
from dmcore import service as service_mod
from dmcore.engine import docs
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2
from dmcore.store.base import Store, Transaction
from tests.harness import Harness
from tests.test_service import TRUSTED, activate, aid_of, complete, declare, start


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def h(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Harness]:
    store: Store | None = None
    if request.param == "firestore":
        store = request.getfixturevalue("firestore_store")
    harness = Harness(tmp_path, store=store)
    yield harness
    harness.close()


def _quest_created(h: Harness, aid: AttemptID) -> Any:
    quest = h.store.get(docs.quest_path(aid.quest))
    assert quest is not None
    return quest["created"]


def test_each_attempt_keeps_its_quests_creation_time(h: Harness) -> None:
    """An attempt created with its quest, one created later for a quest that exists,
    and the dependees a declaration creates (of a new quest, of one that exists)
    each hold their quest's creation time, written in the commit that creates them."""
    a, b, c = quest_desc("A"), quest_desc("B"), quest_desc("C")
    start(h, a, c)
    h.advance(5)
    start(h, a, attempts=(2,))  # the quest was created 5 s before this attempt
    a1 = aid_of(a)
    token = activate(h, a1.execution(1))
    h.advance(5)
    rsp = declare(h, a1.execution(1), token, aid_of(b), aid_of(c, 2), quests=(b,))
    assert rsp.should_halt
    for aid in (a1, aid_of(a, 2), aid_of(b), aid_of(c), aid_of(c, 2)):
        att = h.attempt(aid)
        assert att[docs.QUEST_CREATED] == _quest_created(h, aid), aid
    assert h.attempt(aid_of(a, 2))["created"] > h.attempt(aid_of(a, 2))[docs.QUEST_CREATED]
    assert h.attempt(aid_of(c, 2))["created"] > h.attempt(aid_of(c, 2))[docs.QUEST_CREATED]


class _Spy:
    """A read view that notes every document path read through it."""

    def __init__(self, inner: Transaction, read: list[str]) -> None:
        self.inner, self.read = inner, read

    def get_many(self, paths: Sequence[str]) -> dict[str, Any]:
        self.read.extend(paths)
        return self.inner.get_many(paths)

    def peek_many(
        self, paths: Sequence[str], fields: tuple[str, ...]
    ) -> dict[str, Mapping[str, Any] | None]:
        self.read.extend(paths)
        return self.inner.peek_many(paths, fields)


def _spy_on_read_view(h: Harness, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    real = h.store.read_view

    @contextlib.contextmanager
    def spied() -> Iterator[Any]:
        view = real()
        assert view is not None, "a SQLite store has a read view"
        with view as reader:
            yield _Spy(reader, read)

    monkeypatch.setattr(h.store, "read_view", spied)
    return read


def _drop_quest_created(h: Harness, aid: AttemptID) -> None:
    """Attempt ``aid`` as a dm older than docs.QUEST_CREATED made it."""

    def drop(tx: Transaction) -> None:
        att = tx.get(docs.attempt_path(aid))
        assert att is not None
        tx.set(docs.attempt_path(aid), {k: v for k, v in att.items() if k != docs.QUEST_CREATED})

    h.store.transaction(drop)


def test_a_memoised_answer_reads_no_quest_it_was_given(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path)
    try:
        descs = [quest_desc(f"memo-{i}") for i in range(4)]
        start(h, *descs)
        complete(h, aid_of(descs[0]), {"r": 0})
        h.advance(3)
        start(h, descs[1], attempts=(2,))
        aids = [aid_of(d) for d in descs] + [aid_of(descs[1], 2)]
        req = dm_pb2.EnsureGraphDataReq()
        req.include.attempt.result = True
        for d in descs:
            req.quest.append(d)
            req.quest_attempt.add(nums=[1, 2] if d is descs[1] else [1])
        # The last quest named only by raw_attempts: its description is read.
        raw = aid_of(descs[3])
        del req.quest[3]
        del req.quest_attempt[3]
        req.raw_attempts.to[raw.quest].nums.append(1)
        _drop_quest_created(h, aid_of(descs[2]))  # made by an older dm
        generic = service_mod.Service(h.engine)._snapshot_graph(
            aids, True, service_mod.MAX_DATA_SIZE_DEFAULT
        )
        read = _spy_on_read_view(h, monkeypatch)

        got = h.service.ensure_graph_data(req, TRUSTED)

        assert got.accepted and got.result == generic
        assert read, "answered from the read view"
        quests_read = sorted(p for p in read if p.startswith(docs.QUESTS + "/"))
        assert quests_read == sorted(docs.quest_path(a.quest) for a in (aid_of(descs[2]), raw)), (
            "only the quests an attempt or the request could not show were read"
        )
        for d in descs:
            assert got.result.quests[aid_of(d).quest].data.created.ToMicroseconds() == (
                _quest_created(h, aid_of(d))
            )
    finally:
        h.close()
