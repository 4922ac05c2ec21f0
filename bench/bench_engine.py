"""Throughput of the embedded engine, end to end (run: uv run python -m bench.bench_engine).

Measures, in one run on this machine, on the SQLite store with the local queue
(WAL, ``synchronous=FULL``: every commit survives a power loss):

* no-op executions per second: N jobsim leaf quests, each a full execution
  (schedule, run, activate, finish, notify, complete);
* a fan-in graph: one root quest whose jobsim phrase depends on N shards, so
  the root runs, halts on its N dependencies, and resumes once they are done
  (N + 2 executions);
* a fully memoised re-run of both (every result reused, nothing executes);
* for scale, raw sqlite3 commits per second in the same place and run.

Each case runs ``--repeat`` times in fresh homes; the best run is reported
with the median beside it. Figures only, with their ratios; never asserted
in tests.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sqlite3
import tempfile
import time
from collections.abc import Callable

from dmcore.proto import dm_pb2
from dmcore.runtime.embedded import Embedded, build_registry
from dmcore.service import Caller
from dmcore.states import AttemptState

CONFIG = {"distributor_configs": {"jobsim": {"jobsim": {"pool": "bench"}}}}
GOAL_EXECUTIONS_PER_S = 1000
GOAL_MEMOISED_S = 0.3


def leaves(n: int) -> list[dict[str, object]]:
    return [{"name": f"leaf{i}", "return_stage": {"retval": i}} for i in range(n)]


def fan_in(n: int) -> list[dict[str, object]]:
    dep = {
        "shards": n,
        "attempts": {"items": [{"single": 1}]},
        "phrase": {"name": "leaf", "return_stage": {"retval": 1}},
    }
    return [{"name": "root", "stages": [{"deps": {"deps": [dep]}}]}]


def request(phrases: list[dict[str, object]]) -> dm_pb2.EnsureGraphDataReq:
    req = dm_pb2.EnsureGraphDataReq()
    for p in phrases:
        req.quest.add(
            distributor_config_name="jobsim",
            parameters=json.dumps(p),
            distributor_parameters="{}",
        )
        req.quest_attempt.add(nums=[1])
    return req


def run(emb: Embedded, phrases: list[dict[str, object]]) -> float:
    """Submit the quests and drive them to FINISHED; wall-clock seconds."""
    req = request(phrases)
    start = time.perf_counter()
    rsp = emb.service.ensure_graph_data(req, Caller.trusted())
    paths = [f"attempts/{q.id}|fffffffe" for q in rsp.quest_ids]

    def done() -> bool:
        docs = emb.store.get_many(paths)
        return all(d is not None and d["state"] == AttemptState.FINISHED for d in docs.values())

    if not emb.drive(done, sweep_every_s=60, timeout_s=600):
        raise SystemExit("the graph did not finish in 10 minutes")
    return time.perf_counter() - start


def executions(emb: Embedded) -> int:
    return sum(int(d["cur_execution"]) for _, d in emb.store.query("attempts"))


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


def once(home: pathlib.Path, phrases: list[dict[str, object]]) -> tuple[float, float, int]:
    """One fresh home: (first run s, memoised re-run s, executions)."""
    emb = Embedded(home, build_registry(CONFIG))
    try:
        first = run(emb, phrases)
        n_exec = executions(emb)
        again = run(emb, phrases)
        assert executions(emb) == n_exec, "the memoised re-run executed something"
    finally:
        emb.close()
    return first, again, n_exec


def case(
    name: str, root: pathlib.Path, phrases: list[dict[str, object]], repeat: int
) -> tuple[float, float, int]:
    """Best of ``repeat`` fresh runs (the median is printed too: the machine is shared)."""
    runs = sorted(once(root / f"run{i}", phrases) for i in range(repeat))
    first, _, n_exec = runs[0]
    median = runs[len(runs) // 2][0]
    best_again = min(r[1] for r in runs)
    rate = n_exec / first
    print(
        f"{name}: {n_exec} executions in {first:.2f} s = {rate:.0f}/s "
        f"({rate / GOAL_EXECUTIONS_PER_S:.2f}x the {GOAL_EXECUTIONS_PER_S}/s goal; "
        f"median of {repeat} runs {n_exec / median:.0f}/s); "
        f"memoised re-run {best_again:.3f} s ({first / best_again:.0f}x faster, "
        f"{best_again / GOAL_MEMOISED_S:.0%} of the {GOAL_MEMOISED_S} s budget)"
    )
    return first, best_again, n_exec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=1000, help="quests (leaves) per case")
    ap.add_argument("-r", "--repeat", type=int, default=3, help="fresh runs per case (best kept)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=pathlib.Path.cwd()) as tmp:
        root = pathlib.Path(tmp)
        cases: list[tuple[str, Callable[[int], list[dict[str, object]]]]] = [
            (f"{args.n} independent quests", leaves),
            (f"fan-in graph of {args.n} shards", fan_in),
        ]
        rates = []
        for i, (name, make) in enumerate(cases):
            first, _, n_exec = case(name, root / f"case{i}", make(args.n), args.repeat)
            rates.append(n_exec / first)
        full = raw_commits_per_s(root, "FULL")
        normal = raw_commits_per_s(root, "NORMAL")
    print(
        f"for scale: raw sqlite3 commits here {full:.0f}/s (FULL), {normal:.0f}/s (NORMAL); "
        f"one no-op execution costs as much as {normal / rates[0]:.0f} NORMAL commits"
    )


if __name__ == "__main__":
    main()
