"""FirestoreStore on the Firestore emulator: the shared Store contract plus Firestore specifics."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from dmcore.store.base import (
    AlreadyExists,
    Contention,
    Doc,
    InvalidPath,
    Store,
    StoreError,
    Transaction,
)
from dmcore.store.firestore import FirestoreStore, OpCounts, collection_of
from tests.emulator_fixtures import firestore_reset
from tests.store_contract import StoreContract, _docs, _increment, put, run_threads

pytestmark = pytest.mark.emulator


class TestFirestoreStore(StoreContract):
    """Every contract test, each in a fresh namespace on the session's emulator."""

    # The emulator reads each document of a batch get at its own moment (also
    # in a read-only transaction): a writer committing in between shows half
    # its writes (seen in a clean-clone CI run, and 1 in ~1,000 reads under
    # load). Only a read-write transaction's reads are one snapshot there.
    get_many_is_snapshot = False

    @pytest.fixture
    def store(self, firestore_store: FirestoreStore) -> Iterator[Store]:
        yield firestore_store

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(doc=_docs)
    def test_round_trip_generated(self, store: Store, doc: Doc) -> None:
        """The contract's test, as a function of its own: Hypothesis refuses one test
        function run from two classes in one process (``differing_executors``)."""
        put(store, "gen/doc", doc)
        assert store.get("gen/doc") == doc

    def test_no_lost_updates_across_threads(self, store: Store) -> None:
        """Smaller than the contract's 4 x 50: the emulator breaks each lock
        conflict only by a 2 s timeout (production Firestore uses wound-wait)."""
        threads, per_thread = 2, 5

        def work(_: int) -> None:
            for _ in range(per_thread):
                store.transaction(_increment("counters/c"), attempts=50)

        run_threads(threads, work)
        assert store.get("counters/c") == {"n": threads * per_thread}


@pytest.fixture
def fs(firestore_store: FirestoreStore) -> FirestoreStore:
    return firestore_store


def test_no_read_view(fs: FirestoreStore) -> None:
    """Firestore has no read-only view cheaper than a transaction: callers (a memoised
    EnsureGraphData) take their transactional path, whose reads the cost tests count."""
    assert fs.read_view() is None


def test_values_firestore_cannot_hold_round_trip(fs: FirestoreStore) -> None:
    """Arrays in arrays, empty/reserved/escape-looking keys are escaped and restored."""
    doc: dict[str, Any] = {
        "nested": [[], [1, [2, [3]]], {"in": [[4]]}],
        "": "empty key",
        "~": 1,
        "~a": [[5]],
        "~~x": {"~a": 1},
        "__reserved__": {"__x__": 2},
        "___": 3,
        "a.b": {"c`d": "x\x00y"},
        "m": {"~a": [6]},  # a user map that looks like the array marker
    }
    put(fs, "v/1", doc)
    assert fs.get("v/1") == doc
    raw = fs.client.document(f"{fs.prefix}/v/1").get().to_dict()
    assert raw is not None
    assert raw["nested"] == [
        {"~a": []},
        {"~a": [1, {"~a": [2, {"~a": [3]}]}]},
        {"in": [{"~a": [4]}]},
    ]
    assert raw["~__reserved__"] == {"~__x__": 2}
    assert raw["~"] == "empty key"


def test_escaped_keys_are_queryable(fs: FirestoreStore) -> None:
    put(fs, "k/1", {"~x": {"__y__": 1}, "ünï": {"it's": "a"}, "sp ace": True})
    put(fs, "k/2", {"~x": {"__y__": 2}, "ünï": {"it's": "b"}})
    assert [p for p, _ in fs.query("k", where={"~x.__y__": 1})] == ["k/1"]
    assert [p for p, _ in fs.query("k", where={"ünï.it's": "b"})] == ["k/2"]
    assert [p for p, _ in fs.query("k", where={"sp ace": True})] == ["k/1"]
    assert [p for p, _ in fs.query("k", order_by="~x.__y__", descending=True)] == ["k/2", "k/1"]
    assert fs.count("k", where={"~x.__y__": 2}) == 1


def test_ints_and_floats_stay_apart(fs: FirestoreStore) -> None:
    put(fs, "n/1", {"i": 2**53, "f": 1.0, "z": -0.0, "neg": -(2**63)})
    got = fs.get("n/1")
    assert got is not None
    assert type(got["i"]) is int and type(got["f"]) is float and type(got["neg"]) is int
    assert str(got["z"]) == "-0.0"


def test_unstorable_values_rejected(fs: FirestoreStore) -> None:
    def write(tx: Transaction, doc: dict[str, object]) -> None:
        tx.set("c/x", doc)

    bads: list[dict[str, object]] = [
        {"f": float("nan")},
        {"f": float("inf")},
        {"o": object()},
        {"b": b"bytes"},
        {"i": 2**63},
        {1: "non-str key"},  # type: ignore[dict-item]
    ]
    for bad in bads:
        with pytest.raises((TypeError, ValueError)):
            fs.transaction(functools.partial(write, doc=bad))
    assert fs.get("c/x") is None


def test_where_value_and_field_checks(fs: FirestoreStore) -> None:
    with pytest.raises(TypeError):
        fs.query("c", where={"a": [1]})
    for field in ("", "a..b", ".a"):
        with pytest.raises(ValueError):
            fs.query("c", where={field: 1})
    with pytest.raises(ValueError):
        fs.query("c", limit=-1)
    with pytest.raises(TypeError):
        fs.get_many("c/x")
    assert fs.query("c", limit=0) == []


@pytest.mark.parametrize("path", ["c/..", "c/.", "__x__/d", "c/__id__", "c/" + "x" * 1501])
def test_ids_firestore_refuses_are_invalid_paths(fs: FirestoreStore, path: str) -> None:
    with pytest.raises(InvalidPath):
        fs.get(path)
    with pytest.raises(InvalidPath):
        fs.transaction(lambda tx: tx.set(path, {}))


def test_same_path_writes_compose(fs: FirestoreStore) -> None:
    put(fs, "c/exists", {"v": 0})

    def fn(tx: Transaction) -> None:
        tx.set("c/a", {"v": 1})
        tx.set("c/a", {"v": 2})  # last write wins
        tx.set("c/b", {"v": 1})
        tx.delete("c/b")
        tx.delete("c/exists")
        tx.create("c/exists", {"v": "recreated"})  # free again after the delete
        tx.create("c/new", {"v": 1})
        tx.set("c/new", {"v": 2})

    fs.transaction(fn)
    assert fs.get_many(["c/a", "c/b", "c/exists", "c/new"]) == {
        "c/a": {"v": 2},
        "c/b": None,
        "c/exists": {"v": "recreated"},
        "c/new": {"v": 2},
    }


def test_create_conflicts_within_transaction(fs: FirestoreStore) -> None:
    put(fs, "c/exists", {"v": 0})

    def set_then_create(tx: Transaction) -> None:
        tx.set("c/x", {"v": 1})
        tx.create("c/x", {"v": 2})

    def create_then_delete_existing(tx: Transaction) -> None:
        tx.create("c/exists", {"v": 1})
        tx.delete("c/exists")

    for fn in (set_then_create, create_then_delete_existing):
        with pytest.raises(AlreadyExists):
            fs.transaction(fn)
    assert fs.get("c/x") is None
    assert fs.get("c/exists") == {"v": 0}


def test_create_conflict_after_reads_releases_locks(fs: FirestoreStore) -> None:
    """A commit refused with ALREADY_EXISTS is rolled back: the next writer does not wait."""
    put(fs, "c/x", {"n": 0})

    def read_then_create(tx: Transaction) -> None:
        tx.get("c/x")
        tx.create("c/x", {"v": 1})

    with pytest.raises(AlreadyExists):
        fs.transaction(read_then_create)
    fs.transaction(_increment("c/x"))
    # A lock left behind would cost the emulator's 2 s lock timeout and a retry.
    assert fs.stats.retries == 0
    assert fs.get("c/x") == {"n": 1}


def test_contention_from_fn_releases_locks(fs: FirestoreStore) -> None:
    calls: list[int] = []

    def fn(tx: Transaction) -> None:
        calls.append(1)
        tx.get("c/x")
        if len(calls) == 1:
            raise Contention("retry me")
        tx.set("c/x", {"v": len(calls)})

    fs.transaction(fn)
    # Only the retry asked for: a read lock kept by the first attempt would have
    # made the second wait for the emulator's lock timeout and be aborted again.
    assert fs.stats.retries == 1
    assert fs.get("c/x") == {"v": 2}


def test_aborted_lock_race_is_retried(fs: FirestoreStore) -> None:
    """Two read-modify-write transactions deadlock on the emulator; one is aborted, both land."""
    put(fs, "c/n", {"n": 0})
    barrier = threading.Barrier(2)
    first = threading.local()

    def slow_inc(tx: Transaction) -> None:
        doc = tx.get("c/n")
        assert doc is not None
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait(timeout=30)  # both hold a read lock before either writes
        tx.set("c/n", {"n": doc["n"] + 1})

    run_threads(2, lambda _: fs.transaction(slow_inc, attempts=10))
    assert fs.get("c/n") == {"n": 2}
    assert fs.stats.retries >= 1


def test_query_in_a_transaction_sees_a_racing_insert(fs: FirestoreStore) -> None:
    """Serializable queries: two transactions each query for an open item and add one
    if there is none; whichever commits second must have seen the other's insert
    (retried), so exactly one is added. CheckDeps relies on this: it decides "no open
    edge left" from a query, racing an edge being added or acked."""
    barrier = threading.Barrier(2)
    first = threading.local()
    added: dict[int, bool] = {}

    def add_if_none(worker: int) -> None:
        def fn(tx: Transaction) -> bool:
            rows = tx.query("items", where={"open": True})
            if not getattr(first, "done", False):
                first.done = True
                barrier.wait(timeout=30)  # both have queried before either writes
            if rows:
                return False
            tx.set(f"items/{worker}", {"open": True})
            return True

        # What the committed attempt did (an aborted attempt's insert never happened).
        added[worker] = fs.transaction(fn, attempts=10)

    run_threads(2, add_if_none)
    (adder,) = [w for w, did in added.items() if did]
    assert [p for p, _ in fs.query("items", where={"open": True})] == [f"items/{adder}"]
    assert fs.stats.retries >= 1


def test_count_in_a_transaction_sees_a_racing_close(fs: FirestoreStore) -> None:
    """Serializable counts: two open items, two transactions each count the open ones
    (an aggregation, not reading them) and close their own; whichever commits second
    must have seen the other's close (retried) and count 1. An ack relies on this: only
    the one that closes the waiter's last open edge queues its check."""
    put(fs, "items/0", {"open": True})
    put(fs, "items/1", {"open": True})
    barrier = threading.Barrier(2)
    first = threading.local()
    seen: dict[int, int] = {}

    def close_mine(worker: int) -> None:
        def fn(tx: Transaction) -> int:
            n = tx.count("items", {"open": True}, limit=2)
            if not getattr(first, "done", False):
                first.done = True
                barrier.wait(timeout=30)  # both have counted before either writes
            tx.set(f"items/{worker}", {"open": False})
            return n

        seen[worker] = fs.transaction(fn, attempts=10)

    run_threads(2, close_mine)
    assert sorted(seen.values()) == [1, 2]
    assert fs.stats.retries >= 1


def test_racing_creates_of_one_document(fs: FirestoreStore) -> None:
    """Two transactions find a document missing and create it: one creates it, the
    other never overwrites it (it is retried and finds it, or its create fails)."""
    barrier = threading.Barrier(2)
    first = threading.local()
    outcome: dict[int, str] = {}

    def create_once(worker: int) -> None:
        def fn(tx: Transaction) -> str:
            doc = tx.get("c/once")
            if not getattr(first, "done", False):
                first.done = True
                barrier.wait(timeout=30)
            if doc is not None:
                return "found"
            tx.create("c/once", {"by": worker})
            return "created"

        try:
            outcome[worker] = fs.transaction(fn, attempts=10)
        except AlreadyExists:
            outcome[worker] = "refused"

    run_threads(2, create_once)
    assert sorted(outcome.values()) in (["created", "found"], ["created", "refused"])
    creator = next(w for w, o in outcome.items() if o == "created")
    assert fs.get("c/once") == {"by": creator}


def test_nested_transaction_refused(fs: FirestoreStore) -> None:
    def outer(tx: Transaction) -> None:
        tx.set("a/outer", {})
        fs.transaction(lambda inner: inner.set("a/inner", {}))

    with pytest.raises(StoreError, match="nested"):
        fs.transaction(outer)
    assert fs.get("a/outer") is None
    assert fs.get("a/inner") is None
    put(fs, "a/after", {"ok": 1})
    assert fs.get("a/after") == {"ok": 1}


def test_descending_ties_in_path_order(fs: FirestoreStore) -> None:
    def fn(tx: Transaction) -> None:
        for i in "abcd":
            tx.set(f"o/{i}", {"rank": 1})
        tx.set("o/e", {"rank": 2})

    fs.transaction(fn)
    got = [p for p, _ in fs.query("o", order_by="rank", descending=True)]
    assert got == ["o/e", "o/a", "o/b", "o/c", "o/d"]
    assert [p for p, _ in fs.query("o", order_by="rank", descending=True, limit=2)] == [
        "o/e",
        "o/a",
    ]


def test_order_by_mixed_types(fs: FirestoreStore) -> None:
    """Firestore's type order: null < bool < number < string < array < map."""
    values = [{"k": 1}, [1], "s", 2.5, 1, True, False, None]
    for i, v in enumerate(values):
        put(fs, f"m/{i}", {"v": v})
    got = [d["v"] for _, d in fs.query("m", order_by="v")]
    assert got == [None, False, True, 1, 2.5, "s", [1], {"k": 1}]


def test_prefixes_and_projects_are_isolated(
    fs: FirestoreStore, firestore_client: Any, firestore_emulator: str
) -> None:
    other = FirestoreStore(firestore_client, prefix=f"{fs.prefix}-other")
    put(fs, "iso/a", {"v": 1})
    put(other, "iso/a", {"v": 2})
    assert fs.get("iso/a") == {"v": 1} and other.get("iso/a") == {"v": 2}
    assert fs.count("iso") == 1 and [p for p, _ in other.query("iso")] == ["iso/a"]
    with pytest.raises(InvalidPath):
        FirestoreStore(firestore_client, prefix="just-a-collection")
    # A store of its own (its own client) on another project, wiped by the reset helper.
    project = f"dm-test-iso-{os.getpid()}"
    own = FirestoreStore(project=project)
    try:
        put(own, "iso/a", {"v": 3})
        assert own.get("iso/a") == {"v": 3} and fs.get("iso/a") == {"v": 1}
        firestore_reset(firestore_emulator, project)
        assert own.get("iso/a") is None and fs.get("iso/a") == {"v": 1}
    finally:
        own.close()
    with pytest.raises(StoreError):
        own.get("iso/a")


def test_stats_count_billed_reads_and_writes(fs: FirestoreStore) -> None:
    fs.stats.reset()

    def fn(tx: Transaction) -> None:
        tx.get_many(["s/a", "s/b"])  # 2 reads (missing documents are billed)
        tx.query("s")  # empty: 1 read
        tx.set("s/a", {})
        tx.create("s/b", {})
        tx.delete("s/c")

    fs.transaction(fn)
    assert fs.stats.snapshot() == {
        "reads": 3,
        "writes": 2,
        "deletes": 1,
        "commits": 1,
        "retries": 0,
    }
    assert fs.count("s") == 2
    assert fs.stats.reads == 4


def test_detailed_stats_say_who_did_what(fs: FirestoreStore) -> None:
    """Per document, per (owner, step) label and collection, and the largest commit."""
    fs.stats.reset()
    fs.stats.detailed = True

    def fn(tx: Transaction) -> None:
        tx.get_many(["s/a", "s/b"])
        tx.set("s/a", {})
        tx.set("s/a/sub/x", {})
        tx.delete("s/c")

    with fs.stats.labelled(step="one"):
        fs.transaction(fn)
        with fs.stats.labelled(owner="other"):
            fs.get("s/a")
            assert [p for p, _ in fs.query("s")] == ["s/a"]
            fs.query("s/a/none")  # empty: 1 read, on the collection only
    fs.transaction(lambda tx: tx.set("s/a", {"v": 1}))

    st = fs.stats
    assert st.documents["s/a"] == OpCounts(reads=3, writes=2)
    assert st.documents["s/b"] == OpCounts(reads=1)
    assert st.documents["s/c"] == OpCounts(deletes=1)
    assert st.documents["s/a/sub/x"] == OpCounts(writes=1)
    mine, other, unlabelled = (
        st.labels[("dm", "one")],
        st.labels[("other", "one")],
        st.labels[("dm", "-")],
    )
    assert mine.commits == 1 and other.commits == 0 and unlabelled.commits == 1
    assert mine.collections == {
        "s": OpCounts(reads=2, writes=1, deletes=1),
        "s/sub": OpCounts(writes=1),
    }
    assert other.collections == {"s": OpCounts(reads=2), "s/none": OpCounts(reads=1)}
    assert unlabelled.collections == {"s": OpCounts(writes=1)}
    assert st.largest_commit == 3
    # The totals are the same as without detail.
    assert st.snapshot() == {"reads": 5, "writes": 3, "deletes": 1, "commits": 2, "retries": 0}
    assert collection_of("attempts/q|1/executions/2") == collection_of("attempts/q|2/executions")
