"""The supervisor of one local task: ``python -m distributors.local.supervise TASK HOME``.

``run`` starts it in a session of its own and writes the task's spec to its
stdin (JSON: ``argv``, ``env``, ``cwd``, ``timeout_s``, ``log``, ``state``,
``lock``, ``slots``, ``slot_dir``). The supervisor then

1. forks once more and lets the first process exit, so that nobody has to
   reap it (dm may be long gone when it ends);
2. takes the task's lock file, held for its whole life: that is how the
   distributor tells a live supervisor from a dead one (pids are reused);
3. takes one of the ``slots`` slot locks in ``slot_dir`` (the bound on
   commands running at once). With none free it checks that the command can
   start, answers ``run`` ``{"pid": ..., "command_pid": null, "queued": true}``
   and waits its turn: queued supervisors take turns at a gate lock, and the
   one holding it looks for a free slot (the kernel drops a slot's lock when
   its holder exits, however it exits);
4. starts the command with stdout and stderr appended to the log, in a
   process group of its own (so it can kill the command and everything the
   command started without killing itself), and answers ``run`` (unless it
   did already) with one JSON line on stdout: ``{"pid": ..., "command_pid":
   ...}`` or ``{"error": ...}``;
5. waits; when the timeout passes or it is told to stop (SIGTERM, SIGINT,
   SIGHUP) it sends SIGTERM to the command's group, then SIGKILL after a
   grace; once the command has ended, whatever is left in its group is
   killed;
6. records the outcome and the final state file in the task record and
   notifies dm (``Embedded(home).engine.receive_notification``, on the
   store ``DM_STORE`` names: dm's environment is inherited), retrying for a
   while if the store is busy.

Only the standard library is imported before the answer: ``run`` waits for
it, and importing dm costs a few hundred milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import json
import math
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from distributors.local import tasks

if TYPE_CHECKING:
    from dmcore.runtime.embedded import Embedded
    from dmcore.store.base import Doc, Transaction

POLL_S = 0.1
"""How often the supervisor looks at the command, its timeout and stop requests."""

SLOT_POLL_S = 0.01
"""How often the first queued supervisor (the one holding the gate) looks for a free slot."""

NOT_STARTED = 127
"""The exit code recorded when a queued command cannot start after all (as a shell's)."""

REPORT_TRIES = 6
"""Attempts at recording the outcome and notifying dm (backoff 0.5 s, 1 s, 2 s, ...)."""


class _Stopped(Exception):
    """A stop signal while a queued supervisor blocks waiting for its turn."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str
    exit_code: int | None = None
    signal: int | None = None


def _cannot_start(program: str, cwd: str, e: Exception) -> str:
    """Why ``program`` did not start, in words a user can act on."""
    if "/" in program and os.path.isdir(os.path.join(cwd, program)):
        return f"{program} is a folder, not a program"
    if "/" not in program and isinstance(e, FileNotFoundError):
        return f"no program {program!r} on PATH (./{program} for one in the working folder)"
    return str(e)


def _answer(fd: int, msg: Mapping[str, Any]) -> None:
    os.write(fd, (json.dumps(msg) + "\n").encode())


def _death_signal_hook() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook making the command die with its supervisor.

    Covers the supervisor being SIGKILLed (or crashing): nobody would record
    the command's end, so it must not run on unobserved.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return hook


def state_text(raw: bytes | None) -> tuple[str, str]:
    """The state file's JSON, normalised as dm stores results, or ("", why not).

    A missing or empty file is ``{}`` (what :class:`dmcore.job.Job` reads).
    """
    from dmcore import jsonnorm

    if raw is None or not raw.strip():
        return "{}", ""
    if len(raw) > jsonnorm.MAX_RESULT_RAW:
        return "", f"state file too large: {len(raw)} bytes (limit {jsonnorm.MAX_RESULT_RAW})"

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        json.loads(raw, parse_constant=no_constants)  # one JSON value, nothing after it
        wrapped = jsonnorm.normalize(b'{"state":' + raw + b"}")
    except (ValueError, jsonnorm.JsonError) as e:
        return "", f"state file is not valid JSON: {e}"
    return wrapped[len('{"state":') : -1], ""


class Supervisor:
    """Runs one task's command to its end and reports it (see the module docstring)."""

    def __init__(self, token: str, home: pathlib.Path, spec: Mapping[str, Any]) -> None:
        self.token = token
        self.home = home
        self.argv = [str(a) for a in spec["argv"]]
        self.env = {str(k): str(v) for k, v in spec["env"].items()}
        self.cwd = str(spec["cwd"])
        self.timeout_s = float(spec.get("timeout_s") or 0)
        self.files = tasks.Files(
            log=pathlib.Path(spec["log"]),
            state=pathlib.Path(spec["state"]),
            lock=pathlib.Path(spec["lock"]),
        )
        self.slots = int(spec.get("slots") or 0)
        self.slot_dir = pathlib.Path(str(spec.get("slot_dir") or self.files.log.parent))
        self.stop_signal: int | None = None
        self._stop_raises = False
        self.log_fd = -1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum
        if self._stop_raises:
            raise _Stopped

    def note(self, text: str) -> None:
        """A line of the supervisor's own in the task log."""
        if self.log_fd >= 0:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            os.write(self.log_fd, f"[dm local {stamp}] {text}\n".encode())

    # -- the life of the task -------------------------------------------------------

    def serve(self, answer_fd: int) -> int:
        """Take a slot, start the command, answer ``run`` on ``answer_fd``, wait, report."""
        try:
            lock_fd = tasks.take_lock(self.files.lock)
        except (OSError, TimeoutError) as e:
            _answer(answer_fd, {"error": f"supervisor lock: {e}", "transient": True})
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.log_fd = os.open(self.files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        answered = False
        slot_fd: int | None = None
        if self.slots:
            gate = os.open(self.slot_dir / tasks.SLOT_GATE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # The gate first: a task arriving while others wait queues behind them.
                at_gate = tasks.try_lock(gate)
                slot_fd = tasks.take_slot(self.slot_dir, self.slots) if at_gate else None
                if slot_fd is None:
                    why = self._cannot_start()
                    if why:
                        return self._refuse(answer_fd, why)
                    self._answer_run(answer_fd, None)
                    answered = True
                    self.note(f"queued: {self.slots} command(s) at most run at once")
                    slot_fd = self._wait_for_slot(gate, at_gate)
            finally:
                os.close(gate)  # lets the next queued supervisor look for a slot
            if slot_fd is None:  # told to stop while queued
                assert self.stop_signal is not None
                self.note(f"got {tasks.signal_name(self.stop_signal)} before starting")
                return self._end(lock_fd, Outcome(tasks.KILLED, signal=self.stop_signal))
        self.note(f"starting {shlex.join(self.argv)} (in {self.cwd})")
        try:
            proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self.log_fd,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_death_signal_hook(),  # noqa: PLW1509 - we are single-threaded
            )
        except (OSError, subprocess.SubprocessError) as e:
            why = _cannot_start(self.argv[0], self.cwd, e)
            if not answered:
                return self._refuse(answer_fd, why)
            # run() has returned: the outcome goes to dm like any other.
            self.note(f"cannot start: {why}")
            return self._end(lock_fd, Outcome(tasks.EXITED, exit_code=NOT_STARTED))
        if not answered:
            self._answer_run(answer_fd, proc.pid)
        started = time.monotonic()
        # Import dm while the command runs rather than after it (a few hundred ms
        # per execution); a failure shows up again, and is logged, in report().
        with contextlib.suppress(Exception):
            importlib.import_module("dmcore.runtime.embedded")
        outcome = self.wait(proc)
        if slot_fd is not None:
            os.close(slot_fd)  # the next queued command starts while this one reports
        self.note(f"{_describe(outcome, self.timeout_s)} after {time.monotonic() - started:.1f}s")
        return self._end(lock_fd, outcome)

    def _end(self, lock_fd: int, outcome: Outcome) -> int:
        """Report ``outcome`` with the final state file, then let go of the task's lock."""
        try:
            raw: bytes | None = self.files.state.read_bytes()
        except FileNotFoundError:
            raw = None
        code = self.report(outcome, raw)
        self.files.lock.unlink(missing_ok=True)
        os.close(lock_fd)
        return code

    def _refuse(self, answer_fd: int, why: str) -> int:
        """Answer ``run`` that the command cannot start (the execution is REJECTED)."""
        self.note(f"cannot start: {why}")
        self.files.lock.unlink(missing_ok=True)
        _answer(answer_fd, {"error": f"cannot start {self.argv[0]!r}: {why}"})
        return 1

    def _answer_run(self, answer_fd: int, command_pid: int | None) -> None:
        """Tell ``run`` the task is under way (``command_pid`` None: queued)."""
        msg: dict[str, Any] = {"pid": os.getpid(), "command_pid": command_pid}
        if command_pid is None:
            msg["queued"] = True
        # If run() is gone (dm died), carry on: its retry finds the record and
        # keeps this task.
        with contextlib.suppress(OSError):
            _answer(answer_fd, msg)
        os.dup2(self.log_fd, answer_fd)  # closes the answer pipe: run() is done waiting

    def _cannot_start(self) -> str:
        """Why the command would not start (checked before queueing it), or ""."""
        program = self.argv[0]
        if "/" in program:
            path = os.path.join(self.cwd, program)
            if not os.path.exists(path):
                e: OSError = FileNotFoundError(2, os.strerror(2), program)
            elif os.path.isdir(path) or not os.access(path, os.X_OK):
                e = PermissionError(13, os.strerror(13), program)
            else:
                return ""
        elif shutil.which(program, path=self.env.get("PATH", os.defpath)) is None:
            e = FileNotFoundError(2, os.strerror(2), program)
        else:
            return ""
        return _cannot_start(program, self.cwd, e)

    def _wait_for_slot(self, gate: int, at_gate: bool) -> int | None:
        """Wait for a free slot (holding ``gate`` while looking); None if told to stop."""
        self._stop_raises = True
        try:
            if self.stop_signal is not None:
                return None
            if not at_gate:
                fcntl.flock(gate, fcntl.LOCK_EX)  # a stop signal raises _Stopped
            while self.stop_signal is None:
                fd = tasks.take_slot(self.slot_dir, self.slots)
                if fd is not None:
                    return fd
                time.sleep(SLOT_POLL_S)
            return None
        except _Stopped:
            return None
        finally:
            self._stop_raises = False

    def wait(self, proc: subprocess.Popen[bytes]) -> Outcome:
        """Wait for the command, enforcing the timeout and stop requests."""
        deadline = time.monotonic() + self.timeout_s if self.timeout_s > 0 else None
        kill_at: float | None = None
        timed_out = False
        while True:
            try:
                rc = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if kill_at is None:
                if self.stop_signal is not None:
                    why = f"got {tasks.signal_name(self.stop_signal)}"
                elif deadline is not None and now >= deadline:
                    timed_out = True
                    why = f"timed out after {self.timeout_s:g}s"
                else:
                    continue
                self.note(f"{why}: sending SIGTERM to the command's process group")
                tasks.signal_group(proc.pid, signal.SIGTERM)
                kill_at = now + tasks.KILL_GRACE_S
            elif now >= kill_at:
                self.note("still running: sending SIGKILL")
                tasks.signal_group(proc.pid, signal.SIGKILL)
                kill_at = math.inf
        # Whatever the command left behind in its group goes with it.
        tasks.signal_group(proc.pid, signal.SIGKILL)
        if timed_out:
            return Outcome(tasks.TIMED_OUT, signal=-rc if rc < 0 else None)
        if rc < 0:
            return Outcome(tasks.KILLED, signal=-rc)
        return Outcome(tasks.EXITED, exit_code=rc)

    # -- telling dm ------------------------------------------------------------------

    def report(self, outcome: Outcome, state_raw: bytes | None) -> int:
        """Record ``outcome`` in the task record and notify dm; retried while it fails."""
        from dmcore.runtime.backend import store_from_env
        from dmcore.runtime.embedded import Embedded, home_registry

        state, state_error = state_text(state_raw)
        for attempt in range(REPORT_TRIES):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                emb = Embedded(
                    self.home, home_registry(self.home), store=store_from_env(os.environ)
                )
                try:
                    doc = emb.store.transaction(
                        lambda tx: self._record(tx, outcome, state, state_error)
                    )
                    if doc is None:
                        self.note(f"task record {self.token} is gone: nobody to tell")
                        return 1
                    self._notify(emb, doc)
                finally:
                    emb.close()
                return 0
            except Exception as e:
                self.note(f"could not report the outcome to dm (try {attempt + 1}): {e!r}")
        return 1

    def _record(
        self, tx: Transaction, outcome: Outcome, state: str, state_error: str
    ) -> Doc | None:
        path = tasks.task_path(self.token)
        doc = tx.get(path)
        if doc is None:
            return None
        if doc["status"] in tasks.LIVE:  # a cancelled task stays cancelled
            doc["status"] = outcome.status
        doc.update(
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            state=state,
            state_error=state_error,
            ended_us=time.time_ns() // 1000,
        )
        tx.set(path, doc)
        return doc

    def _notify(self, emb: Embedded, doc: Doc) -> None:
        attrs = {"auth_token": str(doc["auth_token"]), "task": self.token}
        got = emb.engine.receive_notification(b"", attrs)
        mint = emb.engine.registry.prepare_topic
        if got != "ok" and mint is not None:
            # The token expired (48 h) or the home's secret changed: this
            # process may use the home's secret itself, so mint a fresh one.
            from dmcore.ids import ExecutionID

            _, fresh = mint(str(doc["config_name"]), ExecutionID.parse(str(doc["execution"])))
            got = emb.engine.receive_notification(b"", {**attrs, "auth_token": fresh})
        if got != "ok":
            self.note(f"dm did not take the notification: {got}")


def _describe(outcome: Outcome, timeout_s: float) -> str:
    if outcome.status == tasks.TIMED_OUT:
        return f"timed out ({timeout_s:g}s), killed"
    if outcome.status == tasks.KILLED:
        return f"killed by {tasks.signal_name(outcome.signal or 0)}"
    return f"exited with code {outcome.exit_code}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m distributors.local.supervise TASK HOME", file=sys.stderr)
        print(
            "(the task's spec comes as JSON on stdin; dm's local distributor starts this)",
            file=sys.stderr,
        )
        return 2
    token, home = args
    try:
        spec = json.loads(sys.stdin.buffer.read())
    except ValueError as e:
        print(f"supervise: bad task spec on stdin: {e}", file=sys.stderr)
        return 2
    if os.fork() > 0:
        os._exit(0)  # the grandchild carries on, adopted by init: nobody needs to reap it
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return Supervisor(token, pathlib.Path(home), spec).serve(answer_fd=1)


if __name__ == "__main__":
    sys.exit(main())
