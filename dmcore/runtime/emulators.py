"""The gcloud SDK's Firestore and Pub/Sub emulators: find, start, stop.

``dm serve --emulators``, ``dm dev`` and the tests' fixtures
(``tests/emulator_fixtures.py``) start them the same way:

* The launcher is ``<sdk root>/platform/<component>/...`` of the gcloud SDK
  (``CLOUDSDK_ROOT_DIR``, else the ``gcloud`` on ``PATH``, symlinks followed).
  The emulators are Java programs, so ``java`` must be on ``PATH`` too; what
  is missing is said by :class:`NotInstalled`.
* Each runs on ``127.0.0.1`` and a free port, in a process group of its own
  led by a small guard shell: the launchers are scripts that fork java, so
  the group is stopped as one (:func:`kill_group`), and the guard stops it
  too once the process that started it is gone without stopping it (killed by
  a signal). :meth:`Emulator.stop` also runs at exit.
* It is ready once ``GET /`` answers ``Ok``. A try that does not come up is
  stopped and retried on another port; the error quotes each try's output.

Plain process handling: no Google client library is imported here.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

from dmcore.runtime.procs import group_alive, guarded

READY_TIMEOUT_S = 60.0
START_TRIES = 3


class EmulatorError(RuntimeError):
    """An emulator could not be started."""


class NotInstalled(EmulatorError):
    """The gcloud SDK, the emulator component or java is missing."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """One of the gcloud emulators."""

    name: str
    env_var: str
    """The variable by which the Google client libraries find it."""
    launcher: str
    """Path of the launcher under ``<sdk root>/platform``."""
    args: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return self.name.lower().replace("/", "")

    def argv(self, launcher: pathlib.Path, port: int) -> list[str]:
        return [str(launcher), *self.args, "--host=127.0.0.1", f"--port={port}"]


FIRESTORE = Kind(
    "Firestore",
    "FIRESTORE_EMULATOR_HOST",
    "cloud-firestore-emulator/cloud_firestore_emulator",
    ("start",),
)
PUBSUB = Kind("Pub/Sub", "PUBSUB_EMULATOR_HOST", "pubsub-emulator/bin/cloud-pubsub-emulator")


@functools.cache
def sdk_root() -> pathlib.Path | None:
    """The gcloud SDK root, or None when there is no SDK."""
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


def launcher(kind: Kind) -> pathlib.Path:
    """The emulator's launcher; :class:`NotInstalled` (with the reason) if it cannot run."""
    if shutil.which("java") is None:
        raise NotInstalled("java is not on PATH (the gcloud emulators are Java programs)")
    root = sdk_root()
    if root is None:
        raise NotInstalled("the gcloud SDK is not installed (no `gcloud` on PATH)")
    path = root / "platform" / kind.launcher
    if not path.is_file():
        raise NotInstalled(f"the {kind.name} emulator is not installed: {path} is missing")
    return path


def answers_ok(host: str) -> bool:
    """Whether an emulator answers ``GET http://host/`` with ``Ok``."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1.0) as rsp:
            return bool(rsp.status == 200 and rsp.read().strip() == b"Ok")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group led by ``proc``: TERM, then KILL after 10 s."""
    if proc.poll() is not None and not group_alive(proc.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_alive(proc.pid):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _tail(path: pathlib.Path, n: int = 3000) -> str:
    try:
        return path.read_text("utf-8", "replace")[-n:]
    except OSError:
        return "(no log)"


class Emulator:
    """One emulator process group owned by this process, its output in ``log``."""

    def __init__(self, kind: Kind, port: int, log: pathlib.Path) -> None:
        self.kind = kind
        self.host = f"127.0.0.1:{port}"
        self.log = log
        argv = kind.argv(launcher(kind), port)
        command = guarded(f"{kind.slug}-emulator", argv)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: its own process group, killed as one
            )
        atexit.register(self.stop)  # in case nobody stops it

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if answers_ok(self.host):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        atexit.unregister(self.stop)
        kill_group(self.proc)


def reuse_or_start(kind: Kind, log_dir: pathlib.Path) -> tuple[str, Emulator | None]:
    """The emulator ``kind.env_var`` names if it answers, else a new one (returned to stop).

    Sets ``kind.env_var`` in this process's environment, for the Google clients.
    """
    host = os.environ.get(kind.env_var, "")
    emu = None
    if not (host and answers_ok(host)):
        emu = start(kind, log_dir)
        host = emu.host
    os.environ[kind.env_var] = host
    return host, emu


def start(
    kind: Kind,
    log_dir: pathlib.Path,
    *,
    tries: int = START_TRIES,
    timeout_s: float = READY_TIMEOUT_S,
) -> Emulator:
    """Start a ``kind`` emulator on a free port and wait until it answers.

    Its output goes to ``log_dir/<kind>-emulator.log``. Raises
    :class:`NotInstalled` before starting anything, or :class:`EmulatorError`
    when no try came up.
    """
    launcher(kind)
    log = log_dir / f"{kind.slug}-emulator.log"
    failures: list[str] = []
    for i in range(tries):
        port = free_port()
        emu = Emulator(kind, port, log)
        if emu.wait_ready(timeout_s):
            return emu
        emu.stop()
        failures.append(f"try {i} (port {port}):\n{_tail(log)}")
    raise EmulatorError(f"the {kind.name} emulator did not start:\n" + "\n".join(failures))
