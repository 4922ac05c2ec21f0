"""Count step: word frequencies of one chunk (found by its content hash)."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import sys

from dmcore.job import Job


def main() -> int:
    job = Job.from_env()
    job.activate()
    chunk = json.loads(os.environ["DM_QUEST_PARAMETERS"])["chunk"]
    text = (pathlib.Path(os.environ["DM_HOME"]) / "blobs" / chunk["sha256"]).read_text(
        encoding="utf-8"
    )
    counts = collections.Counter(re.findall(r"[a-z']+", text.lower()))
    job.finish({"counts": dict(counts)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
