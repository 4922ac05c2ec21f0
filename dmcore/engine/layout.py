"""Which version of dm's record layout a store holds, and the check on open.

dm's records (docs/layout.md) change shape between versions, and there is no
migration: an engine reading records of another layout would misread them
(an execution where it expects none, an edge it does not know) and stall or
lose work without saying so. So each store says which layout wrote it, in
one document, ``meta/layout``, written when the first engine opens an empty
store; an engine refuses, in plain words, a store of another layout or one
written before layouts were recorded. One read per engine start.
"""

from __future__ import annotations

from dmcore.errors import FailedPrecondition
from dmcore.store.base import Store, Transaction

VERSION = 4
"""The layout this dm reads and writes. Raise it with any change to what
docs/layout.md describes that an older or newer engine would misread.

2: follow-ups pending on attempts, sweep shards (an older engine would never
re-send the former; this one would not sweep attempts or outbox records without
the latter).

3: no ``back_dep_groups``; reverse edges inline on the dependee's attempt
(``dependers``), past the first 8 in ``attempts/{aid}/back_deps``.

4: a declaration creates a new dependee with its depender inline, so an attempt
with fewer than 8 inline dependers, never re-opened, has no back-edge document
to look for when it ends (a layout-3 store may hold one); attempts record
whether they declared dependencies (``declared``)."""

PATH = "meta/layout"

_RECORDS = ("quests", "attempts")
"""Collections every store with dm's work in it has documents in."""


class LayoutMismatch(FailedPrecondition):
    """The store holds dm's records in another layout than this dm's."""


def check(store: Store, where: str, afresh: str) -> None:
    """Record this layout in an empty ``store``, or refuse one of another layout.

    ``where`` names the store for the message (a home folder, a Firestore
    database), ``afresh`` says how to start with an empty one. Raises
    :class:`LayoutMismatch`.
    """
    doc = store.get(PATH)  # outside a transaction: no write lock for the usual case
    found = int(doc["version"]) if doc is not None else store.transaction(_read_or_record)
    if found == VERSION:
        return
    if found is None:
        raise LayoutMismatch(
            f"{where} holds dm records written by an older dm, before record layouts "
            f"were versioned; this dm reads layout {VERSION} only and cannot migrate "
            f"them. Start afresh ({afresh}), or finish its work with the dm that "
            "wrote it."
        )
    newer = found > VERSION
    raise LayoutMismatch(
        f"{where} holds dm records in layout {found}; this dm reads layout {VERSION} only. "
        + (
            "Upgrade dm to the version that wrote them."
            if newer
            else f"Start afresh ({afresh}), or finish its work with the dm that wrote it."
        )
    )


def _read_or_record(tx: Transaction) -> int | None:
    """The store's layout; an empty store is given this one. None: records, no version."""
    doc = tx.get(PATH)
    if doc is not None:
        return int(doc["version"])
    for collection in _RECORDS:
        if tx.query(collection, limit=1):
            return None
    tx.set(PATH, {"version": VERSION})
    return VERSION
