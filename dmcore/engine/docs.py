"""Where dm's records live in the store, and small helpers on their documents.

Layout (DESIGN.md §4; SQLite mirrors Firestore)::

    quests/{qid}                                   Quest: desc, built_by, created
    attempts/{aid}                                 Attempt (state, counters, ``depended``:
                                                   anything depends on it, ``declared``: it
                                                   has forward edges, ``declaring``: a
                                                   declaration in parts under way, ...) and, in its
                                                   field ``ex``, its current execution
                                                   (state, token hash, config snapshot)
    attempts/{aid}/executions/{eid}                an earlier execution, archived when the
                                                   next one starts
    attempts/{aid}/fwd_deps/{dependee aid}         edge "aid depends on dependee": satisfied
    attempts/{aid}/back_deps/{depender aid}        reverse edge "depender depends on aid":
                                                   propagated (the end of aid reached it);
                                                   the first dependers are inline instead
                                                   (the attempt's ``dependers``)
    results/{aid}                                  the attempt's result object when large
                                                   (a small one is inline: ``result.object``)
    outbox/{id}                                    follow-up tasks committed with a step that
                                                   wrote no attempt (rare; Firestore only)

The current execution's single armed timer (``timer``, due at ``timer_due_us``),
its poll (``poll``, ``poll_due_us``) and a finished attempt's result expiry
(``expiry_due_us``) are fields of the attempt, written with the step that arms
them (no document of their own to write and delete). So are the follow-up tasks
a step committed and dispatched after its commit (``pending``, re-sent by the
sweep from ``pending_due_us`` on, unless a later write of the attempt by the
follow-up's own delivery cleared them first). The sweep finds the due ones by
an ordered query on the ``*_due_us`` field, which only attempts that have it
match, one query per shard (``sweep_shard``, from the attempt's id): a due
time only grows, and an index on it alone would hold its collection near
Firestore's 500 writes/s.

``aid`` is the encoded attempt ID (``<qid>|<inverted hex>``), ``eid`` the
encoded execution number. Times are integer microseconds since the epoch.

``meta/layout`` holds the version of this layout and the largest sweep shard
count the store's records were stamped with (:mod:`dmcore.engine.layout`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from dmcore.ids import AttemptID, ExecutionID

Doc = dict[str, Any]


class Reader(Protocol):
    """What reads records: a store, or a step's unit of work."""

    def get(self, path: str) -> Doc | None: ...

    def query(
        self,
        collection: str,
        where: dict[str, Any] | None = None,
        order_by: str | None = None,
        *,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]: ...


QUESTS = "quests"
ATTEMPTS = "attempts"
RESULTS = "results"
OUTBOX = "outbox"
TIMER_DUE = "timer_due_us"
POLL_DUE = "poll_due_us"
EXPIRY_DUE = "expiry_due_us"
PENDING = "pending"
"""Follow-up tasks committed with the attempt, each with its ``due_us`` (when the sweep
re-sends it if nothing cleared it before)."""
PENDING_DUE = "pending_due_us"
"""The earliest ``due_us`` of the attempt's pending follow-ups."""
SWEPT = (TIMER_DUE, POLL_DUE, EXPIRY_DUE, PENDING_DUE)
"""The attempt fields the sweep reads in time order. The SQLite store keeps them in
indexed columns of the attempt's row (its ``ordered_fields``), so a sweep reads only
the attempts that have one; Firestore indexes them with the shard (terraform)."""
SWEEP_SHARD = "sweep_shard"
"""Which of the sweep's shards the attempt is in (set with any of :data:`SWEPT`)."""


INDEXED_FIELDS = ("satisfied", "propagated")
"""Fields the engine filters on in collections that grow large: open edges of a
fan-in (``fwd_deps``: satisfied) and unpropagated back edges (``back_deps``:
propagated). The SQLite store keeps them in indexed columns of the row, as it does
:data:`SWEPT` (no JSON parsed on a write); Firestore indexes every field anyway.
(A quest's attempts are found by their id prefix, no index needed.)"""


def quest_path(qid: str) -> str:
    return f"{QUESTS}/{qid}"


def attempt_path(aid: AttemptID) -> str:
    return f"{ATTEMPTS}/{aid.encoded}"


def executions_collection(aid: AttemptID) -> str:
    return f"{ATTEMPTS}/{aid.encoded}/executions"


def execution_path(eid: ExecutionID) -> str:
    return f"{ATTEMPTS}/{eid.attempt_id.encoded}/executions/{eid.encoded_num}"


DEPENDED = "depended"
"""The attempt's flag: some attempt depends on it (set in a transaction that reads
the attempt: :func:`~dmcore.engine.deps.add_back_dep`, the ``EnsureAttempt`` of a
declaration, or a re-open). Its end looks for back edges only then, so a leaf's end
reads nothing more. An ended attempt is not flagged: an edge added then is acked at
once."""

DECLARED = "declared"
"""The attempt's flag: it has declared dependencies (forward edges). Created False,
set by the last part of its first declaration (a write of the attempt it makes
anyway when it halts); a walk queries the forward edges of an attempt only when it
is not False, so a leaf's place in an answer costs its attempt document alone."""

QUEST_CREATED = "quest_created"
"""The attempt's copy of its quest's creation time (immutable), set when the attempt
is created in the commit that read or created its quest (``MergeQuest``): a memoised
answer shows each quest's ``created`` from its attempt and reads no quest document.
Absent on attempts created before it was kept: their quest is read."""

DECLARING = "declaring"
"""The attempt's claim while its execution records a declaration in parts (W-14):
``{"execution": n, "call": name, "until_us": t}``. Taken before the first part and
before the declaration's cycle check (:func:`~dmcore.engine.deps.declaring`), dropped
by the last part; while it holds, another declaration whose cycle walk reaches this
attempt is told to try again (its future edges are not recorded yet), and so is
another declaration of the same execution. ``call`` names the declaration that took
it (a hash of what it declares, ``Service._declare_deps``): only it renews or drops
it, each of its parts writes only while it holds, and the same declaration made
again (a retry of a call that died between its parts) takes it over."""

CURRENT = "ex"
"""The attempt's field holding its current execution: the steps of an execution
read and write one document (its attempt), not two."""


def current_execution(att: Doc | None, eid: ExecutionID) -> Doc | None:
    """Execution ``eid`` if it is ``att``'s current one (None otherwise)."""
    if att is None or int(att.get("cur_execution", 0)) != eid.num:
        return None
    ex: Doc | None = att.get(CURRENT)
    return ex


def read_execution(reader: Reader, eid: ExecutionID, att: Doc | None = None) -> Doc | None:
    """Execution ``eid``: on its attempt (read unless given) if current, else archived."""
    if att is None:
        att = reader.get(attempt_path(eid.attempt_id))
        if att is None:
            return None
    ex = current_execution(att, eid)
    if ex is not None or eid.num >= int(att.get("cur_execution", 0)):
        return ex
    return reader.get(execution_path(eid))


def list_executions(reader: Reader, aid: AttemptID, att: Doc) -> list[Doc]:
    """Every execution of attempt ``att`` in order (the archive read only if it has any)."""
    out: list[Doc] = []
    if int(att.get("cur_execution", 0)) > 1:
        rows = reader.query(executions_collection(aid), order_by="num", limit=None)
        out = [doc for _, doc in rows if int(doc["num"]) < int(att["cur_execution"])]
    if att.get(CURRENT) is not None:
        out.append(att[CURRENT])
    return out


def fwd_deps_collection(aid: AttemptID) -> str:
    return f"{ATTEMPTS}/{aid.encoded}/fwd_deps"


def fwd_dep_path(depender: AttemptID, dependee: AttemptID) -> str:
    return f"{ATTEMPTS}/{depender.encoded}/fwd_deps/{dependee.encoded}"


def result_path(aid: AttemptID) -> str:
    return f"{RESULTS}/{aid.encoded}"


INLINE_RESULT_BYTES = 32 * 1024
"""Results up to this size live on their attempt (``result``: object, size, execution,
expiration), written with it: no document of their own. Larger ones (up to 256 KiB)
go to ``results/{aid}``, keeping the attempt, which also holds its current
execution, far from Firestore's 1 MiB."""


def read_result(reader: Reader, aid: AttemptID, att: Doc | None = None) -> Doc | None:
    """Attempt ``aid``'s result (object, size, execution[, expiration_us]), inline on
    its attempt (read unless given) or in its own record; None if it has none."""
    if att is None:
        att = reader.get(attempt_path(aid))
    summary: Doc | None = (att or {}).get("result")
    if summary is not None and "object" in summary:
        return summary
    if att is not None and summary is None:
        return None
    return reader.get(result_path(aid))


DEPENDERS = "dependers"
"""The attempt's first dependers (encoded ids), inline: their reverse edges cost
no document of their own (a fan-in's shard is created with its one depender)."""
INLINE_DEPENDERS = 8
"""Dependers kept inline on an attempt; more get a back-edge document each, so a
hub of many dependers is written at most this many times for them."""


def list_dependers(reader: Reader, dependee: AttemptID, att: Doc | None) -> list[AttemptID]:
    """Every depender of attempt ``att``: inline, then those with a back-edge document."""
    inline: list[str] = (att or {}).get(DEPENDERS, [])
    rows = reader.query(back_deps_collection(dependee), limit=None)
    # A depender may be in both (recorded before its dependee existed, then again).
    found = dict.fromkeys([*inline, *(last_id(p) for p, _ in rows)])
    return [AttemptID.decode(a) for a in found]


def back_deps_collection(dependee: AttemptID) -> str:
    return f"{ATTEMPTS}/{dependee.encoded}/back_deps"


def back_dep_path(dependee: AttemptID, depender: AttemptID) -> str:
    return f"{ATTEMPTS}/{dependee.encoded}/back_deps/{depender.encoded}"


def timer_of(att: Doc | None, eid: ExecutionID) -> Doc | None:
    """Execution ``eid``'s armed timer, on its attempt ``att`` (None: none armed)."""
    timer: Doc | None = (att or {}).get("timer")
    return timer if timer is not None and timer["eid"] == str(eid) else None


def poll_of(att: Doc | None, eid: ExecutionID) -> Doc | None:
    """Execution ``eid``'s scheduled poll, on its attempt ``att`` (None: not polled)."""
    poll: Doc | None = (att or {}).get("poll")
    return poll if poll is not None and poll["eid"] == str(eid) else None


def outbox_path(oid: str) -> str:
    return f"{OUTBOX}/{oid}"


def sweep_shard(path: str, shards: int) -> int:
    """The sweep shard of the document at ``path``: spread evenly by a hash of its id."""
    digest = hashlib.sha256(last_id(path).encode()).digest()
    return int.from_bytes(digest[:4], "big") % shards


def is_attempt_path(path: str) -> bool:
    """Whether ``path`` is an attempt's own document (not one under it)."""
    head, _, rest = path.partition("/")
    return head == ATTEMPTS and bool(rest) and "/" not in rest


def last_id(path: str) -> str:
    return path.rsplit("/", 1)[1]


def bump_modified(doc: Doc, now_us: int) -> None:
    """``modified`` strictly increases: now, or old + 1 µs if the clock has not moved."""
    doc["modified"] = max(now_us, int(doc.get("modified", 0)) + 1)
