"""The Store port: documents by path, with Firestore's transaction semantics.

A *document* is a JSON-serialisable ``dict`` stored at a *path* of alternating
collection and document ids, e.g. ``attempts/<aid>`` or
``attempts/<aid>/executions/00000001``. A *collection* is a path with an odd
number of segments (``attempts`` or ``attempts/<aid>/fwd_deps``); queries
look at the documents directly inside one collection.

Why Firestore's shape: the same engine runs on SQLite (embedded) and on
Firestore (Google Cloud), and a contract test suite holds every adapter to the
rules written here:

* A transaction reads first and writes after: any read after the first write
  raises :class:`ReadAfterWrite` (Firestore refuses it too).
* Writes are buffered and applied atomically at commit; nothing is visible to
  other readers before commit, and nothing at all if the function raises.
* ``create`` fails the commit with :class:`AlreadyExists` when the document is
  there; ``set`` overwrites; ``delete`` of a missing document is fine.
* :meth:`Store.transaction` retries the function on contention
  (:class:`Contention`) up to ``attempts`` times, so the function must have no
  effects outside the transaction other than through it.
* Queries are equality filters (``where`` = field -> value, fields may be
  dotted paths into nested maps), optionally ordered by one field and limited.
  Results are ``(path, doc)`` pairs; ties in ``order_by`` and unordered
  results come in path order.

Values must be JSON types (str, int, float, bool, None, list, dict). Bytes are
stored by callers as base64 strings; times as integer microseconds.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

Doc = dict[str, Any]
T = TypeVar("T")


class StoreError(Exception):
    """Base class of errors raised by a store adapter."""


class AlreadyExists(StoreError):
    """``create`` found a document already at the path."""


class Contention(StoreError):
    """The transaction lost a race; running it again may succeed (transient)."""


class ReadAfterWrite(StoreError):
    """A transaction tried to read after it had written (not allowed)."""


class TooManyWrites(StoreError):
    """A transaction wrote more documents than the store's ``max_writes``."""


MAX_COMMIT_WRITES = 500
"""Firestore's documented limit of writes in one commit. The engine keeps every
transaction under it (DESIGN.md W-14); a store enforces it when its ``max_writes``
is set (the tests set it on both adapters, so an oversized step fails everywhere)."""


class InvalidPath(StoreError, ValueError):
    """A document or collection path is malformed."""


def check_doc_path(path: str) -> None:
    """Raise :class:`InvalidPath` unless ``path`` names a document."""
    parts = path.split("/")
    if len(parts) % 2 != 0 or "" in parts:
        raise InvalidPath(f"not a document path: {path!r}")


def id_prefix_end(prefix: str) -> str:
    """The least id above every id that starts with ``prefix`` (its last character + 1).

    Ids order by code point (UTF-8 bytes) in both stores, so ``prefix <= id <
    id_prefix_end(prefix)`` holds exactly for ids starting with ``prefix``.
    """
    if not prefix or "/" in prefix:
        raise InvalidPath(f"not an id prefix: {prefix!r}")
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    if "/" in end or not 0 < ord(end[-1]) < 0xD800:
        raise InvalidPath(f"id prefix {prefix!r} cannot be bounded (it ends in {prefix[-1]!r})")
    return end


def check_collection_path(path: str) -> None:
    """Raise :class:`InvalidPath` unless ``path`` names a collection."""
    parts = path.split("/")
    if len(parts) % 2 != 1 or "" in parts:
        raise InvalidPath(f"not a collection path: {path!r}")


B = TypeVar("B")


class PendingWrite(Generic[B]):
    """The net effect of one transaction's writes to one path."""

    __slots__ = ("body", "doomed", "must_be_absent")

    def __init__(self, body: B | None, must_be_absent: bool, doomed: bool) -> None:
        self.body = body  # the adapter's encoded document; None: delete
        self.must_be_absent = must_be_absent  # a create came first: path must not exist now
        self.doomed = doomed  # a create followed a set in this transaction: always fails


class WriteBuffer(Generic[B]):
    """A transaction's writes, composed per path the way Firestore composes them.

    Adapters buffer writes until commit (reads come first anyway): set, create
    and delete of one path fold into one :class:`PendingWrite`. A create after
    a delete in the same transaction is fine; a create after a set can never
    commit (``doomed``); a create first requires the path to be absent at commit.
    """

    def __init__(self) -> None:
        self.writes: dict[str, PendingWrite[B]] = {}

    def __bool__(self) -> bool:
        return bool(self.writes)

    def set(self, path: str, body: B) -> None:
        prev = self.writes.get(path)
        self.writes[path] = PendingWrite(
            body, prev is not None and prev.must_be_absent, prev is not None and prev.doomed
        )

    def create(self, path: str, body: B) -> None:
        prev = self.writes.get(path)
        if prev is None:
            self.writes[path] = PendingWrite(body, True, False)
        else:
            # After a delete in this transaction the path is free; after a set it is not.
            self.writes[path] = PendingWrite(
                body, prev.must_be_absent, prev.doomed or prev.body is not None
            )

    def delete(self, path: str) -> None:
        prev = self.writes.get(path)
        self.writes[path] = PendingWrite(
            None, prev is not None and prev.must_be_absent, prev is not None and prev.doomed
        )

    def check_size(self, limit: int | None) -> None:
        """Raise TooManyWrites if more than ``limit`` paths are written (None: no limit)."""
        if limit is not None and len(self.writes) > limit:
            raise TooManyWrites(f"a commit of {len(self.writes)} writes, over the limit of {limit}")

    def check_doomed(self) -> None:
        """Raise AlreadyExists if a create can never commit (it followed a set)."""
        doomed = sorted(p for p, w in self.writes.items() if w.doomed)
        if doomed:
            raise AlreadyExists(f"create of a document set earlier in the transaction: {doomed}")

    def must_be_absent(self) -> list[str]:
        """Paths that a create requires to be absent at commit."""
        return [p for p, w in self.writes.items() if w.must_be_absent]


class Transaction(abc.ABC):
    """One read-then-write transaction. Obtain it from :meth:`Store.transaction`."""

    @abc.abstractmethod
    def get(self, path: str) -> Doc | None:
        """The document at ``path``, or None."""

    @abc.abstractmethod
    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        """Several documents at once (one round trip where the backend allows)."""

    def peek_many(
        self, paths: Sequence[str], fields: tuple[str, ...]
    ) -> dict[str, Mapping[str, Any] | None]:
        """Read-only parts of several documents: of each present one, its top-level
        ``fields`` (None where it has no such field; an absent document: None). The same reads as
        :meth:`get_many` (in this transaction's snapshot); for an answer, never
        to be written back (a part is not the document).

        By default the documents are read whole and cut; a store may read less
        (SQLite decodes only those fields of each body)."""
        got = self.get_many(paths)
        return {p: None if d is None else {f: d.get(f) for f in fields} for p, d in got.items()}

    @abc.abstractmethod
    def query(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """Documents directly in ``collection`` matching every equality in ``where``."""

    def count(
        self, collection: str, where: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> int:
        """How many documents :meth:`query` would return (at most ``limit``); a backend
        that bills per document returned counts without returning them."""
        return len(self.query(collection, where, limit=limit))

    @abc.abstractmethod
    def set(self, path: str, doc: Doc) -> None:
        """Write ``doc`` at ``path`` at commit, replacing what is there."""

    @abc.abstractmethod
    def create(self, path: str, doc: Doc) -> None:
        """Write ``doc`` at ``path`` at commit; the commit fails with AlreadyExists if present."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Delete the document at ``path`` at commit (no error if absent)."""


class BufferedTransaction(Transaction, Generic[B]):
    """A transaction whose writes wait in a :class:`WriteBuffer` until commit.

    Both adapters are built so: a write is checked and encoded at once (bad
    input fails before commit, later changes to the caller's dict do not
    count), and applied at commit. Subclasses give the encoding, may check
    paths further, and must set ``_live`` to False when the transaction ends.
    """

    def __init__(self) -> None:
        self._writes: WriteBuffer[B] = WriteBuffer()
        self._live = True

    @abc.abstractmethod
    def _encode(self, doc: Doc) -> B:
        """The document as the adapter will write it; raise on what it cannot store."""

    def _check_path(self, path: str) -> None:
        check_doc_path(path)

    def _before_write(self, path: str) -> None:
        if not self._live:
            raise StoreError("transaction used after it ended")
        self._check_path(path)

    def set(self, path: str, doc: Doc) -> None:
        self._before_write(path)
        self._writes.set(path, self._encode(doc))

    def create(self, path: str, doc: Doc) -> None:
        self._before_write(path)
        self._writes.create(path, self._encode(doc))

    def delete(self, path: str) -> None:
        self._before_write(path)
        self._writes.delete(path)


class Store(abc.ABC):
    """A document store with transactions. Adapters: ``sqlite``, ``firestore``."""

    max_writes: int | None = None
    """Refuse (TooManyWrites) a transaction writing more documents than this."""

    @property
    def transaction_docs(self) -> int | None:
        """About how many documents a step cut into parts (a large declaration) may
        touch in one part's transaction; None: Firestore's comfortable ~100 (the
        engine's own part sizes). A store whose commits cost the same at any size
        says more: fewer parts, fewer transactions."""
        return None

    @abc.abstractmethod
    def transaction(self, fn: Callable[[Transaction], T], *, attempts: int = 10) -> T:
        """Run ``fn`` in a transaction and commit; retry on :class:`Contention`.

        Returns what ``fn`` returned. If ``fn`` raises, nothing is written and
        the exception propagates. After ``attempts`` lost races, raises
        :class:`Contention`.
        """

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Group this thread's transactions in the block into one commit, where possible.

        Only for stores that can (SQLite: the write lock is held for the block,
        a transaction that fails inside writes nothing); the default does
        nothing and every transaction commits on its own.
        """
        return contextlib.nullcontext()

    def read_view(self) -> contextlib.AbstractContextManager[Transaction] | None:
        """A read-only view of one snapshot that takes no write lock, or None.

        Inside the block, the view's reads and this thread's reads of the store
        (:meth:`get`, :meth:`query`, ...) see the same snapshot while others
        commit beside them, and cost what reads outside a transaction cost; a
        write through the view raises :class:`StoreError`. Not inside this
        thread's transaction. For an answer that can be made without writing
        (a memoised request): a writer must read again in its own transaction.

        None (the default): the store has no such view cheaper than a
        transaction (on Firestore a transaction's reads are billed alike and
        its snapshot is as dear); callers take their transactional path.
        """
        return None

    @abc.abstractmethod
    def get(self, path: str) -> Doc | None:
        """Read one document outside any transaction (a consistent snapshot)."""

    @abc.abstractmethod
    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        """Read several documents outside any transaction.

        Each document is as it was at some moment during the call, not
        necessarily the same moment for all (the Firestore emulator reads them
        one by one). Read in a transaction when they must agree.
        """

    @abc.abstractmethod
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
        """Query outside any transaction; same rules as :meth:`Transaction.query`.

        ``at_most`` (a number or a string; needs ``order_by``) keeps only the
        documents whose ``order_by`` field is of the bound's type and at most
        it, as a Firestore range filter does: a sweep for what is due reads
        only what is due, not a page of what is not yet."""

    @abc.abstractmethod
    def query_id_prefix(self, collection: str, prefix: str) -> list[tuple[str, Doc]]:
        """Documents directly in ``collection`` whose id starts with ``prefix``, in id order.

        A range of ids: served by the ids themselves, no index on a field (on
        Firestore, no composite index either). See :func:`id_prefix_end`.
        """

    def query_collections(self, collections: Sequence[str]) -> dict[str, list[tuple[str, Doc]]]:
        """Every document directly in each of ``collections``, by collection, in id order.

        For a walk that reads the edges of many attempts at once; a store that can
        serves them in a few statements. The default queries each (on Firestore,
        each costs what :meth:`query` costs: at least one read).
        """
        return {c: self.query(c) for c in dict.fromkeys(collections)}

    @abc.abstractmethod
    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        """How many documents in ``collection`` match ``where``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Default: nothing to release."""
