"""Task records, file names and process handling shared by the local distributor
and its supervisor.

Standard library only: the supervisor imports this while ``run`` waits for it
to start the command, and importing dm itself takes a few hundred milliseconds.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pathlib
import signal
import time

from dmcore.runtime.procs import group_alive

COLLECTION = "local_tasks"
"""The distributor's own collection in dm's store: one record per execution."""

STARTING = "starting"
"""``run`` claimed the record and is starting the supervisor."""
RUNNING = "running"
EXITED = "exited"
"""The command exited by itself (``exit_code``)."""
KILLED = "killed"
"""The command was ended by a signal it did not ask for (``signal``)."""
TIMED_OUT = "timed_out"
"""The supervisor killed the command after the quest's ``timeout``."""
CANCELLED = "cancelled"
"""``cancel`` was called; the supervisor stopped the command."""

LIVE = frozenset({STARTING, RUNNING})

KILL_GRACE_S = 3.0
"""How long a command may take to exit after SIGTERM before it gets SIGKILL."""


def task_id(quest: str, attempt: int, execution: int) -> str:
    """The record id and distributor token of an execution.

    Quest IDs are URL-safe base64, so the dotted form needs no escaping in a
    document id, a file name or a URL.
    """
    return f"{quest}.{attempt}.{execution}"


def task_path(token: str) -> str:
    return f"{COLLECTION}/{token}"


@dataclasses.dataclass(frozen=True)
class Files:
    """Where one task keeps its output, its state and its liveness lock."""

    log: pathlib.Path
    state: pathlib.Path
    lock: pathlib.Path

    @classmethod
    def of(cls, log_dir: pathlib.Path, token: str) -> Files:
        return cls(
            log=log_dir / f"{token}.log",
            state=log_dir / f"{token}.state.json",
            lock=log_dir / f"{token}.lock",
        )

    @property
    def parameters(self) -> pathlib.Path:
        """The quest's parameters, when too large for the environment."""
        return self.state.with_name(self.state.name.replace(".state.json", ".parameters.json"))


def take_lock(path: pathlib.Path, timeout_s: float = 5.0) -> int:
    """Hold ``path`` exclusively for the life of this process; returns the fd.

    Others test it with :func:`supervisor_alive` (they hold it only for a
    moment, hence the retries). Raises TimeoutError if another supervisor
    keeps it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout_s
    while not try_lock(fd):
        if time.monotonic() > deadline:
            os.close(fd)
            raise TimeoutError(f"{path} is held by another supervisor")
        time.sleep(0.01)
    return fd


SLOT_GATE = "queue.lock"
"""In a slot folder: held by the first supervisor waiting for a free slot
(the others queue for it)."""


def try_lock(fd: int) -> bool:
    """Lock ``fd`` exclusively if nobody else holds it; whether it did."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def take_slot(slot_dir: pathlib.Path, slots: int) -> int | None:
    """Lock a free one of the ``slots`` slot files in ``slot_dir``: its fd, or None.

    A supervisor holds a slot while its command runs: the number of slots
    bounds the commands running at once, and the kernel drops the lock when
    its holder dies, however it dies.
    """
    for i in range(slots):
        fd = os.open(slot_dir / f"{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        if try_lock(fd):
            return fd
        os.close(fd)
    return None


def slots_taken(slot_dir: pathlib.Path, slots: int) -> int:
    """How many of the ``slots`` slots in ``slot_dir`` are held now."""
    return sum(supervisor_alive(slot_dir / f"{i}.lock") for i in range(slots))


def supervisor_alive(lock: pathlib.Path) -> bool:
    """Whether a supervisor still holds ``lock``.

    A lock rather than the pid: pids are reused, and an exited supervisor may
    linger as a zombie when nobody reaps orphans. The kernel drops the lock
    when the process dies, however it dies.
    """
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to group ``pgid``; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(pgid: int, grace_s: float = KILL_GRACE_S, settle_s: float = 2.0) -> bool:
    """SIGTERM group ``pgid``, SIGKILL it if it outlives ``grace_s``.

    Waits up to ``settle_s`` more for the group to vanish (its leader must be
    reaped by its parent, the supervisor). Returns whether it is gone.
    """
    if not signal_group(pgid, signal.SIGTERM):
        return True
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.02)
    signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.02)
    return False


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
