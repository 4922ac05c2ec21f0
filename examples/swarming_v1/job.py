"""A Swarming task for the swarming_v1 distributor: greet, and say where it ran.

Swarming runs the quest's ``job.command`` on a bot; dm hands the task its
address and quest in env (``DM_API_URL``, ``DM_QUEST_PARAMETERS``) and its
execution's auth in ``secret_bytes``, which the bot puts in the
``LUCI_CONTEXT`` file; ``Job.from_env()`` reads both. Swarming tells dm
when the task ended (Pub/Sub); the task only activates and finishes.
"""

from __future__ import annotations

import os

from dmcore.job import Job


def main() -> None:
    job = Job.from_env()
    job.activate()
    name = job.parameters.get("name", "world")
    job.finish({"greeting": f"hello, {name}", "pool": os.environ.get("POOL", "")})


if __name__ == "__main__":
    main()
