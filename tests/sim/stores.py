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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dmcore.store.base import Transaction
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
        super().__init__(path, ordered_fields=(), **kwargs)
        if self.ordered_fields:
            raise ValueError(f"{path} has ordered columns: an older dm's file never had")

    def _refresh(self, conn: Any) -> None:
        """The older dm never takes up columns another process added."""
