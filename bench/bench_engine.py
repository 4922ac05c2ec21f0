"""Throughput of the embedded engine, end to end (run: uv run python -m bench.bench_engine).

Measures, on this machine, the SQLite store with the local queue (WAL,
``synchronous=FULL``: every commit survives a power loss), from the API call
to finished attempts, with jobsim jobs that do nothing:

* ``independent:N``: N leaf quests in one request, each a full execution
  (schedule, run, activate, finish, notify, complete);
* ``fan-in:N``: one root quest depending on N shards: the root runs, halts on
  its N dependencies and resumes once they are done (N + 2 executions);
* ``chain:N``: a chain of N quests, each depending on the one below (jobsim's
  chain stage): every link but the last halts and resumes, so the figure that
  matters is the time per link;
* for every case, a fully memoised re-run of the same request (every result
  reused, nothing executes; the request asks for results, so the answer
  carries them and the client sends nothing more), and the peak memory (RSS)
  of the process;
* for scale, raw sqlite3 commits per second in the same place and run.

Each run is a fresh home in a fresh Python process (so each peak RSS is that
run's own); a case runs ``--repeat`` times (cases of 100,000 once) and the
best run is reported with the median beside it (the machine may be shared).
``-n`` sets every case's size (a smoke run), ``--cases`` picks cases,
``--json`` prints one JSON object instead of lines. Figures only, with their
goals; never asserted in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dmcore import ids
from dmcore.proto import dm_pb2
from dmcore.runtime.embedded import Embedded, build_registry
from dmcore.service import Caller

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = {"distributor_configs": {"jobsim": {"jobsim": {"pool": "bench"}}}}
GOAL_EXECUTIONS_PER_S = 1000
GOAL_MEMOISED_S = 0.3
"""Budget of the memoised re-run of 10,000 independent quests."""
GOAL_LINK_MS = 2.5
GOAL_PEAK_RSS_MIB = 1024
"""Budget of 100,000 independent quests in one graph."""
DEFAULT_CASES = (
    "independent:1000,fan-in:1000,fan-in:10000,chain:200,independent:10000,independent:100000"
)
TIMEOUT_S = 3600.0
HUGE = 100_000
"""Cases this large run once whatever ``--repeat`` says (minutes each)."""

Phrases = list[dict[str, object]]
ENDED = ("finished", "abnormal_finish")
"""Attempt kinds (WalkGraph's ``attempt_type``) that end a run."""


def leaves(n: int) -> Phrases:
    return [{"name": f"leaf{i}", "return_stage": {"retval": 1}} for i in range(n)]


def fan_in(n: int) -> Phrases:
    """One root summing ``n`` leaves of value 1 (its value: n + 1)."""
    dep = {
        "shards": n,
        "attempts": {"items": [{"single": 1}]},
        "phrase": {"name": "leaf", "return_stage": {"retval": 1}},
    }
    return [{"name": "root", "stages": [{"deps": {"deps": [dep]}}]}]


def chain(n: int) -> Phrases:
    """A chain of ``n`` quests, each adding 1 to the one below (the top's value: n)."""
    return [{"name": "chain", "stages": [{"chain": {"links": max(0, n - 1)}}]}]


SHAPES: dict[str, Callable[[int], Phrases]] = {
    "independent": leaves,
    "fan-in": fan_in,
    "chain": chain,
}


def expected_values(kind: str, n: int) -> list[int]:
    """The ``value`` each root quest of a case finishes with (a check that the work ran)."""
    if kind == "independent":
        return [1] * n
    return [n + 1] if kind == "fan-in" else [max(1, n)]


def request(phrases: Phrases) -> dm_pb2.EnsureGraphDataReq:
    req = dm_pb2.EnsureGraphDataReq()
    for p in phrases:
        req.quest.add(
            distributor_config_name="jobsim",
            parameters=json.dumps(p),
            distributor_parameters="{}",
        )
        req.quest_attempt.add(nums=[1])
    # The answer carries the results of what is over already (a memoised re-run):
    # the client needs no second request for them.
    req.include.attempt.result = True
    return req


def quest_ids(phrases: Phrases) -> list[str]:
    return [ids.quest_id(q) for q in request(phrases).quest]


def run(emb: Embedded, phrases: Phrases) -> tuple[float, list[Any]]:
    """Submit the jobsim quests and drive them to FINISHED: (wall-clock seconds, root results)."""
    return run_request(emb, request(phrases))


def run_request(emb: Embedded, req: dm_pb2.EnsureGraphDataReq) -> tuple[float, list[Any]]:
    """Submit the request's quests (attempt 1 each) and drive them to FINISHED."""
    t = timed_request(emb, req)
    return t.seconds, t.results


@dataclasses.dataclass(frozen=True)
class Timed:
    seconds: float
    """Wall-clock time from the request to the last attempt over."""
    cpu_seconds: float
    """This process's CPU time meanwhile: on a shared machine wall time also
    counts the waits for a CPU; CPU time does not (nor the waits for the disk)."""
    results: list[Any]


def timed_request(emb: Embedded, req: dm_pb2.EnsureGraphDataReq) -> Timed:
    """:func:`run_request`, with the CPU time it took."""
    start, cpu = time.perf_counter(), time.process_time()
    rsp = emb.service.ensure_graph_data(req, Caller.trusted())
    qids = [q.id for q in rsp.quest_ids]

    def done() -> bool:
        return all(att.data.WhichOneof("attempt_type") in ENDED for _, _, att in walk(emb, qids))

    # The answer holds each attempt's state when it was asked for: a client of a
    # fully memoised graph learns from it that there is nothing to wait for.
    found = memoised_results(rsp.result, qids)
    if found is not None:
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return Timed(seconds, cpu, found)
    if not emb.drive(done, sweep_every_s=60, timeout_s=TIMEOUT_S):
        raise SystemExit(f"the graph did not finish in {TIMEOUT_S:.0f} s")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Timed(seconds, cpu, results(emb, qids))


def memoised_results(answer: dm_pb2.GraphData, qids: Sequence[str]) -> list[Any] | None:
    """The results of attempt 1 of quests ``qids`` if the answer shows all of them over
    (else None), in one pass: each look-up in a protobuf map costs (``get``: a missing
    key is not added)."""
    answered, objects = answer.quests, []
    for q in qids:
        quest = answered.get(q)
        att = None if quest is None else quest.attempts.get(1)
        if att is None:
            return None
        data = att.data
        if data.WhichOneof("attempt_type") not in ENDED:
            return None
        objects.append(data.finished.data.object)
    return [json.loads(o or "null") for o in objects]


def walk(
    emb: Embedded, qids: Sequence[str], *, depth: int = 0, result: bool = False, chunk: int = 1000
) -> Iterator[tuple[str, int, dm_pb2.Attempt]]:
    """Every attempt WalkGraph reaches from attempt 1 of quests ``qids`` (``depth``
    dependency hops, -1: all), with its data: the API, not dm's documents, says."""
    for i in range(0, len(qids), chunk):
        req = dm_pb2.WalkGraphReq()
        for qid in qids[i : i + chunk]:
            req.query.attempt_list.to[qid].nums.append(1)
        req.include.attempt.data = True
        req.include.attempt.result = result
        req.include.attempt.abnormal = True  # else they are left out, not reported
        req.include.attempt.expired = True
        req.limit.max_depth = depth
        graph = emb.service.walk_graph(req, Caller.trusted())
        for qid, quest in graph.quests.items():
            for num, att in quest.attempts.items():
                yield qid, num, att


def results(emb: Embedded, qids: Sequence[str]) -> list[Any]:
    """The results of attempt 1 of quests ``qids`` (None where it did not finish)."""
    # Decoded as they come: an attempt message kept would keep its whole graph's alive.
    found = {
        q: json.loads(att.data.finished.data.object or "null")
        for q, n, att in walk(emb, qids, result=True)
        if n == 1
    }
    return [found[q] for q in qids]


def executions(emb: Embedded, roots: Sequence[str]) -> int:
    """Executions of every attempt reachable from attempt 1 of quests ``roots``."""
    seen = {(q, n): att.data.num_executions for q, n, att in walk(emb, roots, depth=-1)}
    return sum(seen.values())


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raw_commits_per_s(where: pathlib.Path, synchronous: str, n: int = 3000) -> float:
    conn = sqlite3.connect(where / f"raw-{synchronous}.sqlite", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 300))
            conn.execute("COMMIT")
        return n / (time.perf_counter() - start)
    finally:
        conn.close()


# -- one run (in a process of its own) --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str
    size: int

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.size}"

    def describe(self) -> str:
        if self.kind == "independent":
            return f"{self.size:,} independent quests"
        if self.kind == "fan-in":
            return f"fan-in of {self.size:,} shards onto one quest"
        return f"chain of {self.size:,} quests"


@dataclasses.dataclass(frozen=True)
class Run:
    """One fresh run of a case: the first run, the memoised re-run, what it took."""

    seconds: float
    memo_seconds: float
    executions: int
    peak_rss_mib: float
    cpu_seconds: float = 0.0
    memo_cpu_seconds: float = 0.0


def one_run(case: Case, home: pathlib.Path) -> Run:
    """Run ``case`` in a fresh home, then again (memoised); checks the results."""
    phrases = SHAPES[case.kind](case.size)
    want = expected_values(case.kind, case.size)
    emb = Embedded(home, build_registry(CONFIG))
    try:
        roots = quest_ids(phrases)
        first = timed_request(emb, request(phrases))
        n_exec = executions(emb, roots)
        again = timed_request(emb, request(phrases))
        if executions(emb, roots) != n_exec:
            raise SystemExit(f"{case.name}: the memoised re-run executed something")
    finally:
        emb.close()
    for label, res in (("run", first.results), ("memoised re-run", again.results)):
        values = [r.get("value") if isinstance(r, dict) else None for r in res]
        if values != want:
            raise SystemExit(f"{case.name}: {label} gave {values[:5]}..., not {want[:5]}...")
    return Run(
        first.seconds,
        again.seconds,
        n_exec,
        peak_rss_mib(),
        cpu_seconds=first.cpu_seconds,
        memo_cpu_seconds=again.cpu_seconds,
    )


def run_in_child(case: Case, home: pathlib.Path) -> Run:
    """:func:`one_run` in a new Python process (its own memory peak)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_engine", "--child", case.name, "--home", str(home)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{case.name} failed:\n{proc.stderr[-3000:]}")
    return Run(**json.loads(proc.stdout.strip().splitlines()[-1]))


# -- the cases --------------------------------------------------------------------------------


def parse_cases(text: str, size: int | None = None) -> list[Case]:
    """``kind:size,...`` (``size`` replaces every size when given)."""
    out: list[Case] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, _, n = item.partition(":")
        if kind not in SHAPES:
            raise argparse.ArgumentTypeError(f"unknown case {kind!r} (known: {', '.join(SHAPES)})")
        if size is None and not n.isdigit():
            raise argparse.ArgumentTypeError(f"case {item!r}: the size must be a number")
        case = Case(kind, size if size is not None else int(n))
        if case.size < 1:
            raise argparse.ArgumentTypeError(f"case {item!r}: the size must be at least 1")
        if case not in out:
            out.append(case)
    return out


def summary(case: Case, runs: Sequence[Run]) -> dict[str, Any]:
    """The best run of a case (least wall time) with the median beside it."""
    best = min(runs, key=lambda r: r.seconds)
    median_s = statistics.median(r.seconds for r in runs)
    out: dict[str, Any] = {
        "case": case.name,
        "executions": best.executions,
        "seconds": round(best.seconds, 4),
        "median_seconds": round(median_s, 4),
        "executions_per_s": round(best.executions / best.seconds, 1),
        "memo_seconds": round(min(r.memo_seconds for r in runs), 4),
        "peak_rss_mib": round(max(r.peak_rss_mib for r in runs), 1),
        "cpu_seconds": round(best.cpu_seconds, 4),
        "memo_cpu_seconds": round(min(r.memo_cpu_seconds for r in runs), 4),
        "runs": len(runs),
    }
    if case.kind == "chain":
        out["per_link_ms"] = round(best.seconds / case.size * 1000, 3)
        out["cpu_per_link_ms"] = round(best.cpu_seconds / case.size * 1000, 3)
    return out


def line(case: Case, s: dict[str, Any]) -> str:
    rate = s["executions_per_s"]
    text = (
        f"{case.describe()}: {s['executions']:,} executions in {s['seconds']:.2f} s = "
        f"{rate:,.0f}/s ({rate / GOAL_EXECUTIONS_PER_S:.2f}x the {GOAL_EXECUTIONS_PER_S:,}/s "
        f"goal; median of {s['runs']} {s['executions'] / s['median_seconds']:,.0f}/s); "
        f"memoised re-run {s['memo_seconds']:.3f} s; peak RSS {s['peak_rss_mib']:,.0f} MiB; "
        f"CPU {s['cpu_seconds']:.2f} s ({s['executions'] / max(s['cpu_seconds'], 1e-9):,.0f}"
        f" executions per CPU-second), memoised {s['memo_cpu_seconds']:.3f} s"
    )
    if case.kind == "chain":
        text += (
            f"; {s['per_link_ms']:.2f} ms per link (goal <= {GOAL_LINK_MS} ms),"
            f" {s['cpu_per_link_ms']:.2f} ms of CPU"
        )
    if case.kind == "independent" and case.size == 10_000:
        text += f" (memoised goal <= {GOAL_MEMOISED_S} s)"
    if case.kind == "independent" and case.size >= 100_000:
        text += f" (goal <= {GOAL_PEAK_RSS_MIB:,} MiB)"
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=None, help="size of every case (e.g. 10: a smoke run)")
    ap.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help=f"cases as kind:size, comma-separated; kinds {', '.join(SHAPES)} "
        f"(default {DEFAULT_CASES}); with -n, sizes may be left out",
    )
    ap.add_argument("-r", "--repeat", type=int, default=3, help="fresh runs per case (best kept)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--home", type=pathlib.Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        assert args.home is not None
        (case,) = parse_cases(args.child)
        print(json.dumps(dataclasses.asdict(one_run(case, args.home))))
        return
    try:
        cases = parse_cases(args.cases, args.n)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    out: dict[str, Any] = {"cases": {}}
    with tempfile.TemporaryDirectory(dir=pathlib.Path.cwd()) as tmp:
        root = pathlib.Path(tmp)
        for i, case in enumerate(cases):
            repeat = 1 if case.size >= HUGE else args.repeat
            runs = [run_in_child(case, root / f"case{i}-run{r}") for r in range(repeat)]
            s = summary(case, runs)
            out["cases"][case.name] = s
            if not args.json:
                print(line(case, s), flush=True)
        full = raw_commits_per_s(root, "FULL")
        normal = raw_commits_per_s(root, "NORMAL")
    out["raw_sqlite_commits_per_s"] = {"FULL": round(full), "NORMAL": round(normal)}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"for scale: raw sqlite3 commits here {full:,.0f}/s (FULL), {normal:,.0f}/s (NORMAL)")


if __name__ == "__main__":
    main()
