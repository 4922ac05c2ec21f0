"""Fixtures starting Google's Firestore and Pub/Sub emulators (gcloud SDK, Java).

A pytest plugin (listed in ``tests/conftest.py``). Each emulator starts lazily,
the first time a test asks for it, once per session — under xdist once per
worker, each on its own free port — and is stopped at the end of the session
by killing its process group (the gcloud wrapper script forks java, which
would be orphaned otherwise), also when the session fails. A guard shell
leading the group stops it too if the pytest process dies without teardown
(SIGKILL, ``timeout``).

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

import atexit
import contextlib
import functools
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dmcore.store.firestore import FirestoreStore

_READY_TIMEOUT_S = 60.0
_START_TRIES = 3


# ---- helpers


def _http(method: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as rsp:
        return int(rsp.status), rsp.read().decode("utf-8", "replace")


def _answers_ok(host: str) -> bool:
    try:
        status, body = _http("GET", f"http://{host}/", timeout=1.0)
    except (OSError, urllib.error.URLError):
        return False
    return status == 200 and body.strip() == "Ok"


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


@functools.cache
def _sdk_root() -> pathlib.Path | None:
    """The gcloud SDK root: from the ``gcloud`` on PATH (symlinks followed), else asked."""
    env = os.environ.get("CLOUDSDK_ROOT_DIR")
    if env and pathlib.Path(env, "platform").is_dir():
        return pathlib.Path(env)
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    guess = pathlib.Path(gcloud).resolve().parent.parent
    if (guess / "platform").is_dir():
        return guess
    try:  # slow (starts gcloud's Python), so only as a last resort
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return pathlib.Path(out) if out and pathlib.Path(out, "platform").is_dir() else None


def _binary(rel: str) -> pathlib.Path:
    """The emulator launcher at ``<sdk>/platform/<rel>``, or skip the test with the reason."""
    if shutil.which("java") is None:
        pytest.skip("emulator tests need java on PATH (the gcloud emulators are Java programs)")
    root = _sdk_root()
    if root is None:
        pytest.skip("emulator tests need the gcloud SDK (no `gcloud` on PATH)")
    path = root / "platform" / rel
    if not path.is_file():
        pytest.skip(f"emulator not installed: {path} is missing")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the emulator's whole process group: TERM, then KILL after 10 s."""
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _group_alive(proc.pid):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: pathlib.Path, n: int = 3000) -> str:
    try:
        return path.read_text("utf-8", "replace")[-n:]
    except OSError:
        return "(no log)"


# Runs the emulator in the background of a small shell that leads the process
# group and stops the whole group once this pytest process is gone (killed by a
# signal, so its fixture teardown and atexit never ran) or the emulator exited.
_GUARD = (
    'parent=$1; shift; "$@" & emu=$!; '
    'while kill -0 "$parent" 2>/dev/null && kill -0 "$emu" 2>/dev/null; do sleep 1; done; '
    "kill -TERM 0"
)


class _Emulator:
    """One emulator process group owned by this pytest process."""

    def __init__(self, name: str, argv: list[str], port: int, log: pathlib.Path) -> None:
        self.name = name
        self.host = f"127.0.0.1:{port}"
        self.log = log
        guarded = ["/bin/sh", "-c", _GUARD, f"{name}-emulator-guard", str(os.getpid()), *argv]
        with log.open("wb") as out:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                guarded,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: its own process group, killed as one
            )
        atexit.register(self.stop)  # in case the session teardown never runs

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers_ok(self.host):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        _kill_group(self.proc)


def _start(
    name: str,
    argv_for_port: Any,
    env_var: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Start an emulator (or reuse one named by ``env_var``), export its host, yield it."""
    preset = os.environ.get(env_var)
    if preset and _answers_ok(preset):
        yield preset
        return
    logs = tmp_path_factory.mktemp(f"{name}-emulator")
    emu: _Emulator | None = None
    failures: list[str] = []
    for i in range(_START_TRIES):
        port = _free_port()
        started = time.monotonic()
        emu = _Emulator(name, argv_for_port(port), port, logs / f"try{i}.log")
        if emu.wait_ready(_READY_TIMEOUT_S):
            print(f"\n{name} emulator ready on {emu.host} in {time.monotonic() - started:.1f}s")
            break
        emu.stop()
        failures.append(f"try {i} (port {port}):\n{_tail(emu.log)}")
        emu = None
    if emu is None:
        raise RuntimeError(f"the {name} emulator did not start:\n" + "\n".join(failures))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(env_var, emu.host)
            yield emu.host
    finally:
        emu.stop()


# ---- fixtures


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Firestore emulator (FIRESTORE_EMULATOR_HOST is set)."""
    binary = _binary("cloud-firestore-emulator/cloud_firestore_emulator")
    yield from _start(
        "firestore",
        lambda port: [str(binary), "start", "--host=127.0.0.1", f"--port={port}"],
        "FIRESTORE_EMULATOR_HOST",
        tmp_path_factory,
    )


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Pub/Sub emulator (PUBSUB_EMULATOR_HOST is set)."""
    binary = _binary("pubsub-emulator/bin/cloud-pubsub-emulator")
    yield from _start(
        "pubsub",
        lambda port: [str(binary), "--host=127.0.0.1", f"--port={port}"],
        "PUBSUB_EMULATOR_HOST",
        tmp_path_factory,
    )


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
