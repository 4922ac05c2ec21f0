"""The contract every Store adapter must meet (see ``dmcore/store/base.py``).

Why a base class: each adapter's test module subclasses :class:`StoreContract`
and supplies a ``store`` fixture, so SQLite and Firestore are held to the same
rules. The file is not named ``test_*.py`` and the class does not start with
``Test``, so pytest collects it only through subclasses.

Only rules that hold for every backend belong here; backend quirks go in the
adapter's own test module.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmcore.store.base import (
    AlreadyExists,
    Contention,
    Doc,
    InvalidPath,
    ReadAfterWrite,
    Store,
    StoreError,
    TooManyWrites,
    Transaction,
)


def put(store: Store, path: str, doc: Doc) -> None:
    """Write one document in its own transaction."""
    store.transaction(lambda tx: tx.set(path, doc))


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` on ``n`` threads and re-raise the first failure."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as e:  # surfaced in the test thread below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "worker thread hung"
    if errors:
        raise errors[0]


def _increment(path: str) -> Callable[[Transaction], int]:
    """A read-increment-write transaction function on ``path``'s ``n`` field."""

    def fn(tx: Transaction) -> int:
        doc = tx.get(path)
        n = 0 if doc is None else int(doc["n"])
        tx.set(path, {"n": n + 1})
        return n + 1

    return fn


# JSON values a document may hold; keys avoid Firestore's reserved __x__ names.
_keys = st.text(min_size=1, max_size=8).filter(lambda k: not k.startswith("__"))
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_docs = st.dictionaries(_keys, _values, max_size=6)


class StoreContract:
    """Mix-in of contract tests; subclasses override the ``store`` fixture."""

    get_many_is_snapshot = True
    """Whether ``store.get_many`` outside a transaction reads one snapshot.
    The port does not promise it (only a transaction's reads are one
    snapshot); a store that gives it says so, and the test holds it to it."""

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        raise NotImplementedError("a StoreContract subclass must provide a `store` fixture")

    # ---- documents

    def test_set_get_round_trip(self, store: Store) -> None:
        doc: Doc = {
            "s": "héllo wörld ✓ 🚀 中文",
            "ünï": {"çödé": "ok"},
            "big": 2**53,
            "neg": -(2**53),
            "zero": 0,
            "f": 0.1,
            "huge": 1.5e300,
            "whole_float": 2.0,
            "t": True,
            "fa": False,
            "none": None,
            "list": [1, "two", 3.5, None, True, [4, {"five": 5}]],
            "nested": {"a": {"b": {"c": [], "d": {}}}},
            "empty": "",
        }
        put(store, "things/one", doc)
        got = store.get("things/one")
        assert got == doc
        assert got is not None
        assert got["t"] is True and got["fa"] is False
        assert type(got["big"]) is int and type(got["whole_float"]) is float

    @settings(
        max_examples=40,
        deadline=None,
        # Inherited by several adapter classes (differing executors is the point).
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(doc=_docs)
    def test_round_trip_generated(self, store: Store, doc: Doc) -> None:
        put(store, "gen/doc", doc)
        assert store.get("gen/doc") == doc

    def test_get_missing(self, store: Store) -> None:
        assert store.get("nothing/here") is None
        assert store.transaction(lambda tx: tx.get("nothing/here")) is None

    def test_sub_collection_document(self, store: Store) -> None:
        put(store, "a/x/b/y", {"deep": 1})
        assert store.get("a/x/b/y") == {"deep": 1}
        assert store.get("a/x") is None  # the parent need not exist

    def test_set_overwrites_whole_document(self, store: Store) -> None:
        put(store, "c/d", {"a": 1, "b": 2})
        put(store, "c/d", {"b": 3})
        assert store.get("c/d") == {"b": 3}

    def test_doc_mutation_after_set_has_no_effect(self, store: Store) -> None:
        doc: Doc = {"n": 1}

        def fn(tx: Transaction) -> None:
            tx.set("c/d", doc)
            doc["n"] = 2

        store.transaction(fn)
        assert store.get("c/d") == {"n": 1}
        got = store.get("c/d")
        assert got is not None
        got["n"] = 99  # returned docs are copies
        assert store.get("c/d") == {"n": 1}

    def test_create_absent(self, store: Store) -> None:
        store.transaction(lambda tx: tx.create("c/new", {"v": 1}))
        assert store.get("c/new") == {"v": 1}

    def test_create_present_fails_atomically(self, store: Store) -> None:
        put(store, "c/old", {"v": 1})

        def fn(tx: Transaction) -> None:
            tx.set("c/other", {"v": 2})
            tx.create("c/old", {"v": 3})
            tx.delete("c/gone")

        put(store, "c/gone", {"v": 4})
        with pytest.raises(AlreadyExists):
            store.transaction(fn)
        assert store.get("c/old") == {"v": 1}
        assert store.get("c/other") is None
        assert store.get("c/gone") == {"v": 4}

    def test_delete(self, store: Store) -> None:
        put(store, "c/d", {"v": 1})
        store.transaction(lambda tx: tx.delete("c/d"))
        assert store.get("c/d") is None
        store.transaction(lambda tx: tx.delete("c/d"))  # missing is fine
        store.transaction(lambda tx: tx.delete("never/was"))
        assert store.get("c/d") is None

    def test_non_dict_document_rejected(self, store: Store) -> None:
        def fn(tx: Transaction) -> None:
            tx.set("c/ok", {"v": 1})
            tx.set("c/bad", ["not", "a", "dict"])  # type: ignore[arg-type]

        with pytest.raises((TypeError, ValueError)):
            store.transaction(fn)
        assert store.get("c/ok") is None
        assert store.get("c/bad") is None

    # ---- transactions

    def test_transaction_returns_fn_result(self, store: Store) -> None:
        assert store.transaction(lambda tx: 42) == 42

    def test_commit_visible_after_not_before(self, store: Store) -> None:
        put(store, "c/d", {"v": 0})
        seen: list[Doc | None] = []

        def fn(tx: Transaction) -> None:
            tx.set("c/d", {"v": 1})
            tx.set("c/e", {"v": 1})
            # Another thread reads while this transaction has not committed.
            t = threading.Thread(
                target=lambda: seen.extend(store.get_many(["c/d", "c/e"]).values())
            )
            t.start()
            t.join(timeout=30)

        store.transaction(fn)
        assert seen == [{"v": 0}, None]
        assert store.get_many(["c/d", "c/e"]) == {"c/d": {"v": 1}, "c/e": {"v": 1}}

    def test_exception_in_fn_writes_nothing(self, store: Store) -> None:
        put(store, "c/keep", {"v": 1})

        class BoomError(Exception):
            pass

        err = BoomError("boom")

        def fn(tx: Transaction) -> None:
            tx.set("c/new", {"v": 1})
            tx.set("c/keep", {"v": 2})
            tx.delete("c/keep")
            raise err

        with pytest.raises(BoomError) as info:
            store.transaction(fn)
        assert info.value is err
        assert store.get("c/new") is None
        assert store.get("c/keep") == {"v": 1}

    def test_exception_after_reads_only(self, store: Store) -> None:
        def fn(tx: Transaction) -> None:
            tx.get("c/x")
            raise KeyError("k")

        with pytest.raises(KeyError):
            store.transaction(fn)
        put(store, "c/x", {"ok": True})  # the store is still usable
        assert store.get("c/x") == {"ok": True}

    @pytest.mark.parametrize("write", ["set", "create", "delete"])
    @pytest.mark.parametrize("read", ["get", "get_many", "query"])
    def test_read_after_write(self, store: Store, write: str, read: str) -> None:
        def fn(tx: Transaction) -> None:
            tx.get("c/a")  # reading first is fine
            if write == "set":
                tx.set("c/b", {"v": 1})
            elif write == "create":
                tx.create("c/b", {"v": 1})
            else:
                tx.delete("c/b")
            if read == "get":
                tx.get("c/a")
            elif read == "get_many":
                tx.get_many(["c/a"])
            else:
                tx.query("c")

        with pytest.raises(ReadAfterWrite):
            store.transaction(fn)
        assert store.get("c/b") is None

    def test_contention_from_fn_is_retried(self, store: Store) -> None:
        calls: list[int] = []

        def fn(tx: Transaction) -> str:
            calls.append(1)
            tx.get("c/x")
            if len(calls) < 3:
                raise Contention("lost a race")
            tx.set("c/x", {"calls": len(calls)})
            return "done"

        assert store.transaction(fn, attempts=5) == "done"
        assert store.get("c/x") == {"calls": 3}

    def test_contention_gives_up(self, store: Store) -> None:
        calls: list[int] = []

        def fn(tx: Transaction) -> None:
            calls.append(1)
            tx.set("c/x", {"v": 1})
            raise Contention("always")

        with pytest.raises(Contention):
            store.transaction(fn, attempts=3)
        assert len(calls) == 3
        assert store.get("c/x") is None

    # ---- get_many

    def test_get_many_mixed(self, store: Store) -> None:
        put(store, "c/a", {"v": "a"})
        put(store, "c/b", {"v": "b"})
        put(store, "other/z", {"v": "z"})
        put(store, "c/a/sub/s", {"v": "s"})
        paths = ["c/b", "c/missing", "other/z", "c/a", "c/a/sub/s", "nope/x"]
        got = store.get_many(paths)
        assert got == {
            "c/b": {"v": "b"},
            "c/missing": None,
            "other/z": {"v": "z"},
            "c/a": {"v": "a"},
            "c/a/sub/s": {"v": "s"},
            "nope/x": None,
        }
        assert store.transaction(lambda tx: tx.get_many(paths)) == got
        assert store.get_many([]) == {}
        assert store.get_many(["c/a", "c/a"]) == {"c/a": {"v": "a"}}

    def test_peek_many_reads_parts(self, store: Store) -> None:
        put(store, "c/a", {"v": 1, "big": {"x": [1, 2]}, "n": None, "s": "a"})
        put(store, "c/b", {"s": "b"})
        put(store, "c/a/sub/s", {"v": 3})
        paths = ["c/a", "c/missing", "c/b", "c/a/sub/s"]
        fields = ("v", "n", "s")
        want = {
            "c/a": {"v": 1, "n": None, "s": "a"},
            "c/missing": None,
            "c/b": {"v": None, "n": None, "s": "b"},  # a field it lacks: None
            "c/a/sub/s": {"v": 3, "n": None, "s": None},
        }
        assert store.transaction(lambda tx: tx.peek_many(paths, fields)) == want
        assert store.transaction(lambda tx: tx.peek_many(["c/a"], ("big",))) == {
            "c/a": {"big": {"x": [1, 2]}}
        }
        assert store.transaction(lambda tx: tx.peek_many([], fields)) == {}

    def test_peek_many_after_a_write_is_refused(self, store: Store) -> None:
        def fn(tx: Transaction) -> None:
            tx.set("c/w", {"v": 1})
            tx.peek_many(["c/a"], ("v",))

        with pytest.raises(ReadAfterWrite):
            store.transaction(fn)
        assert store.get("c/w") is None

    def test_max_writes_refuses_a_larger_transaction(self, store: Store) -> None:
        def write(n: int) -> Callable[[Transaction], None]:
            def fn(tx: Transaction) -> None:
                for i in range(n):
                    tx.set(f"w/{i}", {"i": i})
                tx.set("w/0", {"i": 0})  # the same path twice is one write

            return fn

        store.max_writes = 3
        try:
            with pytest.raises(TooManyWrites):
                store.transaction(write(4))
            assert store.get("w/0") is None  # nothing written
            store.transaction(write(3))  # at the limit
        finally:
            store.max_writes = None
        assert store.get("w/2") == {"i": 2}
        store.transaction(write(4))  # no limit

    def test_get_many_large(self, store: Store) -> None:
        def fn(tx: Transaction) -> None:
            for i in range(0, 1200, 2):
                tx.set(f"many/{i:05d}", {"i": i})

        store.transaction(fn)
        paths = [f"many/{i:05d}" for i in range(1200)]
        got = store.get_many(paths)
        assert list(got) == paths
        assert all(got[f"many/{i:05d}"] == ({"i": i} if i % 2 == 0 else None) for i in range(1200))

    # ---- queries

    def _seed(self, store: Store) -> None:
        docs: dict[str, Doc] = {
            "q/a": {"kind": "x", "n": 1, "flag": True, "meta": {"owner": "ann", "lvl": 2}},
            "q/b": {"kind": "y", "n": 2, "flag": False, "meta": {"owner": "bob", "lvl": 2}},
            "q/c": {"kind": "x", "n": 3, "flag": 1, "meta": {"owner": "ann"}, "opt": None},
            "q/d": {"kind": "x", "n": 1.0, "flag": "true", "opt": "set"},
            "q/e": {"kind": {"x": 1}, "n": "1", "meta": "ann"},
        }

        def fn(tx: Transaction) -> None:
            for path, doc in docs.items():
                tx.set(path, doc)
            # Neighbours that must never leak into queries of "q".
            tx.set("q/a/sub/s1", {"kind": "x", "n": 1})
            tx.set("qq/a", {"kind": "x", "n": 1})
            tx.set("q2/a", {"kind": "x"})

        store.transaction(fn)

    @staticmethod
    def _paths(rows: list[tuple[str, Doc]]) -> list[str]:
        return [p for p, _ in rows]

    def test_query_all_in_path_order(self, store: Store) -> None:
        self._seed(store)
        rows = store.query("q")
        assert self._paths(rows) == ["q/a", "q/b", "q/c", "q/d", "q/e"]
        assert rows[0][1]["meta"] == {"owner": "ann", "lvl": 2}

    @pytest.mark.parametrize(
        ("where", "expected"),
        [
            ({"kind": "x"}, ["q/a", "q/c", "q/d"]),
            ({"kind": "x", "n": 1}, ["q/a", "q/d"]),  # 1 == 1.0
            ({"n": 1.0}, ["q/a", "q/d"]),
            ({"n": "1"}, ["q/e"]),  # strings never equal numbers
            ({"n": 2}, ["q/b"]),
            ({"flag": True}, ["q/a"]),  # not 1, not "true"
            ({"flag": False}, ["q/b"]),
            ({"flag": 1}, ["q/c"]),  # 1 is not True
            ({"flag": "true"}, ["q/d"]),
            ({"meta.owner": "ann"}, ["q/a", "q/c"]),  # dotted; "meta": "ann" is no match
            ({"meta.lvl": 2, "meta.owner": "bob"}, ["q/b"]),
            ({"opt": None}, ["q/c"]),  # explicit null only, not missing
            ({"meta.owner": None}, []),
            ({"kind": "z"}, []),
            ({}, ["q/a", "q/b", "q/c", "q/d", "q/e"]),
        ],
    )
    def test_query_equality(self, store: Store, where: dict[str, Any], expected: list[str]) -> None:
        self._seed(store)
        assert self._paths(store.query("q", where=where)) == expected
        assert store.count("q", where=where) == len(expected)
        in_tx = store.transaction(lambda tx: tx.query("q", where=where))
        assert self._paths(in_tx) == expected

    def test_query_id_prefix(self, store: Store) -> None:
        for path in ("p/a|2", "p/a|1", "p/a", "p/a}", "p/a{", "p/b|1", "p/a|1/sub/x", "pp/a|3"):
            put(store, path, {"at": path})
        got = store.query_id_prefix("p", "a|")
        assert [p for p, _ in got] == ["p/a|1", "p/a|2"]  # id order, direct children only
        assert got[0][1] == {"at": "p/a|1"}
        assert store.query_id_prefix("p", "zz") == []
        assert [p for p, _ in store.query_id_prefix("p/a|1/sub", "x")] == ["p/a|1/sub/x"]
        for bad in ("", "a/b", "a."):
            with pytest.raises(InvalidPath):
                store.query_id_prefix("p", bad)

    def test_query_collections(self, store: Store) -> None:
        for path in ("e/a/sub/2", "e/a/sub/1", "e/b/sub/1", "e/a/sub/1/deeper/x", "e/ab/sub/9"):
            put(store, path, {"at": path})
        got = store.query_collections(["e/b/sub", "e/a/sub", "e/c/sub", "e/a/sub"])
        assert list(got) == ["e/b/sub", "e/a/sub", "e/c/sub"]  # as asked, once each
        assert [p for p, _ in got["e/a/sub"]] == ["e/a/sub/1", "e/a/sub/2"]  # id order, direct
        assert got["e/b/sub"] == [("e/b/sub/1", {"at": "e/b/sub/1"})]
        assert got["e/c/sub"] == []
        assert store.query_collections([]) == {}
        for bad in ("", "e/a", "e/a/sub/1"):  # a document's path is not a collection's
            with pytest.raises(InvalidPath):
                store.query_collections(["e/a/sub", bad])

    def test_query_direct_children_only(self, store: Store) -> None:
        self._seed(store)
        assert "q/a/sub/s1" not in self._paths(store.query("q", where={"kind": "x"}))
        assert self._paths(store.query("q/a/sub")) == ["q/a/sub/s1"]
        assert store.query("q/b/sub") == []
        assert self._paths(store.query("qq")) == ["qq/a"]
        assert store.count("q/a/sub") == 1

    def test_query_order_by(self, store: Store) -> None:
        def fn(tx: Transaction) -> None:
            tx.set("o/1", {"rank": 3, "g": {"t": 30}})
            tx.set("o/2", {"rank": 1, "g": {"t": 10}})
            tx.set("o/3", {"rank": 2, "g": {"t": 20}})
            tx.set("o/4", {"rank": 2})  # tie with o/3 on rank; no g.t
            tx.set("o/5", {"other": 0})  # no rank: excluded when ordering by rank
            tx.set("o/6", {"rank": 10})  # 10 > 3 numerically, whatever the text order

        store.transaction(fn)
        assert self._paths(store.query("o", order_by="rank")) == ["o/2", "o/3", "o/4", "o/1", "o/6"]
        desc = self._paths(store.query("o", order_by="rank", descending=True))
        assert desc[:2] == ["o/6", "o/1"] and desc[-1] == "o/2"
        assert set(desc[2:4]) == {"o/3", "o/4"}
        assert self._paths(store.query("o", order_by="rank", limit=2)) == ["o/2", "o/3"]
        assert self._paths(store.query("o", order_by="rank", descending=True, limit=1)) == ["o/6"]
        assert self._paths(store.query("o", order_by="g.t", descending=True)) == [
            "o/1",
            "o/3",
            "o/2",
        ]
        assert self._paths(store.query("o", where={"rank": 2}, order_by="rank")) == ["o/3", "o/4"]
        assert self._paths(store.query("o", limit=3)) == ["o/1", "o/2", "o/3"]
        assert self._paths(store.query("o", order_by="missing")) == []

    def test_query_at_most(self, store: Store) -> None:
        """``at_most`` bounds the ordered field as a range filter: values of the bound's
        type only (numbers: ints and floats alike), inclusive, in order, under ``limit``."""

        def fn(tx: Transaction) -> None:
            tx.set("m/1", {"rank": 3})
            tx.set("m/2", {"rank": 1, "s": 0})
            tx.set("m/3", {"rank": 2.5, "s": 1})
            tx.set("m/4", {"rank": 2, "s": 0})
            tx.set("m/5", {"rank": "1"})  # a string: never within a number's range
            tx.set("m/6", {"rank": None})
            tx.set("m/7", {"rank": True})
            tx.set("m/8", {"other": 0})

        store.transaction(fn)
        assert self._paths(store.query("m", order_by="rank", at_most=2.5)) == ["m/2", "m/4", "m/3"]
        assert self._paths(store.query("m", order_by="rank", at_most=3, limit=2)) == ["m/2", "m/4"]
        assert self._paths(store.query("m", order_by="rank", at_most=0)) == []
        assert self._paths(store.query("m", {"s": 0}, order_by="rank", at_most=5)) == ["m/2", "m/4"]
        assert self._paths(store.query("m", order_by="rank", at_most="9")) == ["m/5"]
        with pytest.raises(ValueError, match="order_by"):
            store.query("m", at_most=3)
        with pytest.raises(TypeError, match="at_most"):
            store.query("m", order_by="rank", at_most=True)

    def test_query_order_by_strings(self, store: Store) -> None:
        def fn(tx: Transaction) -> None:
            for i, name in enumerate(["pear", "Apple", "apple", "banana"]):
                tx.set(f"s/{i}", {"name": name})

        store.transaction(fn)
        rows = store.query("s", order_by="name")
        assert [d["name"] for _, d in rows] == ["Apple", "apple", "banana", "pear"]

    def test_count(self, store: Store) -> None:
        assert store.count("q") == 0
        self._seed(store)
        assert store.count("q") == 5
        assert store.count("q", where={"kind": "x"}) == 3
        assert store.count("q", where={"meta.owner": "ann"}) == 2
        assert store.count("nothing") == 0

    def test_count_in_a_transaction(self, store: Store) -> None:
        self._seed(store)

        def fn(tx: Transaction) -> tuple[int, int, int, int]:
            return (
                tx.count("q"),
                tx.count("q", {"kind": "x"}),
                tx.count("q", {"kind": "x"}, limit=2),
                tx.count("nothing", limit=2),
            )

        assert store.transaction(fn) == (5, 3, 2, 0)

    # ---- paths

    @pytest.mark.parametrize("path", ["", "c", "c/d/e", "/c/d", "c/d/", "c//d", "a/b/c"])
    def test_invalid_doc_paths(self, store: Store, path: str) -> None:
        with pytest.raises(InvalidPath):
            store.get(path)
        with pytest.raises(InvalidPath):
            store.get_many(["c/ok", path])
        for op in ("get", "set", "create", "delete"):

            def fn(tx: Transaction, op: str = op) -> None:
                if op == "get":
                    tx.get(path)
                elif op == "set":
                    tx.set(path, {})
                elif op == "create":
                    tx.create(path, {})
                else:
                    tx.delete(path)

            with pytest.raises(InvalidPath):
                store.transaction(fn)

    @pytest.mark.parametrize("path", ["", "c/d", "/c", "c/", "c/d/e/f", "a//b"])
    def test_invalid_collection_paths(self, store: Store, path: str) -> None:
        with pytest.raises(InvalidPath):
            store.query(path)
        with pytest.raises(InvalidPath):
            store.count(path)
        with pytest.raises(InvalidPath):
            store.transaction(lambda tx: tx.query(path))

    def test_invalid_path_is_value_error(self, store: Store) -> None:
        with pytest.raises(ValueError):
            store.get("bad")
        assert issubclass(InvalidPath, StoreError)

    # ---- concurrency

    def test_no_lost_updates_across_threads(self, store: Store) -> None:
        threads, per_thread = 4, 50

        def work(_: int) -> None:
            for _ in range(per_thread):
                store.transaction(_increment("counters/c"), attempts=50)

        run_threads(threads, work)
        assert store.get("counters/c") == {"n": threads * per_thread}

    def test_transaction_sees_consistent_snapshot(self, store: Store) -> None:
        """A writer keeps x.v == y.v; readers must never see them differ."""
        put(store, "snap/x", {"v": 0})
        put(store, "snap/y", {"v": 0})
        rounds = 25
        done = threading.Event()

        def write(tx: Transaction, i: int) -> None:
            tx.set("snap/x", {"v": i})
            tx.set("snap/y", {"v": i})

        def read(tx: Transaction) -> tuple[Any, Any]:
            x = tx.get("snap/x")
            time.sleep(0.002)  # give the writer a chance to slip in between
            y = tx.get("snap/y")
            assert x is not None and y is not None
            return x["v"], y["v"]

        def work(i: int) -> None:
            if i == 0:
                try:
                    for r in range(1, rounds + 1):
                        store.transaction(functools.partial(write, i=r), attempts=50)
                finally:
                    done.set()
                return
            in_tx: list[tuple[Any, Any]] = []
            outside: list[tuple[Any, Any]] = []
            while True:  # at least once, however fast the writer is
                in_tx.append(store.transaction(read, attempts=50))
                got = store.get_many(["snap/x", "snap/y"])
                x, y = got["snap/x"], got["snap/y"]
                assert x is not None and y is not None
                outside.append((x["v"], y["v"]))
                if done.is_set():
                    break
            assert [p for p in in_tx if p[0] != p[1]] == []
            if self.get_many_is_snapshot:
                assert [p for p in outside if p[0] != p[1]] == []

        run_threads(3, work)
        assert store.get("snap/x") == {"v": rounds}
