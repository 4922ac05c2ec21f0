"""The Store port on one SQLite file: the embedded backend.

Why this shape:

* WAL mode lets readers run while one writer commits, across threads and
  processes. ``synchronous=FULL``: every commit is on disk before it returns,
  so it survives a power loss too (NORMAL, the usual WAL setting, survives
  only a process crash). The fsync costs ~0.2 ms a commit here, which the
  worker's batches (below) spread over a hundred steps.
* Every transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock
  up front, so writers are serialised by SQLite itself. Reads inside see a
  stable snapshot and read-modify-write cannot lose updates. Every write
  (transaction, batch, :meth:`SqliteStore.write_scope`, :func:`immediate`)
  waits for the write lock as long as another process holds it, retrying
  with backoff after each busy timeout, up to ``lock_wait`` (5 minutes) in
  all; only then :class:`LockTimeout` names the file. A job must not die
  because another process committed slowly.
  Within one process, transactions first queue on a Python lock, which hands
  over promptly instead of relying on SQLite's polling busy handler.
* :meth:`SqliteStore.batch` groups one thread's transactions into a single
  commit: a commit costs about as much as the rest of a small transaction, so
  the embedded worker runs a leased batch of tasks in one. Other tables in the
  same file (the local queue) can join a batch and a transaction
  (:meth:`SqliteStore.write_scope`, :meth:`SqliteStore.join_transaction`), so
  a step and the tasks it queues commit together. A batch keeps the bodies it
  read and wrote for re-reads, and the thread's next batch takes them up while
  nothing else was written (:class:`_Bodies`): a step re-reads what the steps
  before it read or wrote, and under the write lock nobody else writes.
* One connection per thread (``threading.local``); connections are never
  shared between threads, they are only closed from elsewhere by :meth:`close`.
  Do not carry a store across ``fork``: make a new one in the child.
* Documents are compact JSON in one table keyed by ``(collection, id)``;
  queries filter and sort with SQLite's JSON functions. They are written and
  read by msgspec, several times faster than the standard library, to the
  same text and values; what msgspec would write differently (NaN, types
  JSON lacks) goes to the standard encoder, which refuses it (:func:`_encode`).
* Fields that ordered queries sort on in large collections (the sweep's due
  times: ``ordered_fields``) are also kept in two columns of the document's
  own row (``"r:<field>"``: the type's rank in Firestore's order, ``"v:<field>"``:
  the value), taken from the document dict when it is written (no JSON parse)
  and indexed where present. One row, one statement: the columns cannot
  disagree with the document. Without them an ordered query parses every
  document of the collection. Fields that equality filters use in large
  collections (``indexed_fields``: a fan-in's open edges) get the same columns,
  compared by rank and value: an index on the JSON text instead costs two
  parses of the document on every write of any document (2-3 us each here).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from dmcore.store.base import (
    AlreadyExists,
    BufferedTransaction,
    Contention,
    Doc,
    PendingWrite,
    ReadAfterWrite,
    Store,
    StoreError,
    Transaction,
    WriteBuffer,
    check_collection_path,
    check_doc_path,
    id_prefix_end,
)

__all__ = ["CACHE_MIB", "LOCK_WAIT_S", "LockTimeout", "SqliteStore", "ensure_schema", "immediate"]

T = TypeVar("T")

log = logging.getLogger("dm.store")

# SQLite's bound-parameter ceiling is well above this; 500 keeps statements small.
_CHUNK = 500
_BUSY_TIMEOUT_S = 30.0
"""How long one try waits in SQLite's busy handler (it polls every 100 ms)."""

TRANSACTION_DOCS = 3000
"""Documents one part of a step cut into parts may touch here (``Store.transaction_docs``):
a commit costs an fsync whatever its size, and a transaction has no write limit, so a
declaration of 10,000 dependencies takes 10 parts instead of Firestore's 313."""

WAL_CHECKPOINT_PAGES = 10_000
"""Pages the write-ahead log grows to before a commit copies them into the database
(``wal_autocheckpoint``; SQLite's default 1,000). Hash-keyed documents scatter a
worker's batch over a thousand pages or more, so at the default nearly every batch
commit also checkpointed; at 10,000 (some 40 MiB) a page written by several batches
is copied once: a fan-in of 5,000 wrote 30% fewer bytes and spent 20-40% less time
committing."""

WAL_SIZE_LIMIT = 4 * 1024 * 1024
"""Bytes the write-ahead log is cut back to once checkpointed (``journal_size_limit``).
Without it the file keeps the largest size it ever reached: some 40 MiB after any
large run (``WAL_CHECKPOINT_PAGES``), more after a reader held off checkpoints. It
grows again as needed; cutting it cost no measurable commit time here."""

CACHE_MIB = 64
"""Page cache of each connection. SQLite's default (2 MiB, some 500 pages) is
a small part of a graph of 10,000 executions (~50 MB): documents are keyed by
hashes, so nearly every read and write then missed it and went to the OS (a
fan-in of 10,000 ran three times slower than one of 1,000 per execution)."""

LOCK_WAIT_S = 300.0
"""How long a writer waits for the write lock in all, over retries, before
:class:`LockTimeout`. Generous: a home's writers hold it for milliseconds, so
only a stuck process (or a ``sqlite3`` shell left in a transaction) gets here."""


class LockTimeout(Contention):
    """Another connection kept the file's write lock for longer than ``lock_wait``.

    Not retried by :meth:`SqliteStore.transaction`: it has waited long enough.
    """


_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,  -- compact JSON object
    PRIMARY KEY (collection, id)
)
"""
# The primary key doubles as the (collection, id) index that queries scan, so
# a write touches two b-trees only; a document's path is collection + "/" + id.

_GET = "SELECT body FROM docs WHERE collection = ? AND id = ?"
_DELETE = "DELETE FROM docs WHERE collection = ? AND id = ?"

_MISSING: Any = object()

_Row = tuple[Any, ...]
"""A document as written: its JSON text, then its ordered columns (:meth:`_Ordered.row`)."""


def _rank_col(field: str) -> str:
    return f'"r:{field}"'  # _json_path has refused quotes in field


def _value_col(field: str) -> str:
    return f'"v:{field}"'


def _order_key(value: Any) -> tuple[int, Any]:
    """(rank, value) of a field's value in Firestore's order: null < bool < number <
    string < array < map, then the value (arrays and maps by their JSON text)."""
    if value is None:
        return 0, None
    if value is True or value is False:
        return 1, int(value)
    if isinstance(value, int):
        return 2, value if -(2**63) <= value < 2**63 else float(value)
    if isinstance(value, float):
        return 2, value
    if isinstance(value, str):
        return 3, value
    return (4 if isinstance(value, list) else 5), _ENCODER.encode(value)


def _bound_key(value: Any) -> tuple[int, Any]:
    """:func:`_order_key` of a range bound: a number or a string (what dm bounds)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"at_most: only a number or a string, not {type(value).__name__}")
    return _order_key(value)


class _Ordered:
    """The ordered fields a store keeps columns for, and its write statements.

    A row binds the columns of the fields its document has only (each bound
    value costs about as much as its column's index): a statement per set of
    present fields sets the others to NULL. Fixed once built: a store swaps in
    a new one when another process added a field (``schema_version`` changed),
    between transactions.
    """

    __slots__ = ("_statements", "fields", "paths", "schema_version", "top")

    def __init__(self, fields: Sequence[str], schema_version: int) -> None:
        self.fields = tuple(fields)
        self.schema_version = schema_version
        self.paths = tuple(tuple(f.split(".")) for f in self.fields)
        self.top = frozenset(p[0] for p in self.paths)
        self._statements: dict[tuple[int, ...], tuple[str, str]] = {}

    def row(self, body: str, doc: Doc) -> _Row:
        """What is written of ``doc``: its JSON text, which fields it has (their
        indexes in ``fields``), then the rank and value of each of those."""
        if self.top.isdisjoint(doc):  # most documents: no field to look at
            return (body, ())
        present: list[int] = []
        values: list[Any] = []
        for i, path in enumerate(self.paths):
            v: Any = doc
            for seg in path:
                v = v.get(seg, _MISSING) if isinstance(v, dict) else _MISSING
                if v is _MISSING:
                    break
            if v is not _MISSING:
                present.append(i)
                values += _order_key(v)
        return (body, tuple(present), *values)

    def statements(self, present: tuple[int, ...]) -> tuple[str, str]:
        """(insert, upsert) of a row whose document has the fields ``present``."""
        sql = self._statements.get(present)
        if sql is None:
            had = [self.fields[i] for i in present]
            cols = [c for f in had for c in (_rank_col(f), _value_col(f))]
            names = "".join(f", {c}" for c in cols)
            marks = ", ?" * len(cols)
            insert = f"INSERT INTO docs (collection, id, body{names}) VALUES (?, ?, ?{marks})"
            sets = [f"{c} = excluded.{c}" for c in cols] + [
                f"{c} = NULL"
                for i, f in enumerate(self.fields)
                if i not in present
                for c in (_rank_col(f), _value_col(f))
            ]
            upsert = f"{insert} ON CONFLICT (collection, id) DO UPDATE SET " + ", ".join(
                ["body = excluded.body", *sets]
            )
            sql = self._statements[present] = (insert, upsert)
        return sql


def _ordered_in(conn: sqlite3.Connection) -> list[str]:
    """The fields ``docs`` has ordered columns for, in the order they were added."""
    return [
        name[2:]
        for (name,) in conn.execute("SELECT name FROM pragma_table_info('docs')")
        if name.startswith("r:")
    ]


def _schema_version(conn: sqlite3.Connection) -> int:
    v: int = conn.execute("PRAGMA schema_version").fetchone()[0]
    return v


def _fill_ordered(conn: sqlite3.Connection, field: str) -> None:
    """Set the ordered columns of ``field`` from every document (NULL where it lacks it).

    Only rows whose columns differ are written: at the first open of a large home
    most documents lack the field, and rewriting them all would fill the WAL."""
    p = _json_path(field)
    r, v = _rank_col(field), _value_col(field)
    rank = (
        f"CASE json_type(body, {p}) WHEN 'null' THEN 0"
        " WHEN 'true' THEN 1 WHEN 'false' THEN 1 WHEN 'integer' THEN 2 WHEN 'real' THEN 2"
        " WHEN 'text' THEN 3 WHEN 'array' THEN 4 WHEN 'object' THEN 5 END"
    )
    value = f"json_extract(body, {p})"
    conn.execute(
        f"UPDATE docs SET {r} = {rank}, {v} = {value} WHERE {r} IS NOT {rank} OR {v} IS NOT {value}"
    )


def _add_ordered(conn: sqlite3.Connection, field: str) -> None:
    """Give ``docs`` the ordered columns of ``field``, filled from the documents there
    (a store of an earlier schema, or one opened without the field), and their index."""
    r, v = _rank_col(field), _value_col(field)
    conn.execute(f"ALTER TABLE docs ADD COLUMN {r}")
    conn.execute(f"ALTER TABLE docs ADD COLUMN {v}")
    _fill_ordered(conn, field)
    conn.execute(
        f'CREATE INDEX IF NOT EXISTS "docs_order:{field}" ON docs (collection, {r}, {v}, id) '
        f"WHERE {r} IS NOT NULL"
    )


ORDERED_SINCE_LAYOUT = 5
"""The record layout (``meta/layout``'s ``version``; dmcore.engine.layout) whose dm
keeps the ordered columns: a dm of an earlier one writes documents without them."""


def _written_before_ordered(conn: sqlite3.Connection) -> bool:
    """Whether the file's records say a dm of a layout before the ordered columns may
    have written them (its ``meta/layout`` is older than ``ORDERED_SINCE_LAYOUT``)."""
    row = conn.execute(_GET, ("meta", "layout")).fetchone()
    if row is None:
        return False
    version = json.loads(row[0]).get("version")
    return isinstance(version, int) and version < ORDERED_SINCE_LAYOUT


def ensure_ordered(
    conn: sqlite3.Connection, fields: Sequence[str], lock_wait: float = LOCK_WAIT_S
) -> _Ordered:
    """Add (and fill) the ordered columns ``fields`` lack; all the file has, with its
    schema version. Reads first: no write lock when nothing is to be done.

    Columns a file has are filled again from the documents while its records are
    of an earlier layout (an older dm may have written them since they were
    added, e.g. after a dm of this layout added them and stopped before recording
    its layout): once this dm's layout is recorded, older ones refuse the file.
    """
    for f in fields:
        _json_path(f)  # refuses what a column name could not hold either
    if set(fields).issubset(_ordered_in(conn)) and not (
        _ordered_in(conn) and _written_before_ordered(conn)
    ):
        return _Ordered(_ordered_in(conn), _schema_version(conn))
    with immediate(conn, lock_wait):
        have = _ordered_in(conn)  # again, under the lock: another process may have added them
        if _written_before_ordered(conn):
            for f in have:
                _fill_ordered(conn, f)
        for f in dict.fromkeys(fields):
            if f not in have:
                _add_ordered(conn, f)
        return _Ordered(_ordered_in(conn), _schema_version(conn))


def _encode(doc: Doc) -> str:
    """Serialise a document, refusing anything a JSON reader could not load back.

    Non-ASCII text stays unescaped, so that JSON paths in queries (compared
    against the raw key text by SQLite) match non-ASCII keys; compact separators,
    so that a key's text is followed by its colon (:func:`_key_probe`).

    msgspec writes it, 2-3x faster than the standard library, and the text is
    kept when it reads back equal to ``doc``. It is then the standard encoder's
    text but for the spelling of some floats (msgspec's ``1e16`` and
    ``0.00001`` for the standard library's ``1e+16`` and ``1e-05``: the same
    float, to Python and to SQLite's JSON functions alike). msgspec also
    writes what JSON has no type for, and NaN as null, but none of those reads
    back equal: every such document, and all msgspec refuses (str subclasses,
    keys that are not strings or numbers, lone surrogates), goes to the
    standard encoder, which writes or refuses it as it always did (NaN,
    infinities, bytes, sets, dates, ...).
    """
    if not isinstance(doc, dict):
        raise TypeError(f"a document must be a dict, not {type(doc).__name__}")
    try:
        raw = _FAST_ENCODE(doc)
        if _DECODER.decode(raw) == doc:
            return raw.decode()
    except Exception:  # the standard encoder decides, and words any refusal
        pass
    return _ENCODER.encode(doc)


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_FAST_ENCODE = msgspec.json.Encoder().encode


def _split_path(path: str) -> tuple[str, str]:
    """Validated document path -> (collection, id).

    Plain string tests where the path is well formed (an even number of
    segments, none empty); :func:`check_doc_path` words the error otherwise.
    """
    collection, _, doc_id = path.rpartition("/")
    if not doc_id or not collection or path.count("/") % 2 == 0 or "//" in path or path[0] == "/":
        check_doc_path(path)
    return collection, doc_id


_split = functools.lru_cache(maxsize=4096)(_split_path)
""":func:`_split_path`, cached: a step reads and writes the same few documents (its
attempt, its edges) several times. Bulk reads (:func:`_fetch_bodies`) do not use it:
their thousands of paths, each read once, would push those out of it."""


@functools.lru_cache(maxsize=1024)
def _json_path(field: str) -> str:
    """A dotted field path as a quoted SQL literal of a JSON path: ``'$."a"."b"'``.

    Inlined (not bound) so an expression index on the same text could serve it.
    Characters that SQLite's path syntax cannot express, or that JSON escapes
    (so the raw key text would differ), are refused.
    """
    if not isinstance(field, str) or not field:
        raise ValueError(f"bad field path: {field!r}")
    labels = []
    for seg in field.split("."):
        if not seg or '"' in seg or "\\" in seg or any(ord(c) < 0x20 for c in seg):
            raise ValueError(f"bad field path: {field!r}")
        labels.append(f'"{seg}"')
    return "'" + ("$." + ".".join(labels)).replace("'", "''") + "'"


def _index_name(field: str) -> str:
    """The expression index an older dm made for equality filters on ``field``: its key
    (collection, then the field's JSON type and value) was computed, parsing the
    document, on every write of any document, 2-3 us each; the field's columns
    (``indexed_fields``) serve those filters now, and it is dropped at open."""
    return "docs_by_" + hashlib.sha256(field.encode()).hexdigest()[:16]


def _drop_expression_indexes(
    conn: sqlite3.Connection, fields: Sequence[str], lock_wait: float = LOCK_WAIT_S
) -> None:
    """Drop :func:`_index_name`'s indexes of ``fields``; no write lock when there are none."""
    names = {_index_name(f) for f in fields}
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    if names.isdisjoint(have):
        return
    with immediate(conn, lock_wait):
        for name in sorted(names & have):
            conn.execute(f"DROP INDEX IF EXISTS {name}")


def _key_probe(field: str) -> str:
    """SQL for a cheap necessary condition of ``field`` being in a document.

    Bodies are compact JSON, so a present field's (last) key appears quoted and
    followed by a colon. A substring search passes over most documents of a
    collection that lack the field without parsing them (a filter on a field
    without columns reads the whole collection).
    """
    _json_path(field)  # refuses keys the JSON text would escape
    key = '"' + field.rsplit(".", 1)[-1] + '":'
    return "instr(body, '" + key.replace("'", "''") + "') > 0"


def _filters(
    collection: str, where: Mapping[str, Any] | None, columns: Sequence[str] = ()
) -> tuple[list[str], list[Any]]:
    """WHERE clauses and parameters for a collection plus equality filters.

    Types are matched as Firestore does: True never equals 1, a string never
    equals an embedded map's JSON text, and ``None`` matches an explicit null
    only (a missing field gives SQL NULL from json_type, not ``'null'``). A field
    of ``columns`` (the ordered columns) is compared by its columns, rank then
    value, which the column index serves (in id order); any other in the JSON.
    """
    check_collection_path(collection)
    clauses = ["collection = ?"]
    params: list[Any] = [collection]
    for field, value in (where or {}).items():
        p = _json_path(field)
        if field in columns and (value is None or isinstance(value, int | float | str)):
            r = _rank_col(field)
            clauses.append(f"{r} IS NOT NULL")  # the partial index's condition, word for word
            if value is None:
                clauses.append(f"{r} = 0")
            else:
                # The rank tells true (1) from 1 and 1.0 (2, equal as numbers), as the
                # JSON types do below.
                clauses.append(f"{r} = ? AND {_value_col(field)} = ?")
                params += _order_key(value)
            continue
        clauses.append(_key_probe(field))
        if value is None:
            clauses.append(f"json_type(body, {p}) = 'null'")
        elif value is True:
            clauses.append(f"json_type(body, {p}) = 'true' AND json_extract(body, {p}) = 1")
        elif value is False:
            clauses.append(f"json_type(body, {p}) = 'false' AND json_extract(body, {p}) = 0")
        elif isinstance(value, int | float):
            # 1 == 1.0 as in Firestore; the type check keeps true/false (1/0) out.
            clauses.append(
                f"json_extract(body, {p}) = ? AND json_type(body, {p}) IN ('integer', 'real')"
            )
            params.append(value)
        elif isinstance(value, str):
            clauses.append(f"json_extract(body, {p}) = ? AND json_type(body, {p}) = 'text'")
            params.append(value)
        else:
            raise TypeError(
                f"where[{field!r}]: only str, int, float, bool and None can be compared, "
                f"not {type(value).__name__}"
            )
    return clauses, params


def _select(
    collection: str,
    where: Mapping[str, Any] | None,
    order_by: str | None,
    descending: bool,
    limit: int | None,
    *,
    ordered: Sequence[str] = (),
    at_most: Any = None,
) -> tuple[str, list[Any]]:
    """SQL and parameters for :meth:`Store.query`; ``ordered``: the fields with ordered
    columns (their index gives the rows in order, reading only those with the field)."""
    clauses, params = _filters(collection, where, ordered)
    d = " DESC" if descending else ""
    if at_most is not None and order_by is None:
        raise ValueError("at_most needs order_by: it bounds the ordered field")
    if order_by is None:
        order = "id"
    elif order_by in ordered:
        r = _rank_col(order_by)
        clauses.append(f"{r} IS NOT NULL")  # the partial index's condition, word for word
        if at_most is not None:
            # Firestore's range filters match values of the bound's type only.
            rank, bound = _bound_key(at_most)
            clauses.append(f"{r} = ? AND {_value_col(order_by)} <= ?")
            params += [rank, bound]
        order = f"{r}{d}, {_value_col(order_by)}{d}, id"
    else:
        p = _json_path(order_by)
        if at_most is not None:
            rank, bound = _bound_key(at_most)
            types = "('integer', 'real')" if rank == 2 else "('text')"
            clauses.append(f"json_type(body, {p}) IN {types} AND json_extract(body, {p}) <= ?")
            params.append(bound)
        # Firestore leaves out documents without the field, and orders values
        # by type first: null < bool < number < string < array < map.
        clauses.append(f"json_type(body, {p}) IS NOT NULL")
        order = (
            f"CASE json_type(body, {p}) WHEN 'null' THEN 0 WHEN 'false' THEN 1"
            f" WHEN 'true' THEN 1 WHEN 'integer' THEN 2 WHEN 'real' THEN 2"
            f" WHEN 'text' THEN 3 WHEN 'array' THEN 4 ELSE 5 END{d},"
            f" json_extract(body, {p}){d}, id"
        )
    sql = f"SELECT id, body FROM docs WHERE {' AND '.join(clauses)} ORDER BY {order}"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, not {limit!r}")
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


@functools.lru_cache(maxsize=64)
def _get_many_sql(n: int) -> str:
    return f"SELECT id, body FROM docs WHERE collection = ? AND id IN ({','.join('?' * n)})"


def _fetch_bodies(conn: sqlite3.Connection, paths: Iterable[str]) -> dict[str, str]:
    """Raw JSON bodies of the present documents among ``paths``, one query per chunk.

    Several statements run in one read transaction, so the result is one snapshot.
    """
    by_coll: dict[str, dict[str, str]] = {}  # collection -> id -> path
    for path in paths:
        collection, doc_id = _split_path(path)
        by_coll.setdefault(collection, {})[doc_id] = path
    batches = [
        (collection, named, ids[i : i + _CHUNK])
        for collection, named in by_coll.items()
        for ids in [list(named)]
        for i in range(0, len(ids), _CHUNK)
    ]
    out: dict[str, str] = {}
    own_tx = len(batches) > 1 and not conn.in_transaction
    if own_tx:
        conn.execute("BEGIN")
    try:
        for collection, named, ids in batches:
            rows = conn.execute(_get_many_sql(len(ids)), [collection, *ids])
            for doc_id, body in rows:
                out[named[doc_id]] = body
    finally:
        if own_tx:
            conn.execute("COMMIT")
    return out


BATCH_BODIES = 100_000
"""Bodies a thread's batches keep for re-reads (:class:`_Bodies`). A fan-in of 10,000
keeps its whole graph (100,000 documents, 15 MiB more peak RSS) and reads 4 documents
an execution from SQLite, as a fan-in of 1,000 does; at 20,000 it read 7.5."""


class _Bodies(dict[str, str | None]):
    """What a batch has read and written, path -> JSON text (None: absent), for re-reads.

    A batch holds the file's write lock from its start to its commit, so only its
    own thread changes documents meanwhile, and every change passes through
    :meth:`_SqliteTransaction._apply_docs`, which puts what it wrote here. A step
    re-reads much of what the steps before it read or wrote (an attempt, its
    execution), in this batch or an earlier one.

    So a committed batch's bodies are kept for this thread's next batch, which
    takes them up only if nothing was written in between: no other connection
    committed (SQLite's ``data_version`` is the same) and this thread's own
    connection changed no row outside a batch (its ``total_changes`` is the
    same). A batch rolled back keeps nothing.
    """

    __slots__ = ("data_version", "total_changes")

    def __init__(self) -> None:
        super().__init__()
        self.data_version = -1
        self.total_changes = -1

    @classmethod
    def since(cls, kept: _Bodies | None, conn: sqlite3.Connection) -> _Bodies:
        """For a batch that just took the write lock: ``kept`` if still true, else new."""
        if (
            kept is not None
            and kept.total_changes == conn.total_changes
            and kept.data_version == _data_version(conn)
        ):
            return kept
        return cls()

    def kept(self, conn: sqlite3.Connection) -> _Bodies:
        """These bodies, marked as true of the file as ``conn`` is about to commit it
        (called before its COMMIT, while it holds the write lock)."""
        self.data_version = _data_version(conn)
        self.total_changes = conn.total_changes
        return self

    def _room(self, n: int) -> None:
        """Room for ``n`` more: past ``BATCH_BODIES`` the older half goes (in the order
        first read or written; later steps mostly re-read what the last ones touched)."""
        if len(self) + n > BATCH_BODIES:
            for path in list(itertools.islice(self, len(self) // 2 + n)):
                del self[path]

    def wrote(self, path: str, body: str | None) -> None:
        self._room(1)
        self[path] = body

    def wrote_many(self, writes: Mapping[str, PendingWrite[_Row]]) -> None:
        self._room(len(writes))
        for path, w in writes.items():
            self[path] = None if w.body is None else w.body[0]


def _data_version(conn: sqlite3.Connection) -> int:
    v: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return v


def _get(conn: sqlite3.Connection, path: str, bodies: _Bodies | None = None) -> Doc | None:
    if bodies is None:
        row = conn.execute(_GET, _split(path)).fetchone()
        return None if row is None else _decode(row[0])
    body = bodies.get(path, _MISSING)
    if body is _MISSING:
        row = conn.execute(_GET, _split(path)).fetchone()
        body = None if row is None else row[0]
        bodies.wrote(path, body)
    return None if body is None else _decode(body)


def _get_many(
    conn: sqlite3.Connection, paths: Sequence[str], bodies: _Bodies | None = None
) -> dict[str, Doc | None]:
    if isinstance(paths, str):  # a str is a Sequence[str]; almost surely a mistake
        raise TypeError("get_many takes a sequence of paths, not one path")
    if len(paths) == 1:  # the common case (a step reads what it did not read yet)
        return {paths[0]: _get(conn, paths[0], bodies)}
    got = _fetch_bodies(conn, paths)
    return {p: None if (b := got.get(p)) is None else _decode(b) for p in paths}


def _peek_many(
    conn: sqlite3.Connection, paths: Sequence[str], fields: tuple[str, ...]
) -> dict[str, Mapping[str, Any] | None]:
    decode = _part_decoder(fields)
    bodies = _fetch_bodies(conn, paths)
    return {p: None if (b := bodies.get(p)) is None else decode(b) for p in paths}


@functools.lru_cache(maxsize=16)
def _part_decoder(fields: tuple[str, ...]) -> Callable[[str], dict[str, Any]]:
    """Decodes only ``fields`` of a body: msgspec skips the others without building
    them (an attempt's current execution is most of its bytes, and an answer that
    shows no executions needs none of it)."""

    def cut(body: str) -> dict[str, Any]:
        doc = _decode(body)
        return {f: doc.get(f) for f in fields}

    try:  # the fields as the Struct's attributes: asdict makes the part in C
        part = msgspec.defstruct("Part", [(f, Any, None) for f in fields], gc=False)
        to_part: Callable[[Any], dict[str, Any]] = msgspec.structs.asdict
    except (TypeError, ValueError):  # no identifier: attributes f0, f1, ... renamed
        names = [f"f{i}" for i in range(len(fields))]
        try:
            part = msgspec.defstruct(
                "Part",
                [(n, Any, None) for n in names],
                rename=dict(zip(names, fields, strict=True)),
                gc=False,
            )
        except ValueError:  # a name msgspec cannot match (quotes, control characters)
            return cut
        astuple = msgspec.structs.astuple

        def to_part(p: Any) -> dict[str, Any]:
            return dict(zip(fields, astuple(p), strict=True))

    decoder = msgspec.json.Decoder(part)

    def decode(body: str) -> dict[str, Any]:
        try:
            return to_part(decoder.decode(body))
        except (ValueError, RecursionError):
            return cut(body)  # what msgspec refuses, read as _decode reads it

    return decode


def _query(
    conn: sqlite3.Connection,
    collection: str,
    *,
    where: Mapping[str, Any] | None,
    order_by: str | None,
    descending: bool,
    limit: int | None,
    ordered: Sequence[str],
    at_most: Any = None,
) -> list[tuple[str, Doc]]:
    sql, params = _select(
        collection, where, order_by, descending, limit, ordered=ordered, at_most=at_most
    )
    prefix = collection + "/"
    return [(prefix + doc_id, _decode(body)) for doc_id, body in conn.execute(sql, params)]


def _decode(body: str) -> Doc:
    try:
        doc: Doc = _DECODER.decode(body)
    except (ValueError, RecursionError):
        # What msgspec refuses and Python's parser reads (a NaN or an escaped lone
        # surrogate that an older store may hold): read as it always was.
        doc = json.loads(body)
    return doc


_DECODER = msgspec.json.Decoder()
"""Reads stored bodies 2-3x faster than ``json.loads`` (a memoised answer decodes
thousands), to the same values: ints of any size stay exact ints, floats are read
correctly rounded, key order is kept, the last of two equal keys wins."""


def _file_of(conn: sqlite3.Connection) -> str:
    """The file ``conn`` has open (for error messages)."""
    with contextlib.suppress(sqlite3.Error):
        for _, name, file in conn.execute("PRAGMA database_list"):
            if name == "main":
                return str(file) or ":memory:"
    return "the database"


def begin_immediate(conn: sqlite3.Connection, lock_wait: float = LOCK_WAIT_S) -> None:
    """``BEGIN IMMEDIATE`` on ``conn``, waiting up to ``lock_wait`` seconds for the lock.

    Each try waits the connection's busy timeout; a busy try is retried after
    a jittered backoff (10 ms, doubling, at most 1 s) until ``lock_wait`` has
    passed, then :class:`LockTimeout` names the file.
    """
    start = time.monotonic()
    pause = 0.01
    warned = False
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if not _is_busy(e):
                raise
            waited = time.monotonic() - start
            if waited >= lock_wait:
                raise LockTimeout(
                    f"{_file_of(conn)}: could not take the write lock in {waited:.0f} s: "
                    "another process kept it (a stuck dm process, or a sqlite3 session "
                    f"left in a transaction?) ({e})"
                ) from e
        if not warned and waited >= 1.0:
            warned = True
            log.warning("waiting for the write lock of %s (%.0f s so far)", _file_of(conn), waited)
        time.sleep(min(pause * random.uniform(0.5, 1.5), lock_wait - waited))
        pause = min(pause * 2, 1.0)


def ensure_schema(
    conn: sqlite3.Connection, objects: Mapping[str, str], lock_wait: float = LOCK_WAIT_S
) -> bool:
    """Create the tables and indexes ``objects`` names (name -> CREATE statement).

    Reads first: when all exist (every open but the first), no write lock is
    taken, so a process opening a busy home does not queue for it. Returns
    whether anything was missing (the statements then ran in one transaction).
    """
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if have.issuperset(objects):
        return False
    with immediate(conn, lock_wait):
        for sql in objects.values():
            conn.execute(sql)
    return True


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection, lock_wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on ``conn``, rolled back if the block raises.

    IMMEDIATE takes the write lock up front, so a read-then-write in the block
    cannot be overtaken by another writer between its read and its write. The
    lock is waited for as :func:`begin_immediate` says.
    """
    begin_immediate(conn, lock_wait)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # Never mask the original exception with a rollback failure.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _execute(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    # executemany costs about twice execute for the one row most writes have.
    if len(rows) == 1:
        conn.execute(sql, rows[0])
    else:
        conn.executemany(sql, rows)


class _SqliteTransaction(BufferedTransaction[_Row]):
    """Reads go to the connection (inside BEGIN IMMEDIATE); writes are buffered."""

    def __init__(
        self, conn: sqlite3.Connection, store: SqliteStore, bodies: _Bodies | None = None
    ) -> None:
        super().__init__()
        self._conn = conn
        self._store = store
        self._bodies = bodies  # the batch's, when in one
        self._ordered = store._ordered  # as of this transaction's start (see _refresh)
        self._row = self._ordered.row
        self._joined: list[Callable[[sqlite3.Connection], None]] = []
        self._writing = False

    # -- reads

    def _before_read(self) -> None:
        if not self._live:
            raise StoreError("transaction used after it ended")
        if self._writes or self._joined:
            raise ReadAfterWrite("a transaction cannot read after it has written")

    def get(self, path: str) -> Doc | None:
        self._before_read()
        return _get(self._conn, path, self._bodies)

    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        self._before_read()
        return _get_many(self._conn, paths, self._bodies)

    def peek_many(
        self, paths: Sequence[str], fields: tuple[str, ...]
    ) -> dict[str, Mapping[str, Any] | None]:
        self._before_read()
        return _peek_many(self._conn, paths, fields)

    def query(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        self._before_read()
        return _query(
            self._conn,
            collection,
            where=where,
            order_by=order_by,
            descending=descending,
            limit=limit,
            ordered=self._ordered.fields,
        )

    def count(
        self, collection: str, where: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> int:
        # Counted by SQLite: no document read or decoded (an ack's open-edges check).
        self._before_read()
        sql, params = _select(collection, where, None, False, limit, ordered=self._ordered.fields)
        n: int = self._conn.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
        return n

    # -- writes: buffered (BufferedTransaction), serialised as JSON text

    def _check_path(self, path: str) -> None:
        _split(path)  # check_doc_path's rules, cached: a step mostly writes what it read

    def _encode(self, doc: Doc) -> _Row:
        return self._row(_encode(doc), doc)

    # -- commit

    def _apply(self) -> None:
        """Write the buffer; the caller holds the write lock and commits or rolls back.

        Everything that can refuse the transaction (AlreadyExists) is checked
        before the first write; ``_writing`` tells when that point is passed.
        """
        self._live = False
        writes = self._writes
        if writes:
            self._apply_docs(writes)
        self._writing = True
        for fn in self._joined:
            fn(self._conn)

    def _apply_docs(self, buffer: WriteBuffer[_Row]) -> None:
        writes = buffer.writes
        buffer.check_size(self._store.max_writes)
        # One pass: rows by statement (create or not, and which ordered fields the
        # document has), deletes, and the paths a create needs absent.
        rows: dict[tuple[bool, tuple[int, ...]], list[tuple[Any, ...]]] = {}
        deletes: list[tuple[str, str]] = []
        absent: list[str] = []
        doomed = False
        for path, w in writes.items():
            collection, _, doc_id = path.rpartition("/")
            if w.must_be_absent:
                absent.append(path)
            if w.doomed:
                doomed = True
            b = w.body
            if b is None:
                deletes.append((collection, doc_id))
                continue
            row = (collection, doc_id, b[0]) if len(b) == 2 else (collection, doc_id, b[0], *b[2:])
            key = (w.must_be_absent, b[1])
            group = rows.get(key)
            if group is None:
                rows[key] = [row]
            else:
                group.append(row)
        if doomed:
            buffer.check_doomed()
        if absent:
            there = sorted(_fetch_bodies(self._conn, absent))
            if there:
                raise AlreadyExists(f"document(s) already exist: {', '.join(there)}")
        # Paths are distinct, so the batches commute.
        self._writing = True
        bodies = self._bodies
        try:
            if deletes:
                _execute(self._conn, _DELETE, deletes)
            for (create, has), group in rows.items():
                insert, upsert = self._ordered.statements(has)
                if not create:
                    _execute(self._conn, upsert, group)
                    continue
                try:
                    _execute(self._conn, insert, group)
                except sqlite3.IntegrityError as e:  # unreachable under the write lock; a guard
                    raise AlreadyExists(str(e)) from e
        except BaseException:
            if bodies is not None:
                # Some statements may have written: those paths are read again from
                # the connection (until the batch, now broken, rolls back).
                for path in writes:
                    bodies.pop(path, None)
            raise
        if bodies is not None:
            bodies.wrote_many(writes)


class _SqliteReadView(_SqliteTransaction):
    """:meth:`SqliteStore.read_view`'s: a transaction's reads, no writes."""

    def _before_write(self, path: str) -> None:
        raise StoreError(f"write of {path} through a read-only view")


class _Local(threading.local):
    """Per-thread state; class attributes are the per-thread defaults."""

    holder: _ConnHolder | None = None
    in_tx: bool = False
    in_batch: bool = False
    batch_broken: bool = False
    bodies: _Bodies | None = None
    """The batch's bodies (:class:`_Bodies`) while in one."""
    kept: _Bodies | None = None
    """The last committed batch's bodies, for the next one (:meth:`_Bodies.since`)."""


class _ConnHolder:
    """Owns one thread's connection; when the thread ends and drops it, a finalizer closes it."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class SqliteStore(Store):
    """A :class:`Store` in one SQLite file, safe for many threads and processes.

    A write waits for the file's write lock ``busy_timeout`` per try and
    ``lock_wait`` in all (:func:`begin_immediate`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_wait: float = LOCK_WAIT_S,
        busy_timeout: float = _BUSY_TIMEOUT_S,
        indexed_fields: Sequence[str] = (),
        ordered_fields: Sequence[str] = (),
        durable: bool = True,
        cache_mib: int = CACHE_MIB,
    ) -> None:
        """``indexed_fields``: (dotted) fields that equality queries filter on in
        large collections; each is kept in indexed columns as an ordered field is
        (below), as Firestore indexes every field. Without them such a query
        reads the whole collection.

        ``ordered_fields``: (dotted) fields that ordered queries sort on in large
        collections (the sweep's due times); each is kept in indexed columns
        of the document's row (module docstring). A file that lacks them gets
        them at open, filled from its documents; once a file has them, every
        store on it keeps them, whatever it was given.

        ``cache_mib``: the page cache of each thread's connection (at most; it
        grows with what is read).

        ``durable=False`` (tests only) commits without waiting for the disk
        (``synchronous=OFF``): as atomic and isolated, lost on a power cut."""
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        self._synchronous = "FULL" if durable else "OFF"
        if isinstance(cache_mib, bool) or not isinstance(cache_mib, int) or cache_mib < 1:
            raise ValueError(f"cache_mib must be a positive int, not {cache_mib!r}")
        self._cache_kib = cache_mib * 1024
        self._local = _Local()
        self._lock = threading.Lock()  # guards _finalizers
        self._tx_lock = threading.Lock()  # one transaction at a time per process (see _run_once)
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._closed = False
        self._lock_wait = lock_wait
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"could not put {self._path} in WAL mode (got {mode!r})")
        ensure_schema(conn, {"docs": _SCHEMA}, lock_wait)
        # Equality filters are served by the same columns and index as an order.
        self._ordered = ensure_ordered(conn, [*ordered_fields, *indexed_fields], lock_wait)
        _drop_expression_indexes(conn, indexed_fields, lock_wait)

    def _refresh(self, conn: sqlite3.Connection) -> None:
        """Take up ordered columns another process added since (under the write lock,
        before a transaction writes): every writer must fill them."""
        if _schema_version(conn) != self._ordered.schema_version:
            self._ordered = _Ordered(_ordered_in(conn), _schema_version(conn))

    @property
    def ordered_fields(self) -> tuple[str, ...]:
        """The fields this file keeps ordered columns for."""
        return self._ordered.fields

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def transaction_docs(self) -> int | None:
        # Held to Firestore's write limit (the tests' stores), parts stay Firestore-sized.
        return TRANSACTION_DOCS if self.max_writes is None else None

    @property
    def lock_wait(self) -> float:
        """How long a write waits for the write lock, in all (seconds)."""
        return self._lock_wait

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        holder = self._local.holder
        if self._closed:
            raise StoreError("store is closed")
        if holder is not None:
            return holder.conn
        # check_same_thread=False only so close() may close every thread's
        # connection; each connection is otherwise used by its own thread only.
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
            cached_statements=256,
        )
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA cache_size=-{self._cache_kib}")  # negative: KiB, not pages
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        holder = _ConnHolder(conn)
        fin = weakref.finalize(holder, conn.close)
        with self._lock:
            self._finalizers = [f for f in self._finalizers if f.alive]
            self._finalizers.append(fin)
        self._local.holder = holder
        return conn

    def transaction(self, fn: Callable[[Transaction], T], *, attempts: int = 10) -> T:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        local = self._local
        if local.in_tx:
            raise StoreError("nested transaction: store.transaction() called inside a transaction")
        conn = self._conn()
        if local.in_batch:
            # This thread holds the write lock already: no contention, no retry.
            # No savepoint either: writes are buffered, so a transaction that
            # fails before _apply has written nothing, and _apply checks
            # create-if-absent before its first write. A failure after that
            # poisons the batch (rolled back whole at its end).
            local.in_tx = True
            tx = _SqliteTransaction(conn, self, local.bodies)
            try:
                result = fn(tx)
                tx._apply()
                return result
            except BaseException:
                if tx._writing:
                    local.batch_broken = True
                raise
            finally:
                tx._live = False
                local.in_tx = False
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                # Jittered exponential backoff: 10 ms, 20 ms, ... capped at 0.5 s.
                time.sleep(min(0.01 * 2 ** (attempt - 1), 0.5) * random.uniform(0.5, 1.5))
            local.in_tx = True
            try:
                return self._run_once(conn, fn)
            except LockTimeout:
                raise  # waited lock_wait already
            except Contention as e:
                last = e
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise
                last = e
            finally:
                local.in_tx = False
        raise Contention(f"transaction gave up after {attempts} attempts: {last}") from last

    def _run_once(self, conn: sqlite3.Connection, fn: Callable[[Transaction], T]) -> T:
        # Writers queue on a Python lock first: it wakes a waiter as soon as it
        # is released, where SQLite's busy handler polls with growing sleeps and
        # lets busy threads starve a waiting one. Holding SQLite's write lock
        # serialises writers anyway, so this costs no parallelism.
        self._take_tx_lock()
        try:
            begin_immediate(conn, self._lock_wait)
            tx: _SqliteTransaction | None = None
            try:
                self._refresh(conn)
                tx = _SqliteTransaction(conn, self)
                result = fn(tx)
                tx._apply()
                conn.execute("COMMIT")
            except BaseException:
                if tx is not None:
                    tx._live = False
                if conn.in_transaction:
                    # Never mask the original exception with a rollback failure.
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result
        finally:
            self._tx_lock.release()

    def _take_tx_lock(self) -> None:
        if not self._tx_lock.acquire(timeout=self._lock_wait):
            raise LockTimeout(
                f"{self._path}: this process's other transactions kept the write lock "
                f"for more than {self._lock_wait:g} s"
            )

    @staticmethod
    @contextlib.contextmanager
    def _savepoint(conn: sqlite3.Connection, name: str) -> Iterator[None]:
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            # Never mask the original exception with a rollback failure.
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit everything this thread writes inside the block at once, at its end.

        The write lock is taken at the start and held to the end; a :meth:`transaction`
        inside that fails writes nothing (as a failed transaction would), and
        reads see the batch's earlier writes. Should one fail half-way through
        writing (an I/O error), the whole batch is rolled back at its end, with
        :class:`StoreError`. An exception out of the block rolls the whole batch
        back. A batch inside a batch is part of it. Other processes and threads
        wait for the commit, so keep batches short (the embedded worker: one
        leased batch of tasks).
        """
        local = self._local
        if local.in_tx:
            raise StoreError("batch() inside a transaction")
        if local.in_batch:
            yield  # part of the enclosing batch
            return
        conn = self._conn()
        self._take_tx_lock()
        try:
            begin_immediate(conn, self._lock_wait)
            local.in_batch = True
            local.batch_broken = False
            kept, local.kept = local.kept, None
            try:
                self._refresh(conn)
                local.bodies = _Bodies.since(kept, conn)
                yield
                if local.batch_broken:
                    raise StoreError("batch rolled back: a transaction in it failed mid-write")
                bodies = local.bodies
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            finally:
                local.in_batch = False
                local.batch_broken = False
                local.bodies = None
            # The file's version noted before COMMIT (under the write lock): once
            # the lock is free another process may commit, and the next batch
            # must see that it did (a connection's own commit changes neither).
            bodies.kept(conn)
            conn.execute("COMMIT")
            local.kept = bodies
        finally:
            self._tx_lock.release()

    def read_view(self) -> contextlib.AbstractContextManager[Transaction]:
        return self._read_view()

    @contextlib.contextmanager
    def _read_view(self) -> Iterator[Transaction]:
        # A deferred BEGIN: the connection reads one snapshot (from its first read
        # to the end) and takes no lock that stops a writer; in WAL mode a writer
        # holding the write lock does not stop it either.
        local = self._local
        if local.in_tx:
            raise StoreError("read_view() inside a transaction")
        conn = self._conn()
        # In a batch or a write scope: the open transaction's snapshot, its writes seen.
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")
        local.in_tx = True  # no transaction or batch of this thread inside
        view = _SqliteReadView(conn, self, local.bodies)
        try:
            yield view
        finally:
            view._live = False
            local.in_tx = False
            if own:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")  # it wrote nothing: ends the read

    @contextlib.contextmanager
    def write_scope(self) -> Iterator[sqlite3.Connection]:
        """A write transaction of this file for another table (the local queue).

        On its own it is ``BEGIN IMMEDIATE`` ... ``COMMIT`` on this thread's
        connection; inside :meth:`batch` it is a savepoint of the batch.
        """
        local = self._local
        if local.in_tx:
            raise StoreError("write_scope() inside a store transaction")
        conn = self._conn()
        if local.in_batch:
            try:
                with self._savepoint(conn, "dm_scope"):
                    yield conn
            except BaseException:
                if local.bodies is not None:
                    local.bodies.clear()  # documents written in the scope are undone too
                raise
            return
        with immediate(conn, self._lock_wait):
            yield conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (for reads of other tables in the file)."""
        return self._conn()

    def join_transaction(
        self, tx: Transaction, write: Callable[[sqlite3.Connection], None]
    ) -> bool:
        """Have ``write(conn)`` commit with ``tx``, if ``tx`` is a transaction of this store.

        ``write`` runs after ``tx``'s document writes, under its write lock,
        and its failure fails the transaction. Returns False (and does
        nothing) for any other transaction.
        """
        if not isinstance(tx, _SqliteTransaction) or tx._store is not self:
            return False
        if not tx._live:
            raise StoreError("transaction used after it ended")
        tx._joined.append(write)
        return True

    def get(self, path: str) -> Doc | None:
        return _get(self._conn(), path, self._local.bodies)

    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        return _get_many(self._conn(), paths, self._local.bodies)

    def query(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
        *,
        at_most: Any = None,
    ) -> list[tuple[str, Doc]]:
        return _query(
            self._conn(),
            collection,
            where=where,
            order_by=order_by,
            descending=descending,
            limit=limit,
            ordered=self._ordered.fields,
            at_most=at_most,
        )

    def query_id_prefix(self, collection: str, prefix: str) -> list[tuple[str, Doc]]:
        check_collection_path(collection)
        end = id_prefix_end(prefix)
        rows = self._conn().execute(
            "SELECT id, body FROM docs WHERE collection = ? AND id >= ? AND id < ? ORDER BY id",
            (collection, prefix, end),
        )
        head = collection + "/"
        return [(head + doc_id, _decode(body)) for doc_id, body in rows]

    def query_collections(self, collections: Sequence[str]) -> dict[str, list[tuple[str, Doc]]]:
        # One statement per chunk of collections (a walk's 500 attempts' edges), not one each.
        out: dict[str, list[tuple[str, Doc]]] = {}
        for c in collections:
            check_collection_path(c)
            out[c] = []
        names = list(out)
        conn = self._conn()
        for i in range(0, len(names), _CHUNK):
            chunk = names[i : i + _CHUNK]
            rows = conn.execute(
                "SELECT collection, id, body FROM docs WHERE collection IN "
                f"({','.join('?' * len(chunk))}) ORDER BY collection, id",
                chunk,
            )
            for collection, doc_id, body in rows:
                out[collection].append((f"{collection}/{doc_id}", _decode(body)))
        return out

    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        clauses, params = _filters(collection, where, self._ordered.fields)
        sql = f"SELECT count(*) FROM docs WHERE {' AND '.join(clauses)}"
        n: int = self._conn().execute(sql, params).fetchone()[0]
        return n

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            finalizers, self._finalizers = self._finalizers, []
        for fin in finalizers:
            fin()
        self._local.holder = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r})"
