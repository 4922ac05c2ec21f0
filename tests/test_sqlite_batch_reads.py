"""SqliteStore.batch() keeps what it read and wrote for re-reads (``_Bodies``).

A batch holds the write lock, so its own writes are the only changes: a re-read
needs no statement. The next batch of the thread takes them up while nothing else
was written. Each test counts the SELECTs the connection runs, or checks every
read against a statement that bypasses the kept bodies.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmcore.store import sqlite as sqlite_store
from dmcore.store.base import AlreadyExists, StoreError, Transaction
from dmcore.store.sqlite import SqliteStore
from tests.sim.test_sim import simulate


@pytest.fixture
def sq(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "dm.sqlite")
    yield s
    s.close()


class _Selects:
    """Counts the SELECTs of this thread's connection of ``store``."""

    def __init__(self, store: SqliteStore) -> None:
        self.n = 0
        store.connection().set_trace_callback(self._saw)

    def _saw(self, sql: str) -> None:
        if sql.lstrip().upper().startswith("SELECT"):
            self.n += 1


def _get(store: SqliteStore, path: str) -> Any:
    return store.transaction(lambda tx: tx.get(path))


def _truth(store: SqliteStore, path: str) -> Any:
    """The document as the connection holds it, not through the kept bodies."""
    collection, _, doc_id = path.rpartition("/")
    row = store.connection().execute(sqlite_store._GET, (collection, doc_id)).fetchone()
    return None if row is None else sqlite_store._decode(row[0])


def test_a_batch_rereads_without_a_statement(sq: SqliteStore) -> None:
    sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
    selects = _Selects(sq)
    _get(sq, "a/1")
    _get(sq, "a/1")
    assert selects.n == 2  # outside a batch every read is a statement
    with sq.batch():
        selects.n = 0
        first = _get(sq, "a/1")
        first["n"] = 99  # the caller's own copy
        assert _get(sq, "a/1") == {"n": 1}
        assert sq.get("a/1") == {"n": 1}  # outside a transaction, in the batch: the same
        assert sq.transaction(lambda tx: tx.get_many(["a/1"])) == {"a/1": {"n": 1}}
        assert _get(sq, "a/none") is None
        assert _get(sq, "a/none") is None
        assert selects.n == 2  # a/1 once, a/none once
        sq.transaction(lambda tx: tx.set("a/2", {"n": 2}))
        sq.transaction(lambda tx: (tx.set("a/1", {"n": 3}), tx.delete("a/none")))
        sq.transaction(lambda tx: tx.delete("a/2"))
        before = selects.n
        assert _get(sq, "a/1") == {"n": 3}
        assert _get(sq, "a/2") is None
        assert selects.n == before  # what the batch wrote is read back without one
    assert sq.get("a/1") == {"n": 3}


def test_the_next_batch_rereads_without_a_statement(sq: SqliteStore) -> None:
    sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
    selects = _Selects(sq)
    with sq.batch():
        assert _get(sq, "a/1") == {"n": 1}
        sq.transaction(lambda tx: tx.set("a/2", {"n": 2}))
    with sq.batch():
        before = selects.n
        assert _get(sq, "a/1") == {"n": 1}
        assert _get(sq, "a/2") == {"n": 2}
        assert selects.n == before


def _in_thread(fn: Callable[[], object]) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def _each_write_is_read_by_the_next_batch(
    sq: SqliteStore, writes: list[tuple[Callable[[], object], Any]]
) -> None:
    """a/1 kept by a batch, then each ``write`` outside one: the next batch reads ``want``."""
    sq.transaction(lambda tx: tx.set("a/1", {"n": 0}))
    for write, want in writes:
        with sq.batch():
            _get(sq, "a/1")
        write()
        with sq.batch():
            assert _get(sq, "a/1") == want


def test_past_its_room_a_batch_keeps_the_latest(
    sq: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BATCH_BODIES", 4)
    sq.transaction(lambda tx: [tx.set(f"a/{i}", {"n": i}) for i in range(6)])
    selects = _Selects(sq)
    with sq.batch():
        for i in range(6):
            assert _get(sq, f"a/{i}") == {"n": i}
        assert selects.n == 6
        assert _get(sq, "a/5") == {"n": 5}  # the latest stay
        assert selects.n == 6
        assert _get(sq, "a/0") == {"n": 0}  # the oldest went
        assert selects.n == 7


def test_a_batch_forgets_what_another_connection_wrote_over(sq: SqliteStore) -> None:
    # Another writer (here another store on the file, as another process; then another
    # thread of either) changes a document between two batches of this thread.
    other = SqliteStore(sq.path)
    try:
        _each_write_is_read_by_the_next_batch(
            sq,
            [
                (lambda: other.transaction(lambda tx: tx.set("a/1", {"n": 2})), {"n": 2}),
                (lambda: _in_thread(lambda: other.transaction(lambda tx: tx.delete("a/1"))), None),
                (
                    lambda: _in_thread(lambda: sq.transaction(lambda tx: tx.set("a/1", {"n": 3}))),
                    {"n": 3},
                ),
            ],
        )
    finally:
        other.close()


class _AfterCommit:
    """A connection that runs ``then`` right after its next COMMIT returns: the moment
    the write lock is free again and another process may write."""

    def __init__(self, conn: sqlite3.Connection, then: Callable[[], None]) -> None:
        self._conn, self._then = conn, [then]

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, *args)
        if sql == "COMMIT" and self._then:
            self._then.pop()()
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_commit_landing_just_after_a_batch_is_not_read_stale(
    sq: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process commits in the instant after a batch's COMMIT, before the batch
    would have noted the file's version: the batch must have noted it before its
    COMMIT, so that the next batch sees that commit and reads afresh (a lost update
    otherwise: the next step would read the old document and write over the new)."""
    sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
    other = SqliteStore(sq.path)
    try:
        conn = sq.connection()
        hooked = _AfterCommit(conn, lambda: other.transaction(lambda tx: tx.set("a/1", {"n": 2})))
        monkeypatch.setattr(sq, "_conn", lambda: hooked)
        with sq.batch():
            assert _get(sq, "a/1") == {"n": 1}  # kept by this batch
        with sq.batch():
            assert _get(sq, "a/1") == {"n": 2} == _truth(sq, "a/1")
    finally:
        other.close()


def _write_by_hand(sq: SqliteStore, n: int, scope: bool) -> None:
    body = f'{{"n":{n}}}'
    if scope:
        with sq.write_scope() as conn:
            conn.execute("UPDATE docs SET body = ? WHERE id = '1'", (body,))
    else:
        sq.connection().execute("UPDATE docs SET body = ? WHERE id = '1'", (body,))


def test_a_batch_forgets_what_its_own_connection_wrote_over(sq: SqliteStore) -> None:
    # This thread writes outside a batch: by a transaction, through write_scope, or
    # by hand through its connection.
    _each_write_is_read_by_the_next_batch(
        sq,
        [
            (lambda: sq.transaction(lambda tx: tx.set("a/1", {"n": 2})), {"n": 2}),
            (lambda: _write_by_hand(sq, 3, scope=True), {"n": 3}),
            (lambda: _write_by_hand(sq, 4, scope=False), {"n": 4}),
        ],
    )


def test_a_rolled_back_batch_leaves_nothing_kept(sq: SqliteStore) -> None:
    sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
    with pytest.raises(RuntimeError), sq.batch():
        sq.transaction(lambda tx: tx.set("a/1", {"n": 2}))
        assert _get(sq, "a/1") == {"n": 2}
        raise RuntimeError("the worker died")
    with sq.batch():
        assert _get(sq, "a/1") == {"n": 1}


def test_a_failed_transaction_leaves_what_was_kept(sq: SqliteStore) -> None:
    def boom(tx: Transaction) -> None:
        tx.set("a/1", {"n": 2})
        raise RuntimeError("boom")

    sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
    with sq.batch():
        assert _get(sq, "a/1") == {"n": 1}
        with pytest.raises(RuntimeError):
            sq.transaction(boom)
        with pytest.raises(AlreadyExists):
            sq.transaction(lambda tx: (tx.set("a/3", {"n": 3}), tx.create("a/1", {"n": 9})))
        assert _get(sq, "a/1") == {"n": 1}
        assert _get(sq, "a/3") is None


def test_a_scope_rolled_back_inside_a_batch_undoes_what_was_kept(sq: SqliteStore) -> None:
    # A store transaction inside write_scope (not what the local queue does, but
    # allowed): the scope's savepoint undoes its document writes, and the kept bodies.
    sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
    with sq.batch():
        assert _get(sq, "a/1") == {"n": 1}
        with pytest.raises(RuntimeError), sq.write_scope():
            sq.transaction(lambda tx: tx.set("a/1", {"n": 2}))
            assert _get(sq, "a/1") == {"n": 2}
            raise RuntimeError("the scope fails")
        assert _truth(sq, "a/1") == {"n": 1}
        assert _get(sq, "a/1") == {"n": 1}


def test_a_batch_half_written_reads_what_the_connection_holds(sq: SqliteStore) -> None:
    # A transaction fails after its documents were written (its joined write fails):
    # until the batch's rollback, reads agree with the connection.
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    def half(tx: Transaction) -> None:
        tx.get("a/1")
        tx.set("a/1", {"n": 2})
        sq.join_transaction(tx, bad)

    sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
    with pytest.raises(StoreError, match="rolled back"), sq.batch():
        with pytest.raises(sqlite3.OperationalError):
            sq.transaction(half)
        assert _get(sq, "a/1") == _truth(sq, "a/1")
    assert sq.get("a/1") == {"n": 1}


def test_a_statement_failing_mid_write_leaves_nothing_stale(sq: SqliteStore) -> None:
    # The delete of a/1 is written, then the insert of a/boom fails (a trigger stands
    # in for an I/O error): a/1 is read as the connection holds it, not as kept.
    sq.transaction(lambda tx: tx.set("a/1", {"n": 1}))
    sq.connection().execute(
        "CREATE TRIGGER boom BEFORE INSERT ON docs WHEN NEW.id = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    with pytest.raises(StoreError, match="rolled back"), sq.batch():
        assert _get(sq, "a/1") == {"n": 1}
        with pytest.raises(sqlite3.IntegrityError):
            sq.transaction(lambda tx: (tx.delete("a/1"), tx.set("a/boom", {"n": 2})))
        assert _truth(sq, "a/1") is None  # half written, until the batch rolls back
        assert _get(sq, "a/1") is None
    assert sq.get("a/1") == {"n": 1}


_PATHS = st.sampled_from(["a/1", "a/2", "a/3", "b/1/c/1"])
_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("set", "create", "delete", "fail", "get", "get_many", "scope"),
                *("end", "outside", "by_hand", "other"),  # between batches
            ]
        ),
        _PATHS,
        st.integers(0, 3),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_OPS, st.integers(1, 5))
def test_reads_in_a_batch_agree_with_the_connection(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int]], keep: int
) -> None:
    # Any mix of writes, failed transactions, rolled-back scopes and batch ends, and
    # writes between batches (this thread's outside a batch, by hand, another
    # store's), with room for only ``keep`` bodies: every read is what the connection
    # holds.
    store = SqliteStore(tmp_path_factory.mktemp("b") / "dm.sqlite", durable=False)
    other = SqliteStore(store.path, durable=False)
    mp = pytest.MonkeyPatch()
    mp.setattr(sqlite_store, "BATCH_BODIES", keep)

    def fail(tx: Transaction, path: str, n: int) -> None:
        tx.get(path)
        tx.set(path, {"n": n, "failed": True})
        raise RuntimeError("fails before its commit")

    def step(op: str, path: str, n: int) -> None:
        if op == "set":
            store.transaction(lambda tx: tx.set(path, {"n": n}))
        elif op == "create":
            with pytest.raises(AlreadyExists) if _truth(store, path) else contextlib.nullcontext():
                store.transaction(lambda tx: tx.create(path, {"n": n}))
        elif op == "delete":
            store.transaction(lambda tx: tx.delete(path))
        elif op == "fail":
            with pytest.raises(RuntimeError):
                store.transaction(lambda tx: fail(tx, path, n))
        elif op == "get":
            assert _get(store, path) == _truth(store, path)
        elif op == "get_many":
            assert store.get_many([path]) == {path: _truth(store, path)}
        elif op == "scope":
            with pytest.raises(RuntimeError), store.write_scope():
                store.transaction(lambda tx: tx.set(path, {"n": n, "scope": True}))
                raise RuntimeError("rolled back")

    def between(op: str, path: str, n: int) -> None:
        collection, _, doc_id = path.rpartition("/")
        if op == "outside":
            store.transaction(lambda tx: tx.set(path, {"n": n, "outside": True}))
        elif op == "by_hand":
            store.connection().execute(
                "DELETE FROM docs WHERE collection = ? AND id = ?", (collection, doc_id)
            )
        elif op == "other":
            other.transaction(lambda tx: tx.set(path, {"n": n, "other": True}))

    try:
        i = 0
        while i < len(ops):
            with store.batch():
                while i < len(ops) and ops[i][0] not in ("end", "outside", "by_hand", "other"):
                    step(*ops[i])
                    for p in ("a/1", "a/2", "a/3", "b/1/c/1"):
                        assert _get(store, p) == _truth(store, p)
                    i += 1
            if i < len(ops):
                between(*ops[i])
                i += 1
    finally:
        mp.undo()
        other.close()
        store.close()


@pytest.mark.parametrize("seed", range(20), ids=lambda s: f"seed-{s}")
def test_simulation_with_batches_on_several_threads(seed: int, tmp_path: Path) -> None:
    # Embedded mode's local queue, its batches run each by one of three threads in
    # turn (one connection each): a thread's next batch follows other connections'
    # commits, the case where kept bodies must be dropped (a kept body that outlived
    # them fails 18 of these 20 seeds, and none of test_sim's single-threaded ones).
    simulate(seed, tmp_path, queue="local", workers=3)
