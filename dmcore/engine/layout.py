"""Which version of dm's record layout a store holds, and the check on open.

dm's records (docs/layout.md) change shape between versions, and there is no
migration: an engine reading records of another layout would misread them
(an execution where it expects none, an edge it does not know) and stall or
lose work without saying so. So each store says which layout wrote it, in
one document, ``meta/layout``, written when the first engine opens an empty
store; an engine refuses, in plain words, a store of another layout or one
written before layouts were recorded. One read per engine start.

The same document records the sweep's shard count (``sweep_shards``: the
largest count any engine has stamped the store's records with). A record
keeps the ``sweep_shard`` it was given until it is written again, so an
engine configured with fewer shards than recorded still sweeps the recorded
count (nothing is stranded in a shard it no longer queries); more shards are
recorded, then swept by every engine. Only a change between no shards (1, no
shard field: SQLite) and shards is refused: neither sweep finds the other's
records.
"""

from __future__ import annotations

from typing import Any

from dmcore.engine.core import Settings
from dmcore.errors import FailedPrecondition
from dmcore.store.base import Store, Transaction

VERSION = 5
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
whether they declared dependencies (``declared``).

5: on SQLite, the sweep's due fields are also kept in ordered columns of the
attempt's row (docs/layout.md); a layout-4 dm writing such a file would let
them go stale, so it must refuse it. The records are as in 4: a layout-4
store is taken up (see ``TAKEN_UP``)."""

TAKEN_UP = frozenset({4})
"""Layouts whose records this dm reads as they are: opening such a store records
it as ``VERSION`` (nothing else is written), so that the dm that wrote it
refuses it from then on."""

PATH = "meta/layout"
SHARDS = "sweep_shards"
"""The field of ``PATH`` holding the largest sweep shard count records were stamped with."""

_RECORDS = ("quests", "attempts")
"""Collections every store with dm's work in it has documents in."""


class LayoutMismatch(FailedPrecondition):
    """The store holds dm's records in another layout than this dm's."""


def check(store: Store, where: str, afresh: str, *, sweep_shards: int) -> int:
    """Record this layout in an empty ``store``, or refuse one of another layout.

    ``where`` names the store for the message (a home folder, a Firestore
    database), ``afresh`` says how to start with an empty one; ``sweep_shards``
    is the engine's (``Settings.sweep_shards``). Returns how many shards the
    sweep must query: the larger of it and the count recorded. Raises
    :class:`LayoutMismatch`.
    """
    doc = store.get(PATH)  # outside a transaction: no write lock for the usual case
    if doc is None or int(doc["version"]) in TAKEN_UP or _to_record(doc, sweep_shards):
        doc = store.transaction(lambda tx: _read_or_record(tx, sweep_shards))
    found = None if doc is None else int(doc["version"])
    if found == VERSION:
        assert doc is not None
        return _swept(int(doc[SHARDS]), sweep_shards, where)
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


def check_settings(store: Store, where: str, afresh: str, settings: Settings) -> None:
    """:func:`check` for an engine's ``settings``: its sweep then covers every shard
    the store's records may carry (``Settings.swept_shards``)."""
    settings.swept_shards = check(store, where, afresh, sweep_shards=settings.sweep_shards)


def _swept(recorded: int, configured: int, where: str) -> int:
    if (recorded > 1) != (configured > 1):
        raise LayoutMismatch(
            f"{where} holds dm records for a sweep of {recorded} shard(s) "
            f"(sweep_shards, recorded in {PATH}); this dm is configured with "
            f"{configured}. Records stamped for one of these sweeps are never found by "
            f"the other: set sweep_shards back to {recorded}"
            + (", or any count above 1." if recorded > 1 else ".")
        )
    return max(recorded, configured)


def _read_or_record(tx: Transaction, sweep_shards: int) -> dict[str, Any] | None:
    """The store's layout document; an empty store is given this layout, and the
    shard count is recorded (raised to ``sweep_shards`` if larger, added where it
    is missing: every engine of this layout used the one it is configured with);
    a layout in ``TAKEN_UP`` is recorded as this one. None: records, no version."""
    doc = tx.get(PATH)
    if doc is None:
        for collection in _RECORDS:
            if tx.query(collection, limit=1):
                return None
        doc = {"version": VERSION, SHARDS: sweep_shards}
        tx.set(PATH, doc)
        return doc
    taken_up = int(doc["version"]) in TAKEN_UP
    if taken_up:
        doc = {**doc, "version": VERSION}
    if int(doc["version"]) != VERSION:
        return doc
    recording = _to_record(doc, sweep_shards)
    if recording:
        doc = {**doc, SHARDS: sweep_shards}
    if taken_up or recording:
        tx.set(PATH, doc)
    return doc


def _to_record(doc: dict[str, Any], sweep_shards: int) -> bool:
    """Whether ``sweep_shards`` is to be recorded in the layout document ``doc``
    (of this layout)."""
    if int(doc["version"]) != VERSION:
        return False
    recorded = doc.get(SHARDS)
    return recorded is None or 1 < int(recorded) < sweep_shards
