"""Celery 5's runner, in its own environment (``.bench/celery``), with Redis.

Starts ``redis-server`` on a free port without persistence (``REDIS_SERVER``
names the binary) and a Celery worker (prefork pool, one process per CPU; for
``local``, ``--max-tasks-per-child 1``: a fresh process for every task), waits
until the worker answers a ping, then times the workload from the client: a
chord (a group of no-op tasks and the sum as its callback) or a chain. Both
are stopped at the end. Celery keeps no result cache: there is no ``cached``
workload for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

from bench.peers.workloads import Workload, runner_main

READY_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(w: Workload, home: str) -> tuple[float, int, dict[str, Any]]:
    if w.kind == "cached":
        raise SystemExit("Celery has no result cache: no cached re-run")
    port = free_port()
    redis = subprocess.Popen(
        [
            os.environ.get("REDIS_SERVER", "redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            home,
        ],
        stdout=subprocess.DEVNULL,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_port(port, redis)
        os.environ["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        per_child = ["--max-tasks-per-child", "1"] if w.kind == "local" else []
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.peers.celery_app",
                "worker",
                "--loglevel",
                "WARNING",
                "--pool",
                "prefork",
                "--concurrency",
                str(os.cpu_count()),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *per_child,
            ],
            env=os.environ.copy(),
        )
        from celery import chain, chord

        from bench.peers import celery_app

        deadline = time.monotonic() + READY_S
        while not celery_app.app.control.ping(timeout=0.5):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the Celery worker did not come up")
        start = time.perf_counter()
        if w.kind == "chain":
            links = [celery_app.add1_task.s(0)] + [
                celery_app.add1_task.s() for _ in range(w.size - 1)
            ]
            value = chain(*links).apply_async().get(timeout=3600)
        else:
            group = [celery_app.noop_task.s(i) for i in range(w.size)]
            value = chord(group)(celery_app.total_task.s()).get(timeout=3600)
        seconds = time.perf_counter() - start
    finally:
        if worker is not None:
            stop(worker)
        stop(redis)
    return seconds, int(value), {}


if __name__ == "__main__":
    runner_main(run)
