"""The Store port on Google Cloud Firestore (native mode): the Google Cloud backend.

Why this shape:

* **Transactions.** :meth:`FirestoreStore.transaction` runs ``fn`` against a
  wrapper that enforces the port's rules itself (reads before writes, writes
  buffered), then hands the net writes to a ``google.cloud.firestore``
  transaction and commits. The Firestore transaction is begun lazily, on the
  first read: a function that only writes commits as one atomic batch (one
  round trip instead of two). ``Aborted`` from Firestore (lost a lock race,
  including the emulator's 2 s lock timeout) and :class:`Contention` raised by
  ``fn`` re-run ``fn`` in a new transaction that names the failed one as
  ``retry_transaction`` (it keeps its place in line), with a short jittered
  backoff, up to ``attempts`` times; then :class:`Contention`. A transaction
  that ends without committing is rolled back, so the server's locks are
  released at once rather than at their timeout.
* **Net writes per path,** as the SQLite adapter: the last write to a path
  wins; ``create`` becomes a write with an ``exists=false`` precondition, so an
  existing document fails the whole commit with ``ALREADY_EXISTS`` →
  :class:`AlreadyExists`; ``create`` after ``set`` of the same path in one
  transaction fails before anything is sent.
* **Values.** Documents hold JSON types only and round-trip exactly (Firestore
  keeps int64 and double apart, so ``2.0`` stays a float and ``2`` an int).
  Firestore cannot hold three JSON shapes, which are escaped on write and
  restored on read: an array directly inside an array is stored as the map
  ``{"~a": [...]}``; the empty key and reserved keys (``__x__``) and keys that
  start with ``~`` are stored with one more leading ``~``. Field paths in
  queries are escaped the same way, so queries see the caller's names. Floats
  must be finite and ints fit in int64 (else ``ValueError``).
* **Queries** are native: equality filters (Firestore's own equality matches
  the contract: ``1 == 1.0``, ``True`` is not ``1``, ``None`` matches an
  explicit null only), ``order_by`` (documents without the field are left out
  natively), ``limit``. Ties come in path order: Firestore breaks ties by
  document name in the direction of the last ordering, so a descending query
  adds an explicit ascending ``__name__`` ordering (in production such a query
  needs a composite index ``field DESC, __name__ ASC``; equality filters plus
  ``order_by`` on another field need composite indexes anyway, declared in
  terraform). ``count`` is the server-side aggregation.
* **Namespaces.** ``prefix`` (pairs of collection/document ids, e.g.
  ``"dm/test-123"``) is put in front of every path, so several dm instances or
  tests can share one project and database; callers never see it. Tests use a
  fresh prefix per test on one emulator project.
* **Cost counters.** :attr:`FirestoreStore.stats` counts billed document reads
  (a missing document and an empty query cost one read each, a count one per
  1,000 matches) and committed document writes and deletes; when asked, per
  document and per label (who did it: ``bench/bench_firestore.py``).
* **Query shapes.** :attr:`FirestoreStore.query_shapes` collects the shape of
  every query run (:class:`QueryShape`: collection id, scope, fields filtered,
  order), which is what Firestore's indexes are declared for: a test checks
  that the indexes terraform declares serve every shape the engine runs.

Google Cloud client libraries are imported only here (DESIGN.md §2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.aggregation import AggregationQuery
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from dmcore.store.base import (
    AlreadyExists,
    BufferedTransaction,
    Contention,
    Doc,
    InvalidPath,
    ReadAfterWrite,
    Store,
    StoreError,
    Transaction,
    check_collection_path,
    check_doc_path,
    id_prefix_end,
)

__all__ = [
    "FirestoreStats",
    "FirestoreStore",
    "LabelCounts",
    "OpCounts",
    "QueryShape",
    "collection_of",
]

T = TypeVar("T")

_ARRAY = "~a"  # map key marking an array that sits directly inside an array
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_ID_BYTES = 1500
_COUNT_READ_BATCH = 1000  # an aggregation costs one read per 1,000 index entries


# ---- values


def _enc_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"document keys must be str, not {type(key).__name__}")
    k = key if type(key) is str else str.__str__(key)
    if not k or k[0] == "~" or (len(k) >= 4 and k[:2] == "__" and k[-2:] == "__"):
        return "~" + k
    return k


def _dec_key(key: str) -> str:
    return key[1:] if key[:1] == "~" else key


def _enc(value: Any, in_array: bool) -> Any:
    """A JSON value as Firestore can store it (a fresh copy; see module doc)."""
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"integer out of Firestore's int64 range: {value}")
        return value
    if t is float:
        if not math.isfinite(value):
            raise ValueError(f"not a JSON number: {value}")
        return value
    if t is dict:
        return {_enc_key(k): _enc(v, False) for k, v in value.items()}
    if t is list or t is tuple:
        items = [_enc(v, True) for v in value]
        return {_ARRAY: items} if in_array else items
    # Subclasses (IntEnum, str enums, ...) are stored as their plain JSON value.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return _enc(int(value), in_array)
    if isinstance(value, float):
        return _enc(float(value), in_array)
    if isinstance(value, Mapping):
        return _enc(dict(value), in_array)
    if isinstance(value, list | tuple):
        return _enc(list(value), in_array)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _encode_doc(doc: Doc) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise TypeError(f"a document must be a dict, not {type(doc).__name__}")
    out: dict[str, Any] = _enc(doc, False)
    return out


def _dec(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _ARRAY in value:
            return [_dec(v) for v in value[_ARRAY]]
        return {_dec_key(k): _dec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value


def _decode_doc(data: dict[str, Any] | None) -> Doc:
    return {_dec_key(k): _dec(v) for k, v in (data or {}).items()}


def _where_value(field: str, value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"where[{field!r}]: not a JSON number: {value}")
        return _enc(value, False)
    raise TypeError(
        f"where[{field!r}]: only str, int, float, bool and None can be compared, "
        f"not {type(value).__name__}"
    )


def _field_path(field: str) -> str:
    """A dotted field path of the caller's names as Firestore's escaped field path."""
    if not isinstance(field, str) or not field:
        raise ValueError(f"bad field path: {field!r}")
    segs = field.split(".")
    if any(not s for s in segs):
        raise ValueError(f"bad field path: {field!r}")
    return FieldPath(*(_enc_key(s) for s in segs)).to_api_repr()


# ---- paths


def _check_ids(path: str) -> None:
    for seg in path.split("/"):
        if (
            seg in (".", "..")
            or (len(seg) >= 4 and seg[:2] == "__" and seg[-2:] == "__")
            or len(seg.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES
        ):
            raise InvalidPath(f"not a valid Firestore id: {seg[:40]!r} in {path[:200]!r}")


def _doc_path(path: str) -> str:
    check_doc_path(path)
    _check_ids(path)
    return path


def _collection_path(path: str) -> str:
    check_collection_path(path)
    _check_ids(path)
    return path


# ---- counters


def collection_of(path: str) -> str:
    """The collection names along ``path``, ids left out: ``attempts/executions``
    for ``attempts/q|1/executions/2`` (a document) or ``attempts/q|1/executions``
    (a collection)."""
    return "/".join(path.split("/")[0::2])


@dataclasses.dataclass
class OpCounts:
    """Billed operations on one document, or under one label on one collection."""

    reads: int = 0
    writes: int = 0
    deletes: int = 0


@dataclasses.dataclass
class LabelCounts:
    """What was done under one (owner, step) label: commits, and operations by collection."""

    commits: int = 0
    collections: dict[str, OpCounts] = dataclasses.field(default_factory=dict)

    def on(self, collection: str) -> OpCounts:
        counts = self.collections.get(collection)
        if counts is None:
            counts = self.collections[collection] = OpCounts()
        return counts


class _Labels(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[str | None, str | None]] = []


@dataclasses.dataclass
class FirestoreStats:
    """Billed document reads and committed writes since creation (or :meth:`reset`).

    With ``detailed`` set, also who did them (the cost benchmark reads this):
    per document path (:attr:`documents`), per label (:attr:`labels`: the
    innermost ``owner`` and ``step`` given to :meth:`labelled` in this thread,
    by collection) and the largest commit. Off by default: it keeps a record
    per document touched.
    """

    reads: int = 0
    writes: int = 0  # set and create
    deletes: int = 0
    commits: int = 0  # successful transactions that wrote or read
    retries: int = 0  # attempts lost to contention and re-run
    detailed: bool = False
    documents: dict[str, OpCounts] = dataclasses.field(default_factory=dict)
    labels: dict[tuple[str, str], LabelCounts] = dataclasses.field(default_factory=dict)
    largest_commit: int = 0
    """Most writes and deletes in one commit."""
    largest_transaction: int = 0
    """Most documents one committed transaction touched: read (found or not, or
    returned by a query) or written, each counted once."""
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )
    _labels: _Labels = dataclasses.field(default_factory=_Labels, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "reads": self.reads,
                "writes": self.writes,
                "deletes": self.deletes,
                "commits": self.commits,
                "retries": self.retries,
            }

    def reset(self) -> None:
        with self._lock:
            self.reads = self.writes = self.deletes = self.commits = self.retries = 0
            self.documents = {}
            self.labels = {}
            self.largest_commit = 0
            self.largest_transaction = 0

    # -- who did it (detailed)

    @contextlib.contextmanager
    def labelled(self, *, owner: str | None = None, step: str | None = None) -> Iterator[None]:
        """Count this thread's operations in the block under ``owner`` and/or ``step``
        (each defaults to the enclosing block's; outside any: ``dm`` and ``-``)."""
        stack = self._labels.stack
        stack.append((owner, step))
        try:
            yield
        finally:
            stack.pop()

    def _label(self) -> LabelCounts:
        owner = step = None
        for o, s in reversed(self._labels.stack):
            owner = owner or o
            step = step or s
            if owner and step:
                break
        key = (owner or "dm", step or "-")
        counts = self.labels.get(key)
        if counts is None:
            counts = self.labels[key] = LabelCounts()
        return counts

    def _document(self, path: str) -> OpCounts:
        counts = self.documents.get(path)
        if counts is None:
            counts = self.documents[path] = OpCounts()
        return counts

    def read(self, paths: Sequence[str]) -> None:
        """Documents read by path (each billed, found or not)."""
        self.add(reads=len(paths))
        if not self.detailed:
            return
        with self._lock:
            label = self._label()
            for p in paths:
                self._document(p).reads += 1
                label.on(collection_of(p)).reads += 1

    def read_query(self, collection: str, paths: Sequence[str], billed: int) -> None:
        """A query of ``collection`` that returned ``paths`` and cost ``billed`` reads."""
        self.add(reads=billed)
        if not self.detailed:
            return
        with self._lock:
            for p in paths:
                self._document(p).reads += 1
            self._label().on(collection_of(collection)).reads += billed

    def commit(
        self, written: Sequence[str], deleted: Sequence[str], read: Iterable[str] = ()
    ) -> None:
        """A committed transaction (``read``: the documents it read) or batch."""
        self.add(writes=len(written), deletes=len(deleted), commits=1)
        if not self.detailed:
            return
        touched = len({*read, *written, *deleted})
        with self._lock:
            self.largest_commit = max(self.largest_commit, len(written) + len(deleted))
            self.largest_transaction = max(self.largest_transaction, touched)
            label = self._label()
            label.commits += 1
            for p in written:
                self._document(p).writes += 1
                label.on(collection_of(p)).writes += 1
            for p in deleted:
                self._document(p).deletes += 1
                label.on(collection_of(p)).deletes += 1


# ---- query shapes


ASCENDING, DESCENDING = "ASCENDING", "DESCENDING"
NAME_FIELD = "__name__"
"""The document-name pseudo-field (ids ordered and compared as such)."""


@dataclasses.dataclass(frozen=True, order=True)
class QueryShape:
    """What an index must serve: a query with its values left out.

    Firestore keys indexes by collection *id* (the last segment of a
    collection path) and query scope, so that is what is kept of the path.
    """

    collection: str
    """Collection id, e.g. ``fwd_deps`` for ``attempts/<aid>/fwd_deps``."""
    group: bool = False
    """A collection-group query (every collection with that id)."""
    equals: tuple[str, ...] = ()
    """Fields under equality filters (sorted: their order does not matter)."""
    ranges: tuple[str, ...] = ()
    """Fields under inequality filters (``__name__`` for an id range)."""
    order: tuple[tuple[str, str], ...] = ()
    """``(field, ASCENDING|DESCENDING)`` in query order, explicit ``__name__`` included."""
    aggregate: bool = False
    """A count (same index needs as the query)."""


def _shape(
    collection: str,
    where: Mapping[str, Any] | None,
    order: Sequence[tuple[str, str]] = (),
    ranges: Sequence[str] = (),
    aggregate: bool = False,
) -> QueryShape:
    return QueryShape(
        collection=collection.rsplit("/", 1)[-1],
        equals=tuple(sorted(where or {})),
        ranges=tuple(sorted(ranges)),
        order=tuple(order),
        aggregate=aggregate,
    )


# ---- transactions


class _FirestoreTransaction(BufferedTransaction[dict[str, Any]]):
    """Reads go to a lazily begun Firestore transaction; writes are buffered here."""

    def __init__(self, store: FirestoreStore, retry_id: bytes | None) -> None:
        super().__init__()
        self._store = store
        self._retry_id = retry_id
        self._fs: firestore.Transaction | None = None
        self._read: set[str] = set()  # documents read, for FirestoreStats

    @property
    def fs_id(self) -> bytes | None:
        """The Firestore transaction id, once begun."""
        return None if self._fs is None else self._fs.id

    # -- reads

    def _reader(self) -> firestore.Transaction:
        if not self._live:
            raise StoreError("transaction used after it ended")
        if self._writes:
            raise ReadAfterWrite("a transaction cannot read after it has written")
        if self._fs is None:
            fs = self._store.client.transaction()
            fs._begin(retry_id=self._retry_id)
            self._fs = fs
        return self._fs

    def get(self, path: str) -> Doc | None:
        _doc_path(path)
        self._read.add(path)
        return self._store._get_many([path], self._reader())[path]

    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        self._store._check_paths(paths)
        self._read.update(paths)
        return self._store._get_many(paths, self._reader())

    def query(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        _collection_path(collection)
        rows = self._store._query(
            collection,
            where=where,
            order_by=order_by,
            descending=descending,
            limit=limit,
            tx=self._reader(),
        )
        self._read.update(p for p, _ in rows)
        return rows

    def count(
        self, collection: str, where: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> int:
        # An aggregation in the transaction: one read per 1,000 index entries it
        # scans (``limit`` bounds them), however many documents match.
        _collection_path(collection)
        return self._store._count(collection, where, limit, self._reader())

    # -- writes: buffered (BufferedTransaction), encoded for the client

    def _encode(self, doc: Doc) -> dict[str, Any]:
        return _encode_doc(doc)

    def _check_path(self, path: str) -> None:
        _doc_path(path)

    # -- the end

    def _commit(self) -> None:
        """Send the net writes and commit; raises AlreadyExists, or Aborted to retry."""
        self._live = False
        self._writes.check_size(self._store.max_writes)
        self._writes.check_doomed()
        writes = self._writes.writes
        store = self._store
        if self._fs is None and not writes:
            return
        batch: firestore.Transaction | firestore.WriteBatch = (
            self._fs if self._fs is not None else store.client.batch()
        )
        absent = store.client.write_option(exists=False) if writes else None
        written: list[str] = []
        deleted: list[str] = []
        for path, w in writes.items():
            ref = store._ref(path)
            if w.body is None:
                deleted.append(path)
                if w.must_be_absent:
                    batch.delete(ref, option=absent)
                else:
                    batch.delete(ref)
            else:
                written.append(path)
                if w.must_be_absent:
                    batch.create(ref, w.body)
                else:
                    batch.set(ref, w.body)
        try:
            if isinstance(batch, firestore.Transaction):
                batch._commit()
            else:
                batch.commit()
        except gexc.AlreadyExists as e:
            present = sorted(self._writes.must_be_absent())
            raise AlreadyExists(f"document(s) already exist among: {', '.join(present)}") from e
        store.stats.commit(written, deleted, self._read)

    def _abandon(self, *, rollback: bool = True) -> None:
        """End without committing; roll the Firestore transaction back (best effort)."""
        self._live = False
        fs, self._fs = self._fs, None
        if fs is not None and rollback and fs.in_progress:
            # Best effort: the server drops it at its own timeout anyway.
            with contextlib.suppress(Exception):
                fs._rollback()


class _Local(threading.local):
    in_tx: bool = False


class FirestoreStore(Store):
    """A :class:`Store` on Firestore in native mode (or its emulator)."""

    def __init__(
        self,
        client: firestore.Client | None = None,
        *,
        project: str | None = None,
        database: str = "(default)",
        prefix: str = "",
    ) -> None:
        if client is not None and project is not None:
            raise ValueError("pass either a client or a project, not both")
        prefix = prefix.strip("/")
        if prefix:
            parts = prefix.split("/")
            if len(parts) % 2 != 0 or any(not p for p in parts):
                raise InvalidPath(f"prefix must be collection/document id pairs: {prefix!r}")
            _check_ids(prefix)
        self._owns_client = client is None
        self.client: firestore.Client = (
            client if client is not None else firestore.Client(project=project, database=database)
        )
        self.prefix = prefix
        self._root = prefix + "/" if prefix else ""
        self.stats = FirestoreStats()
        self.query_shapes: set[QueryShape] = set()
        """Every distinct :class:`QueryShape` this store has run (a handful: one per call site)."""
        self._local = _Local()
        self._closed = False

    # -- helpers shared with the transaction wrapper

    def _ref(self, path: str) -> firestore.DocumentReference:
        if self._closed:
            raise StoreError("store is closed")
        return self.client.document(self._root + path)

    def _collection(self, path: str) -> firestore.CollectionReference:
        if self._closed:
            raise StoreError("store is closed")
        return self.client.collection(self._root + path)

    @staticmethod
    def _check_paths(paths: Sequence[str]) -> None:
        if isinstance(paths, str):  # a str is a Sequence[str]; almost surely a mistake
            raise TypeError("get_many takes a sequence of paths, not one path")
        for p in paths:
            _doc_path(p)

    def _get_many(
        self, paths: Iterable[str], tx: firestore.Transaction | None
    ) -> dict[str, Doc | None]:
        wanted = list(dict.fromkeys(paths))
        if not wanted:
            return {}
        refs = [self._ref(p) for p in wanted]
        by_ref = {r.path: p for r, p in zip(refs, wanted, strict=True)}
        found: dict[str, Doc | None] = {}
        for snap in self.client.get_all(refs, transaction=tx):
            found[by_ref[snap.reference.path]] = (
                _decode_doc(snap.to_dict()) if snap.exists else None
            )
        self.stats.read(wanted)
        return {p: found.get(p) for p in wanted}

    def _build_query(
        self, collection: str, where: Mapping[str, Any] | None
    ) -> firestore.CollectionReference | firestore.Query:
        q: firestore.CollectionReference | firestore.Query = self._collection(collection)
        for field, value in (where or {}).items():
            q = q.where(filter=FieldFilter(_field_path(field), "==", _where_value(field, value)))
        return q

    def _query(
        self,
        collection: str,
        *,
        where: Mapping[str, Any] | None,
        order_by: str | None,
        descending: bool,
        limit: int | None,
        tx: firestore.Transaction | None,
        at_most: Any = None,
    ) -> list[tuple[str, Doc]]:
        q = self._build_query(collection, where)
        order: list[tuple[str, str]] = []
        ranges: list[str] = []
        if at_most is not None:
            if order_by is None:
                raise ValueError("at_most needs order_by: it bounds the ordered field")
            if isinstance(at_most, bool) or not isinstance(at_most, int | float | str):
                raise TypeError(f"at_most: only a number or a string, not {type(at_most).__name__}")
            # The same index as the order alone: a range on the first ordered field.
            bound = _where_value(order_by, at_most)
            q = q.where(filter=FieldFilter(_field_path(order_by), "<=", bound))
            ranges.append(order_by)
        if order_by is not None:
            direction = firestore.Query.DESCENDING if descending else firestore.Query.ASCENDING
            q = q.order_by(_field_path(order_by), direction=direction)
            order.append((order_by, DESCENDING if descending else ASCENDING))
            if descending:  # ties in path order, as the port says
                q = q.order_by(FieldPath.document_id(), direction=firestore.Query.ASCENDING)
                order.append((NAME_FIELD, ASCENDING))
        self.query_shapes.add(_shape(collection, where, order, ranges))
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit must be a non-negative int, not {limit!r}")
            if limit == 0:
                return []
            q = q.limit(limit)
        head = collection + "/"
        rows = [(head + snap.id, _decode_doc(snap.to_dict())) for snap in q.stream(transaction=tx)]
        self.stats.read_query(collection, [p for p, _ in rows], max(1, len(rows)))
        return rows

    # -- the port

    def transaction(self, fn: Callable[[Transaction], T], *, attempts: int = 10) -> T:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self._closed:
            raise StoreError("store is closed")
        local = self._local
        if local.in_tx:
            raise StoreError("nested transaction: store.transaction() called inside a transaction")
        retry_id: bytes | None = None
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                self.stats.add(retries=1)
                # Jittered exponential backoff: 10 ms, 20 ms, ... capped at 0.5 s.
                time.sleep(min(0.01 * 2 ** (attempt - 1), 0.5) * random.uniform(0.5, 1.5))
            tx = _FirestoreTransaction(self, retry_id)
            local.in_tx = True
            try:
                result = fn(tx)
                tx._commit()
                return result
            except gexc.Aborted as e:
                # From a read: the transaction may still hold locks. From the
                # commit: it is over, rollback is a harmless no-op.
                last = e
                retry_id = tx.fs_id or retry_id
                tx._abandon()
            except Contention as e:
                last = e
                retry_id = tx.fs_id or retry_id
                tx._abandon()
            except BaseException:
                tx._abandon()
                raise
            finally:
                local.in_tx = False
        raise Contention(f"transaction gave up after {attempts} attempts: {last}") from last

    def get(self, path: str) -> Doc | None:
        _doc_path(path)
        return self._get_many([path], None)[path]

    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        self._check_paths(paths)
        return self._get_many(paths, None)

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
        _collection_path(collection)
        return self._query(
            collection,
            where=where,
            order_by=order_by,
            descending=descending,
            limit=limit,
            tx=None,
            at_most=at_most,
        )

    def query_id_prefix(self, collection: str, prefix: str) -> list[tuple[str, Doc]]:
        _collection_path(collection)
        end = id_prefix_end(prefix)
        coll = self._collection(collection)
        q = coll.where(filter=FieldFilter(FieldPath.document_id(), ">=", coll.document(prefix)))
        q = q.where(filter=FieldFilter(FieldPath.document_id(), "<", coll.document(end)))
        self.query_shapes.add(_shape(collection, None, ranges=[NAME_FIELD]))
        head = collection + "/"
        rows = [(head + snap.id, _decode_doc(snap.to_dict())) for snap in q.stream()]
        self.stats.read_query(collection, [p for p, _ in rows], max(1, len(rows)))
        return rows

    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        _collection_path(collection)
        return self._count(collection, where, None, None)

    def _count(
        self,
        collection: str,
        where: Mapping[str, Any] | None,
        limit: int | None,
        tx: firestore.Transaction | None,
    ) -> int:
        q = self._build_query(collection, where)
        if limit is not None:
            q = q.limit(limit)
        # The library annotates count() as returning a class; it returns an instance.
        agg = cast(AggregationQuery, q.count(alias="n"))
        self.query_shapes.add(_shape(collection, where, aggregate=True))
        rows: list[Any] = list(agg.get(transaction=tx))  # [[AggregationResult]] at run time
        n = 0
        for row in rows:
            for result in row if isinstance(row, list) else [row]:
                n = int(result.value)
        self.stats.read_query(collection, [], max(1, math.ceil(n / _COUNT_READ_BATCH)))
        return n

    def close(self) -> None:
        """Close the client if this store made it; the store cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            self.client.close()  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return f"FirestoreStore(project={self.client.project!r}, prefix={self.prefix!r})"
