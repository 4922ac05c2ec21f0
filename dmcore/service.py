"""The dm.Deps operations: EnsureGraphData, ActivateExecution, FinishAttempt,
WalkGraph and CancelAttempt (spec §3), on top of the engine.

Every request is validated before anything is written; bad input raises
:class:`~dmcore.errors.InvalidArgument` naming the field, auth failures
``Unauthenticated`` / ``PermissionDenied``. Entry points (CLI, functions)
only decode, call these and encode.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hashlib
import itertools
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from dmcore import distributor as dist
from dmcore import ids, jsonnorm
from dmcore.engine import deps, docs, records, steps
from dmcore.engine.core import Engine
from dmcore.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState, is_terminal_attempt
from dmcore.store.base import Store

log = logging.getLogger("dm.service")

MAX_DATA_SIZE_DEFAULT = 16 * 1024 * 1024
MAX_DATA_SIZE_CAP = 30 * 1024 * 1024
MAX_WALK_TIME_US = 55_000_000
MIN_EXECUTION_TOKEN = 32
DECLARE_CHUNK = 32
"""Dependencies one transaction records (W-14): a new one is read and created there
with its quest and its edge (three documents), so with the waiter's attempt a
commit touches about 100 documents (issue 11), far under Firestore's 500 writes."""
MAX_RANGE_ATTEMPTS = 100_000
"""Most attempts a WalkGraph query may name through its attempt ranges, all together:
each is a read, and the walk's 55 s budget would not reach much further."""
ENSURE_CHUNK = 60
"""Attempts (or quests) one EnsureGraphData transaction reads and creates: each new
one runs up to four steps inline (quest, attempt, its execution), under the engine's
MAX_INLINE, and writes a few documents, under Firestore's 500 writes per commit."""


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who is calling, and what the ACLs (spec §3.7) let them do without a token."""

    identity: str
    can_read: bool
    can_write: bool

    @classmethod
    def trusted(cls, identity: str = "local") -> Caller:
        """A local caller with every right (embedded mode, tests)."""
        return cls(identity, True, True)

    @classmethod
    def anonymous(cls) -> Caller:
        return cls("anonymous", False, False)


def _data_limit(requested: int, field: str) -> int:
    if requested == 0:
        return MAX_DATA_SIZE_DEFAULT
    return min(int(requested), MAX_DATA_SIZE_CAP)


def _check_nums(nums: Iterable[int], field: str, *, allow_all: bool) -> list[int]:
    """AttemptList normalisation: descending, unique; [] / [0] = all (when allowed)."""
    got = sorted(set(nums), reverse=True)  # ints already (a proto's repeated int field)
    if got in ([], [0]):
        if not allow_all:
            raise InvalidArgument(f"{field}: must list attempt numbers (>= 1)")
        return []
    if 0 in got:
        raise InvalidArgument(f"{field}: 0 (all attempts) cannot be mixed with attempt numbers")
    return got


def _set_us(ts: Any, us: int) -> None:
    """``ts.FromMicroseconds(us)`` for a stored time (always in range): its range check
    and float-free arithmetic cost more than the two fields (an answer sets thousands)."""
    seconds, micros = divmod(us, 1_000_000)
    ts.seconds = seconds
    ts.nanos = micros * 1000


def _as_stored(descs: Mapping[str, bytes]) -> dict[str, str]:
    """Quest descriptions (ID -> wire bytes) as a quest document holds them (base64)."""
    return {q: binascii.b2a_base64(w, newline=False).decode() for q, w in descs.items()}


def _auth_eid(auth: dm_pb2.Execution.Auth, field: str) -> ExecutionID:
    if not auth.HasField("id"):
        raise InvalidArgument(f"{field}.id: required")
    return ExecutionID.from_proto(auth.id, f"{field}.id")


Loader = Callable[[Sequence[AttemptID]], Mapping[str, "docs.Doc | None"]]
"""Reads the documents of a chunk of a walk's query attempts and of their quests,
by path (absent: None)."""


@dataclasses.dataclass(frozen=True)
class _Ensure:
    """An EnsureGraphData request without an execution, checked: what its answer
    paths (memoised, writing) share."""

    req: dm_pb2.EnsureGraphDataReq
    rsp: dm_pb2.EnsureGraphDataRsp
    """The answer, filled in place."""
    supplied: Mapping[str, bytes]
    """Quest ID -> its normalised description's wire bytes (what the ID hashes)."""
    aids: list[AttemptID]
    """The attempts asked for, each once."""
    max_size: int
    """The answer's data budget (``limit.max_data_size``, checked)."""


class _NotMemoised(Exception):
    """A memoised answer's read found a quest or an attempt absent: the request writes."""


_UNREAD: Any = object()
"""Not read ahead (an absent document is read ahead as None)."""


class _ReadAhead:
    """The documents a walk reads, in bulk ahead of its steps: a query may name
    thousands of attempts (a memoised request's answer), and one read per chunk
    of them costs far less than one per attempt and one per quest."""

    CHUNK = 500
    LOAD_CHUNK = 2 * ENSURE_CHUNK
    """A chunk read by a ``load`` (EnsureGraphData's parts, one transaction per
    ENSURE_CHUNK attempts anyway): smaller, so that its decoded documents are let
    go younger (the garbage collector's passes over them took 8% of a memoised
    re-run of 10,000 quests with chunks of 500, 5% with these)."""

    def __init__(self, store: Store, load: Loader | None = None) -> None:
        """``load``: how a chunk of query attempts is read (by default, their
        documents and their quests'); its documents are held only until the walk
        has used them (a request may name 100,000 attempts)."""
        self.store = store
        self.load = load
        self.chunk = self.CHUNK if load is None else self.LOAD_CHUNK
        self.docs: dict[str, docs.Doc | None] = {}
        self.edges: dict[str, list[tuple[str, docs.Doc]]] = {}

    def fwd_edges(self, aid: AttemptID) -> list[tuple[str, docs.Doc]]:
        """The forward edges of ``aid``: read ahead (then dropped) or now."""
        coll = docs.fwd_deps_collection(aid)
        got = self.edges.pop(coll, None)
        return self.store.query(coll) if got is None else got

    def get(self, path: str) -> docs.Doc | None:
        """The document at ``path``: read ahead (then dropped: a walk uses it once) or now."""
        got = self.docs.pop(path, _UNREAD)
        return self.store.get(path) if got is _UNREAD else got

    def starts(
        self,
        starts: Iterable[tuple[AttemptID, int, bool]],
        out: dm_pb2.GraphData,
        *,
        quest_data: bool,
        excluded_quests: set[str],
        fwd_edges: Callable[[docs.Doc], bool] | None,
    ) -> Iterator[tuple[AttemptID, int, bool]]:
        """``starts``, the attempts of each chunk (and their quests whose data the
        walk shows, not in ``out`` yet) read in one go before the chunk is walked,
        and the forward edges of those whose document ``fwd_edges`` says the walk
        reads them of.
        ``starts`` holds no excluded attempt: nothing is read that is not shown."""
        it = iter(starts)
        entries = out.quests  # (each look-up of a protobuf field makes a wrapper)
        while chunk := list(itertools.islice(it, self.chunk)):
            if self.load is not None:
                self.docs.update(self.load([a for a, _, _ in chunk]))
            else:
                paths = dict.fromkeys(docs.attempt_path(a) for a, _, _ in chunk)
                if quest_data:
                    paths.update(
                        dict.fromkeys(
                            docs.quest_path(a.quest)
                            for a, _, _ in chunk
                            if a.quest not in entries and a.quest not in excluded_quests
                        )
                    )
                missing = [p for p in paths if p not in self.docs]
                if missing:
                    self.docs.update(self.store.get_many(missing))
            if fwd_edges is not None:
                # Only edges the walk reads (on Firestore a query costs a read even
                # when it finds nothing): an absent attempt has none.
                colls = []
                got = self.docs.get
                for a, _, _ in chunk:
                    doc = got(docs.attempt_path(a))
                    # (A leaf, most of a large answer, fails the first test: no call.)
                    if doc is not None and doc.get(docs.DECLARED) is not False and fwd_edges(doc):
                        colls.append(docs.fwd_deps_collection(a))
                if colls:
                    self.edges.update(self.store.query_collections(colls))
            yield from chunk


def _declaration_call(
    eid: ExecutionID, token: bytes, aids: Iterable[AttemptID], quests: Iterable[str]
) -> str:
    """The name of a declaration in parts in its claim (docs.DECLARING): made of
    what it declares (the execution, its token, the dependees and the quests it
    describes, in any order), so that the same declaration made again (a client's
    retry after a dropped connection, a job's next delivery) is the same call: it
    takes over the claim of a call that died between its parts instead of waiting
    for its lease. A different declaration of the execution is another call, and
    waits."""
    h = hashlib.sha256(f"{eid}\n".encode())
    # (The token's hash, which the execution stores already: no new value made of it.)
    h.update(records.token_hash(token).encode())
    for name in (*sorted(a.encoded for a in aids), "", *sorted(quests)):
        h.update(b"\n" + name.encode())
    return base64.urlsafe_b64encode(h.digest()[:18]).decode()


class Service:
    """dm.Deps bound to one engine."""

    def __init__(
        self, engine: Engine, *, between_parts: Callable[[ExecutionID, int], None] | None = None
    ) -> None:
        self.engine = engine
        self.declare_chunk = max(DECLARE_CHUNK, (engine.store.transaction_docs or 0) // 3)
        self.between_parts = between_parts
        """Called between two parts of a declaration (execution, index of the next
        part): what other callers do there (a test's or the simulation's hook)."""

    # -- EnsureGraphData --------------------------------------------------------------

    def ensure_graph_data(
        self, req: dm_pb2.EnsureGraphDataReq, caller: Caller
    ) -> dm_pb2.EnsureGraphDataRsp:
        if len(req.quest) != len(req.quest_attempt):
            raise InvalidArgument("quest, quest_attempt: must have the same length")
        if req.template_quest or req.template_attempt:
            raise InvalidArgument("template_quest: quest templates are not supported")
        if not req.quest and not req.raw_attempts.to:
            raise InvalidArgument("quest, raw_attempts: at least one must be non-empty")
        max_size = _data_limit(req.limit.max_data_size, "limit.max_data_size")
        eid: ExecutionID | None = None
        if req.HasField("for_execution"):
            # The token is checked before anything of the request's graph is read: in
            # DeclareDeps' transaction (a forged one costs one read and learns nothing).
            eid = _auth_eid(req.for_execution, "for_execution")
        elif not caller.can_write:
            raise PermissionDenied(f"{caller.identity} may not create quests (not a writer)")

        # Render every quest first: nothing is written unless all are valid.
        rsp = dm_pb2.EnsureGraphDataRsp()
        # Quest ID -> its normalised description's wire bytes (what its ID hashes): for
        # the answer, which parses them; bytes, not the messages, so that 10,000 quests
        # leave no 10,000 objects for the garbage collector to trace (a full collection
        # traced them in a memoised re-run: 15% of it).
        supplied: dict[str, bytes] = {}
        wanted: dict[AttemptID, None] = {}
        built: dict[str, dist.D] = {}  # per config name: a request names few, for many quests
        valid: set[tuple[str, str]] = set()
        add_quest_id = rsp.quest_ids.add  # (each look-up of a protobuf field makes a wrapper)
        for i, (desc, nums) in enumerate(zip(req.quest, req.quest_attempt, strict=True)):
            try:
                norm = ids.normalize_desc(desc)
            except InvalidArgument as e:
                raise InvalidArgument(f"quest[{i}].{e.message}") from None
            qid, wire = ids.quest_id_and_wire(norm)
            if (norm.distributor_config_name, norm.distributor_parameters) not in valid:
                self._validate_distributor(norm, f"quest[{i}]", built, valid)
            supplied[qid] = wire
            add_quest_id(id=qid)
            listed = nums.nums
            if len(listed) == 1 and listed[0] > 0:  # the common case: no field name made
                wanted[AttemptID(qid, listed[0])] = None
                continue
            for n in _check_nums(listed, f"quest_attempt[{i}]", allow_all=False):
                wanted[AttemptID(qid, n)] = None
        for qid, nums in sorted(req.raw_attempts.to.items()):
            ids.check_quest_id(qid, f"raw_attempts[{qid}]")
            for n in _check_nums(nums.nums, f"raw_attempts[{qid}]", allow_all=False):
                wanted[AttemptID(qid, n)] = None

        aids = list(wanted)
        if eid is None:
            return self._ensure_graph(_Ensure(req, rsp, supplied, aids, max_size))

        return self._declare_deps(req, rsp, eid, aids, supplied, _as_stored(supplied), max_size)

    def _ensure_graph(self, call: _Ensure) -> dm_pb2.EnsureGraphDataRsp:
        """Without an execution: create what is missing, answer with the state before.

        Each part reads its quests and attempts in the transaction that creates the
        missing ones (:class:`~dmcore.engine.steps.EnsureGraph`), and the answer is
        made of what it read: each document is read once. A memoised request (all
        there) is answered without them where the store allows
        (:meth:`_answer_memoised`); on other stores it commits read-only ones.
        """
        eng, rsp, aids = self.engine, call.rsp, call.aids
        if self._answer_memoised(call):
            rsp.accepted = True
            return rsp
        stored = _as_stored(call.supplied)  # (a memoised answer writes none)
        # A quest named only by raw_attempts must exist: checked before anything is
        # written (a part created already would stay, the request half done).
        raw_only = sorted({a.quest for a in aids} - set(call.supplied))
        if raw_only:
            got = eng.store.get_many([docs.quest_path(q) for q in raw_only])
            for q in raw_only:
                if got[docs.quest_path(q)] is None:
                    raise InvalidArgument(f'cannot create attempts for absent quest "{q}"')

        # Each chunk of the answer's attempts is ensured (read, and created where
        # missing) just before the walk answers for it, from what the ensure read:
        # each document is read once, and held only until the answer has it (a
        # request may name 100,000 attempts).
        def ensure(chunk: Sequence[AttemptID]) -> dict[str, docs.Doc | None]:
            seen: dict[str, docs.Doc | None] = {}
            for start in range(0, len(chunk), ENSURE_CHUNK):
                part = chunk[start : start + ENSURE_CHUNK]
                step = steps.EnsureGraph(
                    quests={q: d for a in part if (d := stored.get(q := a.quest)) is not None},
                    attempts=[a.encoded for a in part],
                )
                eng.run(step)
                seen.update(step.seen)
            return seen

        # One commit for the whole request where the backend allows (embedded).
        with eng.batch():
            self._answer_loading_all(call, ensure)
        rsp.accepted = True
        return rsp

    def _answer_memoised(self, call: _Ensure) -> bool:
        """A memoised request (every quest and every asked attempt exists: nothing to
        write) answered from one read-only snapshot, without the write lock, where the
        store has a cheap one (:meth:`~dmcore.store.base.Store.read_view`: SQLite).

        False, ``call.rsp`` as it was: the store has no such view, or something is absent;
        then the request takes its writing path, which reads again in its own
        transactions (check-then-write stays atomic). The reads are those the
        writing path's parts make, so the answer is the same.
        """
        view = self.engine.store.read_view()
        if view is None:
            return False
        supplied = call.supplied
        fields = (*steps.EnsureGraph.ANSWERED, docs.QUEST_CREATED)

        def load(chunk: Sequence[AttemptID]) -> dict[str, Any]:
            # (the parts are Mappings, read only: the walk never writes a document)
            paths = [docs.attempt_path(a) for a in chunk]
            parts = reader.peek_many(paths, fields)
            got: dict[str, Any] = {}
            unread: list[str] = []
            for a, p in zip(chunk, paths, strict=True):
                part = parts[p]
                if part is None:
                    raise _NotMemoised
                created = part[docs.QUEST_CREATED]
                if created is not None and a.quest in supplied:
                    # The quest exists (its attempt does), and all the answer shows of
                    # it is its supplied description and when it was created.
                    got[docs.quest_path(a.quest)] = {"created": created}
                else:
                    unread.append(docs.quest_path(a.quest))
            if unread:
                quests = reader.get_many(list(dict.fromkeys(unread)))
                if None in quests.values():
                    raise _NotMemoised
                got.update(quests)
            got.update(parts)
            return got

        try:
            with view as reader:
                self._answer_loading_all(call, load)
        except _NotMemoised:
            call.rsp.result.Clear()
            return False
        return True

    def _answer_loading_all(self, call: _Ensure, load: Loader) -> None:
        """EnsureGraphData's answer, each chunk of its attempts read by ``load`` (which
        creates, or checks, what it reads); the chunks the walk did not reach (it ran
        out of time) are loaded all the same."""
        reached: list[Sequence[AttemptID]] = []

        def tracked(chunk: Sequence[AttemptID]) -> Mapping[str, docs.Doc | None]:
            reached.append(chunk)
            return load(chunk)

        aids, out = call.aids, call.rsp.result
        self._snapshot_graph(
            aids,
            call.req.include.attempt.result,
            call.max_size,
            load=tracked,
            out=out,
            descs=call.supplied,
        )
        if out.had_more:
            done = {a.encoded for chunk in reached for a in chunk}
            rest = [a for a in aids if a.encoded not in done]
            for start in range(0, len(rest), _ReadAhead.CHUNK):
                load(rest[start : start + _ReadAhead.CHUNK])

    def _check_execution_token(
        self, eid: ExecutionID, token: bytes, *, retry_ok: bool
    ) -> docs.Doc | None:
        """One read: the execution exists, runs and ``token`` is its token, else Unauthenticated.

        ``retry_ok``: a token already revoked by a halting EnsureGraphData also
        passes (that call's retry after a lost answer, W-6; DeclareDeps decides).
        Returns the attempt's document as read (None: an archived execution).
        """
        att = self.engine.store.get(docs.attempt_path(eid.attempt_id))
        ex = None if att is None else docs.read_execution(self.engine.store, eid, att)
        live = ex is not None and (
            (ex["state"] == ExecutionState.RUNNING and ex.get("token_state") == "execution")
            or (retry_ok and ex.get("token_state") == "revoked")
        )
        if not live or ex is None or not records.token_matches(ex, token):
            raise Unauthenticated("bad execution auth")
        return att

    def _validate_distributor(
        self,
        desc: dm_pb2.Quest.Desc,
        field: str,
        built: dict[str, dist.D],
        valid: set[tuple[str, str]],
    ) -> None:
        """``built``: the distributors this request has built so far, by config name;
        ``valid``: the (config name, distributor parameters) it has found valid (a
        request's quests share a few)."""
        name = desc.distributor_config_name
        if (name, desc.distributor_parameters) in valid:
            return
        d = built.get(name)
        if d is None:
            try:
                d, _ = self.engine.registry.build_named(name)
            except dist.UnknownConfig as e:
                raise InvalidArgument(f"{field}.distributor_config_name: {e.message}") from None
            built[name] = d
        try:
            d.validate(desc.distributor_parameters)
        except (ValueError, InvalidArgument) as e:
            raise InvalidArgument(f"{field}.distributor_parameters: {e}") from None
        valid.add((name, desc.distributor_parameters))

    def _declare_deps(  # noqa: PLR0917 - internal, called once
        self,
        req: dm_pb2.EnsureGraphDataReq,
        rsp: dm_pb2.EnsureGraphDataRsp,
        eid: ExecutionID,
        aids: list[AttemptID],
        supplied: Mapping[str, bytes],
        quests: Mapping[str, str],
        max_size: int,
    ) -> dm_pb2.EnsureGraphDataRsp:
        """Declare the dependencies: each part reads its dependees in the transaction
        that records their edges (:class:`~dmcore.engine.steps.DeclareDeps`), and
        the answer is made of what the parts read: each attempt is read once.
        ``quests``: the supplied descriptions as a quest document holds them."""
        me = eid.attempt_id
        store = self.engine.store
        if me in aids:
            raise InvalidArgument(f"attempt {me}: an attempt cannot depend on itself")
        chunk_size = self.declare_chunk
        chunks = [aids[i : i + chunk_size] for i in range(0, len(aids), chunk_size)] or [[]]
        token_b64 = base64.b64encode(req.for_execution.token).decode()
        call = ""
        if len(chunks) > 1:
            call = _declaration_call(eid, req.for_execution.token, aids, quests)
            # Parts commit one by one: what one declaration refuses in its transaction
            # (a forged token, an absent quest named by raw_attempts, a cycle) is
            # refused before the first (and each part checks its own again).
            self._check_cycles_of_parts(eid, token_b64, aids, supplied, call)
        named = {a.quest for a in aids}
        unnamed = {q: d for q, d in quests.items() if q not in named}
        seen: dict[str, docs.Doc | None] = {}
        halts = False
        lost = False
        n = 0
        while n < len(chunks):
            chunk = chunks[n]
            last = n == len(chunks) - 1
            if n and self.between_parts is not None:
                self.between_parts(eid, n)
            # A supplied quest none of whose attempts is named: with the last part. (Per
            # part, not over every quest: a declaration of N in N/32 parts stays O(N).)
            part_quests = {a.quest: quests[a.quest] for a in chunk if a.quest in quests}
            if last:
                part_quests.update(unnamed)
            # Too many edges for one transaction (W-14): record them in parts (each
            # about DECLARE_CHUNK documents), inert until the last part decides.
            step = steps.DeclareDeps(
                eid=str(eid),
                token_b64=token_b64,
                deps=[a.encoded for a in chunk],
                quests=part_quests,
                part=not last,
                parts_halt=halts,
                claimed=len(chunks) > 1,
                call=call,
            )
            try:
                self.engine.run(step)
            except deps.ClaimLost:
                if lost:
                    raise
                # Nothing of this part written. Its lease ran out between parts, or
                # the same call made again at once (a client's retry) recorded the
                # whole declaration and dropped the claim: checked again under a new
                # claim and recorded again from its first part (each part is
                # idempotent), once. Not from here on: what the earlier parts read
                # (a dependee running then, over now) must not halt an execution
                # that the other call's answer let go on.
                lost = True
                self._check_cycles_of_parts(eid, token_b64, aids, supplied, call)
                seen.clear()
                halts = False
                n = 0
                continue
            halts = halts or step.halted
            seen.update(step.seen)
            n += 1
        rsp.accepted = True
        if halts:
            rsp.should_halt = True
            return rsp

        # Every dependee was over when its part read it: the answer is what was read.
        def load(chunk: Sequence[AttemptID]) -> dict[str, docs.Doc | None]:
            paths = [docs.attempt_path(a) for a in chunk]
            got = {p: seen.pop(p) for p in paths if p in seen}
            rest = [p for p in paths if p not in got]
            rest += dict.fromkeys(docs.quest_path(a.quest) for a in chunk)
            got.update(store.get_many(rest))
            return got

        self._snapshot_graph(
            aids, req.include.attempt.result, max_size, load=load, out=rsp.result, descs=supplied
        )
        return rsp

    def _check_cycles_of_parts(
        self,
        eid: ExecutionID,
        token_b64: str,
        aids: list[AttemptID],
        supplied: Mapping[str, bytes],
        call: str,
    ) -> None:
        """Before a declaration's first part: its attempt's claim taken by call
        ``call`` (a forged token refused first, so it learns nothing of the quests),
        then the whole declaration checked (absent quests, cycles), so that no part
        refuses one after another committed (a partial write of a refused call).

        A cycle closed meanwhile by another declaration would need an edge recorded
        after the claim by a walk that passed through this attempt: that walk met
        the claim and its caller was told to try again (deps.reject_cycles). A
        refused declaration drops its claim.
        """
        me = eid.attempt_id
        store = self.engine.store
        claim = steps.DeclareDeps(eid=str(eid), token_b64=token_b64, deps=[], claim=True, call=call)
        self.engine.run(claim)
        if claim.halted:
            return  # a retry of a declaration that halted: decided, each part confirms
        att = claim.seen[docs.attempt_path(me)]
        try:
            raw_only = sorted({a.quest for a in aids} - set(supplied))
            got = store.get_many([docs.quest_path(q) for q in raw_only])
            for q in raw_only:
                if got[docs.quest_path(q)] is None:
                    raise InvalidArgument(f'cannot create attempts for absent quest "{q}"')
            # A cycle closes through an edge into this attempt: none if nothing depends
            # on it (docs.DEPENDED, set in the commit of any edge into a live attempt).
            if att.get(docs.DEPENDED) is False:
                return
            known = store.get_many([docs.attempt_path(a) for a in aids])
            over = records.attempt_is_terminal
            live = [a for a in aids if not over(known[docs.attempt_path(a)])]
            deps.reject_cycles(
                lambda p: known[p] if p in known else store.get(p),
                store.query,
                me,
                live,
                claims_at_us=self.engine.clock(),
            )
        except Unavailable:
            if claim.took_over:
                # The claim may be another call's of this same declaration, still
                # recording its parts: dropping it would let a cycle close through
                # edges that call has yet to write. It lapses if that call died.
                raise
            self._drop_claim(eid, token_b64, call)
            raise
        except InvalidArgument:
            self._drop_claim(eid, token_b64, call)
            raise

    def _drop_claim(self, eid: ExecutionID, token_b64: str, call: str) -> None:
        """Drop call ``call``'s claim on ``eid``'s attempt (a declaration refused
        before its first part)."""
        drop = steps.DeclareDeps(
            eid=str(eid), token_b64=token_b64, deps=[], unclaim=True, call=call
        )
        self.engine.run(drop)

    def _snapshot_graph(
        self,
        aids: list[AttemptID],
        results: bool,
        max_size: int,
        *,
        load: Loader | None = None,
        out: dm_pb2.GraphData | None = None,
        descs: Mapping[str, bytes] | None = None,
    ) -> dm_pb2.GraphData:
        """The named attempts and their direct dependencies (into ``out`` if given);
        ``load``, ``descs``: as :meth:`_walk`'s."""
        req = dm_pb2.WalkGraphReq()
        # Spec §2.1/§3.2: the named attempts and their direct dependencies.
        req.limit.max_depth = 1
        req.limit.max_data_size = max_size
        req.include.quest.data = True
        req.include.attempt.data = True
        req.include.attempt.result = results
        req.include.attempt.abnormal = True
        req.include.attempt.expired = True
        # As WalkGraph orders a query's attempts: quests sorted, numbers descending.
        # (An encoded ID is "<quest>|<inverted number>": the same order, a C-level key.)
        starts = sorted(aids, key=operator.attrgetter("encoded"))  # aids: no repeats
        return self._walk(req, authorized_all=True, starts=starts, load=load, out=out, descs=descs)

    # -- ActivateExecution / FinishAttempt ----------------------------------------------------

    def activate_execution(self, req: dm_pb2.ActivateExecutionReq) -> None:
        eid = _auth_eid(req.auth, "auth")
        if len(req.execution_token) < MIN_EXECUTION_TOKEN:
            raise InvalidArgument(
                f"execution_token: must be at least {MIN_EXECUTION_TOKEN} bytes, "
                f"got {len(req.execution_token)}"
            )
        self.engine.run(
            steps.ActivateExecution(
                eid=str(eid),
                activation_b64=base64.b64encode(req.auth.token).decode(),
                execution_token_b64=base64.b64encode(req.execution_token).decode(),
            )
        )

    def finish_attempt(self, req: dm_pb2.FinishAttemptReq) -> None:
        eid = _auth_eid(req.auth, "auth")
        try:
            obj, size = jsonnorm.normalize_result(req.data.object)
        except jsonnorm.JsonError as e:
            raise InvalidArgument(f"data.object: {e}") from None
        if not obj:
            raise InvalidArgument("data.object: required (a JSON object)")
        exp = req.data.expiration.ToMicroseconds() if req.data.HasField("expiration") else None
        self.engine.run(
            steps.FinishAttempt(
                eid=str(eid),
                token_b64=base64.b64encode(req.auth.token).decode(),
                object=obj,
                size=size,
                expiration_us=exp,
            )
        )

    # -- CancelAttempt -------------------------------------------------------------------------

    def cancel_attempt(self, req: dm_pb2.CancelAttemptReq, caller: Caller) -> None:
        if not caller.can_write:
            raise PermissionDenied(f"{caller.identity} may not cancel attempts (not a writer)")
        if not req.HasField("attempt"):
            raise InvalidArgument("attempt: required")
        aid = AttemptID.from_proto(req.attempt)
        reason = req.reason or f"cancelled by {caller.identity}"
        eng = self.engine
        att = eng.store.get(docs.attempt_path(aid))
        if att is None:
            raise InvalidArgument(f"attempt {aid}: does not exist")
        state = AttemptState(att["state"])
        if is_terminal_attempt(state):
            return
        if state != AttemptState.EXECUTING:
            eng.run(steps.CancelWaiting(aid=aid.encoded, reason=reason))
            # It may have started executing meanwhile; then cancel that execution.
            att = eng.store.get(docs.attempt_path(aid)) or att
            if AttemptState(att["state"]) != AttemptState.EXECUTING:
                return
        eid = aid.execution(int(att["cur_execution"]))
        ex = docs.read_execution(eng.store, eid, att)
        if ex is not None and ex.get("dist_token") and ex.get("config"):
            d, _ = eng.registry.build(dist.Snapshot.from_doc(ex["config"]))
            desc = eng.quest_desc(aid.quest)
            assert desc is not None
            try:
                d.cancel(desc, ex["dist_token"])
            except dist.TransientError as e:
                raise Unavailable(f"distributor could not cancel yet: {e}") from None
            except Exception as e:
                # Final: cancel anyway (an attempt must stay cancellable), the
                # distributor's refusal logged and kept in the execution's reason.
                log.error("distributor refused to cancel %s: %s", eid, e)
                reason = f"{reason} (the distributor refused to cancel its task: {e})"
        eng.run(
            steps.FinishExecution(
                eid=str(eid), result=records.abnormal(AbnormalStatus.CANCELLED, reason)
            )
        )

    # -- RetryAttempt (dm retry; not in DM) ------------------------------------------------

    def retry_attempt(self, aid: AttemptID, caller: Caller) -> None:
        """Re-open ``aid``, which ended abnormally: a new execution on the same attempt,
        and its dependers that ended abnormally because of it re-opened too
        (:mod:`dmcore.engine.reopen`). FINISHED attempts are never re-opened."""
        if not caller.can_write:
            raise PermissionDenied(f"{caller.identity} may not retry attempts (not a writer)")
        att = self.engine.store.get(docs.attempt_path(aid))
        if att is None:
            raise NotFound(f"attempt {aid}: does not exist")
        state = AttemptState(att["state"])
        if state == AttemptState.FINISHED:
            raise FailedPrecondition(
                f"attempt {aid} FINISHED: a finished result is never re-opened "
                "(change the quest, e.g. its parameters, to run it again)"
            )
        if state != AttemptState.ABNORMAL_FINISHED:
            raise FailedPrecondition(
                f"attempt {aid} is {state.name}: only an attempt that ended abnormally is retried"
            )
        self.engine.run(
            steps.ReopenAttempt(aid=aid.encoded, after_execution=int(att["cur_execution"]))
        )

    # -- WalkGraph ---------------------------------------------------------------------------------

    def walk_graph(self, req: dm_pb2.WalkGraphReq, caller: Caller) -> dm_pb2.GraphData:
        me: AttemptID | None = None
        if req.HasField("auth"):
            eid = _auth_eid(req.auth, "auth")
            self._check_execution_token(eid, req.auth.token, retry_ok=False)
            att = self.engine.store.get(docs.attempt_path(eid.attempt_id))
            if att is None or att["cur_execution"] != eid.num:
                raise Unauthenticated("bad execution auth")
            me = eid.attempt_id
        elif not (caller.can_read or caller.can_write):
            raise PermissionDenied(f"{caller.identity} may not read the graph (not a reader)")
        if not req.HasField("query"):
            raise InvalidArgument("query: required")
        if req.query.search:
            raise InvalidArgument("query.search: not implemented")
        if req.limit.max_depth < -1:
            raise InvalidArgument("limit.max_depth: must be -1 (unlimited) or more")
        if req.limit.max_time.seconds < 0 or req.limit.max_time.nanos < 0:
            raise InvalidArgument("limit.max_time: must not be negative")
        for opt in ("result", "abnormal", "expired"):
            if getattr(req.include.quest, opt):
                raise InvalidArgument(f"include.quest.{opt}: not allowed for quests")
        ranged = 0
        for i, r in enumerate(req.query.attempt_range):
            ids.check_quest_id(r.quest, f"query.attempt_range[{i}].quest")
            if r.low < 1 or r.high <= r.low:
                raise InvalidArgument(f"query.attempt_range[{i}]: need 1 <= low < high")
            ranged += r.high - r.low
            if ranged > MAX_RANGE_ATTEMPTS:
                raise InvalidArgument(
                    f"query.attempt_range[{i}]: the ranges name {ranged} attempts or more, "
                    f"over {MAX_RANGE_ATTEMPTS}"
                )
        for q, nums in req.query.attempt_list.to.items():
            ids.check_quest_id(q, f"query.attempt_list[{q}]")
            _check_nums(nums.nums, f"query.attempt_list[{q}]", allow_all=True)
        return self._walk(req, authorized_all=me is None, me=me)

    def _walk(
        self,
        req: dm_pb2.WalkGraphReq,
        *,
        authorized_all: bool,
        me: AttemptID | None = None,
        starts: Sequence[AttemptID] | None = None,
        load: Loader | None = None,
        out: dm_pb2.GraphData | None = None,
        descs: Mapping[str, bytes] | None = None,
    ) -> dm_pb2.GraphData:
        """The graph ``req`` asks for (into ``out`` if given).

        ``starts``: the query's attempts in walk order, instead of ``req.query``
        (checked already); ``load``: how chunks of them are read
        (:class:`_ReadAhead`); ``descs``: the wire bytes of quest descriptions the
        caller holds already, normalised (the answer needs not decode them again).
        """
        eng = self.engine
        store = eng.store
        ahead = _ReadAhead(store, load)
        inc = req.include
        out = dm_pb2.GraphData() if out is None else out
        budget = _data_limit(req.limit.max_data_size, "limit.max_data_size")
        max_time = records.duration_us(req.limit.max_time) if req.limit.HasField("max_time") else 0
        if max_time <= 0 or max_time > MAX_WALK_TIME_US:
            max_time = MAX_WALK_TIME_US
        now = eng.clock()
        deadline = now + max_time
        excluded_quests = set(req.exclude.quests)
        # What a new quest entry shows: its ID; its data, unless excluded.
        quest_shown = (inc.quest.ids, inc.quest.data, excluded_quests)
        entries = out.quests  # (each look-up of a protobuf field makes a wrapper)
        # The quest entries made (IDs, not the entries: 10,000 entries held would be
        # 10,000 objects more for the garbage collector to trace; one is looked up
        # again only for a quest's second attempt).
        made = set(entries)
        excluded: set[AttemptID] = set()
        excluded_all: set[str] = set()
        for q, nums in req.exclude.attempts.to.items():
            if not nums.nums or list(nums.nums) == [0]:
                excluded_all.add(q)
            excluded.update(AttemptID(q, n) for n in nums.nums if n)
        direction = req.mode.direction
        walk_fwd = direction in (dm_pb2.WalkGraphReq.Mode.FORWARDS, dm_pb2.WalkGraphReq.Mode.BOTH)
        walk_back = direction in (dm_pb2.WalkGraphReq.Mode.BACKWARDS, dm_pb2.WalkGraphReq.Mode.BOTH)
        want_data = inc.attempt.data or inc.attempt.result

        show_abnormal, show_expired = inc.attempt.abnormal, inc.attempt.expired
        show_all = show_abnormal and show_expired

        def shown(doc: docs.Doc, expired: bool | None = None) -> bool:
            """Whether the answer shows (and walks through) an attempt, not a placeholder."""
            if not show_abnormal and doc.get("is_abnormal"):
                return False
            if show_expired:
                return True
            return not (records.attempt_expired(doc, now) if expired is None else expired)

        # The query's attempts, per quest, in query order; ranges stay ranges
        # (expanded one attempt at a time, so the time budget bounds them too).
        query: list[tuple[str, Sequence[int]]] = []
        for q, nums in sorted(req.query.attempt_list.to.items()):
            listed = _check_nums(nums.nums, "query", allow_all=True)
            if listed:
                query.append((q, listed))
            else:
                if q not in made:
                    self._quest_entry(entries, q, quest_shown, ahead.get, descs)
                    made.add(q)
                # Attempt ids are "<quest>|<number>": the quest's attempts are an id range.
                rows = store.query_id_prefix(docs.ATTEMPTS, q + "|")
                every = []
                for _, doc in sorted(rows, key=lambda row: int(row[1]["num"])):
                    if doc.get("is_abnormal") and not inc.attempt.abnormal:
                        continue
                    if records.attempt_expired(doc, now) and not inc.attempt.expired:
                        continue
                    every.append(int(doc["num"]))
                query.append((q, every))
        query += [(r.quest, range(r.low, r.high)) for r in req.query.attempt_range]
        # Breadth first: every query attempt (depth 0) before what they lead to;
        # depth first: a stack, so the last query attempt and its dependencies first.
        if req.mode.dfs:
            query = [(q, nums[::-1]) for q, nums in reversed(query)]
        given: Iterable[AttemptID] = () if starts is None else starts
        if req.mode.dfs:
            given = reversed(list(given))
        wanted: Iterable[AttemptID] = itertools.chain(
            given, (AttemptID(q, n) for q, nums in query for n in nums)
        )
        if excluded_all or excluded:  # (else no test per attempt)
            wanted = (a for a in wanted if a.quest not in excluded_all and a not in excluded)
        first = ahead.starts(
            ((aid, 0, False) for aid in wanted),
            out,
            quest_data=inc.quest.data,
            excluded_quests=excluded_quests,
            # (Most attempts of a large graph are leaves: the cheaper test first.)
            fwd_edges=(lambda d: d.get(docs.DECLARED) is not False and shown(d))
            if inc.fwd_deps or (walk_fwd and req.limit.max_depth != 0)
            else None,
        )

        # The request's options, read once (a protobuf field read is not free, and the
        # loop runs once per attempt).
        dfs, max_depth = req.mode.dfs, req.limit.max_depth
        show_ids, show_result = inc.attempt.ids, inc.attempt.result
        n_executions, show_fwd, show_back = inc.num_executions, inc.fwd_deps, inc.back_deps
        # (attempt, depth, reached forward from the caller's attempt)
        todo: collections.deque[tuple[AttemptID, int, bool]] = collections.deque()
        seen: set[str] = set()  # encoded: a str keeps its hash, an ID computes it
        infos: dict[tuple[str, str], dist.D | None] = {}
        # (Bound once: the loop runs once per attempt, 100,000 times for a large answer.)
        ahead_get, attempt_path, attempt_expired = (
            ahead.get,
            docs.attempt_path,
            records.attempt_expired,
        )
        quest_entry, fill_attempt = self._quest_entry, self._fill_attempt
        while True:
            if dfs and todo:
                item = todo.pop()
            elif (start := next(first, None)) is not None:
                item = start if me is None else (start[0], 0, start[0] == me)
            elif todo:
                item = todo.pop() if dfs else todo.popleft()
            else:
                break
            if eng.clock() > deadline:
                out.had_more = True
                break
            aid, depth, forward_of_me = item
            encoded, qid = aid.encoded, aid.quest
            if encoded in seen or (excluded and aid in excluded) or qid in excluded_all:
                continue
            seen.add(encoded)
            if qid in made:
                quest = entries[qid]
            else:
                quest = quest_entry(entries, qid, quest_shown, ahead_get, descs)
                made.add(qid)
            att_msg = quest.attempts[aid.num]
            got = ahead_get(attempt_path(aid))
            if got is None:
                att_msg.DNE = True
                continue
            doc = got
            expired = attempt_expired(doc, now)
            if not (show_all or shown(doc, expired)):
                continue  # a placeholder, not walked through
            if show_ids:
                att_msg.id.CopyFrom(aid.to_proto())
            data = fill_attempt(att_msg, aid, doc, expired) if want_data else None
            authorized: bool | None = None  # may the caller see this attempt's results?
            if authorized_all or forward_of_me or aid == me:
                authorized = True
            # (show_result implies want_data: data is the result message of a FINISHED one)
            if show_result and data is not None:
                if authorized is None:
                    authorized = self._depends_on(me, aid)
                summary = doc.get("result") or {}
                size = int(summary.get("size", 0))
                if expired:
                    att_msg.partial.result = dm_pb2.Attempt.Partial.EXPIRED  # never served
                elif not authorized:
                    att_msg.partial.result = dm_pb2.Attempt.Partial.NOT_AUTHORIZED
                elif size > budget:
                    att_msg.partial.result = dm_pb2.Attempt.Partial.DATA_SIZE_LIMIT
                else:
                    # (Inline on the attempt, as most are: no call to read_result.)
                    res = summary if "object" in summary else docs.read_result(store, aid, doc)
                    if res is not None:
                        obj = res["object"]
                        budget -= len(obj) if obj.isascii() else len(obj.encode())
                        data.object = obj
            if n_executions:
                self._fill_executions(att_msg, aid, inc, infos, att=doc, now=now)
                # Execution result objects: the same visibility and budget as the attempt's.
                for num in sorted(att_msg.executions, reverse=True):
                    e = att_msg.executions[num]
                    if not e.data.HasField("finished") or not e.data.finished.data.object:
                        continue
                    if authorized is None:
                        authorized = self._depends_on(me, aid)
                    used = len(e.data.finished.data.object.encode())
                    if not authorized:
                        e.data.finished.data.object = ""
                        e.partial.result = dm_pb2.Attempt.Partial.NOT_AUTHORIZED
                    elif used > budget:
                        e.data.finished.data.object = ""
                        e.partial.result = dm_pb2.Attempt.Partial.DATA_SIZE_LIMIT
                    else:
                        budget -= used
            fwd: list[AttemptID] = []
            back: list[AttemptID] = []
            # Edges are read only to be shown or followed (not at the depth limit).
            deeper = max_depth == -1 or depth < max_depth
            # An attempt that never declared dependencies has no edges (docs.DECLARED).
            declared = doc.get(docs.DECLARED) is not False
            if declared and (show_fwd or (walk_fwd and deeper)):
                fwd = [AttemptID.decode(docs.last_id(p)) for p, _ in ahead.fwd_edges(aid)]
            if show_back or (walk_back and deeper):
                back = docs.list_dependers(store, aid, doc)
            if show_fwd:
                for a in fwd:
                    att_msg.fwd_deps.to[a.quest].nums.append(a.num)
            if show_back:
                for a in back:
                    att_msg.back_deps.to[a.quest].nums.append(a.num)
            if deeper:
                if walk_fwd and fwd:
                    todo.extend((a, depth + 1, forward_of_me or aid == me) for a in fwd)
                if walk_back and back:
                    todo.extend((a, depth + 1, False) for a in back)
        return out

    def _depends_on(self, me: AttemptID | None, aid: AttemptID) -> bool:
        """Whether execution caller ``me`` has a FwdDep on ``aid`` (so may see its results)."""
        return me is not None and self.engine.store.get(docs.fwd_dep_path(me, aid)) is not None

    def _quest_entry(
        self,
        entries: MutableMapping[str, dm_pb2.Quest],
        qid: str,
        shown: tuple[bool, bool, set[str]],
        read: Callable[[str], docs.Doc | None],
        descs: Mapping[str, bytes] | None = None,
    ) -> dm_pb2.Quest:
        """The new entry of quest ``qid`` in an answer's ``entries`` (its ``quests``),
        made and filled; ``shown``: whether the entry shows the quest's ID, its data,
        and the quests whose data it does not show (the request's options, read once)."""
        q = entries[qid]
        show_ids, show_data, excluded = shown
        if show_ids:
            q.id.id = qid
        if show_data and qid not in excluded:
            doc = read(docs.quest_path(qid))
            if doc is None:
                q.DNE = True
            else:
                data = q.data
                _set_us(data.created, int(doc["created"]))
                # A supplied description is the stored one: the quest ID hashes it.
                wire = descs.get(qid) if descs is not None else None
                if wire is not None:
                    data.desc.MergeFromString(wire)
                else:
                    desc = self.engine.quest_desc(qid, doc)
                    assert desc is not None
                    data.desc.CopyFrom(desc)
        return q

    def _fill_attempt(
        self, msg: dm_pb2.Attempt, aid: AttemptID, doc: Mapping[str, Any], expired: bool
    ) -> dm_pb2.JsonResult | None:
        """``msg``'s data from attempt document ``doc``; returns a FINISHED attempt's
        result message (where its object goes, if shown), else None."""
        d = msg.data
        # (_set_us inline: twice per attempt of an answer of thousands.)
        ts = d.created
        ts.seconds, us = divmod(int(doc["created"]), 1_000_000)
        ts.nanos = us * 1000
        ts = d.modified
        ts.seconds, us = divmod(int(doc["modified"]), 1_000_000)
        ts.nanos = us * 1000
        d.num_executions = int(doc["cur_execution"])
        if expired:
            d.expired = True
        state = int(doc["state"])  # compared as an int: an enum made per attempt costs
        if state == AttemptState.FINISHED:  # the most common in a large answer
            r = doc.get("result") or {}
            data = d.finished.data
            data.size = int(r.get("size", 0))
            if r.get("expiration_us") is not None:
                _set_us(data.expiration, int(r["expiration_us"]))
            return data
        if state == AttemptState.SCHEDULING:
            d.scheduling.SetInParent()
        elif state == AttemptState.EXECUTING:
            d.executing.cur_execution_id = int(doc["cur_execution"])
        elif state == AttemptState.WAITING:
            rows = self.engine.store.query(
                docs.fwd_deps_collection(aid),
                {"for_execution": int(doc["cur_execution"]), "satisfied": False},
            )
            d.waiting.num_waiting = len(rows)
        else:
            ab = doc.get("abnormal") or {}
            d.abnormal_finish.status = int(ab.get("status", 0))  # type: ignore[assignment]
            d.abnormal_finish.reason = str(ab.get("reason", ""))
        return None

    def _fill_executions(
        self,
        msg: dm_pb2.Attempt,
        aid: AttemptID,
        inc: dm_pb2.WalkGraphReq.Include,
        infos: dict[tuple[str, str], dist.D | None],
        *,
        att: docs.Doc,
        now: int,
    ) -> None:
        rows = docs.list_executions(self.engine.store, aid, att)[-int(inc.num_executions) :]
        for ex in reversed(rows):
            if ex.get("is_abnormal") and not inc.execution.abnormal:
                continue
            expired = records.execution_expired(ex, now)
            if expired and not inc.execution.expired:
                continue
            em = msg.executions[int(ex["num"])]
            if inc.execution.ids:
                em.id.CopyFrom(aid.execution(int(ex["num"])).to_proto())
            if not (inc.execution.data or inc.execution.result):
                continue
            ed = em.data
            ed.created.FromMicroseconds(int(ex["created"]))
            ed.modified.FromMicroseconds(int(ex["modified"]))
            cfg = ex.get("config") or {}
            info = ed.distributor_info
            info.config_name = str(cfg.get("name", ""))
            info.config_version = str(cfg.get("version", ""))
            info.token = str(ex.get("dist_token", ""))
            if info.token and cfg:
                key = (info.config_name, info.config_version)
                if key not in infos:
                    try:
                        infos[key] = self.engine.registry.build(dist.Snapshot.from_doc(cfg))[0]
                    except Exception:
                        infos[key] = None
                d = infos[key]
                if d is not None:
                    info.url = d.info_url(info.token)
            state = ExecutionState(ex["state"])
            if state == ExecutionState.SCHEDULING:
                ed.scheduling.SetInParent()
            elif state == ExecutionState.RUNNING:
                ed.running.SetInParent()
            elif state == ExecutionState.STOPPING:
                ed.stopping.SetInParent()
            elif state == ExecutionState.FINISHED:
                data = (ex.get("result") or {}).get("data") or {}
                jr = records.json_result(data) or dm_pb2.JsonResult()
                if not inc.execution.result or expired:
                    jr.object = ""
                ed.finished.data.CopyFrom(jr)
                ed.expired = expired
                if expired and inc.execution.result:
                    em.partial.result = dm_pb2.Attempt.Partial.EXPIRED
            else:
                ab = ex.get("abnormal") or {}
                ed.abnormal_finish.status = int(ab.get("status", 0))  # type: ignore[assignment]
                ed.abnormal_finish.reason = str(ab.get("reason", ""))
