"""SqliteStore: the shared Store contract plus SQLite-specific behaviour."""

from __future__ import annotations

import functools
import json
import multiprocessing
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmcore.store import sqlite as sqlite_store
from dmcore.store.base import (
    AlreadyExists,
    Contention,
    ReadAfterWrite,
    Store,
    StoreError,
    Transaction,
)
from dmcore.store.sqlite import LockTimeout, SqliteStore
from tests.store_contract import StoreContract, put, run_threads


class TestSqliteContract(StoreContract):
    """Run every contract test against a fresh database file."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        s = SqliteStore(tmp_path / "dm.sqlite")
        yield s
        s.close()


class TestSqliteIndexedContract(StoreContract):
    """The contract again with the queried fields indexed, for equality and order (ordered
    columns): indexes change no result."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        fields = ("flag", "n", "kind", "meta.owner", "meta.lvl", "opt", "rank", "name", "g.t")
        s = SqliteStore(tmp_path / "dm.sqlite", indexed_fields=fields, ordered_fields=fields)
        yield s
        s.close()


@pytest.fixture
def sq(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "dm.sqlite")
    yield s
    s.close()


def _inc(tx: Transaction) -> None:
    doc = tx.get("counters/c")
    tx.set("counters/c", {"n": (0 if doc is None else doc["n"]) + 1})


def _increment_in_process(path: str, n: int) -> None:
    """Child-process body (module level so the spawn context can import it)."""
    store = SqliteStore(path)
    try:
        for _ in range(n):
            store.transaction(_inc, attempts=100)
    finally:
        store.close()


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "dm.sqlite"  # parent dirs are created
    s1 = SqliteStore(path)
    put(s1, "a/b", {"v": [1, {"x": "ü"}]})
    s1.close()
    s2 = SqliteStore(str(path))
    try:
        assert s2.get("a/b") == {"v": [1, {"x": "ü"}]}
        assert s2.count("a") == 1
    finally:
        s2.close()


def test_wal_mode(sq: SqliteStore) -> None:
    put(sq, "a/b", {})
    raw = sqlite3.connect(sq.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    # Every commit is on disk before it returns (FULL = 2), power cuts included.
    assert sq.connection().execute("PRAGMA synchronous").fetchone()[0] == 2


def test_page_cache_per_connection(tmp_path: Path) -> None:
    sq = SqliteStore(tmp_path / "c.sqlite", cache_mib=3)
    try:
        # Negative: KiB; every thread's connection gets it.
        assert sq.connection().execute("PRAGMA cache_size").fetchone()[0] == -3 * 1024
        seen: list[int] = []
        t = threading.Thread(
            target=lambda: seen.append(sq.connection().execute("PRAGMA cache_size").fetchone()[0])
        )
        t.start()
        t.join()
        assert seen == [-3 * 1024]
    finally:
        sq.close()
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="cache_mib"):
            SqliteStore(tmp_path / "d.sqlite", cache_mib=bad)  # type: ignore[arg-type]


def test_no_lost_updates_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "dm.sqlite")
    SqliteStore(path).close()  # create the schema first
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment_in_process, args=(path, 100)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    s = SqliteStore(path)
    try:
        assert s.get("counters/c") == {"n": 200}
    finally:
        s.close()


def test_nested_transaction_refused(sq: SqliteStore) -> None:
    def outer(tx: Transaction) -> None:
        tx.set("a/outer", {})
        sq.transaction(lambda inner: inner.set("a/inner", {}))

    with pytest.raises(StoreError, match="nested"):
        sq.transaction(outer)
    assert sq.get("a/outer") is None
    assert sq.get("a/inner") is None
    put(sq, "a/after", {"ok": 1})  # the flag was reset
    assert sq.get("a/after") == {"ok": 1}


def test_busy_becomes_contention(tmp_path: Path) -> None:
    path = tmp_path / "dm.sqlite"
    s = SqliteStore(path, busy_timeout=0.05, lock_wait=0.3)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # hold the write lock
        calls: list[int] = []

        def fn(tx: Transaction) -> None:
            calls.append(1)

        # Waited lock_wait (several busy timeouts), then a clear error naming the file.
        with pytest.raises(LockTimeout, match=re.escape(str(path))) as e:
            s.transaction(fn, attempts=2)
        assert isinstance(e.value, Contention)
        assert "could not take the write lock" in str(e.value)
        assert calls == []  # fn never ran without the lock
        assert s.get("a/b") is None  # readers are not blocked in WAL mode
        blocker.execute("ROLLBACK")
        put(s, "a/b", {"v": 1})
        assert s.get("a/b") == {"v": 1}
    finally:
        blocker.close()
        s.close()


def test_contention_retry_then_success(tmp_path: Path) -> None:
    """A writer released mid-retry lets the transaction through."""
    path = tmp_path / "dm.sqlite"
    s = SqliteStore(path, busy_timeout=0.02)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.1, lambda: blocker.execute("ROLLBACK"))
    timer.start()
    try:

        def fn(tx: Transaction) -> str:
            tx.set("a/b", {"v": 1})
            return "ok"

        assert s.transaction(fn, attempts=20) == "ok"
        assert s.get("a/b") == {"v": 1}
    finally:
        timer.join()
        blocker.close()
        s.close()


@pytest.mark.parametrize("write", ["transaction", "batch", "write_scope"])
def test_every_write_waits_out_a_lock_held_over_many_busy_timeouts(
    tmp_path: Path, write: str
) -> None:
    """Another process holding the write lock for a while delays a write, never fails it,
    even a transaction given a single attempt (the wait is not spent on attempts)."""
    path = tmp_path / "dm.sqlite"
    s = SqliteStore(path, busy_timeout=0.02)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, lambda: blocker.execute("ROLLBACK"))  # ~15 busy timeouts
    timer.start()
    try:
        if write == "transaction":
            s.transaction(lambda tx: tx.set("a/b", {"v": 1}), attempts=1)
        elif write == "batch":
            with s.batch():
                s.transaction(lambda tx: tx.set("a/b", {"v": 1}))
        else:
            with s.write_scope() as conn:
                conn.execute("INSERT INTO docs VALUES ('a', 'b', '{\"v\":1}')")
        assert s.get("a/b") == {"v": 1}
    finally:
        timer.join()
        blocker.close()
        s.close()


def test_opening_a_busy_store_takes_no_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "dm.sqlite"
    SqliteStore(path, indexed_fields=["f"]).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        s = SqliteStore(path, busy_timeout=0.02, lock_wait=0.1, indexed_fields=["f"])
        assert s.get("a/b") is None
        s.close()
    finally:
        blocker.close()


def test_same_path_writes_compose(sq: SqliteStore) -> None:
    put(sq, "c/exists", {"v": 0})

    def fn(tx: Transaction) -> None:
        tx.set("c/a", {"v": 1})
        tx.set("c/a", {"v": 2})  # last write wins
        tx.set("c/b", {"v": 1})
        tx.delete("c/b")
        tx.delete("c/exists")
        tx.create("c/exists", {"v": "recreated"})  # free again after the delete
        tx.create("c/new", {"v": 1})
        tx.set("c/new", {"v": 2})

    sq.transaction(fn)
    assert sq.get_many(["c/a", "c/b", "c/exists", "c/new"]) == {
        "c/a": {"v": 2},
        "c/b": None,
        "c/exists": {"v": "recreated"},
        "c/new": {"v": 2},
    }


def test_create_conflicts_within_transaction(sq: SqliteStore) -> None:
    put(sq, "c/exists", {"v": 0})

    def set_then_create(tx: Transaction) -> None:
        tx.set("c/x", {"v": 1})
        tx.create("c/x", {"v": 2})

    def create_then_delete_existing(tx: Transaction) -> None:
        tx.create("c/exists", {"v": 1})
        tx.delete("c/exists")

    for fn in (set_then_create, create_then_delete_existing):
        with pytest.raises(AlreadyExists):
            sq.transaction(fn)
    assert sq.get("c/x") is None
    assert sq.get("c/exists") == {"v": 0}


def test_unstorable_values_rejected(sq: SqliteStore) -> None:
    def write(tx: Transaction, doc: dict[str, object]) -> None:
        tx.set("c/x", doc)

    bads: list[dict[str, object]] = [{"f": float("nan")}, {"f": float("inf")}, {"o": object()}]
    for bad in bads:
        with pytest.raises((TypeError, ValueError)):
            sq.transaction(functools.partial(write, doc=bad))
    assert sq.get("c/x") is None


def test_where_value_and_field_checks(sq: SqliteStore) -> None:
    with pytest.raises(TypeError):
        sq.query("c", where={"a": [1]})
    for field in ("", "a..b", 'a"b', "a\\b", ".a"):
        with pytest.raises(ValueError):
            sq.query("c", where={field: 1})
    with pytest.raises(ValueError):
        sq.query("c", limit=-1)
    with pytest.raises(TypeError):
        sq.get_many("c/x")


def test_unusual_field_names_queryable(sq: SqliteStore) -> None:
    put(sq, "c/1", {"ünï": {"it's": 1}, "sp ace": "x"})
    put(sq, "c/2", {"ünï": {"it's": 2}})
    assert [p for p, _ in sq.query("c", where={"ünï.it's": 1})] == ["c/1"]
    assert [p for p, _ in sq.query("c", where={"sp ace": "x"})] == ["c/1"]
    assert [p for p, _ in sq.query("c", order_by="ünï.it's", descending=True)] == ["c/2", "c/1"]


def test_order_by_mixed_types(sq: SqliteStore) -> None:
    """Firestore's type order: null < bool < number < string < array < map."""
    values = [{"k": 1}, [1], "s", 2.5, 1, True, False, None]
    for i, v in enumerate(values):
        put(sq, f"m/{i}", {"v": v})
    got = [d["v"] for _, d in sq.query("m", order_by="v")]
    assert got == [None, False, True, 1, 2.5, "s", [1], {"k": 1}]


def test_get_many_spanning_chunks_is_one_snapshot(sq: SqliteStore) -> None:
    paths = [f"big/{i:04d}" for i in range(1100)] + ["other/x"]

    def fill(tx: Transaction) -> None:
        for p in paths:
            tx.set(p, {"v": 0})

    sq.transaction(fill)
    stop = threading.Event()

    def bump_all(tx: Transaction) -> None:
        v = tx.get("other/x")
        assert v is not None
        for p in paths:
            tx.set(p, {"v": v["v"] + 1})

    def work(i: int) -> None:
        if i == 0:
            try:
                for _ in range(5):
                    sq.transaction(bump_all)
            finally:
                stop.set()
        else:
            while not stop.is_set():
                got = sq.get_many(paths)
                assert len({d["v"] for d in got.values() if d is not None}) == 1

    run_threads(2, work)
    assert sq.get("big/0000") == {"v": 5}


def test_threads_use_own_connections(sq: SqliteStore) -> None:
    conns: list[object] = []
    run_threads(3, lambda _: conns.append(sq._conn()))
    conns.append(sq._conn())
    assert len({id(c) for c in conns}) == 4


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "dm.sqlite")
    put(s, "a/b", {})
    s.close()
    with pytest.raises(StoreError):
        s.get("a/b")
    with pytest.raises(StoreError):
        put(s, "a/b", {})
    s.close()  # idempotent


# -- batch(): many transactions, one commit -------------------------------------------------


def _outside(path: Path) -> set[str]:
    """Document paths a separate connection sees (what is committed)."""
    conn = sqlite3.connect(path)
    try:
        return {f"{c}/{i}" for c, i in conn.execute("SELECT collection, id FROM docs")}
    finally:
        conn.close()


def test_read_view_is_one_snapshot_without_the_write_lock(sq: SqliteStore) -> None:
    """Store.read_view on SQLite: its reads and the thread's store reads see one
    snapshot while another store commits beside them (no write lock taken)."""
    put(sq, "a/1", {"n": 1})
    put(sq, "a/2", {"n": 1})
    other = SqliteStore(sq.path, lock_wait=0.05, busy_timeout=0.01)
    try:
        view = sq.read_view()
        assert view is not None
        with view as tx:
            assert tx.get("a/1") == {"n": 1}
            other.transaction(lambda t: [t.set(p, {"n": 2}) for p in ("a/1", "a/2", "a/3")])
            assert tx.get_many(["a/1", "a/2", "a/3"]) == {
                "a/1": {"n": 1},
                "a/2": {"n": 1},
                "a/3": None,
            }
            assert tx.peek_many(["a/2"], ("n",)) == {"a/2": {"n": 1}}
            assert sq.get("a/2") == {"n": 1} and [p for p, _ in sq.query("a")] == ["a/1", "a/2"]
        assert sq.get("a/1") == {"n": 2} and sq.get("a/3") == {"n": 2}
        # And while another holds the write lock.
        with other.write_scope(), sq.read_view() as tx:
            assert tx.get("a/3") == {"n": 2}
    finally:
        other.close()


def test_read_view_writes_nothing(sq: SqliteStore) -> None:
    """A write through the view, or a transaction or batch inside it, is refused;
    the store writes as before once the block is over; in a batch, the view sees
    the batch's writes."""
    with sq.read_view() as tx:
        with pytest.raises(StoreError, match="read-only"):
            tx.set("a/1", {"n": 1})
        with pytest.raises(StoreError, match="nested"):
            sq.transaction(lambda t: t.set("a/1", {"n": 1}))
        with pytest.raises(StoreError, match="batch"), sq.batch():
            pass
    with pytest.raises(StoreError, match="read_view"):
        sq.transaction(lambda t: sq.read_view().__enter__())
    assert _outside(sq.path) == set()
    with sq.batch():
        sq.transaction(lambda t: t.set("a/1", {"n": 1}))
        with sq.read_view() as tx:
            assert tx.get("a/1") == {"n": 1}
        sq.transaction(lambda t: t.set("a/2", {"n": 2}))
    assert _outside(sq.path) == {"a/1", "a/2"}
    with sq.write_scope() as conn:
        conn.execute("INSERT INTO docs (collection, id, body) VALUES ('a', '3', '{}')")
        with sq.read_view() as tx:
            assert tx.get("a/3") == {}
    assert sq.get("a/3") == {}


def test_batch_commits_at_its_end(sq: SqliteStore) -> None:
    with sq.batch():
        sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
        sq.transaction(lambda tx: tx.set("a/2", {"n": tx.get("a/1")["n"] + 1}))  # type: ignore[index]
        assert sq.get("a/2") == {"n": 2}  # the batch reads its own writes
        assert _outside(sq.path) == set()  # nobody else does yet
    assert _outside(sq.path) == {"a/1", "a/2"}


def test_batch_failed_transaction_undoes_only_its_own(sq: SqliteStore) -> None:
    def boom(tx: Transaction) -> None:
        tx.set("a/2", {"n": 2})
        raise RuntimeError("boom")

    with sq.batch():
        sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
        with pytest.raises(RuntimeError):
            sq.transaction(boom)
        with pytest.raises(AlreadyExists):
            sq.transaction(lambda tx: tx.create("a/1", {"n": 9}))
        sq.transaction(lambda tx: tx.set("a/3", {"n": 3}))
    assert _outside(sq.path) == {"a/1", "a/3"}
    assert sq.get("a/1") == {"n": 1}


def test_batch_exception_rolls_everything_back(sq: SqliteStore) -> None:
    with pytest.raises(RuntimeError), sq.batch():
        sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
        raise RuntimeError("the worker died")
    assert sq.get("a/1") is None
    sq.transaction(lambda tx: tx.set("a/2", {"n": 2}))  # the store is usable again
    assert _outside(sq.path) == {"a/2"}


def test_batch_refused_inside_transaction(sq: SqliteStore) -> None:
    def nested(tx: Transaction) -> None:
        with sq.batch():
            pass

    with pytest.raises(StoreError, match="batch"):
        sq.transaction(nested)


def test_batch_inside_batch_is_part_of_it(sq: SqliteStore) -> None:
    with pytest.raises(RuntimeError), sq.batch():
        with sq.batch():
            sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
        assert _outside(sq.path) == set()  # the inner block did not commit
        raise RuntimeError("the outer batch fails")
    assert sq.get("a/1") is None


def test_batch_makes_other_threads_wait(sq: SqliteStore) -> None:
    order: list[str] = []
    started = threading.Event()

    def other() -> None:
        started.set()
        sq.transaction(lambda tx: tx.set("a/other", {"seen": tx.get("a/1") is not None}))
        order.append("other")

    with sq.batch():
        sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
        t = threading.Thread(target=other)
        t.start()
        started.wait()
        order.append("batch")
    t.join(30)
    assert order == ["batch", "other"]
    assert sq.get("a/other") == {"seen": True}


def test_join_transaction_commits_with_it(sq: SqliteStore) -> None:
    sq.connection().execute("CREATE TABLE extra (v TEXT)")

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO extra VALUES ('x')")

    def ok(tx: Transaction) -> None:
        tx.set("a/1", {"n": 1})
        assert sq.join_transaction(tx, write)

    def fails(tx: Transaction) -> None:
        tx.set("a/2", {"n": 2})
        sq.join_transaction(tx, write)
        raise RuntimeError("after joining")

    sq.transaction(ok)
    with pytest.raises(RuntimeError):
        sq.transaction(fails)
    rows = sq.connection().execute("SELECT count(*) FROM extra").fetchone()[0]
    assert rows == 1
    assert sq.get("a/2") is None


def test_join_transaction_failure_fails_the_transaction(sq: SqliteStore) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    def fn(tx: Transaction) -> None:
        tx.set("a/1", {"n": 1})
        sq.join_transaction(tx, bad)

    with pytest.raises(sqlite3.OperationalError):
        sq.transaction(fn)
    assert sq.get("a/1") is None


def test_join_transaction_of_another_store_refused(sq: SqliteStore, tmp_path: Path) -> None:
    other = SqliteStore(tmp_path / "other.sqlite")
    called: list[int] = []
    try:
        assert (
            other.transaction(lambda tx: sq.join_transaction(tx, lambda c: called.append(1)))
            is False
        )
    finally:
        other.close()
    assert called == []


def test_read_after_join_refused(sq: SqliteStore) -> None:
    def fn(tx: Transaction) -> None:
        sq.join_transaction(tx, lambda conn: None)
        tx.get("a/1")

    with pytest.raises(ReadAfterWrite):
        sq.transaction(fn)


def test_batch_with_a_transaction_failing_mid_write_rolls_back_whole(sq: SqliteStore) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    def half(tx: Transaction) -> None:
        tx.set("a/2", {"n": 2})  # written before the joined write fails
        sq.join_transaction(tx, bad)

    with pytest.raises(StoreError, match="rolled back"), sq.batch():
        sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
        with pytest.raises(sqlite3.OperationalError):
            sq.transaction(half)
        sq.transaction(lambda tx: tx.set("a/3", {"n": 3}))
    assert _outside(sq.path) == set()
    sq.transaction(lambda tx: tx.set("a/4", {"n": 4}))  # usable afterwards
    assert _outside(sq.path) == {"a/4"}


def test_indexed_field_serves_filtered_queries(tmp_path: Path) -> None:
    from dmcore.engine import docs
    from dmcore.store.sqlite import _select

    s = SqliteStore(tmp_path / "dm.sqlite", indexed_fields=docs.INDEXED_FIELDS)
    try:
        for i in range(50):
            put(s, f"attempts/a/fwd_deps/{i:03}", {"for_execution": 1, "satisfied": i != 7})
        # The engine's open-edges check: unsatisfied edges of one execution, first one.
        where = {"for_execution": 1, "satisfied": False}
        sql, params = _select(
            "attempts/a/fwd_deps", where, None, False, 1, ordered=s.ordered_fields
        )
        plan = " ".join(str(r) for r in s.connection().execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "docs_order:satisfied" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # id order straight from the index
        assert [p for p, _ in s.query("attempts/a/fwd_deps", where, limit=1)] == [
            "attempts/a/fwd_deps/007"
        ]
        assert s.transaction(lambda tx: tx.count("attempts/a/fwd_deps", where, 2)) == 1
        assert s.transaction(lambda tx: tx.count("attempts/a/fwd_deps", {"satisfied": True})) == 49
        assert s.transaction(lambda tx: tx.count("attempts/a/fwd_deps", None, 10)) == 10
    finally:
        s.close()


def test_open_drops_an_older_dms_expression_index_and_fills_the_columns(tmp_path: Path) -> None:
    """A file whose equality filters an older dm served by an index on the JSON (computed
    on every write): the field's columns take over, filled from the documents there."""
    from dmcore.store.sqlite import _index_name

    path = tmp_path / "dm.sqlite"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    name = _index_name("satisfied")
    conn.execute(
        f"CREATE INDEX {name} ON docs (collection, json_type(body, '$.\"satisfied\"'), id)"
    )
    conn.executemany(
        "INSERT INTO docs (collection, id, body) VALUES ('e', ?, ?)",
        [("1", '{"satisfied":false}'), ("2", '{"satisfied":true}'), ("3", "{}")],
    )
    conn.commit()
    conn.close()
    s = SqliteStore(path, indexed_fields=["satisfied"])
    try:
        listed = s.connection().execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        assert name not in {row[0] for row in listed}
        assert [p for p, _ in s.query("e", {"satisfied": False})] == ["e/1"]
        assert [p for p, _ in s.query("e", {"satisfied": True})] == ["e/2"]
    finally:
        s.close()


@pytest.mark.parametrize(
    "path",
    [
        "a/b",
        "a/b/c/d",
        "a",
        "a/b/c",
        "a//b",
        "/a/b",
        "a/b/",
        "/a",
        "a/",
        "",
        "//",
        "a//b/c",
        "a/b//",
    ],
)
def test_path_split_refuses_what_check_doc_path_refuses(path: str) -> None:
    from dmcore.store.base import InvalidPath, check_doc_path
    from dmcore.store.sqlite import _split_path

    try:
        check_doc_path(path)
    except InvalidPath:
        with pytest.raises(InvalidPath):
            _split_path(path)
    else:
        assert _split_path(path) == tuple(path.rsplit("/", 1))


def _pragma_of_two_threads(store: SqliteStore, pragma: str) -> list[int]:
    """``pragma`` on this thread's connection of ``store``, then on another thread's."""
    seen: list[int] = []

    def look() -> None:
        seen.append(store._conn().execute(f"PRAGMA {pragma}").fetchone()[0])

    look()
    other = threading.Thread(target=look)
    other.start()
    other.join()
    return seen


def test_the_wal_is_checkpointed_at_the_stores_size_not_sqlites_default(tmp_path: Path) -> None:
    """Every connection of the store (each thread's) checkpoints its write-ahead log
    at ``WAL_CHECKPOINT_PAGES``, and commits still reach the database file then."""
    store = SqliteStore(tmp_path / "dm.sqlite")
    try:
        seen = _pragma_of_two_threads(store, "wal_autocheckpoint")
        assert seen == [sqlite_store.WAL_CHECKPOINT_PAGES] * 2
        assert sqlite_store.WAL_CHECKPOINT_PAGES > 1000  # SQLite's default
        store.transaction(lambda tx: tx.set("c/a", {"x": 1}))
    finally:
        store.close()
    # Closed (the log checkpointed into the file): a plain reader finds the document.
    conn = sqlite3.connect(tmp_path / "dm.sqlite")
    (body,) = conn.execute("SELECT body FROM docs WHERE id = 'a'").fetchone()
    assert json.loads(body) == {"x": 1}
    conn.close()


def test_the_wal_shrinks_back_after_a_checkpoint(tmp_path: Path) -> None:
    """A large write grows the write-ahead log past ``WAL_SIZE_LIMIT``; once it is
    checkpointed, the next commit cuts it back (SQLite's default keeps it at its
    largest). Every thread's connection has the limit."""
    store = SqliteStore(tmp_path / "dm.sqlite", durable=False)
    wal = tmp_path / "dm.sqlite-wal"
    try:
        limits = _pragma_of_two_threads(store, "journal_size_limit")
        assert limits == [sqlite_store.WAL_SIZE_LIMIT] * 2

        big = "x" * 4000

        def fill(tx: Transaction) -> None:
            for i in range(3 * sqlite_store.WAL_SIZE_LIMIT // len(big)):
                tx.set(f"c/{i}", {"s": big})

        store.transaction(fill)
        assert wal.stat().st_size > 2 * sqlite_store.WAL_SIZE_LIMIT
        busy, _, _ = store.connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0
        store.transaction(lambda tx: tx.set("c/after", {"n": 1}))
        assert wal.stat().st_size <= sqlite_store.WAL_SIZE_LIMIT
        assert store.get("c/after") == {"n": 1}
        assert store.get("c/7") == {"s": big}
    finally:
        store.close()
