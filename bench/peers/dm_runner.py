"""dm's runner, in dm's own environment: the embedded engine, as ``dm run`` uses it.

The store is SQLite with the queue in the same file (WAL, ``synchronous=FULL``:
each batch of steps is fsynced before it is acknowledged). Tasks are jobsim
jobs (a leaf returns 1, the root sums its dependencies and adds 1, a chain
link adds 1 to the one below), except for ``local``: every task is a Python
process started by the ``local`` distributor (:mod:`bench.peers.local_job`),
talking to dm through the same home. The cached re-run submits the same
graph again: every result is reused, nothing executes.
"""

from __future__ import annotations

import collections
import pathlib
from typing import Any

from bench import bench_engine
from bench.peers.local_job import quest
from bench.peers.workloads import Workload, runner_main
from dmcore import ids
from dmcore.proto import dm_pb2
from dmcore.runtime.embedded import Embedded, build_registry, home_registry

LOCAL_CONFIG: dict[str, Any] = {"distributor_configs": {"local": {"local": {}}}}


def abnormal(emb: Embedded, root: str) -> str:
    """Why the attempts under ``root`` that ended abnormally did, counted (through the API)."""
    why: collections.Counter[str] = collections.Counter()
    for _, _, att in bench_engine.walk(emb, [root], depth=-1):
        if att.data.HasField("abnormal_finish"):
            af = att.data.abnormal_finish
            why[f"{dm_pb2.AbnormalFinish.Status.Name(af.status)} {af.reason}"] += 1
    return "; ".join(f"{n} x {reason}" for reason, n in why.most_common()) or "unknown"


def value_of(emb: Embedded, w: Workload, root: str, results: list[Any]) -> int:
    """The root's value; SystemExit saying why when it ended abnormally."""
    if not isinstance(results[0], dict):
        raise SystemExit(f"{w.name}: the root ended abnormally: {abnormal(emb, root)}")
    return int(results[0]["value"])


def run(w: Workload, home: str) -> tuple[float, int, dict[str, Any]]:
    if w.kind == "local":
        emb = Embedded(home, home_registry(home, LOCAL_CONFIG))
        req = dm_pb2.EnsureGraphDataReq()
        req.quest.append(ids.desc_from_json(quest({"name": "root", "leaves": w.size})))
        req.quest_attempt.add(nums=[1])
        roots = [ids.quest_id(req.quest[0])]
        try:
            seconds, results = bench_engine.run_request(emb, req)
            value = value_of(emb, w, roots[0], results)
            return seconds, value, {"executions": bench_engine.executions(emb, roots)}
        finally:
            emb.close()
    phrases = (bench_engine.chain if w.kind == "chain" else bench_engine.fan_in)(w.size)
    emb = Embedded(pathlib.Path(home), build_registry(bench_engine.CONFIG))
    roots = bench_engine.quest_ids(phrases)
    try:
        before = 0
        if w.kind == "cached":
            bench_engine.run(emb, phrases)  # the first run; the memoised re-run is timed
            before = bench_engine.executions(emb, roots)
        seconds, results = bench_engine.run(emb, phrases)
        value = value_of(emb, w, roots[0], results)
        executions = bench_engine.executions(emb, roots) - before
    finally:
        emb.close()
    return seconds, value, {"executions": executions}


if __name__ == "__main__":
    runner_main(run)
