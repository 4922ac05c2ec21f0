"""The SQLite stores some simulation seeds run on instead of the harness's.

* :class:`SmallPartsStore`: SQLite as embedded dm has it (no write limit per
  commit; declarations in parts of ``transaction_docs`` documents, and the large
  inline limits of their transactions), with ``transaction_docs`` cut from 3,000
  to a few documents so that parts and those limits happen at the simulation's
  sizes. It counts the engine steps each transaction ran, for the invariant
  that only a declaration's transaction runs more than ``Settings.max_inline``.
* :class:`OlderDmStore`: a test double of the store of a dm of record layout 4,
  which kept no ordered columns: it writes documents' bodies only, whatever
  columns the file has (an upgrade's columns go stale under it), and its
  ordered queries read the documents.
* :class:`Processes`: one home as several dm processes open it, each with a
  :class:`CommitHooked` store of its own (its connections, the bodies its batches
  keep, its transaction lock), the caller choosing which process acts; another
  process may commit in the instant after one's batch commits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from dmcore.store.base import Doc, Transaction
from dmcore.store.sqlite import SqliteStore

T = TypeVar("T")

DECLARE = "DeclareDeps"
"""The step whose transactions may take the large inline limits (Engine._inline_limits)."""


@dataclasses.dataclass(frozen=True)
class Ran:
    """What one transaction ran: engine steps by kind."""

    steps: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.steps.values())

    @property
    def declaration(self) -> bool:
        # A declaration's part is always the first step of its transaction (the
        # service runs it); no step has one as a tail call.
        return DECLARE in self.steps


class SmallPartsStore(SqliteStore):
    """The SQLite store with its own limits (``max_writes`` None, as embedded) and
    parts of ``parts_docs`` documents; counts each transaction's steps once
    :attr:`steps` is given the engine's step counters (one worker thread only:
    counters are shared by the threads)."""

    def __init__(self, path: Path, *, parts_docs: int, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.parts_docs = parts_docs
        self.steps: Callable[[], Mapping[str, int]] | None = None
        self.ran: list[Ran] = []

    @property
    def transaction_docs(self) -> int | None:
        return self.parts_docs if self.max_writes is None else None

    def transaction(self, fn: Callable[[Transaction], T], *, attempts: int = 10) -> T:
        if self.steps is None:
            return super().transaction(fn, attempts=attempts)
        before = dict(self.steps())
        try:
            return super().transaction(fn, attempts=attempts)
        finally:
            after = self.steps()
            ran = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
            if ran:
                self.ran.append(Ran(ran))


class OlderDmStore(SqliteStore):
    """A layout-4 dm's store (test double): bodies only, never the ordered columns.

    Built on a file without columns, it has none to write; it keeps that view when
    a newer dm adds them (no take-up between transactions), as the older code
    never knew of them: its upserts leave them as they were, its inserts NULL."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        # Its equality filters read the JSON (served by expression indexes then).
        kwargs.pop("indexed_fields", None)
        super().__init__(path, ordered_fields=(), **kwargs)
        if self.ordered_fields:
            raise ValueError(f"{path} has ordered columns: an older dm's file never had")

    def _refresh(self, conn: Any) -> None:
        """The older dm never takes up columns another process added."""


class _Committing:
    """A connection that calls its store's ``after_commit`` once the COMMIT of an
    outermost batch has returned: the write lock is free, and another process may
    commit before this one's next statement."""

    def __init__(self, conn: sqlite3.Connection, store: CommitHooked) -> None:
        self._conn, self._store = conn, store

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, *args)
        store = self._store
        if sql == "COMMIT" and store.armed.on and store.after_commit is not None:
            store.armed.on = False
            store.after_commit()
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _Armed(threading.local):
    on = False
    """In an outermost batch: its COMMIT (the only one until it ends) calls the hook."""
    conn: sqlite3.Connection | None = None
    wrapped: _Committing | None = None


class CommitHooked(SqliteStore):
    """The SQLite store, with ``after_commit`` called right after each outermost
    batch's COMMIT (a transaction's own commits, and a batch's savepoints, are not
    hooked): the instant in which another process's commit can land unseen unless
    the batch noted the file's version before its COMMIT (:class:`Processes`)."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.armed = _Armed()  # before the store's own __init__ opens a connection
        self.after_commit: Callable[[], None] | None = None
        super().__init__(path, **kwargs)

    def _conn(self) -> sqlite3.Connection:
        conn = super()._conn()
        armed = self.armed
        if armed.conn is not conn:
            armed.conn, armed.wrapped = conn, _Committing(conn, self)
        return cast(sqlite3.Connection, armed.wrapped)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        outermost = not self._local.in_batch
        if outermost:
            self.armed.on = True
        try:
            with super().batch():
                yield
        finally:
            if outermost:
                self.armed.on = False


class Processes(SqliteStore):
    """One SQLite home opened by ``processes`` dm processes (a test double of the
    processes, not of the store): each is a :class:`CommitHooked` store of its own on
    the file, with its own connections, the bodies its batches keep for the next, and
    its transaction lock, as separate processes have them. Every call goes to the
    store of the process acting now (:attr:`current`, :meth:`acting_as`); a context
    (a batch, a write scope) stays with the process that opened it.

    A subclass of :class:`SqliteStore` only to be taken for one (the local queue
    lives in the file of a SQLite store); it keeps no store state of its own."""

    def __init__(self, path: Path, *, processes: int, **kwargs: Any) -> None:
        # Not SqliteStore.__init__: every call goes to a process's own store.
        if processes < 2:
            raise ValueError(f"processes must be at least 2, not {processes}")
        self.stores = [CommitHooked(path, **kwargs) for _ in range(processes)]
        self.current = 0

    @property
    def now(self) -> CommitHooked:
        """The store of the process acting now."""
        return self.stores[self.current]

    @contextlib.contextmanager
    def acting_as(self, process: int) -> Iterator[None]:
        """Calls made in the block are the given process's."""
        before, self.current = self.current, process
        try:
            yield
        finally:
            self.current = before

    @property
    def max_writes(self) -> int | None:
        return self.stores[0].max_writes

    @max_writes.setter
    def max_writes(self, value: int | None) -> None:
        for s in self.stores:
            s.max_writes = value

    @property
    def transaction_docs(self) -> int | None:
        return self.now.transaction_docs

    @property
    def ordered_fields(self) -> tuple[str, ...]:
        return self.now.ordered_fields

    @property
    def path(self) -> Path:
        return self.now.path

    @property
    def lock_wait(self) -> float:
        return self.now.lock_wait

    def transaction(self, fn: Callable[[Transaction], T], *, attempts: int = 10) -> T:
        return self.now.transaction(fn, attempts=attempts)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self.now.batch():
            yield

    @contextlib.contextmanager
    def write_scope(self) -> Iterator[sqlite3.Connection]:
        with self.now.write_scope() as conn:
            yield conn

    def read_view(self) -> contextlib.AbstractContextManager[Transaction]:
        return self.now.read_view()

    def connection(self) -> sqlite3.Connection:
        return self.now.connection()

    def join_transaction(
        self, tx: Transaction, write: Callable[[sqlite3.Connection], None]
    ) -> bool:
        return any(s.join_transaction(tx, write) for s in self.stores)

    def get(self, path: str) -> Doc | None:
        return self.now.get(path)

    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        return self.now.get_many(paths)

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
        return self.now.query(collection, where, order_by, descending, limit, at_most=at_most)

    def query_id_prefix(self, collection: str, prefix: str) -> list[tuple[str, Doc]]:
        return self.now.query_id_prefix(collection, prefix)

    def query_collections(self, collections: Sequence[str]) -> dict[str, list[tuple[str, Doc]]]:
        return self.now.query_collections(collections)

    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        return self.now.count(collection, where)

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def _conn(self) -> sqlite3.Connection:
        return self.now._conn()

    def __repr__(self) -> str:
        return f"Processes({str(self.stores[0].path)!r}, processes={len(self.stores)})"
