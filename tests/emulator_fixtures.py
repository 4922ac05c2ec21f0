"""Fixtures starting Google's Firestore and Pub/Sub emulators (gcloud SDK, Java).

A pytest plugin (listed in ``tests/conftest.py``). Each emulator starts lazily,
the first time a test asks for it, once per session — under xdist once per
worker, each on its own free port — and is stopped at the end of the session
by killing its process group (the gcloud wrapper script forks java, which
would be orphaned otherwise), also when the session fails. A guard shell
leading the group stops it too if the pytest process dies without teardown
(SIGKILL, ``timeout``). Finding, starting and stopping an emulator is
:mod:`dmcore.runtime.emulators`, shared with ``dm serve --emulators``.

* ``firestore_emulator`` / ``pubsub_emulator`` (session): start, wait until
  ``GET /`` answers ``Ok``, set ``FIRESTORE_EMULATOR_HOST`` /
  ``PUBSUB_EMULATOR_HOST`` for the session, yield ``"127.0.0.1:PORT"``. If the
  variable is already set and an emulator answers there (``make test`` started
  one), that one is used and left running. If the SDK's emulator or ``java`` is
  missing, the tests that need it are skipped with the reason. An emulator that
  is present but does not come up is an error, not a skip.
* ``firestore_client`` (session): a ``google.cloud.firestore.Client`` on the
  emulator, project ``dm-test-<worker>-<pid>``; the project is wiped at the end.
* ``firestore_store`` (function): a fresh :class:`~dmcore.store.firestore.FirestoreStore`
  on that client with a unique ``prefix`` (``t/<hex>``) — a new, empty
  namespace per test without restarting or resetting anything.
* ``firestore_reset(host, project)`` / ``pubsub_reset(host)``: wipe an
  emulator's state (the documented reset endpoints).

Tests that use these carry ``@pytest.mark.emulator``.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from dmcore.runtime import emulators

if TYPE_CHECKING:
    from dmcore.store.firestore import FirestoreStore


# ---- helpers


def firestore_per_execution(
    n: int, stats: dict[str, int], record_property: Callable[[str, object], None]
) -> str:
    """Firestore operations per execution, recorded on the test report (for the
    benchmark to track) and returned as a line to print."""
    reads, writes = stats["reads"], stats["writes"] + stats["deletes"]
    record_property("firestore_executions", n)
    record_property("firestore_reads_per_execution", round(reads / n, 2))
    record_property("firestore_writes_per_execution", round(writes / n, 2))
    record_property("firestore_totals", stats)
    return (
        f"{n} executions, {reads / n:.1f} reads, {writes / n:.1f} writes per execution "
        f"(total {reads} reads, {stats['writes']} writes + {stats['deletes']} deletes, "
        f"{stats['commits']} commits, {stats['retries']} retries)"
    )


def _http(method: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as rsp:
        return int(rsp.status), rsp.read().decode("utf-8", "replace")


def firestore_reset(host: str, project: str, database: str = "(default)") -> None:
    """Delete every document of ``project``/``database`` in the Firestore emulator at ``host``."""
    status, body = _http(
        "DELETE",
        f"http://{host}/emulator/v1/projects/{project}/databases/{database}/documents",
        timeout=30.0,
    )
    if status != 200:
        raise RuntimeError(f"firestore emulator reset answered {status}: {body[:200]}")


def pubsub_reset(host: str) -> None:
    """Remove every topic and subscription from the Pub/Sub emulator at ``host``."""
    status, body = _http("POST", f"http://{host}/reset", timeout=30.0)
    if status != 200:
        raise RuntimeError(f"pubsub emulator reset answered {status}: {body[:200]}")


def _start(kind: emulators.Kind, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start an emulator (or reuse the one ``kind.env_var`` names), export its host, yield it."""
    try:
        emulators.launcher(kind)
    except emulators.NotInstalled as e:
        pytest.skip(f"emulator tests need the {kind.name} emulator: {e}")
    preset = os.environ.get(kind.env_var)
    if preset and emulators.answers_ok(preset):
        yield preset
        return
    started = time.monotonic()
    emu = emulators.start(kind, tmp_path_factory.mktemp(f"{kind.slug}-emulator"))
    print(f"\n{kind.slug} emulator ready on {emu.host} in {time.monotonic() - started:.1f}s")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(kind.env_var, emu.host)
            yield emu.host
    finally:
        emu.stop()


# ---- fixtures


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Firestore emulator (FIRESTORE_EMULATOR_HOST is set)."""
    yield from _start(emulators.FIRESTORE, tmp_path_factory)


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Pub/Sub emulator (PUBSUB_EMULATOR_HOST is set)."""
    yield from _start(emulators.PUBSUB, tmp_path_factory)


@pytest.fixture(scope="session")
def firestore_client(firestore_emulator: str) -> Iterator[Any]:
    """A Firestore client on the emulator, on a project of this session's own."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    project = f"dm-test-{worker}-{os.getpid()}"
    client = firestore.Client(project=project, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]
        with contextlib.suppress(OSError, RuntimeError):
            firestore_reset(firestore_emulator, project)


@pytest.fixture
def firestore_store(firestore_client: Any) -> Iterator[FirestoreStore]:
    """A FirestoreStore in a fresh, empty namespace (a unique prefix) on the emulator."""
    from dmcore.store.firestore import FirestoreStore

    store = FirestoreStore(firestore_client, prefix=f"t/{uuid.uuid4().hex}")
    try:
        yield store
    finally:
        store.close()
