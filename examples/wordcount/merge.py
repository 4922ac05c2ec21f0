"""Merge step: depends on `split`, then on one `count` per chunk; sums the counts."""

from __future__ import annotations

import collections
import json
import os
import sys

from dmcore.job import Job

HERE = "examples/wordcount"


def step(name: str, script: str, **params: object) -> dict[str, object]:
    """A quest description for one step of this pipeline."""
    return {
        "distributor_config_name": "local",
        "parameters": {"name": name, **params},
        "distributor_parameters": {"command": ["python", f"{HERE}/{script}"]},
        "meta": {"retry": {"failed": 1}, "timeouts": {"run": "60s"}},
    }


def main() -> int:
    job = Job.from_env()
    job.activate()
    params = json.loads(os.environ["DM_QUEST_PARAMETERS"])

    split = job.depend(
        [step("split", "split.py", corpus=params["corpus"], chunks=params["chunks"])]
    )
    if split.should_halt:
        return 0  # dm runs this again once `split` has finished
    ((chunks_result),) = split.results.values()

    counts = job.depend(
        [step(f"count-{i}", "count.py", chunk=c) for i, c in enumerate(chunks_result["chunks"])]
    )
    if counts.should_halt:
        return 0
    if counts.abnormal:
        print(f"some counts failed: {counts.abnormal}", file=sys.stderr)
        return 1

    total: collections.Counter[str] = collections.Counter()
    for r in counts.results.values():
        total.update(r["counts"])
    top = [
        [w, n] for w, n in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[: params["top"]]
    ]
    job.finish({"words": sum(total.values()), "distinct": len(total), "top": top})
    return 0


if __name__ == "__main__":
    sys.exit(main())
