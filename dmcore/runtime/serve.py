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

With ``use_emulators`` the gcloud SDK's Firestore and Pub/Sub emulators are
started (:mod:`dmcore.runtime.emulators`; or reused where ``FIRESTORE_EMULATOR_HOST`` /
``PUBSUB_EMULATOR_HOST`` name one that answers), and stopped with the server:

* the engine's store is Firestore on its emulator, project ``dm-local``
  (``DM_STORE=firestore``; the home then holds no ``dm.sqlite``);
* notifications go to topic ``projects/dm-local/topics/dm-distributor-notify``,
  pushed to dm_notify, the same road as on Google Cloud;
* the task queue stays the embedded one, in the home, run by the worker
  thread: no faithful Cloud Tasks emulator exists.

The emulators keep their data in memory: a started one begins empty, while the
home's queue may still hold tasks of an earlier run (they find nothing to do).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import BaseWSGIServer, make_server

from dmcore import logs, server
from dmcore.runtime import backend as backends
from dmcore.runtime import emulators

log = logs.get("dm.serve")

TARGETS = ("dm_api", "dm_notify", "dm_tasks", "dm_sweep")
EMULATOR_PROJECT = "dm-local"
NOTIFY_TOPIC = "dm-distributor-notify"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def default_source() -> pathlib.Path:
    """``functions/main.py`` beside the dmcore package (repo checkout or installed wheel)."""
    return pathlib.Path(__file__).resolve().parents[2] / "functions" / "main.py"


def _root_path(app: WSGIApp) -> WSGIApp:
    """Serve ``/prefix`` as ``/prefix/`` (Flask would redirect a POST with 308)."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        return app(environ, start_response)

    return wrapped


class LocalServer:
    """The functions, the queue worker and (optionally) the Firestore and Pub/Sub emulators."""

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
        project: str = EMULATOR_PROJECT,
    ) -> None:
        """``project``: the emulators' project (store and topic), with ``use_emulators``."""
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
        self.project = project
        self.emulators: list[emulators.Emulator] = []
        """The emulators this server started (not those it reuses); stopped by close()."""
        self.hosts: dict[str, str] = {}
        """``host:port`` of the emulators in use, by :attr:`emulators.Kind.name`."""
        self.base_url = ""

    # -- start / stop ----------------------------------------------------------------

    def start(self) -> LocalServer:
        env = {
            "DM_BACKEND": "embedded",
            "DM_HOME": str(self.home),
            "DM_AUTH": "none",
            server.DRIVER_VAR: "dm serve",  # the worker thread below runs the queue
        }
        if self.config is not None:
            env["DM_CONFIG"] = (
                self.config if isinstance(self.config, str) else json.dumps(self.config)
            )
        if self.use_emulators:
            env |= {
                "DM_STORE": "firestore",
                "GOOGLE_CLOUD_PROJECT": self.project,
                "DM_NOTIFY_TOPIC": f"projects/{self.project}/topics/{NOTIFY_TOPIC}",
            }
        os.environ.update(env)
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> LocalServer:
        if self.use_emulators:
            for kind in (emulators.FIRESTORE, emulators.PUBSUB):
                self.hosts[kind.name] = self._emulator(kind)
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
        while self.emulators:
            self.emulators.pop().stop()

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
            fs, ps = self.hosts[emulators.FIRESTORE.name], self.hosts[emulators.PUBSUB.name]
            lines += [
                f"  Firestore  {fs} (project {self.project})",
                f"  Pub/Sub    {ps}: {b.engine.settings.notify_topic} -> dm_notify",
                f"  Tasks      the local persistent queue in {self.home}, run in-process",
                "             (no faithful Cloud Tasks emulator exists)",
            ]
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

    # -- the emulators ------------------------------------------------------------------------

    def _emulator(self, kind: emulators.Kind) -> str:
        """Reuse the emulator ``kind.env_var`` names if it answers, else start one."""
        host, emu = emulators.reuse_or_start(kind, self.home / "logs")
        if emu is None:
            self.out(f"dm serve: using the {kind.name} emulator at {host}")
        else:
            self.emulators.append(emu)
            self.out(f"dm serve: started the {kind.name} emulator at {host} (log: {emu.log})")
        return host

    def _subscribe(self) -> None:
        from dmcore.notify import pubsub

        topic = os.environ["DM_NOTIFY_TOPIC"]
        pubsub.ensure_topic(topic)
        pubsub.ensure_push_subscription(
            pubsub.subscription_path(self.project, "dm-notify-push"),
            topic,
            f"{self.base_url}/dm_notify/{topic}",
        )


def serve(
    port: int = 8080,
    home: str | os.PathLike[str] = ".dm",
    use_emulators: bool = False,
    **kw: Any,
) -> None:
    """Run everything until Ctrl-C (``dm serve``)."""
    with LocalServer(port, home, use_emulators, **kw) as srv:
        srv.wait()
