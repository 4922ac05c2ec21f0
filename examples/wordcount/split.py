"""Split step: cut the corpus into N chunks of whole lines, stored by content hash."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys

from dmcore.job import Job


def main() -> int:
    job = Job.from_env()
    job.activate()
    params = json.loads(os.environ["DM_QUEST_PARAMETERS"])
    lines = pathlib.Path(params["corpus"]).read_text(encoding="utf-8").splitlines(keepends=True)
    n = max(1, int(params["chunks"]))
    store = pathlib.Path(os.environ["DM_HOME"]) / "blobs"
    store.mkdir(parents=True, exist_ok=True)
    chunks = []
    for i in range(n):
        text = "".join(lines[i::n])
        digest = hashlib.sha256(text.encode()).hexdigest()
        (store / digest).write_text(text, encoding="utf-8")
        chunks.append({"sha256": digest, "lines": len(lines[i::n])})
    job.finish({"chunks": chunks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
