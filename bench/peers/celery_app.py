"""The Celery application the bench's worker and client load (``.bench/celery``).

Redis is the broker and the result backend (``BENCH_REDIS_URL``, set by the
runner); the tasks are the shared bodies of :mod:`bench.peers.workloads`.
"""

from __future__ import annotations

import os

from celery import Celery

from bench.peers.workloads import add1, noop, total

app = Celery(
    "dm-bench",
    broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    result_expires=3600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

# Registered as calls: celery is not installed where mypy checks this file.
noop_task = app.task(name="noop")(noop)
add1_task = app.task(name="add1")(add1)
total_task = app.task(name="total")(total)
