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

import pathlib
from typing import Any

from bench import bench_engine
from bench.peers.local_job import quest
from bench.peers.workloads import Workload, runner_main
from dmcore import ids
from dmcore.proto import dm_pb2
from dmcore.runtime.embedded import Embedded, build_registry, home_registry

LOCAL_CONFIG: dict[str, Any] = {"distributor_configs": {"local": {"local": {}}}}


def run(w: Workload, home: str) -> tuple[float, int, dict[str, Any]]:
    if w.kind == "local":
        emb = Embedded(home, home_registry(home, LOCAL_CONFIG))
        req = dm_pb2.EnsureGraphDataReq()
        req.quest.append(ids.desc_from_json(quest({"name": "root", "leaves": w.size})))
        req.quest_attempt.add(nums=[1])
        try:
            seconds, results = bench_engine.run_request(emb, req)
            n = bench_engine.executions(emb, [ids.quest_id(req.quest[0])])
            return seconds, int(results[0]["value"]), {"executions": n}
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
        executions = bench_engine.executions(emb, roots) - before
    finally:
        emb.close()
    return seconds, int(results[0]["value"]), {"executions": executions}


if __name__ == "__main__":
    runner_main(run)
