"""Helpers shared by the remote distributors' tests (http, cloud_run_jobs, swarming_v1).

:func:`build` makes one distributor from a config document the way dm does
(entry points, the config checks, a real SQLite store for the distributor's
records, dm's notification-token hook), without an engine around it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from dmcore import distributor as dist
from dmcore.engine import docs
from dmcore.ids import AttemptID, ExecutionID
from dmcore.notify import tokens
from dmcore.proto import dm_pb2
from dmcore.store.sqlite import LOCK_WAIT_S, SqliteStore

SECRET = b"remote-test-secret-0123456789abcdef"
REPO = pathlib.Path(__file__).resolve().parent.parent


def build(
    tmp_path: pathlib.Path,
    name: str,
    configs: Mapping[str, Any],
    *,
    dm_host: str = "https://dm-api.example.run.app",
    topic: str = "projects/demo/topics/dm-distributor-notify",
    busy_timeout: float | None = None,
    minted: list[str] | None = None,
) -> tuple[dist.D, dist.Registry, SqliteStore]:
    """``minted``: gets every notification ``auth_token`` dm hands the distributor."""
    registry = dist.Registry(dm_host=dm_host)
    registry.load_entry_points()
    registry.set_config(registry.config_from_dict({"distributor_configs": configs}), "v1")
    more: dict[str, Any] = {} if busy_timeout is None else {"busy_timeout": busy_timeout}
    store = SqliteStore(
        tmp_path / "dm.sqlite",
        # A short busy timeout is for tests of a busy store: give up soon after it, too.
        lock_wait=LOCK_WAIT_S if busy_timeout is None else busy_timeout,
        indexed_fields=docs.INDEXED_FIELDS,
        ordered_fields=docs.SWEPT,
        **more,
    )
    registry.store = store

    def prepare(config_name: str, eid: ExecutionID) -> tuple[str, str]:
        token = tokens.mint(SECRET, eid, config_name, time.time_ns() // 1000)
        if minted is not None:
            minted.append(token)
        return topic, token

    registry.prepare_topic = prepare
    d, _ = registry.build_named(name)
    return d, registry, store


@contextlib.contextmanager
def write_locked(tmp_path: pathlib.Path) -> Iterator[None]:
    """Another writer holds the write lock of :func:`build`'s store (real SQLite contention)."""
    conn = sqlite3.connect(tmp_path / "dm.sqlite", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def rsa_pem() -> str:
    """A fresh RSA private key (PEM, PKCS8): to sign test tokens, or a key file's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account_file(
    tmp_path: pathlib.Path, token_uri: str, pem: str | None = None
) -> pathlib.Path:
    """A service account key file (``pem``, default a fresh key) whose tokens come
    from ``token_uri``."""
    path = tmp_path / "sa.json"
    doc = {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "k1",
        "private_key": pem or rsa_pem(),
        "client_email": "job@demo.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(doc))
    return path


def auth(quest: str = "q" * 43, attempt: int = 1, num: int = 1) -> dm_pb2.Execution.Auth:
    return dm_pb2.Execution.Auth(id=ExecutionID(quest, attempt, num).to_proto(), token=b"A" * 32)


def desc(
    params: Mapping[str, Any] | None = None,
    dist_params: Mapping[str, Any] | None = None,
    config: str = "remote",
) -> dm_pb2.Quest.Desc:
    return dm_pb2.Quest.Desc(
        distributor_config_name=config,
        parameters=json.dumps(dict(params or {"name": "q"}), sort_keys=True),
        distributor_parameters=json.dumps(dict(dist_params or {}), sort_keys=True),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(
    source: pathlib.Path, target: str, log: pathlib.Path, env: Mapping[str, str] | None = None
) -> tuple[Any, str]:
    """A real functions-framework process serving ``target`` of ``source`` (``env``
    added to this process's environment); (process, URL)."""
    port = free_port()
    out = log.open("wb")
    argv = [sys.executable, "-m", "functions_framework", "--source", str(source)]
    proc = subprocess.Popen(
        [*argv, "--target", target, "--host", "127.0.0.1", "--port", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=None if env is None else {**os.environ, **env},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except urllib.error.HTTPError:
            break  # it answers (405 to a GET): up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the worker did not start: {log.read_text()}") from None
            time.sleep(0.1)
    return proc, url


def stop(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(
    service: Any, attempts: list[AttemptID], timeout_s: float, why: Any = lambda: ""
) -> dict[AttemptID, dm_pb2.Attempt]:
    """The attempts once each has ended (FINISHED or ABNORMAL_FINISHED), as WalkGraph
    shows them with their executions; AssertionError after ``timeout_s`` (+ ``why()``)."""
    from dmcore.service import Caller

    walk = dm_pb2.WalkGraphReq()
    for a in attempts:
        walk.query.attempt_list.to[a.quest].nums.append(a.num)
    walk.include.attempt.data = True
    walk.include.attempt.result = True
    walk.include.execution.data = True
    walk.include.execution.result = True
    walk.include.attempt.abnormal = True
    walk.include.execution.abnormal = True
    walk.include.num_executions = 100
    deadline = time.monotonic() + timeout_s
    while True:
        graph = service.walk_graph(walk, Caller.trusted())
        got = {a: graph.quests[a.quest].attempts[a.num] for a in attempts}
        if all(
            x.data.HasField("finished") or x.data.HasField("abnormal_finish") for x in got.values()
        ):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"attempts did not end: {got}\n{why()}")
        time.sleep(0.1)
