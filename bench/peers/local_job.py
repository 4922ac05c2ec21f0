"""The no-op task as a process of its own, run by dm's ``local`` distributor.

A leaf (``{"name": "leaf", "i": i}``) returns :func:`~bench.peers.workloads.noop`'s
value; the root (``{"name": "root", "leaves": N}``) depends on N leaves, halts
until they are done, then returns their :func:`~bench.peers.workloads.total`.
Run as ``python -m bench.peers.local_job`` (dm's interpreter, the repository
on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

from bench.peers.workloads import noop, total

ROOT = pathlib.Path(__file__).resolve().parents[2]


def quest(parameters: dict[str, Any]) -> dict[str, Any]:
    """The quest description of one task (protobuf JSON)."""
    return {
        "distributor_config_name": "local",
        "parameters": parameters,
        "distributor_parameters": {
            "command": [sys.executable, "-m", "bench.peers.local_job"],
            "cwd": str(ROOT),
        },
    }


def main() -> int:
    from dmcore.job import Job

    job = Job.from_env()
    job.activate()
    params = json.loads(os.environ["DM_QUEST_PARAMETERS"])
    n = int(params.get("leaves", 0))
    if not n:
        job.finish({"value": noop(int(params.get("i", 0)))})
        return 0
    deps = job.depend([quest({"name": "leaf", "i": i}) for i in range(n)])
    if deps.should_halt:
        return 0  # dm runs this again once the leaves are done
    if deps.abnormal:
        reasons = sorted(set(deps.abnormal.values()))
        print(f"{len(deps.abnormal)} of {n} leaves ended abnormally: {reasons}", file=sys.stderr)
        return 1
    job.finish({"value": total(int(r["value"]) for r in deps.results.values())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
