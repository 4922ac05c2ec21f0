"""Prefect 3's runner, in its own environment (``.bench/prefect``): local mode.

No server is configured, so Prefect starts its ephemeral API server (a
subprocess with a SQLite database under ``PREFECT_HOME``, fresh for each run);
the harness sets that environment. A warm-up flow starts the server before
anything is timed, as dm's engine and Celery's worker are up before theirs.
Tasks run on the flow's default task runner (a thread pool, as many threads
as tasks wait) or, for ``local``, on ``ProcessPoolTaskRunner`` (a pool of
worker processes, one per CPU: Prefect 3 has no process per task). The
cached re-run uses cache keys from the task inputs (``cache_policy=INPUTS``)
with persisted results.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from bench.peers.workloads import Workload, add1, noop, runner_main, total

# Decorators applied as calls: prefect is not installed where mypy checks this file.
noop_task = task(noop, name="noop")
add1_task = task(add1, name="add1")
total_task = task(total, name="total")
noop_cached = task(noop, name="noop", cache_policy=INPUTS, persist_result=True)
total_cached = task(total, name="total", cache_policy=INPUTS, persist_result=True)


def _fan_of(n: int, leaf: Any, summed: Any) -> int:
    futures = [leaf.submit(i) for i in range(n)]
    return int(summed.submit(futures).result())


# Flows take only the size: their parameters are recorded with every flow run.
def _fan(n: int) -> int:
    return _fan_of(n, noop_task, total_task)


def _fan_cached(n: int) -> int:
    return _fan_of(n, noop_cached, total_cached)


def _chain(n: int) -> int:
    link = add1_task.submit(0)
    for _ in range(n - 1):
        link = add1_task.submit(link)
    return int(link.result())


def _warm() -> int:
    return 1


fan_flow = flow(_fan, name="fan", task_runner=ThreadPoolTaskRunner())
fan_cached_flow = flow(_fan_cached, name="fan-cached", task_runner=ThreadPoolTaskRunner())
chain_flow = flow(_chain, name="chain", task_runner=ThreadPoolTaskRunner())
fan_process_flow = flow(
    _fan, name="fan-processes", task_runner=ProcessPoolTaskRunner(max_workers=os.cpu_count())
)
warm_flow = flow(_warm, name="warm-up")


def run(w: Workload, home: str) -> tuple[float, int, dict[str, Any]]:
    warm_flow()
    flows = {"fan": fan_flow, "chain": chain_flow, "cached": fan_cached_flow}
    the_flow = fan_process_flow if w.kind == "local" else flows[w.kind]
    if w.kind == "cached":
        the_flow(w.size)  # fills the cache; the re-run below is timed
    start = time.perf_counter()
    value = the_flow(w.size)
    return time.perf_counter() - start, int(value), {}


if __name__ == "__main__":
    runner_main(run)
