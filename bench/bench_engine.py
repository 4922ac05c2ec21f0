"""Throughput of the embedded engine, end to end (run: uv run python -m bench.bench_engine).

Measures, in one run on this machine:
* no-op executions per second: N jobsim leaf quests, each a full execution
  (schedule, run, activate, finish, notify, complete) on the SQLite store and
  the local queue, durable (WAL, synchronous=NORMAL);
* a fully memoised re-run of the same N quests (every result reused);
and reports them with their ratio. Figures only, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from dmcore.embedded import Embedded, build_registry
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AttemptState


def request(n: int) -> dm_pb2.EnsureGraphDataReq:
    req = dm_pb2.EnsureGraphDataReq()
    for i in range(n):
        req.quest.add(
            distributor_config_name="jobsim",
            parameters=json.dumps({"name": f"leaf{i}", "return_stage": {"retval": i}}),
            distributor_parameters="{}",
        )
        req.quest_attempt.add(nums=[1])
    return req


def run(emb: Embedded, n: int) -> float:
    req = request(n)
    start = time.perf_counter()
    rsp = emb.service.ensure_graph_data(req, Caller.trusted())
    paths = [f"attempts/{q.id}|fffffffe" for q in rsp.quest_ids]

    def done() -> bool:
        docs = emb.store.get_many(paths)
        return all(d is not None and d["state"] == AttemptState.FINISHED for d in docs.values())

    emb.drive(done, sweep_every_s=60)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        cfg = {"distributor_configs": {"jobsim": {"jobsim": {"pool": "bench"}}}}
        emb = Embedded(home, build_registry(cfg))
        first = run(emb, args.n)
        again = run(emb, args.n)
        emb.close()
    print(f"{args.n} no-op executions: {first:.2f} s = {args.n / first:.0f} executions/s")
    print(f"memoised re-run of {args.n} quests: {again:.3f} s ({first / again:.0f}x faster)")


if __name__ == "__main__":
    main()
