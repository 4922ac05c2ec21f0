"""Where dm's records live in the store, and small helpers on their documents.

Layout (DESIGN.md §4; SQLite mirrors Firestore)::

    quests/{qid}                                   Quest: desc, built_by, created
    attempts/{aid}                                 Attempt summary (state, counters, ...)
    attempts/{aid}/executions/{eid}                Execution (state, token hash, config snapshot)
    attempts/{aid}/fwd_deps/{dependee aid}         edge "aid depends on dependee"
    results/{aid}                                  the attempt's result object (up to 256 KiB)
    back_dep_groups/{aid}                          attempt_finished (terminal) flag
    back_dep_groups/{aid}/back_deps/{depender aid} reverse edge: propagated
    timers/{aid}|{eid}                             the execution's single armed timer
    polls/{aid}|{eid}                              when to poll a running execution's status
    expiries/{aid}                                 when a finished attempt's result expires
    outbox/{id}                                    follow-up tasks committed with their step

``aid`` is the encoded attempt ID (``<qid>|<inverted hex>``), ``eid`` the
encoded execution number. Times are integer microseconds since the epoch.
"""

from __future__ import annotations

from typing import Any

from dmcore.ids import AttemptID, ExecutionID

Doc = dict[str, Any]

QUESTS = "quests"
ATTEMPTS = "attempts"
RESULTS = "results"
BACK_DEP_GROUPS = "back_dep_groups"
TIMERS = "timers"
POLLS = "polls"
EXPIRIES = "expiries"
OUTBOX = "outbox"


INDEXED_FIELDS = ("satisfied", "propagated")
"""Fields the engine filters on in collections that grow large: open edges of a
fan-in (``fwd_deps``: satisfied) and unpropagated back edges (``back_deps``:
propagated). The SQLite store indexes them; Firestore indexes every field
anyway. (A quest's attempts are found by their id prefix, no index needed.)"""


def quest_path(qid: str) -> str:
    return f"{QUESTS}/{qid}"


def attempt_path(aid: AttemptID) -> str:
    return f"{ATTEMPTS}/{aid.encoded}"


def executions_collection(aid: AttemptID) -> str:
    return f"{ATTEMPTS}/{aid.encoded}/executions"


def execution_path(eid: ExecutionID) -> str:
    return f"{ATTEMPTS}/{eid.attempt_id.encoded}/executions/{eid.encoded_num}"


def fwd_deps_collection(aid: AttemptID) -> str:
    return f"{ATTEMPTS}/{aid.encoded}/fwd_deps"


def fwd_dep_path(depender: AttemptID, dependee: AttemptID) -> str:
    return f"{ATTEMPTS}/{depender.encoded}/fwd_deps/{dependee.encoded}"


def result_path(aid: AttemptID) -> str:
    return f"{RESULTS}/{aid.encoded}"


def back_dep_group_path(dependee: AttemptID) -> str:
    return f"{BACK_DEP_GROUPS}/{dependee.encoded}"


def back_deps_collection(dependee: AttemptID) -> str:
    return f"{BACK_DEP_GROUPS}/{dependee.encoded}/back_deps"


def back_dep_path(dependee: AttemptID, depender: AttemptID) -> str:
    return f"{BACK_DEP_GROUPS}/{dependee.encoded}/back_deps/{depender.encoded}"


def timer_path(eid: ExecutionID) -> str:
    return f"{TIMERS}/{eid.attempt_id.encoded}|{eid.encoded_num}"


def poll_path(eid: ExecutionID) -> str:
    return f"{POLLS}/{eid.attempt_id.encoded}|{eid.encoded_num}"


def expiry_path(aid: AttemptID) -> str:
    return f"{EXPIRIES}/{aid.encoded}"


def outbox_path(oid: str) -> str:
    return f"{OUTBOX}/{oid}"


def last_id(path: str) -> str:
    return path.rsplit("/", 1)[1]


def bump_modified(doc: Doc, now_us: int) -> None:
    """``modified`` strictly increases: now, or old + 1 µs if the clock has not moved."""
    doc["modified"] = max(now_us, int(doc.get("modified", 0)) + 1)
