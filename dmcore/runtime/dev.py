"""``dm dev``: a rehearsal of the Google Cloud deployment on one machine.

Everything runs as it runs on Google Cloud, each part played locally:

===========================  ==========================================================
Cloud Functions              one ``functions-framework`` process per function, loading
                             ``functions/main.py`` (the bundle's ``main.py``): dm_api on
                             ``--port``, dm_notify, dm_tasks and dm_sweep on the next ones
Firestore, Pub/Sub           the gcloud SDK's emulators, started (or reused when
                             ``FIRESTORE_EMULATOR_HOST`` / ``PUBSUB_EMULATOR_HOST`` name
                             live ones); a push subscription delivers the notification
                             topic to dm_notify, as terraform's does
Cloud Tasks                  :class:`~dmcore.queue.cloudtasks_standin.CloudTasksStandIn`,
                             a STAND-IN (no faithful emulator exists) that POSTs each task
                             to dm_tasks with Cloud Tasks' headers, retries with backoff,
                             refuses duplicate names and honours schedule times
Cloud Scheduler              a thread POSTing to dm_sweep every few seconds
===========================  ==========================================================

The functions run the gcp backend (``DM_BACKEND=gcp``) with identity checks
OFF (``DM_AUTH=none``: the emulators and the stand-in mint no tokens), so
every address binds 127.0.0.1 unless ``host`` says otherwise. On Ctrl-C or
SIGTERM everything this started stops: each function's whole process group,
the stand-in, the push subscription, and the emulators it started (they keep
their data in memory only). A function that dies stops the rehearsal too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dmcore import logs
from dmcore.queue.cloudtasks_standin import CloudTasksStandIn
from dmcore.runtime import emulators
from dmcore.runtime.embedded import load_secret, wall_clock_us
from dmcore.runtime.procs import guarded
from dmcore.runtime.serve import default_source

log = logs.get("dm.dev")

TARGETS = ("dm_api", "dm_notify", "dm_tasks", "dm_sweep")
PROJECT = "dm-local"
LOCATION = "local"
TOPIC = "dm-distributor-notify"
SUBSCRIPTION = "dm-notify-push"
DEFAULT_CONFIG: dict[str, Any] = {"distributor_configs": {"jobsim": {"jobsim": {"pool": "dev"}}}}
"""Simulated jobs: what runs on the gcp backend without a cloud behind it."""
READY_TIMEOUT_S = 120.0
SWEEP_EVERY_S = 5.0
TASK_MAX_BACKOFF_US = 60_000_000
"""Retries of a failing task wait at most a minute here (Cloud Tasks: up to an hour)."""


class DevError(RuntimeError):
    """The rehearsal could not start (a port in use, a function that does not load, ...)."""


@dataclasses.dataclass
class Function:
    """One function's functions-framework process."""

    target: str
    port: int
    url: str
    log: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None


def _post(url: str, body: bytes = b"", headers: Mapping[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, headers=dict(headers or {}), method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=300) as rsp:
            return int(rsp.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)


def _answers(url: str) -> bool:
    """Whether anything answers HTTP at ``url`` (any status)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1.0):
            return True
    except urllib.error.HTTPError as e:
        e.close()
        return True
    except OSError:
        return False


def _tail(path: pathlib.Path, n: int = 3000) -> str:
    try:
        return path.read_text("utf-8", "replace")[-n:]
    except OSError:
        return "(no log)"


class DevStack:
    """The four functions, the emulators, the Cloud Tasks stand-in and the scheduler tick."""

    def __init__(
        self,
        port: int = 8080,
        home: str | os.PathLike[str] = ".dm",
        *,
        host: str = "127.0.0.1",
        config: str | Mapping[str, Any] | None = None,
        sweep_every_s: float = SWEEP_EVERY_S,
        source: str | os.PathLike[str] | None = None,
        out: Callable[[str], None] | None = None,
        project: str = PROJECT,
        queues: int = 1,
    ) -> None:
        """``port`` 0: free ports for all four; ``config``: DM_CONFIG (path, JSON or dict)."""
        if queues < 1:
            raise ValueError("queues must be >= 1")
        self.port = port
        self.home = pathlib.Path(home).resolve()
        self.host = host
        self.config = DEFAULT_CONFIG if config is None else config
        self.sweep_every_s = sweep_every_s
        self.source = pathlib.Path(source) if source else default_source()
        self.out = out or (lambda text: print(text, file=sys.stderr, flush=True))
        self.project = project
        self.queue_paths = [
            f"projects/{project}/locations/{LOCATION}/queues/dm-tasks-{i}" for i in range(queues)
        ]
        self.topic = f"projects/{project}/topics/{TOPIC}"
        self.subscription = f"projects/{project}/subscriptions/{SUBSCRIPTION}"
        self.functions: dict[str, Function] = {}
        self.emulators: list[emulators.Emulator] = []
        """The emulators this started (not those it reuses); stopped by close()."""
        self.hosts: dict[str, str] = {}
        self.tasks: CloudTasksStandIn | None = None
        self.sweeps = 0
        self._subscribed = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return self.functions["dm_api"].url

    # -- start -----------------------------------------------------------------------------

    def start(self) -> DevStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        logdir = self.home / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        self.out("dm dev: starting the emulators, the Cloud Tasks stand-in and four functions...")
        for kind in (emulators.FIRESTORE, emulators.PUBSUB):
            host, emu = emulators.reuse_or_start(kind, logdir)
            self.hosts[kind.name] = host
            if emu is not None:
                self.emulators.append(emu)
        ports = self._ports()
        for target, port in zip(TARGETS, ports, strict=True):
            url = f"http://{self.host}:{port}"
            self.functions[target] = Function(target, port, url, logdir / f"{target}.log")
        self.tasks = CloudTasksStandIn(
            clock=wall_clock_us,
            queues=self.queue_paths,
            max_backoff_us=TASK_MAX_BACKOFF_US,
            keep_dispatches=1000,
        ).start()
        self.tasks.start_dispatcher(poll_s=0.05)
        secret = self.home / "secret"
        load_secret(secret)  # created on first use, as the embedded home's
        env = self._environment(secret)
        for fn in self.functions.values():
            self._spawn(fn, env)
        for fn in self.functions.values():
            self._wait_ready(fn)
        self._subscribe()
        self._ticker = threading.Thread(target=self._tick, name="dm-dev-scheduler", daemon=True)
        self._ticker.start()
        self._banner()

    def _ports(self) -> list[int]:
        if self.port == 0:
            return [emulators.free_port() for _ in TARGETS]
        return [self.port + i for i in range(len(TARGETS))]

    def _environment(self, secret_file: pathlib.Path) -> dict[str, str]:
        """What each function process gets: the variables terraform sets, played locally."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DM_", "K_", "FUNCTION_")) and k not in ("PORT", "HOST")
        }
        config = self.config if isinstance(self.config, str) else json.dumps(self.config)
        env |= {
            "PYTHONUNBUFFERED": "1",
            "DM_BACKEND": "gcp",
            "DM_AUTH": "none",  # nothing local mints Google ID tokens
            "GOOGLE_CLOUD_PROJECT": self.project,
            "FIRESTORE_EMULATOR_HOST": self.hosts[emulators.FIRESTORE.name],
            "PUBSUB_EMULATOR_HOST": self.hosts[emulators.PUBSUB.name],
            "DM_TASKS_QUEUES": ",".join(self.queue_paths),
            "DM_TASKS_URL": self.functions["dm_tasks"].url,
            "DM_TASKS_EMULATOR_HOST": self.tasks.address if self.tasks else "",
            "DM_NOTIFY_TOPIC": self.topic,
            "DM_NOTIFY_SECRET_FILE": str(secret_file),
            "DM_CONFIG": config,
            "DM_HOST": self.functions["dm_api"].url,
        }
        return env

    def _spawn(self, fn: Function, env: Mapping[str, str]) -> None:
        argv = [
            sys.executable,
            "-m",
            "functions_framework",
            "--target",
            fn.target,
            "--source",
            str(self.source),
            "--host",
            self.host,
            "--port",
            str(fn.port),
        ]
        with fn.log.open("wb") as out:
            fn.proc = subprocess.Popen(
                guarded(f"dm-dev-{fn.target}", argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # its own process group, stopped as one
            )

    def _wait_ready(self, fn: Function) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert fn.proc is not None
        while time.monotonic() < deadline:
            if _answers(f"{fn.url}/"):
                return
            if fn.proc.poll() is not None:
                raise DevError(f"{fn.target} did not start (log {fn.log}):\n{_tail(fn.log)}")
            time.sleep(0.1)
        raise DevError(f"{fn.target} did not answer within {READY_TIMEOUT_S:g}s (log {fn.log})")

    def _subscribe(self) -> None:
        from dmcore.notify import pubsub

        pubsub.ensure_topic(self.topic)
        # The path names the topic: functions-framework makes it the CloudEvent's source.
        endpoint = f"{self.functions['dm_notify'].url}/{self.topic}"
        pubsub.ensure_push_subscription(self.subscription, self.topic, endpoint)
        self._subscribed = True

    def _tick(self) -> None:
        """Cloud Scheduler's part: POST dm_sweep every ``sweep_every_s``."""
        url = f"{self.functions['dm_sweep'].url}/"
        headers = {"X-CloudScheduler": "true", "User-Agent": "Google-Cloud-Scheduler"}
        while not self._stop.wait(self.sweep_every_s):
            try:
                status = _post(url, b"", headers)
            except OSError as e:
                log.warning("scheduler tick failed", error=str(e))
                continue
            self.sweeps += 1
            if status != 200:
                log.warning("scheduler tick answered", status=status)

    def _banner(self) -> None:
        f = self.functions
        stand_in = self.tasks.address if self.tasks else "?"
        lines = [
            f"dm dev: dm_api at {self.api_url}   (POST {self.api_url}/prpc/dm.Deps/<Method>)",
            f"  dm_notify  {f['dm_notify'].url}  <- Pub/Sub push ({self.topic})",
            f"  dm_tasks   {f['dm_tasks'].url}  <- Cloud Tasks stand-in at {stand_in}",
            f"  dm_sweep   {f['dm_sweep'].url}  <- scheduler tick every {self.sweep_every_s:g}s",
            f"  Firestore  {self.hosts['Firestore']}  Pub/Sub {self.hosts['Pub/Sub']}"
            f"  (project {self.project})",
            f"  logs       {self.home / 'logs'}/<function>.log",
            "  identity checks are OFF (DM_AUTH=none): local use only. Ctrl-C stops everything.",
        ]
        self.out("\n".join(lines))

    # -- run and stop ----------------------------------------------------------------------------

    def dead(self) -> list[Function]:
        """Functions whose process has exited."""
        return [
            f for f in self.functions.values() if f.proc is not None and f.proc.poll() is not None
        ]

    def wait(self) -> int:
        """Until Ctrl-C / SIGTERM / :meth:`close` (0) or a function dies (1)."""
        try:
            while not self._stop.wait(0.5):
                for fn in self.dead():
                    assert fn.proc is not None
                    self.out(
                        f"dm dev: {fn.target} exited ({fn.proc.returncode}); "
                        f"its log ({fn.log}) ends:\n{_tail(fn.log, 2000)}"
                    )
                    return 1
        except KeyboardInterrupt:
            pass
        self.out("dm dev: stopping")
        return 0

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(30)
            self._ticker = None
        if self._subscribed:
            from dmcore.notify import pubsub

            # A reused emulator would go on pushing to a port nobody listens on.
            with contextlib.suppress(Exception):
                pubsub.delete_subscription(self.subscription)
            self._subscribed = False
        for fn in self.functions.values():
            if fn.proc is not None:
                emulators.kill_group(fn.proc)
        if self.tasks is not None:
            self.tasks.stop()
            self.tasks = None
        while self.emulators:
            self.emulators.pop().stop()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops like Ctrl-C (KeyboardInterrupt), also while still starting."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(port: int = 8080, home: str | os.PathLike[str] = ".dm", **kw: Any) -> int:
    """``dm dev``: start everything, wait for Ctrl-C / SIGTERM, stop everything."""
    with _sigterm_as_ctrl_c():
        try:
            with DevStack(port, home, **kw) as stack:
                return stack.wait()
        except KeyboardInterrupt:
            return 0
