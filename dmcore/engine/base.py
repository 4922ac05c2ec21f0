"""The step model: what the engine runs, and the unit of work a mutation sees.

A *step* is a unit of work the engine can queue, serialised as a task payload
(``kind`` + the dataclass's fields). A :class:`Mutation` runs in one store
transaction on one root record and returns follow-ups; an :class:`Action`
runs outside any transaction (it calls a distributor, then runs mutations).

Steps are declared in :mod:`dmcore.engine.steps` (what can be queued, with
its fields) and their behaviour is registered by concern, beside the records
it touches (:mod:`~dmcore.engine.lifecycle`, :mod:`~dmcore.engine.deps`,
:mod:`~dmcore.engine.completion`, :mod:`~dmcore.engine.timers`,
:mod:`~dmcore.engine.notify`), with :func:`rolls_forward` and
:func:`executes`. That keeps the state machine's loops (an execution ends,
its attempt is rescheduled or completes, its dependers resume) out of the
import graph: each behaviour module imports the declarations, never another
behaviour module.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dmcore.store.base import Doc, Transaction

if TYPE_CHECKING:
    from dmcore.engine.core import Engine

M = TypeVar("M", bound="Mutation")
A = TypeVar("A", bound="Action")

RollForward = Callable[[M, "Ctx"], "list[Step | Later]"]
Execute = Callable[[A, "Engine", int], None]

_ROLL_FORWARD: dict[type[Mutation], Callable[[Any, Ctx], list[Step | Later]]] = {}
_EXECUTE: dict[type[Action], Callable[[Any, Engine, int], None]] = {}


def rolls_forward(cls: type[M]) -> Callable[[RollForward[M]], RollForward[M]]:
    """Register the decorated function as what mutation ``cls`` does."""

    def register(fn: RollForward[M]) -> RollForward[M]:
        if cls in _ROLL_FORWARD:
            raise ValueError(f"{cls.KIND} already rolls forward with {_ROLL_FORWARD[cls]}")
        _ROLL_FORWARD[cls] = fn
        return fn

    return register


def executes(cls: type[A]) -> Callable[[Execute[A]], Execute[A]]:
    """Register the decorated function as what action ``cls`` does."""

    def register(fn: Execute[A]) -> Execute[A]:
        if cls in _EXECUTE:
            raise ValueError(f"{cls.KIND} already executes with {_EXECUTE[cls]}")
        _EXECUTE[cls] = fn
        return fn

    return register


class Step(abc.ABC):
    """A unit of work the engine can queue: a mutation or an action."""

    KIND: ClassVar[str]
    _registry: ClassVar[dict[str, type[Step]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "KIND" in cls.__dict__:
            Step._registry[cls.KIND] = cls

    def to_payload(self) -> dict[str, Any]:
        # Fields are JSON values; a shallow copy suffices (the payload is encoded
        # or copied by the queue), where dataclasses.asdict deep-copies recursively.
        names = _field_names(type(self))
        return {"kind": self.KIND, **{n: getattr(self, n) for n in names}}

    @staticmethod
    def from_payload(payload: Mapping[str, Any]) -> Step:
        data = dict(payload)
        kind = data.pop("kind", None)
        cls = Step._registry.get(str(kind))
        if cls is None:
            raise ValueError(f"unknown step kind {kind!r}")
        return cls(**data)


@functools.cache
def _field_names(cls: type[Step]) -> tuple[str, ...]:
    assert dataclasses.is_dataclass(cls)
    return tuple(f.name for f in dataclasses.fields(cls))


class Mutation(Step):
    """A transactional step on one root record."""

    @abc.abstractmethod
    def root(self) -> str:
        """Path of the record this mutation is about (for inline tail calls)."""

    def roll_forward(self, ctx: Ctx) -> list[Step | Later]:
        """Apply the change through ``ctx``; return follow-ups.

        Runs the function registered with :func:`rolls_forward` (a test's own
        mutation may override this method instead).
        """
        fn = _ROLL_FORWARD.get(type(self))
        if fn is None:
            raise LookupError(f"mutation {self.KIND} has no behaviour registered")
        return fn(self, ctx)


class Action(Step):
    """A step that runs outside any transaction (e.g. calls a distributor)."""

    def execute(self, engine: Engine, delivery: int) -> None:
        """Do the work; ``delivery`` counts deliveries of this task (1 = first).

        Runs the function registered with :func:`executes`.
        """
        fn = _EXECUTE.get(type(self))
        if fn is None:
            raise LookupError(f"action {self.KIND} has no behaviour registered")
        fn(self, engine, delivery)


@dataclasses.dataclass(frozen=True)
class Later:
    """A follow-up that must wait until ``eta_us``, optionally with a fixed task name.

    ``together``: a mutation due now that runs in the same transaction even
    though its root differs (the attempts a new quest is created with: one
    commit, no task), while the transaction's write budget allows; queued
    otherwise.
    """

    step: Step
    eta_us: int = 0
    name: str | None = None
    together: bool = False


class Uow:
    """Reads through a cache, buffers writes until the end of the step.

    Store transactions must read before they write; buffering lets a mutation
    (and its inline tail calls) read and write in any order.
    """

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self._cache: dict[str, Doc | None] = {}
        self._dirty: dict[str, str] = {}  # path -> "set" | "create" | "delete"

    def get(self, path: str) -> Doc | None:
        if path not in self._cache:
            self._cache[path] = self._tx.get(path)
        return self._cache[path]

    def cached(self, path: str) -> Doc | None:
        """The document at ``path`` as this step has it, if it read or wrote it (no read)."""
        return self._cache.get(path)

    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        missing = [p for p in paths if p not in self._cache]
        if missing:
            self._cache.update(self._tx.get_many(missing))
        return {p: self._cache[p] for p in paths}

    def peek_many(
        self, paths: Sequence[str], fields: tuple[str, ...]
    ) -> dict[str, Mapping[str, Any] | None]:
        """Read-only parts of documents (:meth:`Transaction.peek_many`), for an answer.

        A part is kept out of the cache (a later :meth:`get` reads the whole
        document, which the step may write); an absence is kept (it is whole)."""
        got: dict[str, Mapping[str, Any] | None] = {}
        missing = []
        for p in paths:
            if p in self._cache:
                d = self._cache[p]
                got[p] = None if d is None else {f: d.get(f) for f in fields}
            else:
                missing.append(p)
        if missing:
            for p, part in self._tx.peek_many(missing, fields).items():
                got[p] = part
                if part is None:
                    self._cache[p] = None
        return got

    def query(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """Query the store, seeing this step's own buffered writes."""
        dirty_here = [p for p in self._dirty if p.rsplit("/", 1)[0] == collection]
        fetch_limit = None if (limit is None or dirty_here) else limit
        rows = dict(self._tx.query(collection, where, order_by=order_by, limit=fetch_limit))
        for p in dirty_here:
            doc = self._cache.get(p)
            rows.pop(p, None)
            if doc is not None and _matches(doc, where or {}):
                rows[p] = doc
        for p in list(rows):
            if p in self._cache and p not in self._dirty:
                cached = self._cache[p]
                if cached is not None:
                    rows[p] = cached
            else:
                self._cache.setdefault(p, rows[p])
        items = sorted(rows.items())
        if order_by is not None:
            items = [kv for kv in items if _field(kv[1], order_by) is not _MISSING]
            items.sort(key=lambda kv: _field(kv[1], order_by))
        return items[:limit] if limit is not None else items

    def count(
        self, collection: str, where: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> int:
        """How many documents :meth:`query` would return, without reading them (a
        store's aggregation) unless this step has written into ``collection``."""
        if any(p.rsplit("/", 1)[0] == collection for p in self._dirty):
            return len(self.query(collection, where, limit=limit))
        return self._tx.count(collection, where, limit)

    @property
    def pending_writes(self) -> int:
        """Documents this step will write at its end."""
        return len(self._dirty)

    def put(self, path: str, doc: Doc) -> None:
        self._cache[path] = doc
        if self._dirty.get(path) != "create":
            self._dirty[path] = "set"

    def create(self, path: str, doc: Doc) -> None:
        self._cache[path] = doc
        self._dirty[path] = "create"

    def delete(self, path: str) -> None:
        self._cache[path] = None
        self._dirty[path] = "delete"

    def written(self) -> list[tuple[str, Doc]]:
        """The documents this step will set or create at its end (changes still count)."""
        out = []
        for path, op in self._dirty.items():
            doc = self._cache[path]
            if op != "delete" and doc is not None:
                out.append((path, doc))
        return out

    def flush(self) -> None:
        for path, op in self._dirty.items():
            doc = self._cache[path]
            if op == "delete" or doc is None:
                self._tx.delete(path)
            elif op == "create":
                self._tx.create(path, doc)
            else:
                self._tx.set(path, doc)


_MISSING = object()


def _field(doc: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = doc
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _matches(doc: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    for k, v in where.items():
        got = _field(doc, k)
        if got is _MISSING or got != v or type(got) is not type(v):
            return False
    return True


@dataclasses.dataclass
class Ctx:
    """What a mutation sees: the unit of work, the time, and the engine."""

    uow: Uow
    now_us: int
    engine: Engine


def task_name(*parts: str) -> str:
    """A queue task name derived from ``parts`` (deterministic, URL-safe)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
