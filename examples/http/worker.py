"""An http distributor worker: sum of squares 1..n, one quest per n.

Run it with functions-framework (locally, or deployed as a Cloud Run
service / Cloud Function)::

    functions-framework --source examples/http/worker.py --target main --port 8081

Quest parameters: ``{"n": N}``. For n > 0 the job depends on the quest for
n - 1 (dm halts it, runs the dependency, then runs this job again with the
state it left), and finishes with ``n*n + result(n - 1)``.
"""

from __future__ import annotations

from typing import Any

from dmcore.job import Job, worker


def quest_for(job: Job, n: int) -> dict[str, Any]:
    """The quest for ``n``, on the same distributor config as this one."""
    return {
        "distributor_config_name": job.parameters.get("config", "http"),
        "parameters": {"n": n, "config": job.parameters.get("config", "http")},
        "distributor_parameters": {},
    }


@worker
def main(job: Job) -> None:
    n = int(job.parameters["n"])
    if n == 0:
        job.finish({"sum": 0})
        return
    job.state = {"waiting_for": n - 1}  # carried to the execution dm runs after the halt
    deps = job.depend([quest_for(job, n - 1)])
    if deps.should_halt:
        return  # dm runs this quest again once n - 1 has finished
    (below,) = deps.results.values()
    job.finish({"sum": n * n + below["sum"]})
