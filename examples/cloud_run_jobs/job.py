"""A Cloud Run Job for the cloud_run_jobs distributor: count the words of its args.

The container runs ``python job.py WORD...`` (the quest's ``args`` replace
the job's): it reads dm's address and its execution's auth from the
environment Cloud Run was given (``Job.from_env()``), depends on a quest that
counts the words of the first half when there are more than 4, and finishes
with the count. Built into an image, e.g.::

    FROM python:3.12-slim
    RUN pip install dm   # this project (dmcore), however you ship it
    COPY job.py /job.py
    ENTRYPOINT ["python", "/job.py"]

Locally, ``python examples/run_local.py cloud_run_jobs`` has a test double of
Cloud Run (tests/fake_cloudrun.py) run it as a process (see README).
"""

from __future__ import annotations

import sys

from dmcore.job import Job


def main(words: list[str]) -> None:
    job = Job.from_env()
    job.activate()
    if len(words) <= 4:
        job.finish({"words": len(words)})
        return
    half = len(words) // 2
    job.state = {"split_at": half}  # carried to the execution dm runs after the halt
    sub = {
        "distributor_config_name": job.parameters.get("config", "cloud_run_jobs"),
        "parameters": {"config": job.parameters.get("config", "cloud_run_jobs")},
        "distributor_parameters": {"args": words[:half]},
    }
    deps = job.depend([sub])
    if deps.should_halt:
        return  # exit 0: dm runs this again once the first half is counted
    (first,) = deps.results.values()
    job.finish({"words": first["words"] + len(words) - job.state["split_at"]})


if __name__ == "__main__":
    main(sys.argv[1:])
