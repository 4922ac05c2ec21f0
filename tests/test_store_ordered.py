"""The SQLite store's ordered columns: the sweep's queries read an index, not every attempt.

A field in ``ordered_fields`` is kept, per document, in two columns of its row
(Firestore's type rank and the value), written from the document dict with the
document. These tests hold that: the sweep's queries are served by their index
(query plans), the columns always say what the documents say (after any mix of
writes, after a rolled-back transaction or batch, on a file filled at open from
an earlier schema, and when another store on the file added them).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmcore.engine import docs, layout
from dmcore.runtime.embedded import Embedded, build_registry
from dmcore.store import sqlite as sqlite_store
from dmcore.store.base import StoreError, Transaction
from dmcore.store.sqlite import SqliteStore, _json_path, _select
from tests.harness import Harness
from tests.store_contract import put

FIELDS = (*docs.SWEPT, "g.t")
CONFIG = {"distributor_configs": {"jobsim": {"jobsim": {"pool": "t"}}}}


def disagreements(store: SqliteStore) -> list[str]:
    """Rows whose ordered columns differ from what their document says (the rank of
    the field's JSON type and its value, as SQLite reads them from the text)."""
    out = []
    conn = store.connection()
    for f in store.ordered_fields:
        p = _json_path(f)
        rank = (
            f"CASE json_type(body, {p}) WHEN 'null' THEN 0 WHEN 'true' THEN 1 WHEN 'false'"
            " THEN 1 WHEN 'integer' THEN 2 WHEN 'real' THEN 2 WHEN 'text' THEN 3"
            " WHEN 'array' THEN 4 WHEN 'object' THEN 5 END"
        )
        rows = conn.execute(
            f'SELECT collection, id, "r:{f}", "v:{f}", body FROM docs '
            f'WHERE "r:{f}" IS NOT ({rank}) OR "v:{f}" IS NOT json_extract(body, {p})'
        )
        out += [f"{c}/{i} {f}: columns {r!r}, {v!r}; document {b}" for c, i, r, v, b in rows]
    return out


def plan_of(store: SqliteStore, sql: str, params: list[Any]) -> str:
    rows = store.connection().execute("EXPLAIN QUERY PLAN " + sql, params)
    return " | ".join(str(r[3]) for r in rows)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "dm.sqlite", ordered_fields=FIELDS, durable=False)
    yield s
    s.close()


@pytest.mark.parametrize("shards", [1, 16])
def test_the_sweeps_queries_read_the_index(tmp_path: Path, shards: int) -> None:
    """Every query a sweep sends on the attempts (one per due field, per shard) is a
    search of the field's index: no scan of the documents, no sort."""
    h = Harness(tmp_path)
    h.engine.settings.sweep_shards = shards
    try:
        for i in range(300):
            doc: dict[str, Any] = {"state": 1, docs.SWEEP_SHARD: i % shards}
            if i % 3 == 0:
                doc[docs.TIMER_DUE] = h.clock() + 10**9 + i
            put(h.store, f"{docs.ATTEMPTS}/a{i:03}", doc)
        sent: list[str] = []
        h.store.connection().set_trace_callback(sent.append)
        try:
            h.engine.sweep()
        finally:
            h.store.connection().set_trace_callback(None)
        swept = [q for q in sent if q.startswith("SELECT") and "ORDER BY" in q]
        on_attempts = [q for q in swept if f"collection = '{docs.ATTEMPTS}'" in q]
        assert len(on_attempts) == len(docs.SWEPT) * shards, sent
        for q in on_attempts:
            plan = plan_of(h.store, q, [])
            assert "USING INDEX docs_order:" in plan, (q, plan)
            assert "TEMP B-TREE" not in plan, (q, plan)
    finally:
        h.close()


def test_a_query_in_another_order_is_answered_without_the_index(store: SqliteStore) -> None:
    """Descending (never the sweep's) is served too: the same rows, sorted after."""
    store.transaction(
        lambda tx: [tx.set(f"o/{i}", {docs.TIMER_DUE: v}) for i, v in enumerate([3, 1, 2])]
    )
    rows = store.query("o", order_by=docs.TIMER_DUE, descending=True)
    assert [p for p, _ in rows] == ["o/0", "o/2", "o/1"]
    sql, params = _select("o", None, docs.TIMER_DUE, False, 2, ordered=store.ordered_fields)
    assert "docs_order:" in plan_of(store, sql, params)


def test_a_bounded_query_reads_the_index_up_to_its_bound(store: SqliteStore) -> None:
    """The sweep's bounded query (due by now) is served by the same index: a sweep
    with nothing due reads no row of what is not yet due."""
    store.transaction(
        lambda tx: [tx.set(f"o/{i}", {docs.TIMER_DUE: v}) for i, v in enumerate([30, 10, 20])]
    )
    got = store.query("o", order_by=docs.TIMER_DUE, limit=5, at_most=20)
    assert [p for p, _ in got] == ["o/1", "o/2"]
    sql, params = _select(
        "o", None, docs.TIMER_DUE, False, 5, ordered=store.ordered_fields, at_most=20
    )
    plan = plan_of(store, sql, params)
    assert "docs_order:" in plan and "TEMP B-TREE" not in plan


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    # No NUL: SQLite's JSON functions (the checker's, the scan's) cut text there.
    st.text(st.characters(blacklist_characters="\x00"), max_size=5),
    st.lists(st.integers(0, 9), max_size=3),
)
DOCS = st.dictionaries(st.sampled_from([*docs.SWEPT, "g", "other"]), VALUES, max_size=4).map(
    lambda d: {**d, "g": {"t": d["g"]}} if "g" in d and d["g"] is not None else d
)
OPS = st.lists(
    st.tuples(st.sampled_from(["set", "create", "delete"]), st.integers(0, 5), DOCS),
    min_size=1,
    max_size=30,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_the_columns_say_what_the_documents_say(store: SqliteStore, ops: Any) -> None:
    """After any mix of sets, creates and deletes, transactions of several writes and
    batches, every row's columns are what its document holds; ordered queries give
    what a scan of the documents gives."""
    store.transaction(lambda tx: [tx.delete(p) for p, _ in store.query("c")])
    with store.batch():
        for n in range(0, len(ops), 4):

            def fn(tx: Transaction, chunk: Any = ops[n : n + 4]) -> None:
                for op, i, doc in chunk:
                    if op == "set":
                        tx.set(f"c/{i}", doc)
                    elif op == "delete":
                        tx.delete(f"c/{i}")
                    elif store.get(f"c/{i}") is None:
                        tx.create(f"c/{i}", doc)

            # A create after a set of the same path is doomed: it writes nothing.
            with contextlib.suppress(StoreError):
                store.transaction(fn)
    assert disagreements(store) == []
    conn = store.connection()
    for f in FIELDS:
        if f == docs.SWEPT[0] or f == "g.t":
            scan_sql, params = _select("c", None, f, False, None)
            scanned = [f"c/{i}" for i, _ in conn.execute(scan_sql, params)]
            assert [p for p, _ in store.query("c", order_by=f)] == scanned, f


def test_an_earlier_file_is_filled_at_open(tmp_path: Path) -> None:
    """A file written without the columns (dm before them, or a store not given the
    fields) gets them at open, filled from its documents, and serves the same answers."""
    path = tmp_path / "dm.sqlite"
    old = SqliteStore(path)
    docs_: dict[str, dict[str, Any]] = {
        "attempts/a": {docs.TIMER_DUE: 30, docs.PENDING_DUE: 5},
        "attempts/b": {docs.TIMER_DUE: 10.5},
        "attempts/c": {docs.TIMER_DUE: "later", "g": {"t": [1, 2]}},
        "attempts/d": {docs.TIMER_DUE: None, "g": {"t": True}},
        "attempts/e": {"state": 3},
        "attempts/a/fwd_deps/x": {docs.TIMER_DUE: 1},
    }
    old.transaction(lambda tx: [tx.set(p, d) for p, d in docs_.items()])
    before = {f: old.query("attempts", order_by=f) for f in FIELDS}
    assert old.ordered_fields == ()
    old.close()

    new = SqliteStore(path, ordered_fields=FIELDS)
    try:
        assert new.ordered_fields == FIELDS
        assert disagreements(new) == []
        for f in FIELDS:
            assert new.query("attempts", order_by=f) == before[f], f
            sql, params = _select("attempts", None, f, False, 5, ordered=new.ordered_fields)
            assert "USING INDEX docs_order:" in plan_of(new, sql, params)
        assert [p for p, _ in new.query("attempts", order_by=docs.TIMER_DUE)] == [
            "attempts/d",  # null first, then numbers, then strings (Firestore's order)
            "attempts/b",
            "attempts/a",
            "attempts/c",
        ]
    finally:
        new.close()
    # Opening again finds them: nothing to add, and a store given fewer keeps them all.
    again = SqliteStore(path)
    try:
        assert again.ordered_fields == FIELDS
        again.transaction(lambda tx: tx.set("attempts/e", {docs.EXPIRY_DUE: 1}))
        assert disagreements(again) == []
        assert [p for p, _ in again.query("attempts", order_by=docs.EXPIRY_DUE)] == ["attempts/e"]
    finally:
        again.close()


def test_a_home_from_before_the_columns_is_swept_through_them_after_its_open(
    tmp_path: Path,
) -> None:
    """The embedded runtime's own open: a home whose file has no ordered columns (as dm
    wrote them before) gets them, and its next sweep finds what was due in it then."""
    Embedded(tmp_path, build_registry(CONFIG)).close()  # an empty home, its layout recorded
    with sqlite3.connect(tmp_path / "dm.sqlite") as conn:  # back to the earlier schema
        for f in docs.SWEPT:
            conn.execute(f'DROP INDEX "docs_order:{f}"')
            conn.execute(f'ALTER TABLE docs DROP COLUMN "r:{f}"')
            conn.execute(f'ALTER TABLE docs DROP COLUMN "v:{f}"')
    old = SqliteStore(tmp_path / "dm.sqlite")
    assert set(old.ordered_fields).isdisjoint(docs.SWEPT)
    put(old, f"{docs.ATTEMPTS}/a", {"state": 3, docs.EXPIRY_DUE: 1})  # long due
    old.close()

    emb = Embedded(tmp_path, build_registry(CONFIG))
    try:
        assert isinstance(emb.store, SqliteStore)
        assert set(docs.SWEPT) <= set(emb.store.ordered_fields)
        assert disagreements(emb.store) == []
        assert emb.engine.sweep()["expiries"] == 1
    finally:
        emb.close()


def test_a_store_opened_before_the_columns_were_added_fills_them(tmp_path: Path) -> None:
    """A process that opened the file before another added the columns (``dm`` of this
    version next to an older store object) takes them up at its next write, so no
    document is written without them."""
    path = tmp_path / "dm.sqlite"
    first = SqliteStore(path)
    second = SqliteStore(path, ordered_fields=docs.SWEPT)
    try:
        first.transaction(lambda tx: tx.set("attempts/a", {docs.TIMER_DUE: 7}))
        with first.batch():
            first.transaction(lambda tx: tx.set("attempts/b", {docs.PENDING_DUE: 8}))
        assert first.ordered_fields == docs.SWEPT
        assert disagreements(second) == []
        assert second.query("attempts", order_by=docs.TIMER_DUE) == [
            ("attempts/a", {docs.TIMER_DUE: 7})
        ]
    finally:
        first.close()
        second.close()


def _fail(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO no_such_table VALUES (1)")


def test_a_rolled_back_transaction_changes_neither_document_nor_columns(
    store: SqliteStore,
) -> None:
    """The document and its columns are one row written by one statement: a transaction
    that fails after writing it (a joined write of the queue failing) rolls back both."""
    store.transaction(lambda tx: tx.set("attempts/a", {docs.TIMER_DUE: 5}))

    def half(tx: Transaction) -> None:
        tx.set("attempts/a", {docs.PENDING_DUE: 9})  # timer gone, pending armed
        tx.set("attempts/b", {docs.TIMER_DUE: 1})
        assert store.join_transaction(tx, _fail)

    with pytest.raises(sqlite3.OperationalError):
        store.transaction(half)
    assert store.get("attempts/a") == {docs.TIMER_DUE: 5}
    assert store.query("attempts", order_by=docs.TIMER_DUE) == [("attempts/a", {docs.TIMER_DUE: 5})]
    assert store.query("attempts", order_by=docs.PENDING_DUE) == []
    assert disagreements(store) == []

    with (
        pytest.raises(StoreError, match="rolled back"),
        store.batch(),
        pytest.raises(sqlite3.OperationalError),
    ):
        store.transaction(half)
    assert store.query("attempts", order_by=docs.PENDING_DUE) == []
    assert disagreements(store) == []


def test_fields_the_columns_cannot_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad field path"):
        SqliteStore(tmp_path / "dm.sqlite", ordered_fields=['a"b'])


def test_columns_an_older_dm_left_stale_are_filled_again_until_this_layout_is_recorded(
    tmp_path: Path,
) -> None:
    """A dm of this layout adds the columns at open and stops before recording its
    layout; a dm of the layout before (which writes bodies only) changes a document;
    the next open of this layout fills the columns again, so the sweep sees what the
    documents say. Once the layout is recorded, opens read nothing more."""
    home = tmp_path / "home"
    Embedded(home, build_registry(CONFIG)).close()
    db = home / "dm.sqlite"
    with sqlite3.connect(db) as conn:  # a home of layout 4, as the previous dm wrote it
        for f in docs.SWEPT:
            conn.execute(f'DROP INDEX "docs_order:{f}"')
            conn.execute(f'ALTER TABLE docs DROP COLUMN "r:{f}"')
            conn.execute(f'ALTER TABLE docs DROP COLUMN "v:{f}"')
    old = SqliteStore(db)
    put(old, layout.PATH, {"version": sqlite_store.ORDERED_SINCE_LAYOUT - 1, layout.SHARDS: 1})
    put(old, f"{docs.ATTEMPTS}/a", {"state": 3, docs.EXPIRY_DUE: 1})
    put(old, f"{docs.ATTEMPTS}/b", {"state": 3})
    old.close()
    # This layout's store adds the columns, and its dm stops before layout.check.
    SqliteStore(db, ordered_fields=docs.SWEPT).close()
    with sqlite3.connect(db) as conn:  # the older dm writes bodies only
        conn.execute(
            "UPDATE docs SET body = ? WHERE collection = 'attempts' AND id = 'a'",
            (json.dumps({"state": 3}),),
        )
        conn.execute(
            "UPDATE docs SET body = ? WHERE collection = 'attempts' AND id = 'b'",
            (json.dumps({"state": 3, docs.EXPIRY_DUE: 2}),),
        )
    emb = Embedded(home, build_registry(CONFIG))
    try:
        assert isinstance(emb.store, SqliteStore)
        assert disagreements(emb.store) == []
        assert [p for p, _ in emb.store.query(docs.ATTEMPTS, order_by=docs.EXPIRY_DUE)] == [
            f"{docs.ATTEMPTS}/b"
        ]
        emb.engine.sweep()  # finds b's expiry, does not trip over a
        assert emb.store.get(layout.PATH)["version"] == layout.VERSION  # type: ignore[index]
    finally:
        emb.close()
    assert layout.VERSION >= sqlite_store.ORDERED_SINCE_LAYOUT


def test_a_sweep_passes_over_a_row_whose_columns_disagree_with_its_document(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Columns are set by the statement that writes the document, but a file an older
    dm wrote while running beside this one can still disagree: the sweep passes over
    such a row (and says so) instead of stopping every sweep on it."""
    home = tmp_path / "home"
    emb = Embedded(home, build_registry(CONFIG))
    try:
        put(emb.store, f"{docs.ATTEMPTS}/a", {"state": 3, docs.EXPIRY_DUE: 1})
        with sqlite3.connect(home / "dm.sqlite") as conn:  # the body only, as an older dm
            conn.execute(
                "UPDATE docs SET body = ? WHERE collection = 'attempts' AND id = 'a'",
                (json.dumps({"state": 3}),),
            )
        emb.engine.sweep()
        assert "has no expiry_due_us" in caplog.text
    finally:
        emb.close()


def test_filling_the_columns_writes_only_the_rows_they_change(tmp_path: Path) -> None:
    """A large home's first open must not rewrite every document (a WAL the size of the
    file, the write lock held meanwhile): only rows whose columns differ are written."""
    path = tmp_path / "dm.sqlite"
    old = SqliteStore(path)
    old.transaction(lambda tx: [tx.set(f"attempts/n{i}", {"state": 3}) for i in range(50)])
    old.transaction(lambda tx: [tx.set(f"attempts/t{i}", {docs.TIMER_DUE: i}) for i in range(3)])
    old.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        before = conn.total_changes
        sqlite_store._add_ordered(conn, docs.TIMER_DUE)
        assert conn.total_changes - before == 3  # the three with the field, not 53
        before = conn.total_changes
        sqlite_store._fill_ordered(conn, docs.TIMER_DUE)  # already right: nothing written
        assert conn.total_changes - before == 0
        conn.execute(
            "UPDATE docs SET body = ? WHERE id = 't0'", (json.dumps({"state": 3}),)
        )  # an older dm drops the field: the stale columns are cleared
        before = conn.total_changes
        sqlite_store._fill_ordered(conn, docs.TIMER_DUE)
        assert conn.total_changes - before == 1
        conn.execute("COMMIT")
    finally:
        conn.close()
    new = SqliteStore(path, ordered_fields=(docs.TIMER_DUE,))
    try:
        assert disagreements(new) == []
        got = [p for p, _ in new.query("attempts", order_by=docs.TIMER_DUE)]
        assert got == ["attempts/t1", "attempts/t2"]
    finally:
        new.close()
