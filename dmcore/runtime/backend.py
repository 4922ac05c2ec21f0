"""Which engine the functions run on, built from environment variables (cached per process).

Cloud Functions configure a process through its environment (and Secret
Manager secrets mounted as variables or files), so this is the one place
that reads it:

``DM_BACKEND``        ``embedded`` (default: SQLite + local queue in ``DM_HOME``, default
                      ``.dm``) or ``gcp`` (Firestore + Cloud Tasks + Pub/Sub).
``DM_STORE``          embedded only: ``sqlite`` (default: ``DM_HOME/dm.sqlite``) or ``firestore``
                      (the Firestore database below, e.g. on its emulator with
                      ``FIRESTORE_EMULATOR_HOST``, as ``dm serve --emulators`` runs it); the
                      queue stays local in ``DM_HOME``. Jobs of the ``local`` distributor
                      inherit it and open the same store.
``GOOGLE_CLOUD_PROJECT``, ``DM_FIRESTORE_DATABASE``   the Firestore database (gcp, and
                      embedded with ``DM_STORE=firestore``; database default ``(default)``).
``DM_TASKS_QUEUE``    ``projects/P/locations/L/queues/Q`` (gcp), or
``DM_TASKS_QUEUES``   several such paths (comma-separated, one project and location): tasks
                      are sharded over them by a stable key (one queue dispatches at most
                      500 tasks/s). Set one of the two.
``DM_TASKS_URL``      the ``dm_tasks`` function's URL, tasks POST to ``URL/<target>`` (gcp).
``DM_TASKS_DISPATCH_DEADLINE``  seconds Cloud Tasks waits for dm_tasks to answer a task
                      (15..1800, default 600); dm_tasks' own timeout must be at least this.
``DM_TASKS_SERVICE_ACCOUNT``  the identity Cloud Tasks signs its OIDC tokens as (gcp).
``DM_TASKS_EMULATOR_HOST``    ``host:port`` of a local Cloud Tasks stand-in (plain gRPC, no
                      credentials), as ``FIRESTORE_EMULATOR_HOST`` and ``PUBSUB_EMULATOR_HOST``
                      (which the Google clients read themselves) for Firestore and Pub/Sub.
``DM_NOTIFY_TOPIC``   ``projects/P/topics/dm-distributor-notify`` (required on gcp;
                      embedded: optional, e.g. the Pub/Sub emulator's topic). On gcp the
                      notifications of in-process distributors (``handle_task_queue_task``)
                      are published there too, and reach ``dm_notify`` like any other.
``DM_NOTIFY_SECRET`` / ``DM_NOTIFY_SECRET_FILE``  HMAC key of notification tokens;
                      required on gcp, never defaulted in code (embedded: ``DM_HOME/secret``).
``DM_CONFIG``         distributor configs: a JSON/YAML file path or inline JSON
                      (default: the home's saved config, else ``DEFAULT_CONFIG``).
``DM_HOST``           the ``dm_api`` URL handed to distributors (gcp, optional).
``DM_RUN_RETRY_WINDOW_S``  how long transient errors of a distributor's ``run`` are
                      retried (seconds from the first try) before the execution is
                      REJECTED; default 3600.
``DM_WRITERS`` / ``DM_READERS``  comma-separated emails (``user:``/``serviceAccount:``
                      prefixes allowed) for the API's ACLs (spec §3.7).
``DM_AUTH``           ``none`` (local ``dm serve`` only: everyone is a writer) or ``oidc``
                      (the default on gcp): verify Google ID tokens against
                      ``DM_OIDC_AUDIENCE`` (comma-separated); ``DM_INVOKER_SERVICE_ACCOUNT``
                      is the only identity ``dm_tasks`` and ``dm_sweep`` accept,
                      ``DM_PUSH_SERVICE_ACCOUNT`` the only one ``dm_notify`` accepts (the
                      push subscription's). On gcp, ``DM_TASKS_SERVICE_ACCOUNT`` must then
                      be the invoker and ``DM_TASKS_URL`` one of the audiences: tasks dm
                      creates must carry a token dm_tasks accepts.

A bad or missing setting raises :class:`ConfigError` when the backend is
first built: the function refuses to start rather than run half-configured.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
import pathlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from dmcore.client import serve_in_process
from dmcore.engine import layout
from dmcore.engine.core import Engine, Settings
from dmcore.errors import InvalidArgument
from dmcore.runtime.embedded import (
    DEFAULT_CONFIG,
    Embedded,
    build_registry,
    home_registry,
    wall_clock_us,
)
from dmcore.service import Service
from dmcore.store.base import Store

log = logging.getLogger("dm.backend")

AUTH_NONE = "none"
AUTH_OIDC = "oidc"


class ConfigError(Exception):
    """The environment does not describe a usable backend."""


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """Who may call what (the functions' side of spec §3.7)."""

    mode: str = AUTH_NONE
    audiences: tuple[str, ...] = ()
    writers: frozenset[str] = frozenset()
    readers: frozenset[str] = frozenset()
    invoker: str = ""
    """The only identity allowed to call dm_tasks and dm_sweep (mode oidc)."""
    push: str = ""
    """The only identity allowed to push notifications to dm_notify (mode oidc)."""


@dataclasses.dataclass
class Backend:
    """An engine and its service, plus how callers are checked."""

    engine: Engine
    service: Service
    auth: AuthConfig
    kind: str
    embedded: Embedded | None = None
    closers: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    check_layout: Callable[[], None] | None = None
    """The store's record-layout check (:func:`dmcore.engine.layout.check`), left
    to the first request: building the backend contacts nothing (embedded: done
    when the home opens)."""
    _checked: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def ready(self) -> None:
        """Check the store's record layout once; raises LayoutMismatch (every time)."""
        if self.check_layout is None:
            return
        with self._checked:
            if self.check_layout is not None:
                self.check_layout()
                self.check_layout = None

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:
                log.warning("closing the backend failed", exc_info=True)
        self.closers.clear()


_lock = threading.Lock()
_cache: dict[str, Backend] = {}


def get() -> Backend:
    """The process's backend, built from ``os.environ`` on first use."""
    b = _cache.get("backend")
    if b is None:
        with _lock:
            b = _cache.get("backend")
            if b is None:
                b = _cache["backend"] = from_env(os.environ)
    return b


def reset() -> None:
    """Close and forget the cached backend (tests; ``dm serve`` restarts)."""
    with _lock:
        b = _cache.pop("backend", None)
    if b is not None:
        b.close()


def set_backend(backend: Backend) -> None:
    """Use ``backend`` as the process's backend (``dm serve``, tests)."""
    with _lock:
        old = _cache.get("backend")
        _cache["backend"] = backend
    if old is not None and old is not backend:
        old.close()


def from_env(env: Mapping[str, str]) -> Backend:
    """Build a backend from ``env`` (see the module docstring)."""
    kind = env.get("DM_BACKEND", "embedded").strip() or "embedded"
    if kind not in ("embedded", "gcp"):
        raise ConfigError(f"DM_BACKEND: expected 'embedded' or 'gcp', got {kind!r}")
    b = _embedded(env) if kind == "embedded" else _gcp(env)
    if b.auth.mode == AUTH_NONE:
        log.warning("DM_AUTH=none: identity checks are OFF, every caller is a writer (local only)")
    return b


def auth_from_env(env: Mapping[str, str], *, default: str) -> AuthConfig:
    mode = env.get("DM_AUTH", "").strip().lower() or default
    writers = _principals(env.get("DM_WRITERS", ""))
    readers = _principals(env.get("DM_READERS", ""))
    if mode == AUTH_NONE:
        return AuthConfig(AUTH_NONE, (), writers, readers, "")
    if mode != AUTH_OIDC:
        raise ConfigError(f"DM_AUTH: expected 'none' or 'oidc', got {mode!r}")
    audiences = tuple(a.strip() for a in env.get("DM_OIDC_AUDIENCE", "").split(",") if a.strip())
    if not audiences:
        raise ConfigError("DM_OIDC_AUDIENCE: required with DM_AUTH=oidc")
    invoker = _strip_principal(env.get("DM_INVOKER_SERVICE_ACCOUNT", "").strip()).lower()
    if not invoker:
        raise ConfigError("DM_INVOKER_SERVICE_ACCOUNT: required with DM_AUTH=oidc")
    push = _strip_principal(env.get("DM_PUSH_SERVICE_ACCOUNT", "").strip()).lower()
    if not push:
        raise ConfigError(
            "DM_PUSH_SERVICE_ACCOUNT: required with DM_AUTH=oidc "
            "(the identity of the Pub/Sub push to dm_notify)"
        )
    return AuthConfig(AUTH_OIDC, audiences, writers, readers, invoker, push)


def check_tasks_identity(auth: AuthConfig, tasks_sa: str, tasks_url: str) -> None:
    """With ``DM_AUTH=oidc``, the tasks dm creates must carry a token dm_tasks accepts.

    Cloud Tasks signs each task's token as ``DM_TASKS_SERVICE_ACCOUNT`` for the
    audience ``DM_TASKS_URL``; dm_tasks accepts only ``DM_INVOKER_SERVICE_ACCOUNT``
    and the audiences of ``DM_OIDC_AUDIENCE``. A mismatch would refuse every
    task, so the function refuses to start instead.
    """
    if auth.mode != AUTH_OIDC:
        return
    sa = _strip_principal(tasks_sa.strip()).lower()
    if not sa:
        raise ConfigError(
            "DM_TASKS_SERVICE_ACCOUNT: required with DM_AUTH=oidc (Cloud Tasks must sign "
            "its calls to dm_tasks as DM_INVOKER_SERVICE_ACCOUNT)"
        )
    if sa != auth.invoker:
        raise ConfigError(
            f"DM_TASKS_SERVICE_ACCOUNT ({sa}) must be DM_INVOKER_SERVICE_ACCOUNT "
            f"({auth.invoker}): dm_tasks accepts only the invoker's tokens"
        )
    if tasks_url.rstrip("/") not in {a.rstrip("/") for a in auth.audiences}:
        raise ConfigError(
            f"DM_OIDC_AUDIENCE must include DM_TASKS_URL ({tasks_url}): "
            "the audience of the tasks' tokens"
        )


def _strip_principal(p: str) -> str:
    for prefix in ("user:", "serviceAccount:"):
        if p.startswith(prefix):
            return p[len(prefix) :]
    return p


def _principals(text: str) -> frozenset[str]:
    return frozenset(_strip_principal(p.strip()).lower() for p in text.split(",") if p.strip())


def load_config(value: str) -> dict[str, Any]:
    """``DM_CONFIG``: inline JSON (starts with ``{``) or a JSON/YAML file path."""
    from dmcore.runtime.files import BadFile, load_document

    text = value.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"DM_CONFIG: not valid JSON: {e}") from None
    else:
        try:
            doc = load_document(pathlib.Path(text))
        except BadFile as e:
            raise ConfigError(f"DM_CONFIG: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError("DM_CONFIG: expected an object with 'distributor_configs'")
    return doc


def engine_settings(env: Mapping[str, str], **given: Any) -> Settings:
    """Engine settings from ``given`` and the environment (``DM_RUN_RETRY_WINDOW_S``)."""
    settings = Settings(**given)
    raw = env.get("DM_RUN_RETRY_WINDOW_S", "").strip()
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ConfigError(f"DM_RUN_RETRY_WINDOW_S: expected seconds > 0, got {raw!r}")
        settings.run_retry_window_us = int(seconds * 1_000_000)
    return settings


def load_secret(env: Mapping[str, str]) -> bytes:
    """``DM_NOTIFY_SECRET`` or the file ``DM_NOTIFY_SECRET_FILE``; empty if neither."""
    value = env.get("DM_NOTIFY_SECRET", "")
    if value:
        return value.encode()
    path = env.get("DM_NOTIFY_SECRET_FILE", "")
    if path:
        try:
            data = pathlib.Path(path).read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"DM_NOTIFY_SECRET_FILE: cannot read {path}: {e.strerror}") from None
        if not data:
            raise ConfigError(f"DM_NOTIFY_SECRET_FILE: {path} is empty")
        return data
    return b""


def _embedded(env: Mapping[str, str]) -> Backend:
    auth = auth_from_env(env, default=AUTH_NONE)
    home = env.get("DM_HOME", "").strip() or ".dm"
    config = load_config(env["DM_CONFIG"]) if env.get("DM_CONFIG", "").strip() else None
    try:
        registry = home_registry(home, config)
    except InvalidArgument as e:
        raise ConfigError(f"DM_CONFIG: {e.message}") from None
    settings = engine_settings(env, notify_secret=load_secret(env))
    if env.get("DM_NOTIFY_TOPIC", "").strip():
        settings.notify_topic = env["DM_NOTIFY_TOPIC"].strip()
    emb = Embedded(home, registry, settings=settings, store=store_from_env(env))
    return Backend(emb.engine, emb.service, auth, "embedded", emb, [emb.close], emb.check_layout)


def store_from_env(env: Mapping[str, str]) -> Store | None:
    """``DM_STORE``: the store of an embedded home, None for the home's own SQLite file."""
    kind = env.get("DM_STORE", "").strip().lower() or "sqlite"
    if kind == "sqlite":
        return None
    if kind != "firestore":
        raise ConfigError(f"DM_STORE: expected 'sqlite' or 'firestore', got {kind!r}")
    project = env.get("GOOGLE_CLOUD_PROJECT", "").strip()
    if not project:
        raise ConfigError("GOOGLE_CLOUD_PROJECT: required with DM_STORE=firestore")
    return _firestore_store(env, project)


def _firestore_store(env: Mapping[str, str], project: str) -> Store:
    # Imported by name, lazily: the Google client libraries load only when
    # used, and only inside their adapters.
    firestore = importlib.import_module("dmcore.store.firestore")
    store: Store = firestore.FirestoreStore(
        project=project, database=env.get("DM_FIRESTORE_DATABASE", "").strip() or "(default)"
    )
    return store


DEFAULT_DISPATCH_DEADLINE_S = 600


def _queues_var(env: Mapping[str, str]) -> str:
    return "DM_TASKS_QUEUES" if env.get("DM_TASKS_QUEUES", "").strip() else "DM_TASKS_QUEUE"


def tasks_queues(env: Mapping[str, str]) -> list[str]:
    """The Cloud Tasks queue paths: ``DM_TASKS_QUEUE``, or the list ``DM_TASKS_QUEUES``."""
    one = env.get("DM_TASKS_QUEUE", "").strip()
    many = [q.strip() for q in env.get("DM_TASKS_QUEUES", "").split(",") if q.strip()]
    if one and many:
        raise ConfigError("DM_TASKS_QUEUE and DM_TASKS_QUEUES: set one of them, not both")
    if not one and not many:
        raise ConfigError("DM_TASKS_QUEUE (or DM_TASKS_QUEUES): required with DM_BACKEND=gcp")
    if len(set(many)) != len(many):
        raise ConfigError("DM_TASKS_QUEUES: a queue is listed twice")
    return many or [one]


def dispatch_deadline(env: Mapping[str, str]) -> int:
    """``DM_TASKS_DISPATCH_DEADLINE`` in seconds (Cloud Tasks' bounds: the adapter checks)."""
    raw = env.get("DM_TASKS_DISPATCH_DEADLINE", "").strip()
    if not raw:
        return DEFAULT_DISPATCH_DEADLINE_S
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"DM_TASKS_DISPATCH_DEADLINE: expected seconds, got {raw!r}") from None


def _gcp(env: Mapping[str, str]) -> Backend:
    auth = auth_from_env(env, default=AUTH_OIDC)

    def need(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise ConfigError(f"{name}: required with DM_BACKEND=gcp")
        return value

    project = need("GOOGLE_CLOUD_PROJECT")
    queue_paths = tasks_queues(env)
    deadline_s = dispatch_deadline(env)
    tasks_url = need("DM_TASKS_URL")
    topic = need("DM_NOTIFY_TOPIC")
    secret = load_secret(env)
    if not secret:
        raise ConfigError(
            "DM_NOTIFY_SECRET or DM_NOTIFY_SECRET_FILE: required with DM_BACKEND=gcp "
            "(mount the Secret Manager secret)"
        )
    config = load_config(env["DM_CONFIG"]) if env.get("DM_CONFIG", "").strip() else DEFAULT_CONFIG
    try:
        registry = build_registry(config, dm_host=env.get("DM_HOST", ""))
    except InvalidArgument as e:
        raise ConfigError(f"DM_CONFIG: {e.message}") from None

    if not tasks_url.startswith(("https://", "http://")):
        raise ConfigError(f"DM_TASKS_URL: expected an http(s) URL, got {tasks_url!r}")
    tasks_sa = env.get("DM_TASKS_SERVICE_ACCOUNT", "").strip()
    check_tasks_identity(auth, tasks_sa, tasks_url)

    # Imported by name, lazily, as in _firestore_store.
    cloudtasks = importlib.import_module("dmcore.queue.cloudtasks")
    pubsub = importlib.import_module("dmcore.notify.pubsub")
    low, high = cloudtasks.MIN_DISPATCH_DEADLINE_S, cloudtasks.MAX_DISPATCH_DEADLINE_S
    if not low <= deadline_s <= high:
        raise ConfigError(f"DM_TASKS_DISPATCH_DEADLINE: must be {low}..{high} s, got {deadline_s}")
    try:
        queue = cloudtasks.CloudTasksQueue.from_queue_path(
            queue_paths,
            url=tasks_url,
            dispatch_deadline_s=deadline_s,
            service_account_email=_strip_principal(tasks_sa) or None,
            clock=wall_clock_us,
            emulator_host=env.get("DM_TASKS_EMULATOR_HOST", "").strip() or None,
        )
    except ValueError as e:
        raise ConfigError(f"{_queues_var(env)}: {e}") from None
    try:
        publisher = pubsub.PubSubPublisher(topic)
    except ValueError as e:
        queue.close()
        raise ConfigError(f"DM_NOTIFY_TOPIC: {e}") from None
    store = _firestore_store(env, project)
    database = env.get("DM_FIRESTORE_DATABASE", "").strip() or "(default)"
    settings = engine_settings(env, notify_topic=topic, notify_secret=secret)
    check_layout = functools.partial(
        layout.check_settings,
        store,
        f"Firestore database {database!r} of project {project!r}",
        "deploy to another database, DM_FIRESTORE_DATABASE, or delete its documents",
        settings,
    )
    engine = Engine(store, queue, registry, clock=wall_clock_us, rand=os.urandom, settings=settings)

    def publish(data: bytes, attrs: dict[str, str]) -> None:
        publisher.publish(data, attrs)

    engine.publish = publish
    closers = [x.close for x in (publisher, queue, store) if callable(getattr(x, "close", None))]
    return Backend(
        engine, serve_in_process(Service(engine)), auth, "gcp", None, closers, check_layout
    )
