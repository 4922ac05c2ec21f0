"""jobsim: a simulated remote executor running jobs written in a small job language (spec §5.2).

A quest's ``parameters`` are a :class:`~distributors.jobsim.config_pb2.Phrase`
in protobuf JSON; its ``distributor_parameters`` must be ``{}``. ``run``
stores a task (collection ``jobsim_tasks`` of dm's store) and queues it on
dm's task queue; the queued task *is* the remote worker: it plays the job as
a real dm client (``Config.client()``), then reports the end through one
notification (or, with ``do_pollback``, waits for dm to poll ``get_status``).
A job that only finishes (failure stages at most) plays alike however often it
is played, so it is played unclaimed: its record is written twice (stored,
ended).

Task bodies (what a delivery reads; by default dm queues only the first two,
which every dm reads, so that rolling dm back with tasks in flight, or old and
new instances side by side in a deployment, loses none):

* ``<task ID>``: the job's first delivery; the job is read from its record.
* ``<task ID>``, a newline, ``<wake>``: the wake-up ``wake`` of a stalled job.
* ``{"v": 1, "task": <task ID>, "play": {...}}`` (``"v"`` absent: 1): a job that
  only finishes, carried in the body (:data:`PLAYED`), so its delivery reads
  nothing. Read by dm from 2026-11-30 (commit 8193f07) on: an older dm takes
  the whole body for a task ID, finds no such task and drops it, leaving the
  execution to its timeout. So dm writes it only with
  ``DM_JOBSIM_TASK_BODY=job`` (:data:`BODY_ENV`), to set once no older dm can
  take the queue's tasks (not before rolling back past that commit); by
  default the plain task ID, which costs the delivery one read of the record.
  A JSON body of a version this dm does not know is read by its ``"task"``
  (and ``"wake"``, default 0) from the record, as a plain one.

Everything is deterministic given the phrase and dm's clock, so tests can
compute outcomes independently:

* failure rolls come from ``fast_hash(seed, attempt, stage index)`` (the
  attempt number is mixed in so that retrying an attempt can change the
  outcome; the stage index so that two failure stages roll differently);
* a stall does not sleep: the job's state is saved and the task re-queued
  ``delay`` later on dm's clock, the execution staying RUNNING meanwhile;
* derived seeds follow DM (FNV-64a blend, or a draw from a ``random.Random``
  seeded with the parent's seed).

The job activates only before a stage that needs it (deps, chain, stall): a
phrase that only finishes sends FinishAttempt with the activation token,
which activates and finishes in one transaction (one write less; DM's jobs
always activated first).

One stage kind is ours, not DM's: ``chain`` (a phrase that depends on
itself one link shorter), so a chain of hundreds of jobs is one small phrase
where nested deps stages stop parsing after about 20 levels.

Fixed DM defects: sub-quests get ``distributor_parameters`` ``{}`` (not ""),
``retries`` really depends on the next attempt, ``value`` is a JSON number,
and a result carries an expiration only when the phrase gives one.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from google.protobuf import json_format, timestamp_pb2

from distributors.jobsim import config_pb2
from dmcore import distributor as dist
from dmcore import ids, jsonnorm
from dmcore.errors import Code, InvalidArgument, Unavailable
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.store.base import StoreError, Transaction

log = logging.getLogger("dm.distributors.jobsim")

KIND = "jobsim"
TASKS = "jobsim_tasks"
TOKEN_BYTES = 128
DEFAULT_RETVAL = 1
POLLBACK = datetime.timedelta(seconds=10)
"""The poll timeout and poll interval ``run`` returns when ``do_pollback`` is set
(polled while running too: a job failing before it stops notifies nobody)."""
MAX_EXPANDED = 10_000
"""Most dependencies (after shards) or attempt numbers one stage may name."""

RUNNABLE = "runnable"
RUNNING = "running"
STALLED = "stalled"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"

MASK64 = (1 << 64) - 1
MAX_INT32 = (1 << 31) - 1
_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3

T = TypeVar("T")


# -- the job language ------------------------------------------------------------------------


def parse_phrase(text: str) -> config_pb2.Phrase:
    """Parse and check a phrase (strict protobuf JSON); ValueError names the problem.

    The message is shared between callers parsing the same text (run and every
    delivery of the job parse it): read it, never change it.
    """
    return _parse_phrase(text)


@functools.lru_cache(maxsize=1024)
def _parse_phrase(text: str) -> config_pb2.Phrase:
    phrase = config_pb2.Phrase()
    try:
        json_format.Parse(text, phrase)
    except json_format.ParseError as e:
        raise ValueError(f"jobsim phrase: {e}") from None
    check_phrase(phrase)
    return phrase


def check_phrase(p: config_pb2.Phrase, where: str = "phrase") -> None:
    """DM's Phrase.Normalize checks (name, stage kinds, chances, attempt ranges)."""
    if not p.name:
        raise ValueError(f"{where}.name: required")
    for i, s in enumerate(p.stages):
        w = f"{where}.stages[{i}]"
        kind = s.WhichOneof("stage_type")
        if kind is None:
            raise ValueError(f"{w}: empty stage")
        if kind == "failure":
            c = s.failure.chance
            if math.isnan(c) or c < 0 or c > 1:
                raise ValueError(f"{w}.failure.chance: must be from 0 to 1, got {c}")
        elif kind == "stall":
            d = s.stall.delay
            if d.seconds < 0 or d.nanos < 0:
                raise ValueError(f"{w}.stall.delay: must not be negative")
        elif kind == "chain":
            if s.chain.links > MAX_EXPANDED:
                raise ValueError(f"{w}.chain.links: more than {MAX_EXPANDED}")
        else:
            _check_total(s.deps, f"{w}.deps")
            for j, dep in enumerate(s.deps.deps):
                wd = f"{w}.deps.deps[{j}]"
                if not dep.HasField("phrase"):
                    raise ValueError(f"{wd}.phrase: required")
                if dep.WhichOneof("attempt_strategy") == "attempts":
                    expand_range(dep.attempts, f"{wd}.attempts")
                check_phrase(dep.phrase, f"{wd}.phrase")


def only_finishes(p: config_pb2.Phrase) -> bool:
    """Whether a job of ``p`` only finishes (failure stages at most): it asks dm one
    thing, FinishAttempt with the activation token, and plays alike however often it
    is played (its failure rolls are seeded), so a repeated play finishes with the
    same result (accepted again by dm) and needs no claim."""
    return all(s.WhichOneof("stage_type") == "failure" for s in p.stages)


def expand_range(r: config_pb2.SparseRange, where: str = "attempts") -> list[int]:
    """The attempt numbers of a SparseRange (inclusive ranges, strictly increasing; [] -> [1])."""
    if not r.items:
        return [1]
    out: list[int] = []
    cur = 0
    for i, item in enumerate(r.items):
        which = item.WhichOneof("range_item")
        if which == "single":
            if item.single <= cur:
                raise ValueError(f"{where}.items[{i}]: malformed SparseRange (not increasing)")
            out.append(item.single)
            cur = item.single
        elif which == "range":
            low, high = item.range.low, item.range.high
            if high <= low:
                raise ValueError(f"{where}.items[{i}]: malformed Range (high <= low)")
            if low <= cur:
                raise ValueError(f"{where}.items[{i}]: malformed SparseRange (not increasing)")
            if len(out) + high - low + 1 > MAX_EXPANDED:
                raise ValueError(f"{where}: more than {MAX_EXPANDED} attempts")
            out.extend(range(low, high + 1))
            cur = high
        else:
            raise ValueError(f"{where}.items[{i}]: empty SparseRange entry")
        if len(out) > MAX_EXPANDED:
            raise ValueError(f"{where}: more than {MAX_EXPANDED} attempts")
    return out


def _check_total(stage: config_pb2.DepsStage, where: str) -> None:
    total = sum(max(1, d.shards) for d in stage.deps)
    if total > MAX_EXPANDED:
        raise ValueError(f"{where}: {total} dependencies after shards, over {MAX_EXPANDED}")


def expand_deps(stage: config_pb2.DepsStage, where: str = "deps") -> list[config_pb2.Dependency]:
    """DM's ExpandShards: ``shards = N > 0`` becomes N copies named ``<name>_0 .. _N-1``."""
    _check_total(stage, where)
    out: list[config_pb2.Dependency] = []
    for dep in stage.deps:
        for i in range(dep.shards or 1):
            c = config_pb2.Dependency()
            c.CopyFrom(dep)
            if dep.shards:
                c.shards = 0
                c.phrase.name = f"{dep.phrase.name}_{i}"
            out.append(c)
    return out


def to_int64(v: int) -> int:
    """Two's-complement wrap of ``v`` to a signed 64-bit integer (Go's int64 arithmetic)."""
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def fast_hash(a: int, *bs: int) -> int:
    """DM's seed blender: FNV-64a over each value as 8 little-endian bytes, as an int64."""
    h = _FNV64_OFFSET
    for v in (a, *bs):
        for byte in (v & MASK64).to_bytes(8, "little"):
            h = ((h ^ byte) * _FNV64_PRIME) & MASK64
    return to_int64(h)


def seeded(seed: int) -> random.Random:
    """A Random for an int64 seed (by its 64-bit pattern, so -s and s differ)."""
    return random.Random(seed & MASK64)


def derive_seed(
    dep: config_pb2.Dependency, parent_seed: int, index: int, rnd: random.Random
) -> int:
    """The seed a dependency's phrase runs with (spec §5.2, DM's Dependency.Seed).

    The "random" case draws from ``rnd`` (seeded with the parent's seed), so
    the same parent always derives the same sub-quests.
    """
    own = dep.phrase.seed
    if dep.mix_seed:
        if own == 0:
            return rnd.getrandbits(63)
        return fast_hash(to_int64(parent_seed * MAX_INT32), own, index)
    return parent_seed if own == 0 else own


def failure_roll(seed: int, attempt: int, stage: int) -> float:
    """The deterministic roll in [0, 1) of failure stage ``stage`` of attempt ``attempt``."""
    return seeded(fast_hash(seed, attempt, stage)).random()


def fails(chance: float, seed: int, attempt: int, stage: int) -> bool:
    """Whether a failure stage fails: chance >= 1 always, <= 0 never, else by the roll."""
    if chance >= 1:
        return True
    if chance <= 0:
        return False
    return failure_roll(seed, attempt, stage) < chance


def phrase_json(phrase: config_pb2.Phrase) -> str:
    """A phrase as normalised JSON (proto field names), as used for quest parameters."""
    text = json_format.MessageToJson(phrase, preserving_proto_field_name=True, indent=None)
    return jsonnorm.normalize_object(text)


def quest_desc(
    phrase: config_pb2.Phrase | Mapping[str, Any] | str, config: str = KIND
) -> dm_pb2.Quest.Desc:
    """A quest running ``phrase`` (a Phrase, its JSON dict or text) on jobsim config ``config``."""
    if isinstance(phrase, config_pb2.Phrase):
        params = phrase_json(phrase)
    elif isinstance(phrase, str):
        params = jsonnorm.normalize_object(phrase)
    else:
        params = jsonnorm.normalize_object(json.dumps(phrase))
    return dm_pb2.Quest.Desc(
        distributor_config_name=config, parameters=params, distributor_parameters="{}"
    )


# -- the job (what a swarming bot running a recipe would do) --------------------------------------


@dataclasses.dataclass
class JobState:
    """What one execution hands the next (its distributor result): ``{"Stage", "Sum"}``."""

    stage: int = 0
    sum: int = 0

    @classmethod
    def parse(cls, text: str) -> JobState:
        if not text:
            return cls()
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError(f"jobsim state: not an object: {text!r}")
        vals = [obj.get("Stage", 0), obj.get("Sum", 0)]
        if any(not isinstance(v, int) or isinstance(v, bool) for v in vals) or vals[0] < 0:
            raise ValueError(f"jobsim state: bad Stage/Sum: {text!r}")
        return cls(vals[0], vals[1])

    def to_json(self) -> str:
        return json.dumps({"Stage": self.stage, "Sum": self.sum}, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class _Done:
    """The job ended normally (finished its attempt or halted for dependencies)."""


RETRY_DELAY_S = 1.0
"""How long a job waits before asking dm again when dm answered UNAVAILABLE."""


@dataclasses.dataclass(frozen=True)
class _Stall:
    delay_s: float


@dataclasses.dataclass(frozen=True)
class _Refused:
    reason: str


_Outcome = _Done | _Stall | _Refused


def _auth_refused(e: Exception) -> bool:
    return getattr(e, "code", None) in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED)


class _Job:
    """One execution of a phrase, talking to dm through ``client``."""

    def __init__(
        self,
        client: Any,
        *,
        eid: ExecutionID,
        activation: bytes,
        phrase_text: str,
        state: JobState,
        config_name: str,
    ) -> None:
        self.client = client
        self.eid = eid
        self.activation = activation
        self.phrase_text = phrase_text
        self.phrase = parse_phrase(phrase_text)
        self.state = state
        self.config_name = config_name
        self.token = b""

    def auth(self) -> dm_pb2.Execution.Auth:
        return dm_pb2.Execution.Auth(id=self.eid.to_proto(), token=self.token)

    def activate(self, token: bytes | None) -> bool:
        """Swap the activation token for ours; a resumed job repeats its own (idempotent)."""
        new = token or os.urandom(TOKEN_BYTES)
        req = dm_pb2.ActivateExecutionReq(
            auth=dm_pb2.Execution.Auth(id=self.eid.to_proto(), token=self.activation),
            execution_token=new,
        )
        try:
            self.client.activate_execution(req)
        except Exception as e:
            if _auth_refused(e):
                log.info("jobsim %s: activation refused (duplicate or stale run): %s", self.eid, e)
                return False
            raise
        self.token = new
        return True

    def run(self, token: bytes | None) -> _Outcome:
        # Activated lazily (as dmcore.job does): a job resumed after a stall activated
        # before it and repeats its token; a job that only finishes never activates, its
        # FinishAttempt with the activation token activates and finishes at once.
        refused = _Refused("activation refused (duplicate or stale run)")
        if token is not None and not self.activate(token):
            return refused
        st, stages = self.state, self.phrase.stages
        while st.stage < len(stages):
            stage = stages[st.stage]
            kind = stage.WhichOneof("stage_type")
            if kind in ("stall", "deps", "chain") and not self.token and not self.activate(None):
                return refused
            if kind == "failure":
                if fails(stage.failure.chance, self.phrase.seed, self.eid.attempt, st.stage):
                    return self.finish(success=False, value=0)
            elif kind == "stall":
                delay = stage.stall.delay.ToTimedelta().total_seconds()
                if delay > 0:
                    st.stage += 1
                    return _Stall(delay)
            elif kind in ("deps", "chain"):
                try:
                    if kind == "deps":
                        added = self.deps(st.stage)
                    else:
                        added = self.chain(st.stage, stage.chain.links)
                except Unavailable as e:
                    # e.g. an attempt on the way is recording a declaration in parts:
                    # nothing of this call was written; the stage is asked again later.
                    log.info("jobsim %s: stage %d to be asked again: %s", self.eid, st.stage, e)
                    return _Stall(RETRY_DELAY_S)
                if added is None:
                    return _Done()  # halted: dm runs a new execution once the deps finish
                st.sum += added
            else:
                raise ValueError(f"stage {st.stage}: unknown stage type {kind!r}")
            st.stage += 1
        ret = self.phrase.return_stage
        retval = ret.retval if self.phrase.HasField("return_stage") else DEFAULT_RETVAL
        return self.finish(
            success=True,
            value=retval + st.sum,
            expiration=ret.expiration if ret.HasField("expiration") else None,
        )

    def finish(
        self, *, success: bool, value: int, expiration: timestamp_pb2.Timestamp | None = None
    ) -> _Outcome:
        data = dm_pb2.JsonResult(
            object=json.dumps({"success": success, "value": value}, separators=(",", ":"))
        )
        if expiration is not None:
            data.expiration.CopyFrom(expiration)
        if self.token:
            auth = self.auth()
        else:  # never activated: the activation token activates and finishes at once
            auth = dm_pb2.Execution.Auth(id=self.eid.to_proto(), token=self.activation)
        try:
            self.client.finish_attempt(dm_pb2.FinishAttemptReq(auth=auth, data=data))
        except Exception as e:
            if self.token or not _auth_refused(e):
                raise
            log.info("jobsim %s: finish refused (duplicate or stale run): %s", self.eid, e)
            return _Refused("finish with the activation token refused (duplicate or stale run)")
        return _Done()

    def chain(self, index: int, links: int) -> int | None:
        """Chain stage ``index``: the value of this phrase one link down, or None to halt."""
        if links == 0:
            return 0
        return self.deps(index)

    def deps(self, index: int) -> int | None:
        """Depend on stage ``index``'s sub-phrases; the sum of successful values, or None to halt.

        Every listed attempt counts once; a ``retries`` dependency moves on to
        the next attempt while the current one reports failure, so only its
        last attempt can add a value.
        """
        plan = _plan(self.phrase_text, index, self.config_name)
        if not plan.pending:
            return 0
        req = dm_pb2.EnsureGraphDataReq.FromString(plan.request)
        pending = list(plan.pending)
        chain_max = dict(plan.chain_max)
        outcomes: dict[AttemptID, tuple[bool, int]] = {}
        while True:
            req.include.attempt.result = True
            req.for_execution.CopyFrom(self.auth())
            rsp = self.client.ensure_graph_data(req)
            if rsp.should_halt:
                return None
            for aid in pending:
                outcomes[aid] = _outcome(rsp.result, aid)
            req = dm_pb2.EnsureGraphDataReq()
            for q, last in sorted(chain_max.items()):
                n = 1  # the chain's head: its first attempt not known to have failed
                while n < last and not outcomes.get(AttemptID(q, n), (True, 0))[0]:
                    n += 1
                if AttemptID(q, n) not in outcomes:
                    req.raw_attempts.to[q].nums.append(n)
            if not req.raw_attempts.to:
                return sum(value for ok, value in outcomes.values() if ok)
            pending = [AttemptID(q, n.nums[0]) for q, n in sorted(req.raw_attempts.to.items())]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a deps or chain stage asks dm for first, worked out once per phrase and stage."""

    request: bytes
    """The EnsureGraphDataReq naming the sub-quests and their attempts (serialised:
    each use parses its own copy)."""
    pending: tuple[AttemptID, ...]
    """The attempts that request names, whose outcomes count."""
    chain_max: tuple[tuple[str, int], ...]
    """Per ``retries`` dependency, its quest and how many attempts it may take."""


def _stage_deps(phrase: config_pb2.Phrase, index: int) -> config_pb2.DepsStage:
    """The dependencies of stage ``index`` (a deps stage, or a chain stage's next link)."""
    stage = phrase.stages[index]
    if stage.WhichOneof("stage_type") == "deps":
        return stage.deps
    dep = config_pb2.Dependency()
    dep.phrase.CopyFrom(phrase)  # same name and seed; only the link count differs
    dep.phrase.stages[index].chain.links = stage.chain.links - 1
    return config_pb2.DepsStage(deps=[dep])


def _make_plan(phrase_text: str, index: int, config_name: str) -> _Plan:
    phrase = parse_phrase(phrase_text)
    stage = _stage_deps(phrase, index)
    seed = phrase.seed
    rnd = seeded(seed)
    descs: dict[str, dm_pb2.Quest.Desc] = {}
    nums: dict[str, set[int]] = {}
    chain_max: dict[str, int] = {}
    for i, dep in enumerate(expand_deps(stage)):
        sub = config_pb2.Phrase()
        sub.CopyFrom(dep.phrase)
        sub.seed = derive_seed(dep, seed, i, rnd)
        desc = quest_desc(sub, config_name)
        qid = ids.quest_id(desc)
        descs[qid] = desc
        if dep.WhichOneof("attempt_strategy") == "retries":
            chain_max[qid] = max(chain_max.get(qid, 0), dep.retries + 1)
            nums.setdefault(qid, set()).add(1)
        else:
            nums.setdefault(qid, set()).update(expand_range(dep.attempts))
    req = dm_pb2.EnsureGraphDataReq()
    for qid, desc in descs.items():
        req.quest.append(desc)
        req.quest_attempt.add(nums=sorted(nums[qid]))
    return _Plan(
        request=req.SerializeToString(),
        pending=tuple(AttemptID(q, n) for q in descs for n in sorted(nums[q])),
        chain_max=tuple(sorted(chain_max.items())),
    )


PLAN_CACHE_BYTES = 16 * 1024 * 1024
"""Plans kept (their serialised requests, at most about this much): a job that halts
on its dependencies asks for the same ones again when it resumes."""


class _PlanCache:
    """Plans by (phrase text, stage, config), least recently used dropped first, by size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._plans: collections.OrderedDict[tuple[str, int, str], _Plan] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(key: tuple[str, int, str], plan: _Plan) -> int:
        return len(plan.request) + len(key[0])

    def get(self, phrase_text: str, index: int, config_name: str) -> _Plan:
        key = (phrase_text, index, config_name)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = _make_plan(phrase_text, index, config_name)
        size = self._size(key, plan)
        if size > self.max_bytes // 2:  # one plan never empties the cache
            return plan
        with self._lock:
            if key not in self._plans:
                self._plans[key] = plan
                self._bytes += size
            while self._bytes > self.max_bytes:
                old_key, old = self._plans.popitem(last=False)
                self._bytes -= self._size(old_key, old)
        return plan


_plans = _PlanCache(PLAN_CACHE_BYTES)


def _plan(phrase_text: str, index: int, config_name: str) -> _Plan:
    """:func:`_make_plan`, remembered (:class:`_PlanCache`)."""
    return _plans.get(phrase_text, index, config_name)


def _outcome(graph: dm_pb2.GraphData, aid: AttemptID) -> tuple[bool, int]:
    """(success, value) of a dependency's attempt from an EnsureGraphData result."""
    if aid.quest not in graph.quests or aid.num not in graph.quests[aid.quest].attempts:
        raise RuntimeError(f"dependency {aid}: missing from dm's answer")
    att = graph.quests[aid.quest].attempts[aid.num]
    kind = att.data.WhichOneof("attempt_type")
    if kind == "abnormal_finish" or att.data.expired:
        return False, 0  # expired: dm no longer serves the result (a retry takes a new attempt)
    if kind != "finished":
        raise RuntimeError(f"dependency {aid}: not finished ({kind}) although dm did not halt")
    text = att.data.finished.data.object
    if not text:
        raise RuntimeError(f"dependency {aid}: result not loaded ({att.partial.result})")
    obj = json.loads(text)
    if not isinstance(obj, dict) or obj.get("success") is not True:
        return False, 0
    value = obj.get("value", 0)
    if isinstance(value, str):  # DM encoded int64 values as strings
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RuntimeError(f"dependency {aid}: value is not an integer: {text}")
    return True, value


# -- the distributor -------------------------------------------------------------------------------


def task_path(task_id: str) -> str:
    """Where a task lives: its ID base64url-encoded (IDs contain "|" and maybe "/")."""
    enc = base64.urlsafe_b64encode(task_id.encode()).decode().rstrip("=")
    return f"{TASKS}/{enc}"


def _body(task_id: str, wake: int) -> bytes:
    return task_id.encode() if wake == 0 else f"{task_id}\n{wake}".encode()


PLAYED = ("eid", "state", "activation", "phrase", "config")
"""The fields of a task a job that only finishes is played from (carried in its body)."""

BODY_VERSION = 1
"""The version of the JSON task body this dm writes and plays from (see the module
docstring): raise it with any change an older dm would misread, which then reads the
body by its task ID."""

BODY_ENV = "DM_JOBSIM_TASK_BODY"
"""Which body a job that only finishes is queued with: ``id`` (default: the task ID,
read by every dm) or ``job`` (the job itself, read by dm from commit 8193f07 on)."""
BODY_ID = "id"
BODY_JOB = "job"


def carries_job(env: Mapping[str, str] = os.environ) -> bool:
    """Whether :data:`BODY_ENV` says to carry a job that only finishes in its task body;
    InvalidArgument names the variable and the values it takes."""
    mode = env.get(BODY_ENV, "").strip() or BODY_ID
    if mode not in (BODY_ID, BODY_JOB):
        raise InvalidArgument(f"{BODY_ENV}: expected {BODY_ID!r} or {BODY_JOB!r}, got {mode!r}")
    return mode == BODY_JOB


def _play_body(doc: Mapping[str, Any]) -> bytes:
    """The body of the task of a job that only finishes: the task and what playing it
    needs, so that its delivery reads nothing (one read and transaction less)."""
    play = {k: doc[k] for k in PLAYED}
    return json.dumps({"v": BODY_VERSION, "task": doc["id"], "play": play}).encode()


def _parse_body(body: bytes) -> tuple[str, int, dict[str, Any] | None]:
    """A task body: the task ID, then (wake-ups after a stall) a newline and the ticket
    number; or (:func:`_play_body`) a JSON object with the task ID and the job to play,
    which is read by its task ID alone if it is of another version."""
    text = body.decode(errors="replace")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None  # not one: a task ID that starts with "{"
        task_id = obj.get("task") if isinstance(obj, dict) else None
        if isinstance(task_id, str):
            play = obj.get("play")
            if (
                obj.get("v", 1) == BODY_VERSION
                and isinstance(play, dict)
                and all(isinstance(play.get(k), str) for k in PLAYED)
            ):
                return task_id, 0, {"id": task_id, **{k: play[k] for k in PLAYED}}
            wake = obj.get("wake", 0)
            if isinstance(wake, int) and not isinstance(wake, bool) and wake >= 0:
                return task_id, wake, None
    head, sep, tail = text.rpartition("\n")
    if sep and tail.isdigit():
        return head, int(tail), None
    return text, 0, None


def _abnormal(status: dm_pb2.AbnormalFinish.Status, reason: str) -> dm_pb2.Result:
    return dm_pb2.Result(abnormal_finish=dm_pb2.AbnormalFinish(status=status, reason=reason))


def _result(status: str, state_or_reason: str) -> dm_pb2.Result | None:
    """A task status as dm sees it: None while it runs, else how the execution ended."""
    if status in (RUNNABLE, RUNNING, STALLED):
        return None
    if status == FINISHED:
        return dm_pb2.Result(
            data=dm_pb2.JsonResult(object=state_or_reason, size=len(state_or_reason.encode()))
        )
    if status == FAILED:
        return _abnormal(dm_pb2.AbnormalFinish.FAILED, state_or_reason)
    if status == CANCELLED:
        return _abnormal(dm_pb2.AbnormalFinish.CANCELLED, "jobsim: task cancelled")
    return _abnormal(dm_pb2.AbnormalFinish.FAILED, f"jobsim: unknown task status {status!r}")


class JobsimDistributor(dist.D):
    """The jobsim distributor for one config (see the module docstring)."""

    def __init__(self, cfg: dist.Config) -> None:
        assert isinstance(cfg.content, config_pb2.Config)
        self.cfg = cfg
        self.conf: config_pb2.Config = cfg.content

    def token_of(self, eid: ExecutionID) -> str:
        """The task ID (= distributor token) of execution ``eid``: ``<pool>|<eid>``."""
        return f"{self.conf.pool}|{eid}"

    def _tx(self, fn: Callable[[Transaction], T]) -> T:
        try:
            return self.cfg.store().transaction(fn)
        except StoreError as e:
            raise dist.TransientError(f"jobsim store: {e}") from e

    def _enqueue(self, body: bytes, delay_s: float = 0.0, name: str | None = None) -> None:
        try:
            self.cfg.enqueue_task(body, delay_s=delay_s, name=name)
        except dist.TransientError:
            raise
        except Exception as e:
            raise dist.TransientError(f"jobsim enqueue: {e}") from e

    # -- D -------------------------------------------------------------------------------------

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        """Store the task and queue it (once per execution ID); a bad phrase is a ValueError."""
        phrase = parse_phrase(desc.parameters)
        eid = ExecutionID.from_proto(auth.id)
        task_id = self.token_of(eid)
        path = task_path(task_id)
        fresh = {
            "id": task_id,
            "eid": str(eid),
            "status": RUNNABLE,
            "state": prev_result.object if prev_result is not None else "",
            "reason": "",
            "activation": base64.b64encode(auth.token).decode(),
            "phrase": desc.parameters,
            "config": self.cfg.name,
            "wake": 0,
            "wake_queued": False,
            "wake_delay_s": 0.0,
            "exec_token": "",
            "notify": True,
        }

        def create(tx: Transaction) -> dict[str, Any]:
            doc = tx.get(path)
            if doc is None:
                tx.set(path, fresh)
                return fresh
            return doc

        doc = self._tx(create)
        if doc["status"] == RUNNABLE and doc["wake"] == 0:
            # Queued after the commit, under the task's name: a failure here is
            # retried by dm (run again), and a repeated run queues no second task.
            # The job in the body only where every dm that may take the task reads it
            # (BODY_ENV): an older dm would drop it, the execution left to its timeout.
            carry = only_finishes(phrase) and carries_job()
            body = _play_body(doc) if carry else _body(task_id, 0)
            self._enqueue(body, name=task_id)
        if self.conf.do_pollback:
            return dist.Started(task_id, poll_timeout=POLLBACK, poll_interval=POLLBACK)
        return dist.Started(task_id)

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        """A task not running (queued, or stalled between wake-ups) becomes cancelled."""
        self._update(
            task_path(token),
            lambda d: {**d, "status": CANCELLED} if d["status"] in (RUNNABLE, STALLED) else None,
        )

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        try:
            doc = self.cfg.store().get(task_path(token))
        except StoreError as e:
            raise dist.TransientError(f"jobsim store: {e}") from e
        if doc is None:
            return _abnormal(dm_pb2.AbnormalFinish.MISSING, f"jobsim: unknown task {token!r}")
        status = str(doc["status"])
        return _result(status, str(doc["reason"] if status == FAILED else doc["state"]))

    def info_url(self, token: str) -> str:
        return f"jobsim://{self.cfg.name}/ver/{self.cfg.version}/tok/{token}"

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: dist.Notification
    ) -> dm_pb2.Result | None:
        """Our notifications carry {"Status", "StateOrReason"}; anything else: ask the store."""
        try:
            note = json.loads(notification.data)
            status, sor = note["Status"], note["StateOrReason"]
            if not isinstance(status, str) or not isinstance(sor, str):
                raise TypeError("Status and StateOrReason must be strings")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("jobsim: unreadable notification for %s (%s)", notification.execution_id, e)
            return self.get_status(desc, self.token_of(notification.execution_id))
        return _result(status, sor)

    def handle_task_queue_task(self, request: dist.TaskRequest) -> list[dist.Notification]:
        """The remote worker: claim the task, play the job, record and report how it ended.

        Deliveries are at least once: only the delivery that moves the task
        out of ``runnable`` (or the matching wake-up of a ``stalled`` task)
        plays the job; a redelivery of the one that ended it reports again. A
        job that only finishes (:func:`only_finishes`) is played unclaimed, by
        every delivery (from its body, nothing read) or by one that finds it
        ``runnable`` (a body naming the task only): every play ends alike, and
        the first to record its end ends the task.
        """
        task_id, wake, carried = _parse_body(request.body)
        path = task_path(task_id)
        client = self.cfg.client()
        claimed: dict[str, Any] = {}

        def claim(tx: Transaction) -> str:
            doc = tx.get(path)
            if doc is None:
                return "unknown"
            st = doc["status"]
            if st == RUNNABLE and wake == 0 and only_finishes(parse_phrase(str(doc["phrase"]))):
                # Played without a claim (one write less): a concurrent play finishes
                # alike, and whichever records first ends the task (_finish).
                claimed.update(doc)
                return "play"
            if (st == RUNNABLE and wake == 0) or (st == STALLED and wake == doc["wake"]):
                claimed.update(doc, status=RUNNING)
                tx.set(path, claimed)
                return "run"
            claimed.update(doc)
            if st == STALLED and not doc["wake_queued"] and wake == doc["wake"] - 1:
                return "requeue"  # the stalling delivery failed to queue its wake-up
            if st in (FINISHED, FAILED) and wake == doc["wake"] and doc["notify"]:
                return "notify"
            return "skip"

        if carried is not None and only_finishes(parse_phrase(carried["phrase"])):
            claimed, what = carried, "play"
        else:
            what = self._tx(claim)
        if what == "unknown":
            log.warning("jobsim: task %r unknown, dropped", task_id)
        if what == "requeue":
            self._queue_wake(path, task_id, claimed)
        if what == "notify":
            return self._notes(claimed)
        if what not in ("run", "play"):
            return []

        doc = claimed
        eid = ExecutionID.parse(str(doc["eid"]))
        try:
            state = JobState.parse(str(doc["state"]))
            job = _Job(
                client,
                eid=eid,
                activation=base64.b64decode(doc["activation"]),
                phrase_text=str(doc["phrase"]),
                state=state,
                config_name=str(doc["config"]),
            )
            token = base64.b64decode(doc["exec_token"]) if doc.get("exec_token") else None
            outcome = job.run(token)
        except Exception as e:  # the job broke: the execution FAILED
            if what == "play":
                # Unclaimed, another play of this task may have finished it in dm
                # and not yet here: recording FAILED now would end a finished job
                # as failed. The delivery fails instead and is made again: that
                # play ends it (or finds it ended, and hands the notification back).
                raise
            log.warning("jobsim %s: job failed", eid, exc_info=True)
            return self._notes(self._finish(path, FAILED, reason=f"{type(e).__name__}: {e}"))
        if isinstance(outcome, _Refused):
            self._finish(path, FAILED, reason=outcome.reason, notify=False)
            return []
        if isinstance(outcome, _Stall):
            stalled = {
                **doc,
                "status": STALLED,
                "state": state.to_json(),
                "exec_token": base64.b64encode(job.token).decode(),
                "wake": int(doc["wake"]) + 1,
                "wake_queued": False,
                "wake_delay_s": outcome.delay_s,
            }
            self._update(path, lambda d: stalled if d["status"] == RUNNING else None)
            self._queue_wake(path, task_id, stalled)
            return []
        return self._notes(self._finish(path, FINISHED, state=state.to_json()))

    def validate(self, distributor_parameters: str) -> None:
        """jobsim takes no distributor parameters: only ``{}`` is accepted.

        (DM validated the phrase here; dm passes only the distributor
        parameters, so a bad phrase is refused by ``run``: REJECTED.)
        """
        try:
            obj = json.loads(distributor_parameters)
        except ValueError as e:
            raise ValueError(f"jobsim: distributor parameters are not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError("jobsim: distributor parameters must be a JSON object")
        if obj:
            raise ValueError(f"jobsim: unknown distributor parameters: {', '.join(sorted(obj))}")

    # -- helpers --------------------------------------------------------------------------------

    def _update(
        self, path: str, fn: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Apply ``fn`` to the task in a transaction (None from ``fn``: leave it)."""

        def body(tx: Transaction) -> dict[str, Any] | None:
            doc = tx.get(path)
            if doc is None:
                return None
            new = fn(doc)
            if new is None:
                return doc
            tx.set(path, new)
            return new

        return self._tx(body)

    def _finish(
        self, path: str, status: str, *, state: str = "", reason: str = "", notify: bool = True
    ) -> dict[str, Any] | None:
        """Record how the job ended (unless it was cancelled, or ended by another play,
        meanwhile); None if the task is unknown (a job played from its body). A job that
        only finishes was played from ``runnable``, unclaimed."""

        def end(d: dict[str, Any]) -> dict[str, Any] | None:
            if d["status"] != RUNNING and not (d["status"] == RUNNABLE and d["wake"] == 0):
                return None
            new = {**d, "status": status, "reason": reason, "notify": notify}
            if state:
                new["state"] = state
            return new

        doc = self._update(path, end)
        if doc is None:
            log.warning("jobsim: task %s unknown, its end not recorded", path)
        return doc

    def _queue_wake(self, path: str, task_id: str, doc: Mapping[str, Any]) -> None:
        wake = int(doc["wake"])
        self._enqueue(_body(task_id, wake), float(doc["wake_delay_s"]))
        self._update(
            path,
            lambda d: (
                {**d, "wake_queued": True} if d["status"] == STALLED and d["wake"] == wake else None
            ),
        )

    def _notes(self, doc: Mapping[str, Any] | None) -> list[dist.Notification]:
        """The end-of-job notification, unless dm is to poll (do_pollback) or not to be told."""
        if doc is None or self.conf.do_pollback or not doc["notify"]:
            return []
        if doc["status"] not in (FINISHED, FAILED):
            return []
        sor = doc["reason"] if doc["status"] == FAILED else doc["state"]
        data = json.dumps({"Status": doc["status"], "StateOrReason": sor}).encode()
        return [dist.Notification(ExecutionID.parse(str(doc["eid"])), data)]


def register(registry: dist.Registry) -> None:
    """Entry point: register kind ``jobsim`` (config message :class:`config_pb2.Config`)."""
    carries_job()  # a bad DM_JOBSIM_TASK_BODY stops dm at its start, not at a task
    # Simulated: every call returns at once, touching only dm's store and queue.
    registry.register(KIND, config_pb2.Config, JobsimDistributor, in_process=True)
