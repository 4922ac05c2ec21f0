"""``dm serve``: the four Cloud Functions in one local process, on the embedded backend.

The functions are the deployed entry points themselves (``functions/main.py``
loaded by functions-framework's ``create_app``, as Cloud Functions loads it;
dmcore never imports them), mounted on one port by werkzeug's dispatcher::

    http://HOST:PORT/prpc/dm.Deps/<Method>    dm_api
    http://HOST:PORT/dm_notify/               dm_notify (CloudEvents, raw Pub/Sub push)
    http://HOST:PORT/dm_tasks/<target>        dm_tasks
    http://HOST:PORT/dm_sweep/                dm_sweep

A background thread plays Cloud Tasks and Cloud Scheduler: it runs the
embedded queue's due tasks in-process and sweeps every few seconds.
Identity checks are OFF (``DM_AUTH=none``): every caller is a writer, so the
server binds to 127.0.0.1 unless told otherwise.

With ``use_emulators`` the Pub/Sub emulator (gcloud SDK) is started (or
reused via ``PUBSUB_EMULATOR_HOST``), with topic
``projects/dm-local/topics/dm-distributor-notify`` pushing to dm_notify, so
notifications travel the same road as on Google Cloud.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import BaseWSGIServer, make_server

from dmcore import backend as backends
from dmcore import logs, server

log = logs.get("dm.serve")

TARGETS = ("dm_api", "dm_notify", "dm_tasks", "dm_sweep")
EMULATOR_PROJECT = "dm-local"
NOTIFY_TOPIC = "dm-distributor-notify"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def default_source() -> pathlib.Path:
    """``functions/main.py`` beside the dmcore package (repo checkout or installed wheel)."""
    return pathlib.Path(__file__).resolve().parent.parent / "functions" / "main.py"


def _root_path(app: WSGIApp) -> WSGIApp:
    """Serve ``/prefix`` as ``/prefix/`` (Flask would redirect a POST with 308)."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        return app(environ, start_response)

    return wrapped


class LocalServer:
    """The functions, the queue worker and (optionally) the Pub/Sub emulator."""

    def __init__(
        self,
        port: int = 8080,
        home: str | os.PathLike[str] = ".dm",
        use_emulators: bool = False,
        *,
        host: str = "127.0.0.1",
        config: str | Mapping[str, Any] | None = None,
        sweep_every_s: float = 5.0,
        source: str | os.PathLike[str] | None = None,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.home = pathlib.Path(home).resolve()
        self.use_emulators = use_emulators
        self.config = config
        self.sweep_every_s = sweep_every_s
        self.source = pathlib.Path(source) if source else default_source()
        self.out = out or (lambda text: print(text, file=sys.stderr, flush=True))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._httpd: BaseWSGIServer | None = None
        self._emulator: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    # -- start / stop ----------------------------------------------------------------

    def start(self) -> LocalServer:
        env = {"DM_BACKEND": "embedded", "DM_HOME": str(self.home), "DM_AUTH": "none"}
        if self.config is not None:
            env["DM_CONFIG"] = (
                self.config if isinstance(self.config, str) else json.dumps(self.config)
            )
        os.environ.update(env)
        if self.use_emulators:
            self._start_pubsub()
        backends.reset()
        b = server.start()
        from functions_framework import create_app

        apps = {
            t: create_app(t, str(self.source))  # type: ignore[no-untyped-call]
            for t in TARGETS
        }
        app = DispatcherMiddleware(
            apps["dm_api"],
            {f"/{t}": _root_path(apps[t]) for t in TARGETS if t != "dm_api"},
        )
        self._httpd = make_server(self.host, self.port, app, threaded=True)
        self.port = self._httpd.server_port
        self.base_url = f"http://{self.host}:{self.port}"
        self._spawn("dm-http", self._httpd.serve_forever)
        self._spawn("dm-worker", self._work)
        if self.use_emulators:
            self._subscribe()
        self._banner(b)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
        for t in self._threads:
            t.join(10)
        self._threads.clear()
        if self._httpd is not None:
            self._httpd.server_close()
            self._httpd = None
        backends.reset()
        if self._emulator is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._emulator.pid, signal.SIGTERM)
            try:
                self._emulator.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._emulator.pid, signal.SIGKILL)
            self._emulator = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(self) -> None:
        """Block until Ctrl-C (or :meth:`close` from another thread)."""
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.out("dm serve: stopping")

    def _spawn(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _banner(self, b: backends.Backend) -> None:
        u = self.base_url
        lines = [
            f"dm serve: embedded home {self.home}",
            f"  dm_api     {u}/prpc/dm.Deps/<Method>",
            f"  dm_notify  {u}/dm_notify/   (CloudEvents or raw Pub/Sub push)",
            f"  dm_tasks   {u}/dm_tasks/mutation, {u}/dm_tasks/distributor/<config>",
            f"  dm_sweep   {u}/dm_sweep/    (also every {self.sweep_every_s:g}s in-process)",
        ]
        if self.use_emulators:
            lines.append(
                f"  Pub/Sub    {os.environ.get('PUBSUB_EMULATOR_HOST')}: "
                f"{b.engine.settings.notify_topic} -> dm_notify"
            )
        lines += [
            "",
            "  !!! IDENTITY CHECKS ARE OFF (DM_AUTH=none): anyone who can reach this !!!",
            "  !!! address is a writer. Local use only; do not expose this port.     !!!",
        ]
        self.out("\n".join(lines))

    # -- the worker: Cloud Tasks and Cloud Scheduler of the embedded world -------------------

    def _work(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            emb = backends.get().embedded
            assert emb is not None
            ran = 0
            try:
                ran = emb.work()
                if time.monotonic() - last_sweep >= self.sweep_every_s:
                    last_sweep = time.monotonic()
                    emb.engine.sweep()
            except Exception:
                log.exception("worker round failed")
                self._stop.wait(1.0)
                continue
            if ran == 0:
                nxt = emb.queue.next_due_us()
                wait = 0.2 if nxt is None else max(0.0, min(0.2, (nxt - emb.clock()) / 1e6))
                self._stop.wait(wait)

    # -- the Pub/Sub emulator -----------------------------------------------------------------

    def _start_pubsub(self) -> None:
        host = os.environ.get("PUBSUB_EMULATOR_HOST", "")
        if host and _answers_ok(host):
            self.out(f"dm serve: using the Pub/Sub emulator at {host}")
        else:
            host = self._spawn_emulator()
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        os.environ["DM_NOTIFY_TOPIC"] = f"projects/{EMULATOR_PROJECT}/topics/{NOTIFY_TOPIC}"

    def _spawn_emulator(self) -> str:
        binary = _sdk_root() / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        if not binary.exists() or shutil.which("java") is None:
            raise RuntimeError(f"the Pub/Sub emulator is not installed ({binary}, java)")
        port = _free_port()
        host = f"127.0.0.1:{port}"
        self._emulator = subprocess.Popen(
            [str(binary), "--host=127.0.0.1", f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not _answers_ok(host):
            if self._emulator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Pub/Sub emulator did not start")
            time.sleep(0.2)
        self.out(f"dm serve: started the Pub/Sub emulator at {host}")
        return host

    def _subscribe(self) -> None:
        from dmcore.notify import pubsub

        topic = os.environ["DM_NOTIFY_TOPIC"]
        pubsub.ensure_topic(topic)
        pubsub.ensure_push_subscription(
            pubsub.subscription_path(EMULATOR_PROJECT, "dm-notify-push"),
            topic,
            f"{self.base_url}/dm_notify/{topic}",
        )


def _answers_ok(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1.0) as rsp:
            return bool(rsp.status == 200)
    except OSError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sdk_root() -> pathlib.Path:
    gcloud = shutil.which("gcloud")
    if gcloud is not None:
        try:
            got = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            got = ""
        if got:
            return pathlib.Path(got)
    return pathlib.Path("/usr/lib/google-cloud-sdk")


def serve(
    port: int = 8080,
    home: str | os.PathLike[str] = ".dm",
    use_emulators: bool = False,
    **kw: Any,
) -> None:
    """Run everything until Ctrl-C (``dm serve``)."""
    with LocalServer(port, home, use_emulators, **kw) as srv:
        srv.wait()
