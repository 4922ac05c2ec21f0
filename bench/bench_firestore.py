"""Firestore operations per execution, on the emulator (uv run python -m bench.bench_firestore).

On Google Cloud dm pays per document read, write and delete, and per queued
task. This runs jobsim graphs on dm's engine with the Firestore store on the
gcloud emulator (started here, on a free port, and stopped at the end) and
the local task queue standing in for Cloud Tasks (the engine then writes
outbox records as it does with Cloud Tasks), and reports what the store
counted (:class:`~dmcore.store.firestore.FirestoreStats`), per scenario:

* reads, writes, deletes, commits and queue tasks (deliveries) per execution;
* the most writes on any one document (Firestore sustains about one write
  per second on a document), the largest commit and the most documents one
  transaction touched (read or written: ``max_documents_one_transaction``);
* a breakdown by step (the mutation a transaction ran, the task delivered,
  the API method) and by collection;
* $ per million executions at the list prices of :mod:`bench.prices`;
* function invocations per execution, as Google Cloud would bill them: each
  task delivered is one of ``dm_tasks``, each API call (the client's and the
  jobs') one of ``dm_api``, each distributor notification one of ``dm_notify``
  (here handled in-process; on Google Cloud it comes through Pub/Sub).

dm's documents are counted apart from the distributor's own (jobsim keeps its
tasks in dm's store: what goes through the store handed to distributors is
the distributor's), and apart from the sweep and this program's own reads.
Nothing here knows dm's document names: steps come from what the engine runs,
collections from the paths the store reports. Executions are counted
through the API (WalkGraph from the roots: each attempt's number of
executions).

Scenarios (``--scenarios name:size,...``): ``leaf`` (independent leaf
quests), ``fan-in`` (jobsim's root + N shards), ``wide-fan-in`` (the same,
wide: issue 11 asks about 10,000; the default is smaller to finish in
minutes: the emulator commits a few hundred transactions per second),
``chain`` (N quests, each waiting for the one below). ``--json`` prints one
JSON object.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from bench import bench_engine, prices
from dmcore.engine import base as engine_base
from dmcore.engine import steps as engine_steps
from dmcore.engine.base import Mutation
from dmcore.engine.core import DISTRIBUTOR_TARGET_PREFIX, MUTATION_TARGET
from dmcore.runtime import emulators
from dmcore.runtime.embedded import Embedded, build_registry, run_batch
from dmcore.service import Caller
from dmcore.store.base import Doc, Store, Transaction
from dmcore.store.firestore import FirestoreStats, FirestoreStore, OpCounts, collection_of

T = TypeVar("T")

DM, DISTRIBUTOR, SWEEP, BENCH = "dm", "distributor", "sweep", "bench"
OPS = ("reads", "writes", "deletes")
DEFAULT_SCENARIOS = "leaf:100,fan-in:100,wide-fan-in:1000,chain:20"
SHAPES: dict[str, str] = {
    "leaf": "independent",
    "fan-in": "fan-in",
    "wide-fan-in": "fan-in",
    "chain": "chain",
}


def describe(name: str, size: int) -> str:
    if name == "leaf":
        return f"leaf x{size:,}"
    if name == "fan-in":
        return f"jobsim fan-in 1+{size:,}"
    if name == "wide-fan-in":
        return f"fan-in of {size:,} onto one waiter"
    return f"chain of {size:,}"


# -- who did what ------------------------------------------------------------------------------


class OwnedStore(Store):
    """``inner`` with every operation counted under ``owner`` (the store given to distributors)."""

    def __init__(self, inner: Store, stats: FirestoreStats, owner: str) -> None:
        self.inner = inner
        self.stats = stats
        self.owner = owner

    def _as_owner(self, fn: Callable[[], T]) -> T:
        with self.stats.labelled(owner=self.owner):
            return fn()

    def transaction(self, fn: Callable[[Transaction], T], *, attempts: int = 10) -> T:
        return self._as_owner(lambda: self.inner.transaction(fn, attempts=attempts))

    def get(self, path: str) -> Doc | None:
        return self._as_owner(lambda: self.inner.get(path))

    def get_many(self, paths: Sequence[str]) -> dict[str, Doc | None]:
        return self._as_owner(lambda: self.inner.get_many(paths))

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
        return self._as_owner(
            lambda: self.inner.query(
                collection, where, order_by, descending, limit, at_most=at_most
            )
        )

    def query_id_prefix(self, collection: str, prefix: str) -> list[tuple[str, Doc]]:
        return self._as_owner(lambda: self.inner.query_id_prefix(collection, prefix))

    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        return self._as_owner(lambda: self.inner.count(collection, where))


class Meter:
    """Labels what the engine does in ``emb`` by step, and counts task deliveries.

    Wraps, on this one engine and service, the steps they run (a mutation's
    transaction, a delivered task, an API method, the sweep), and hands
    distributors an :class:`OwnedStore`.
    """

    API = ("ensure_graph_data", "activate_execution", "finish_attempt")

    def __init__(self, emb: Embedded, stats: FirestoreStats) -> None:
        self.stats = stats
        self.deliveries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.invocations: collections.Counter[str] = collections.Counter()
        """Function invocations Google Cloud would bill, by function."""
        engine = emb.engine
        run, handle, sweep = engine.run, engine.handle_task, engine.sweep

        def labelled_run(mutation: Mutation, *, origin: str | None = None) -> None:
            with stats.labelled(step=mutation.KIND):
                run(mutation, origin=origin)

        def labelled_handle(
            target: str, payload: Mapping[str, Any], delivery: int = 1, name: str = ""
        ) -> None:
            if target == MUTATION_TARGET:
                owner, step = DM, str(payload.get("kind"))
            else:
                owner = DISTRIBUTOR if target.startswith(DISTRIBUTOR_TARGET_PREFIX) else DM
                step = f"{target} task"
            self.deliveries[(owner, step)] += 1
            # A distributor's own tasks (jobsim runs its jobs as tasks) are shown
            # apart, like its documents: a real distributor runs jobs elsewhere.
            self.invocations["dm_tasks" if owner == DM else DISTRIBUTOR] += 1
            with stats.labelled(owner=DM, step=step):
                handle(target, payload, delivery, name)

        def labelled_sweep() -> dict[str, int]:
            with stats.labelled(owner=SWEEP, step="sweep"):
                return sweep()

        engine.run = labelled_run  # type: ignore[method-assign]
        engine.handle_task = labelled_handle  # type: ignore[method-assign]
        engine.sweep = labelled_sweep  # type: ignore[method-assign]
        for method in self.API:
            setattr(emb.service, method, self._api(getattr(emb.service, method), method))
        engine.registry.store = OwnedStore(engine.store, stats, DISTRIBUTOR)
        # A notification is handled in-process here; on Google Cloud each one is
        # a dm_notify invocation. Counted for this engine only, until close().
        kind = engine_steps.NotifyExecution
        self._notify = handle_notification = engine_base._EXECUTE[kind]

        def counted_notification(step: Any, on: Any, delivery: int) -> None:
            if on is engine:
                self.invocations["dm_notify"] += 1
            handle_notification(step, on, delivery)

        engine_base._EXECUTE[kind] = counted_notification

        def publish(data: bytes, attrs: dict[str, str]) -> None:
            engine.receive_notification(data, attrs)

        # As on Google Cloud (the gcp backend sets a publisher): a distributor task's
        # notifications are published and each reaches dm_notify, which checks its
        # token and reads the execution (NotifyExecution); the embedded worker handles
        # them in the task, without that read.
        engine.publish = publish

    def close(self) -> None:
        """Stop counting notifications (the handler is shared by every engine)."""
        engine_base._EXECUTE[engine_steps.NotifyExecution] = self._notify

    def _api(self, fn: Callable[..., T], method: str) -> Callable[..., T]:
        step = "API " + "".join(w.title() for w in method.split("_"))

        def labelled(*args: Any, **kwargs: Any) -> T:
            self.invocations["dm_api"] += 1
            with self.stats.labelled(owner=DM, step=step):
                return fn(*args, **kwargs)

        return labelled


# -- one scenario ------------------------------------------------------------------------------


def _sum(counts: Sequence[OpCounts]) -> OpCounts:
    return OpCounts(
        reads=sum(c.reads for c in counts),
        writes=sum(c.writes for c in counts),
        deletes=sum(c.deletes for c in counts),
    )


def _per(n: float, executions: int) -> float:
    return round(n / executions, 2)


def report(
    name: str,
    size: int,
    *,
    stats: FirestoreStats,
    deliveries: Mapping[tuple[str, str], int],
    invocations: Mapping[str, int],
    executions: int,
    seconds: float,
    roots: Sequence[str],
) -> dict[str, Any]:
    """The figures of one scenario, from the store's detailed counters."""
    by_owner: dict[str, list[OpCounts]] = collections.defaultdict(list)
    commits: collections.Counter[str] = collections.Counter()
    steps: dict[str, dict[str, int]] = {}
    colls: dict[str, dict[str, int]] = {}
    theirs: set[str] = set()
    for (owner, step), lc in sorted(stats.labels.items()):
        commits[owner] += lc.commits
        by_owner[owner].extend(lc.collections.values())
        if owner == DISTRIBUTOR:
            theirs.update(lc.collections)
        if owner != DM:
            continue
        row = steps.setdefault(step, {"deliveries": 0, "commits": 0, **_zero()})
        row["commits"] += lc.commits
        for coll, c in lc.collections.items():
            _add(row, c)
            _add(colls.setdefault(coll, _zero()), c)
    for (owner, step), n in deliveries.items():
        if owner == DM:
            steps.setdefault(step, {"deliveries": 0, "commits": 0, **_zero()})["deliveries"] += n
    dm = _sum(by_owner[DM])
    theirs_ops = _sum(by_owner[DISTRIBUTOR])
    dm_tasks = sum(n for (owner, _), n in deliveries.items() if owner == DM)
    their_tasks = sum(n for (owner, _), n in deliveries.items() if owner == DISTRIBUTOR)
    hot = sorted(
        (
            (c.writes + c.deletes, p)
            for p, c in stats.documents.items()
            if collection_of(p) not in theirs
        ),
        reverse=True,
    )[:3]
    dm_invocations = sum(n for f, n in invocations.items() if f != DISTRIBUTOR)
    per = {
        "reads": dm.reads / executions,
        "writes": (dm.writes + dm.deletes) / executions,
        "deletes": dm.deletes / executions,
        "tasks": dm_tasks / executions,
    }
    cost = prices.LIST.per_million(
        reads=per["reads"],
        writes=per["writes"] - per["deletes"],
        deletes=per["deletes"],
        tasks=per["tasks"],
        requests=dm_invocations / executions,
    )
    their_cost = prices.LIST.per_million(
        reads=theirs_ops.reads / executions,
        writes=theirs_ops.writes / executions,
        deletes=theirs_ops.deletes / executions,
        tasks=their_tasks / executions,
        requests=their_tasks / executions,
    )
    sweep = _sum(by_owner[SWEEP])
    return {
        "scenario": name,
        "description": describe(name, size),
        "size": size,
        "executions": executions,
        "seconds": round(seconds, 2),
        "reads_per_execution": _per(dm.reads, executions),
        "writes_per_execution": _per(dm.writes + dm.deletes, executions),
        "deletes_per_execution": _per(dm.deletes, executions),
        "commits_per_execution": _per(commits[DM], executions),
        "tasks_per_execution": _per(dm_tasks, executions),
        "invocations_per_execution": _per(dm_invocations, executions),
        "invocations": {f: invocations.get(f, 0) for f in ("dm_api", "dm_tasks", "dm_notify")},
        "max_writes_one_document": hot[0][0] if hot else 0,
        "hottest_documents": [{"path": _short(p, roots), "writes": n} for n, p in hot],
        "largest_commit": stats.largest_commit,
        "max_documents_one_transaction": stats.largest_transaction,
        "usd_per_million_executions": round(cost, 2),
        "distributor": {
            "collections": sorted(theirs),
            "reads_per_execution": _per(theirs_ops.reads, executions),
            "writes_per_execution": _per(theirs_ops.writes + theirs_ops.deletes, executions),
            "commits_per_execution": _per(commits[DISTRIBUTOR], executions),
            "tasks_per_execution": _per(their_tasks, executions),
            "invocations_per_execution": _per(invocations.get(DISTRIBUTOR, 0), executions),
            "usd_per_million_executions": round(their_cost, 2),
        },
        "not_counted": {
            "sweep": {"reads": sweep.reads, "writes": sweep.writes + sweep.deletes},
        },
        "steps": steps,
        "collections": colls,
    }


def _zero() -> dict[str, int]:
    return {"reads": 0, "writes": 0, "deletes": 0}


def _add(row: dict[str, int], c: OpCounts) -> None:
    row["reads"] += c.reads
    row["writes"] += c.writes
    row["deletes"] += c.deletes


def _short(path: str, roots: Sequence[str]) -> str:
    """A document path with long ids cut, and the root quests named."""
    parts = path.split("/")
    for i in range(1, len(parts), 2):
        if any(parts[i].startswith(r) for r in roots):
            parts[i] = "<root>" + parts[i][len(next(r for r in roots if parts[i].startswith(r))) :]
        elif len(parts[i]) > 14:
            parts[i] = parts[i][:10] + "…"
    return "/".join(parts)


class StepClock:
    """The time of an exact run (``--exact``): it moves only when no task is due."""

    def __init__(self) -> None:
        self.now_us = int(time.time() * 1_000_000)

    def __call__(self) -> int:
        return self.now_us


def run_exactly(
    emb: Embedded, clock: StepClock, phrases: bench_engine.Phrases
) -> tuple[float, list[Any]]:
    """:func:`bench_engine.run` in an order that depends on nothing but the graph: one
    worker leases the due tasks in queue order, never cut short by wall-clock
    limits, and the clock jumps to the next task's time only when none is due."""
    start = time.perf_counter()
    rsp = emb.service.ensure_graph_data(bench_engine.request(phrases), Caller.trusted())
    qids = [q.id for q in rsp.quest_ids]
    while True:
        if run_batch(emb.engine, emb.queue) == 0:
            nxt = emb.queue.next_due_us()
            if nxt is None:
                break
            clock.now_us = max(clock.now_us, nxt)
    return time.perf_counter() - start, bench_engine.results(emb, qids)


def run_scenario(
    name: str, size: int, project: str, home: pathlib.Path, *, exact: bool = False
) -> dict[str, Any]:
    """One scenario in a fresh namespace of the emulator's ``project``; ``exact``: in
    an order that makes its counts the same at every run (:func:`run_exactly`)."""
    kind = SHAPES[name]
    phrases = bench_engine.SHAPES[kind](size)
    store = FirestoreStore(project=project, prefix=f"bench/{uuid.uuid4().hex}")
    clock = StepClock()
    registry = build_registry(bench_engine.CONFIG)
    if exact:
        rng = random.Random(f"{name}:{size}")
        emb = Embedded(home, registry, store=store, clock=clock, rand=rng.randbytes)
    else:
        emb = Embedded(home, registry, store=store)
    meter: Meter | None = None
    try:
        meter = Meter(emb, store.stats)
        store.stats.reset()
        store.stats.detailed = True
        with store.stats.labelled(owner=BENCH):
            if exact:
                seconds, results = run_exactly(emb, clock, phrases)
            else:
                seconds, results = bench_engine.run(emb, phrases)
            n = bench_engine.executions(emb, bench_engine.quest_ids(phrases))
        values = [r.get("value") if isinstance(r, dict) else None for r in results]
        if values != bench_engine.expected_values(kind, size):
            raise SystemExit(f"{name}: the graph gave {values[:5]}..., not the expected values")
        roots = [] if kind == "independent" else bench_engine.quest_ids(phrases)
        return report(
            name,
            size,
            stats=store.stats,
            deliveries=meter.deliveries,
            invocations=meter.invocations,
            executions=n,
            seconds=seconds,
            roots=roots,
        )
    finally:
        if meter is not None:
            meter.close()
        emb.close()


# -- the program -------------------------------------------------------------------------------


@contextlib.contextmanager
def emulator(host: str | None) -> Iterator[str]:
    """A Firestore emulator: ``host`` if given, else one started here (stopped at the end)."""
    if host:
        if not emulators.answers_ok(host):
            raise SystemExit(f"no Firestore emulator answers at {host}")
        yield host
        return
    with tempfile.TemporaryDirectory() as logs:
        try:
            emu = emulators.start(emulators.FIRESTORE, pathlib.Path(logs))
        except emulators.EmulatorError as e:
            raise SystemExit(f"bench_firestore needs the Firestore emulator: {e}") from None
        try:
            yield emu.host
        finally:
            emu.stop()


@contextlib.contextmanager
def environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name]`` set to ``value`` in the block (the Google client reads it)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def parse_scenarios(text: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, n = item.partition(":")
        if name not in SHAPES:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {name!r} (known: {', '.join(SHAPES)})"
            )
        if not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"scenario {item!r}: give a size of at least 1")
        if any(name == seen for seen, _ in out):
            raise argparse.ArgumentTypeError(f"scenario {name!r}: named twice")
        out.append((name, int(n)))
    return out


def _table(title: str, head: Sequence[str], rows: Mapping[str, Mapping[str, int]]) -> list[str]:
    width = max([len(title), *(len(k) for k in rows)]) + 2
    out = [f"  {title:<{width}}" + "".join(f"{h:>11}" for h in head)]
    for key, row in rows.items():
        out.append(f"    {key:<{width - 2}}" + "".join(f"{row[h]:>11,}" for h in head))
    return out


def lines(r: dict[str, Any]) -> list[str]:
    d = r["distributor"]
    out = [
        f"{r['description']}: {r['executions']:,} executions "
        f"({r['seconds']:.1f} s on the emulator)",
        f"  dm per execution: {r['reads_per_execution']} reads, {r['writes_per_execution']} writes "
        f"(incl. {r['deletes_per_execution']} deletes), {r['commits_per_execution']} commits, "
        f"{r['tasks_per_execution']} queue tasks = ${r['usd_per_million_executions']:.2f} "
        "per million executions",
        f"  the distributor's own ({', '.join(d['collections']) or 'none'}): "
        f"{d['reads_per_execution']} reads, {d['writes_per_execution']} writes, "
        f"{d['tasks_per_execution']} tasks (function invocations) per execution "
        f"(${d['usd_per_million_executions']:.2f}"
        " per million)",
        f"  dm's function invocations per execution: {r['invocations_per_execution']} ("
        + ", ".join(f"{f} {n:,}" for f, n in r["invocations"].items())
        + " in all)",
        f"  most writes on one document: {r['max_writes_one_document']} ("
        + ", ".join(f"{h['path']}: {h['writes']}" for h in r["hottest_documents"])
        + f"); largest commit: {r['largest_commit']} writes"
        + f"; most documents one transaction touched: {r['max_documents_one_transaction']}",
    ]
    steps = dict(sorted(r["steps"].items(), key=lambda kv: -kv[1]["writes"] - kv[1]["reads"]))
    out += _table("by step (dm)", ("deliveries", "commits", *OPS), steps)
    out += _table("by collection (dm)", OPS, dict(sorted(r["collections"].items())))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"name:size, comma-separated; names {', '.join(SHAPES)} (default {DEFAULT_SCENARIOS})",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--exact",
        action="store_true",
        help="run each graph in one order that does not depend on timing (a stepped clock, "
        "seeded randomness, batches not cut by time): the same counts at every run",
    )
    ap.add_argument(
        "--emulator-host",
        help="use the Firestore emulator at HOST:PORT (a project of its own, left in place) "
        "instead of starting one",
    )
    args = ap.parse_args(argv)
    try:
        scenarios = parse_scenarios(args.scenarios)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    out: dict[str, Any] = {
        "prices": {
            "date": prices.PRICES_DATE,
            "where": prices.PRICES_WHERE,
            **{k: v for k, v in dataclasses.asdict(prices.LIST).items()},
        },
        "scenarios": {},
    }
    project = f"dm-bench-{uuid.uuid4().hex[:10]}"
    with (
        emulator(args.emulator_host) as host,
        tempfile.TemporaryDirectory() as tmp,
        environ(emulators.FIRESTORE.env_var, host),
    ):
        for i, (name, size) in enumerate(scenarios):
            started = time.monotonic()
            r = run_scenario(name, size, project, pathlib.Path(tmp) / f"s{i}", exact=args.exact)
            out["scenarios"][name] = r
            if not args.json:
                print("\n".join(lines(r)), flush=True)
                print(f"  ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"prices: {prices.PRICES_WHERE}; list prices of {prices.PRICES_DATE}")


if __name__ == "__main__":
    main()
