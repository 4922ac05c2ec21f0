"""Firestore indexes in terraform, cross-checked against the queries dm really runs.

Production Firestore refuses a query its indexes cannot serve (the emulator
serves anything), so terraform must declare what the queries need, and
nothing that gets in their way. Rather than a list copied into this test, the
shapes come from the code: a workload runs on the Firestore emulator and
:attr:`FirestoreStore.query_shapes` records every query it ran (collection id,
scope, equality/range fields, order); a spy records the size of every field
written. Then, by Firestore's indexing rules:

* equality filters alone are served by merging the automatic single-field
  indexes; ordering (or a range) on one field by its single-field index;
  equality plus ordering on another field, or several orderings, need a
  composite index (fields: the equalities, then the orderings; a trailing
  ``__name__`` in the last ordering's direction is implicit); an id range
  (``__name__``) needs nothing;
* automatic single-field indexes are collection-scoped only: a
  collection-group query needs COLLECTION_GROUP-scoped indexes declared
  (``google_firestore_field`` overrides or composite indexes);
* a field override replaces the automatic indexes of that field, and an
  exemption (``index_config {}``) removes them: a query may not touch it;
* values over 1,500 bytes are not indexed whole (and every indexed value
  costs an index write): such fields must be exempted.

And in the other direction: every declared composite index and override
must serve a recorded query, and every exemption must name a field dm
writes. A change in dm's data layout therefore fails here until terraform
follows. The workload is the engine's own scenarios (every ``test_*(h)``
of the modules below, run on a Firestore-backed harness; each must run to
its end, or it covers fewer queries than it stands for) plus polling, large
values, WalkGraph, cancel and a re-open below; a static scan checks that every query
call site in dmcore and the distributors ran in it.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import inspect
import json
import pathlib
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from distributors.fake import Crash, Job, quest_desc
from dmcore.engine import docs, layout
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.store import firestore as fs
from dmcore.store.firestore import ASCENDING, NAME_FIELD, FirestoreStore, QueryShape
from tests.harness import START_US, Harness, qid_of
from tests.tfmodel import MODULE, Model

ROOT = pathlib.Path(__file__).resolve().parent.parent
INDEXED_VALUE_LIMIT = 1500
"""Bytes of a value Firestore indexes whole."""
BIG = 4000
"""Size of the large values the workload writes (quest parameters, results, state)."""
WORKLOAD_MODULES = (
    "tests.test_engine_scenarios",
    "tests.test_service",
    "tests.test_engine_retries",
    "tests.test_expiry",
)
QUERY_METHODS = ("query", "count", "query_id_prefix")
SCANNED = ("dmcore", "distributors")
NOT_SCANNED = ("dmcore/store", "dmcore/cli")
"""The store's own code, and the CLI (it runs on an embedded home: SQLite, or an emulator)."""

Site = tuple[str, str]
"""(file relative to the repository, function qualname) of a query call."""


# -- the workload ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Recorded:
    shapes: set[QueryShape] = dataclasses.field(default_factory=set)
    sizes: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    """(collection id, top-level field) -> largest JSON size written."""
    sites: set[Site] = dataclasses.field(default_factory=set)
    failed: list[str] = dataclasses.field(default_factory=list)
    times: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    """(collection id, top-level field) written with a time (an int in microseconds
    since 1970, from the test clock's start on)."""


def _site_of_caller() -> Site | None:
    frame = sys._getframe(2)
    while frame is not None:
        path = pathlib.Path(frame.f_code.co_filename).resolve()
        try:
            rel = path.relative_to(ROOT).as_posix()
        except ValueError:
            rel = ""
        passthrough = frame.f_code.co_name in QUERY_METHODS
        if rel.startswith(SCANNED) and not rel.startswith(NOT_SCANNED) and not passthrough:
            return rel, frame.f_code.co_qualname
        frame = frame.f_back  # type: ignore[assignment]
    return None


@contextlib.contextmanager
def spies(rec: Recorded, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Record query call sites and written field sizes on every FirestoreStore."""

    def site_spy(name: str) -> None:
        real = getattr(FirestoreStore, name)

        def spy(self: FirestoreStore, *args: Any, **kw: Any) -> Any:
            site = _site_of_caller()
            if site is not None:
                rec.sites.add(site)
            before = set(self.query_shapes)
            try:
                return real(self, *args, **kw)
            finally:
                if site is None:
                    # A test's own look at the store (e.g. "is anything left armed?"):
                    # production never runs it, so no index has to serve it.
                    self.query_shapes -= self.query_shapes - before

        monkeypatch.setattr(FirestoreStore, name, spy)

    for name in ("_query", "_count", "query_id_prefix"):  # _count: a transaction's too
        site_spy(name)

    def write_spy(name: str) -> None:
        real = getattr(fs._FirestoreTransaction, name)

        def spy(self: Any, path: str, doc: dict[str, Any]) -> None:
            collection = path.split("/")[-2]
            for field, value in doc.items():
                size = len(json.dumps(value, separators=(",", ":")))
                key = (collection, field)
                rec.sizes[key] = max(rec.sizes.get(key, 0), size)
                if type(value) is int and START_US <= value < 2 * START_US:
                    rec.times.add(key)
            real(self, path, doc)

        monkeypatch.setattr(fs._FirestoreTransaction, name, spy)

    for name in ("set", "create"):
        write_spy(name)
    yield


def _scenarios() -> Iterator[tuple[str, Callable[[Harness], None]]]:
    for module_name in WORKLOAD_MODULES:
        module = importlib.import_module(module_name)
        for name, fn in vars(module).items():
            if not name.startswith("test_") or not inspect.isfunction(fn):
                continue
            if hasattr(fn, "pytestmark") or list(inspect.signature(fn).parameters) != ["h"]:
                continue
            yield f"{module_name}.{name}", fn


def _big_values(h: Harness) -> None:
    """Large parameters, results (inline and apart) and state; WalkGraph with everything;
    a cancel."""
    big = "x" * BIG
    desc = quest_desc("big")
    desc.parameters = json.dumps({"name": "big", "blob": big})
    (qid,) = h.ensure(desc)
    a1 = AttemptID(qid, 1)
    h.settle(max_seconds=1)

    dep_desc = quest_desc("big-dependency")
    dep_desc.parameters = json.dumps({"name": "big-dependency", "blob": big})
    dep = AttemptID(qid_of(dep_desc), 1)

    def halt(job: Job) -> None:
        job.activate()
        job.state["blob"] = big
        assert job.dep_on(dep, quests=[dep_desc]).should_halt

    def finish(job: Job) -> None:
        job.activate()
        job.finish({"blob": big})

    def finish_larger(job: Job) -> None:
        job.activate()
        job.finish({"blob": "x" * (docs.INLINE_RESULT_BYTES + BIG)})  # not inline

    walk = dm_pb2.WalkGraphReq()
    walk.query.attempt_list.to[qid].nums.append(0)  # all attempts: an id range
    walk.include.quest.data = True
    walk.include.attempt.data = True
    walk.include.attempt.result = True
    walk.include.num_executions = 4
    walk.include.execution.data = True
    h.play(a1.execution(1), halt)
    h.settle(max_seconds=1)
    h.service.walk_graph(walk, Caller.trusted())  # a1 waiting: its open edges counted
    h.play(dep.execution(1), finish_larger)
    h.settle(max_seconds=1)
    h.play(a1.execution(2), finish)
    h.settle(max_seconds=1)
    h.service.walk_graph(walk, Caller.trusted())
    # Unbounded: the edges of a dependency are read when it is reached (a query
    # attempt's are read ahead, a chunk at once).
    walk.limit.max_depth = -1
    h.service.walk_graph(walk, Caller.trusted())
    (other,) = h.ensure(quest_desc("cancelled"))
    h.service.cancel_attempt(
        dm_pb2.CancelAttemptReq(attempt=AttemptID(other, 1).to_proto()), Caller.trusted()
    )
    h.settle(max_seconds=1)


def _reopened(h: Harness) -> None:
    """A dependency that failed, re-opened by a user (``dm retry``) with its depender."""
    a_desc, b_desc = quest_desc("depender"), quest_desc("failing")
    (qa,) = h.ensure(a_desc)
    a1, b1 = AttemptID(qa, 1), AttemptID(qid_of(b_desc), 1)
    h.settle(max_seconds=1)

    def depend(job: Job) -> None:
        job.activate()
        job.dep_on(b1, quests=[b_desc])

    def fail(job: Job) -> None:
        job.activate()
        raise RuntimeError("boom")

    h.play(a1.execution(1), depend)
    h.settle(max_seconds=1)
    h.play(b1.execution(1), fail)
    h.settle(max_seconds=60)
    h.service.retry_attempt(b1, Caller.trusted())
    h.settle(max_seconds=60)


def _hub(h: Harness) -> None:
    """A dependee with more dependers than fit inline, its completion acked in steps
    of one: back-edge documents queried, chained steps (each with an outbox record:
    a chained step writes no attempt)."""
    h.engine.settings.propagate_batch = 1
    h.engine.settings.max_inline = 1  # the chained steps queued, not tail calls
    hub_desc = quest_desc("hub")
    hub = AttemptID(qid_of(hub_desc), 1)
    qids = h.ensure(*(quest_desc(f"spoke{i}") for i in range(docs.INLINE_DEPENDERS + 2)))
    h.settle(max_seconds=1)

    def depend(job: Job) -> None:
        job.activate()
        job.dep_on(hub, quests=[hub_desc])

    def finish(job: Job) -> None:
        job.activate()
        job.finish({"v": 1})

    for q in qids:
        h.play(AttemptID(q, 1).execution(1), depend)
    h.settle(max_seconds=5)
    h.play(hub.execution(1), finish)
    h.settle(max_seconds=60)
    # Backwards from the hub, showing edges: the spokes' forward edges are read when
    # they are reached (they declared some; a query attempt's are read ahead).
    walk = dm_pb2.WalkGraphReq()
    walk.query.attempt_list.to[hub.quest].nums.append(hub.num)
    walk.mode.direction = dm_pb2.WalkGraphReq.Mode.BACKWARDS
    walk.include.fwd_deps = True
    walk.limit.max_depth = -1
    h.service.walk_graph(walk, Caller.trusted())


def _polled(h: Harness) -> None:
    """An execution whose end is never notified: found by the sweep's polls."""
    (qid,) = h.ensure(quest_desc("polled", crashed=1))
    a1 = AttemptID(qid, 1)
    h.settle(max_seconds=1)

    def crash(job: Job) -> None:
        job.activate()
        raise Crash("boom")

    h.world.run_task(a1.execution(1), crash, notify=False)
    h.drain()
    h.settle(max_seconds=120)


def _layout_checked(h: Harness) -> None:
    """The record-layout check of a fresh store (its queries: is the store empty?)."""
    layout.check_settings(h.store, "the workload's store", "empty it", h.engine.settings)


@pytest.fixture(scope="module")
def recorded(firestore_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    rec = Recorded()
    runs: list[tuple[str, Callable[[Harness], None], dict[str, Any] | None]] = [
        (name, fn, None) for name, fn in _scenarios()
    ]
    runs += [
        ("big values", _big_values, None),
        ("re-opened", _reopened, None),
        ("hub", _hub, None),
        ("polling", _polled, {"fake": {"fake": {"poll_interval": "30s"}}}),
        ("record layout", _layout_checked, None),
    ]
    with pytest.MonkeyPatch.context() as mp, spies(rec, mp):
        # test_service compares SQLite snapshots around rejected calls (its own check);
        # here those scenarios are load, on Firestore.
        mp.setattr("tests.test_service.snapshot", lambda h: None)
        for name, fn, configs in runs:
            store = FirestoreStore(firestore_client, prefix=f"t/{uuid.uuid4().hex}")
            h = Harness(tmp_path_factory.mktemp("h"), queue="local", store=store, configs=configs)
            try:
                fn(h)
            except Exception as e:  # reported by test_workload_exercised_the_store
                rec.failed.append(f"{name}: {e!r}"[:200])
            finally:
                rec.shapes |= store.query_shapes
                h.close()
    print(f"\nworkload: {len(runs)} runs, {len(rec.shapes)} query shapes, {len(rec.sites)} sites")
    for shape in sorted(rec.shapes):
        print(f"  {shape}")
    for (collection, field), size in sorted(rec.sizes.items()):
        if size > INDEXED_VALUE_LIMIT // 3:
            print(f"  written: {collection}.{field} up to {size} bytes")
    return rec


# -- what terraform declares ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Declared:
    composite: list[tuple[str, str, tuple[tuple[str, str], ...]]]
    """(collection, scope, ((field, order), ...)) of each google_firestore_index."""
    overrides: dict[tuple[str, str], list[tuple[str, str]]]
    """(collection, field) -> [(scope, order or CONTAINS)]; [] = exempt from indexing."""


@pytest.fixture(scope="module")
def declared() -> Declared:
    model = Model(MODULE, {"project": "demo", "region": "europe-west1", "bundle": "x"})
    db = model.resource("google_firestore_database.dm")
    composite = []
    for res in model.of_type("google_firestore_index"):
        for scope in model.instances(res):
            body = model.body(res, scope)
            assert body["database"] == model.attr(db, "name"), res.address
            fields = tuple(
                (f["field_path"], f.get("order") or f.get("array_config", ""))
                for f in body["fields"]
            )
            composite.append((body["collection"], body.get("query_scope", "COLLECTION"), fields))
    overrides: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for res in model.of_type("google_firestore_field"):
        for scope in model.instances(res):
            body = model.body(res, scope)
            assert body["database"] == model.attr(db, "name"), res.address
            assert "index_config" in body, f"{res.address}: no index_config (nothing overridden)"
            indexes = []
            for cfg in body["index_config"]:
                for ix in cfg.get("indexes", []):
                    order = ix.get("order") or ix.get("array_config", "")
                    indexes.append((ix.get("query_scope", "COLLECTION"), order))
            key = (body["collection"], body["field"])
            assert key not in overrides, f"{key} overridden twice"
            overrides[key] = indexes
    return Declared(composite, overrides)


# -- Firestore's rules ----------------------------------------------------------------------------


def _sort(shape: QueryShape) -> list[tuple[str, str]]:
    """The query's orderings, without a trailing ``__name__`` that the index implies."""
    order = list(shape.order)
    if order and order[-1][0] == NAME_FIELD:
        implied = order[-2][1] if len(order) > 1 else ASCENDING
        if order[-1][1] == implied:
            order.pop()
    return order


def _fields(shape: QueryShape) -> set[str]:
    used = set(shape.equals) | set(shape.ranges) | {f for f, _ in shape.order}
    return used - {NAME_FIELD}


def composite_needed(shape: QueryShape) -> tuple[tuple[tuple[str, str], ...], int] | None:
    """The composite index a query needs and how many equality fields lead it, or None
    when single-field indexes serve it."""
    sort = _sort(shape)
    sort_fields = [f for f, _ in sort]
    ranges = [r for r in shape.ranges if r != NAME_FIELD]
    eq = [f for f in shape.equals if f not in sort_fields]
    if not sort and not ranges:
        return None  # equalities only: the single-field indexes are merged
    if not eq and len(sort) <= 1 and len(set(sort_fields) | set(ranges)) == 1:
        return None  # one field ordered or ranged (and equalities on that same field)
    tail = [(r, ASCENDING) for r in ranges if r not in sort_fields]
    return (*[(f, ASCENDING) for f in eq], *sort, *tail), len(eq)


def served_by(
    need: tuple[tuple[str, str], ...], equals: int, index: tuple[tuple[str, str], ...]
) -> bool:
    """Whether a declared composite index serves ``need`` (its first ``equals`` in any order)."""
    fields = list(index)
    if fields and fields[-1][0] == NAME_FIELD and len(fields) > len(need):
        fields.pop()
    if len(fields) != len(need):
        return False
    head_ok = {f for f, _ in fields[:equals]} == {f for f, _ in need[:equals]}
    return head_ok and fields[equals:] == list(need[equals:])


def _single_field_ok(shape: QueryShape, declared: Declared, scope: str) -> list[str]:
    """Problems with the single-field indexes a query relies on."""
    problems = []
    order_of = dict(_sort(shape))
    for field in sorted(_fields(shape)):
        override = next(
            (
                v
                for (c, f), v in declared.overrides.items()
                if c == shape.collection and (field == f or field.startswith(f + "."))
            ),
            None,
        )
        if override is None:
            if scope == "COLLECTION_GROUP":
                problems.append(f"{field}: collection-group query without a COLLECTION_GROUP index")
            continue  # automatic collection-scope index
        if not override:
            problems.append(f"{field}: exempted from indexing but queried")
            continue
        wanted = order_of.get(field)
        ok = any(s == scope and (wanted is None or o == wanted) for s, o in override)
        if not ok:
            problems.append(f"{field}: override has no {scope} index {wanted or '(any order)'}")
    return problems


# -- the checks -----------------------------------------------------------------------------------


@pytest.mark.emulator
def test_workload_exercised_the_store(recorded: Recorded) -> None:
    # A scenario that stops half-way runs fewer queries than it stands for.
    assert not recorded.failed, "workload runs that failed on Firestore:\n" + "\n".join(
        recorded.failed
    )
    assert len(recorded.shapes) >= 5
    assert any(s.order for s in recorded.shapes)
    assert any(s.equals for s in recorded.shapes)
    assert any(NAME_FIELD in s.ranges for s in recorded.shapes)


@pytest.mark.emulator
def test_every_query_is_served_by_declared_indexes(recorded: Recorded, declared: Declared) -> None:
    problems = []
    for shape in sorted(recorded.shapes):
        scope = "COLLECTION_GROUP" if shape.group else "COLLECTION"
        needed = composite_needed(shape)
        if needed is not None:
            need, n_eq = needed
            if not any(
                c == shape.collection and s == scope and served_by(need, n_eq, fields)
                for c, s, fields in declared.composite
            ):
                problems.append(f"{shape}: needs a {scope} composite index {need}")
            # Its fields' single-field indexes do not matter: Firestore's sharded
            # timestamps remove them and keep the composite index.
        else:
            problems += [f"{shape}: {p}" for p in _single_field_ok(shape, declared, scope)]
    assert not problems, "\n".join(problems)


@pytest.mark.emulator
def test_declared_indexes_serve_some_query(recorded: Recorded, declared: Declared) -> None:
    stale = []
    for collection, scope, fields in declared.composite:
        used = False
        for shape in recorded.shapes:
            needed = composite_needed(shape)
            same = shape.collection == collection and (
                ("COLLECTION_GROUP" if shape.group else "COLLECTION") == scope
            )
            used |= same and needed is not None and served_by(*needed, fields)
        if not used:
            stale.append(f"composite index on {collection} {fields} ({scope}) serves no query")
    for (collection, field), indexes in declared.overrides.items():
        if not indexes:
            continue  # exemptions: checked against the written fields below
        queried = any(s.collection == collection and field in _fields(s) for s in recorded.shapes)
        if not queried:
            stale.append(f"index override on {collection}.{field} serves no query")
    assert not stale, "\n".join(stale)


@pytest.mark.emulator
def test_large_fields_are_exempt_and_exemptions_are_real(
    recorded: Recorded, declared: Declared
) -> None:
    large = {k for k, size in recorded.sizes.items() if size > INDEXED_VALUE_LIMIT}
    assert large, "the workload wrote no large value: it no longer covers them"
    exempt = {k for k, v in declared.overrides.items() if not v}
    missing = sorted(large - exempt)
    assert not missing, (
        "fields written with values over 1,500 bytes need an index exemption "
        f"(google_firestore_field with index_config {{}}): {missing}"
    )
    unknown = sorted(exempt - set(recorded.sizes))
    assert not unknown, f"exemptions of fields dm never writes (stale?): {unknown}"


@pytest.mark.emulator
def test_times_written_on_attempts_and_quests_are_exempt_unless_queried(
    recorded: Recorded, declared: Declared
) -> None:
    """A time written on every attempt or quest (created, modified, a copy of the
    quest's created on each attempt) only grows: indexed, it would cap the collection
    near 500 writes/s (README, Scale). Each is exempted from indexing, unless a query
    reads it (then it is a sweep key, led by the shard: the test below)."""
    queried = {(s.collection, f) for s in recorded.shapes for f, _ in s.order}
    queried |= {(s.collection, f) for s in recorded.shapes for f in (*s.equals, *s.ranges)}
    times = {k for k in recorded.times if k[0] in (docs.ATTEMPTS, docs.QUESTS)}
    assert (docs.ATTEMPTS, "created") in times, "the workload wrote no attempt's time"
    indexed = sorted(k for k in times - queried if declared.overrides.get(k) != [])
    assert not indexed, f"times written on every attempt or quest, still indexed: {indexed}"


@pytest.mark.emulator
def test_no_index_orders_a_top_level_collection_by_time_alone(
    recorded: Recorded, declared: Declared
) -> None:
    """Attempts and outbox records are written about once per execution or more: every
    time-ordered query on them is led by the sweep shard (a composite index whose
    entries land in many ranges), and the single-field indexes of the ordered fields
    are removed (the sequential-values limit of 500 writes/s on the collection:
    README, Scale)."""
    swept = (docs.ATTEMPTS, docs.OUTBOX)
    ordered = [s for s in recorded.shapes if s.collection in swept and s.order]
    assert ordered, "the workload ran no sweep: it no longer covers its queries"
    problems = []
    for shape in ordered:
        if docs.SWEEP_SHARD not in shape.equals:
            problems.append(f"{shape}: not led by {docs.SWEEP_SHARD}")
        for field, _ in shape.order:
            if field != NAME_FIELD and declared.overrides.get((shape.collection, field)) != []:
                problems.append(f"{shape}: {field} keeps its single-field indexes")
    for collection in swept:
        if declared.overrides.get((collection, docs.SWEEP_SHARD)) != []:
            problems.append(f"{collection}.{docs.SWEEP_SHARD} keeps its single-field indexes")
    assert not problems, "\n".join(problems)


# -- every query call site ran in the workload ----------------------------------------------------


def _static_sites() -> set[Site]:
    sites: set[Site] = set()
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(NOT_SCANNED) or rel.endswith("_pb2.py"):
                continue
            sites |= _sites_in(rel, ast.parse(path.read_text()))
    return sites


def _sites_in(rel: str, tree: ast.Module) -> set[Site]:
    found: set[Site] = set()

    def visit(node: ast.AST, qual: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, [*qual, child.name])
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, [*qual, child.name, "<locals>"])
            else:
                if (
                    isinstance(child, ast.Call)
                    and isinstance(child.func, ast.Attribute)
                    and child.func.attr in QUERY_METHODS
                    and ast.unparse(child.func.value).endswith(("store", "uow", "_tx", "tx"))
                ):
                    names = [q for q in qual if q != "<locals>"]
                    if names and names[-1] not in QUERY_METHODS:
                        while qual and qual[-1] == "<locals>":
                            qual = qual[:-1]
                        found.add((rel, ".".join(qual)))
                visit(child, qual)

    visit(tree, [])
    return found


@pytest.mark.emulator
def test_every_query_call_site_ran_in_the_workload(recorded: Recorded) -> None:
    static = _static_sites()
    assert static, "the scan found no query call: it is broken"
    missed = sorted(static - recorded.sites)
    assert not missed, (
        "queries the index workload never ran (extend the workload in this test, so their "
        f"indexes are checked): {missed}"
    )


# -- the rules themselves (no emulator) -----------------------------------------------------------


def _q(**kw: Any) -> QueryShape:
    return QueryShape("c", **kw)


@pytest.mark.parametrize(
    ("shape", "need"),
    [
        (_q(equals=("a", "b")), None),  # equalities: merged single-field indexes
        (_q(order=(("a", "ASCENDING"),)), None),
        (_q(order=(("a", "DESCENDING"),)), None),
        (_q(equals=("a",), order=(("a", "ASCENDING"),)), None),
        (_q(ranges=("__name__",)), None),  # an id range: the name index
        (_q(ranges=("a",)), None),
        (_q(order=(("a", "DESCENDING"), ("__name__", "DESCENDING"))), None),  # implied
        (
            _q(order=(("a", "DESCENDING"), ("__name__", "ASCENDING"))),
            ((("a", "DESCENDING"), ("__name__", "ASCENDING")), 0),
        ),
        (
            _q(equals=("b", "c"), order=(("a", "ASCENDING"),)),
            ((("b", "ASCENDING"), ("c", "ASCENDING"), ("a", "ASCENDING")), 2),
        ),
        (_q(equals=("b",), ranges=("a",)), ((("b", "ASCENDING"), ("a", "ASCENDING")), 1)),
        (
            _q(order=(("a", "ASCENDING"), ("b", "DESCENDING"))),
            ((("a", "ASCENDING"), ("b", "DESCENDING")), 0),
        ),
    ],
)
def test_composite_index_rules(
    shape: QueryShape, need: tuple[tuple[tuple[str, str], ...], int] | None
) -> None:
    assert composite_needed(shape) == need


def test_served_by_and_single_field_rules() -> None:
    need = (("b", "ASCENDING"), ("c", "ASCENDING"), ("a", "DESCENDING"))
    assert served_by(need, 2, (("c", "ASCENDING"), ("b", "DESCENDING"), ("a", "DESCENDING")))
    assert served_by(need, 2, (*need, ("__name__", "DESCENDING")))
    assert not served_by(need, 2, (("b", "ASCENDING"), ("a", "DESCENDING"), ("c", "ASCENDING")))
    assert not served_by(need, 2, (("b", "ASCENDING"), ("c", "ASCENDING"), ("a", "ASCENDING")))
    group = QueryShape("timers", group=True, order=(("due", "ASCENDING"),))
    none = Declared([], {})
    assert _single_field_ok(group, none, "COLLECTION_GROUP") == [
        "due: collection-group query without a COLLECTION_GROUP index"
    ]
    with_group = Declared([], {("timers", "due"): [("COLLECTION_GROUP", "ASCENDING")]})
    assert _single_field_ok(group, with_group, "COLLECTION_GROUP") == []
    flat = QueryShape("timers", order=(("due", "ASCENDING"),))
    assert _single_field_ok(flat, with_group, "COLLECTION") == [
        "due: override has no COLLECTION index ASCENDING"
    ]
    exempt = Declared([], {("timers", "due"): []})
    assert _single_field_ok(flat, exempt, "COLLECTION") == [
        "due: exempted from indexing but queried"
    ]
    sub = QueryShape("timers", equals=("due.at",))
    assert _single_field_ok(sub, exempt, "COLLECTION") == [
        "due.at: exempted from indexing but queried"
    ]
