"""The distributor contract: how dm runs executions on pluggable back ends.

A *distributor* runs one execution of a quest somewhere (a local process, a
simulated job, a remote task service) and tells dm when it has ended. dm
talks to it only through :class:`D`, built per use by a :class:`Factory` from
a :class:`Config`. Implementations live in the top-level ``distributors``
package (``fake``, ``jobsim``, ``local``, ...) and are found through the
:class:`Registry`, filled from ``importlib.metadata`` entry points in the
group ``dm.distributors`` and from registration functions handed to
:func:`provide` (a deployed bundle is no installed package, so it has no
entry points: ``functions/`` provides the built-in ones that way); dm itself
imports none of them by name.

Errors: raise :class:`TransientError` for a failure that may pass (dm tries
again later, with backoff); any other exception is final (from ``run`` the
execution becomes REJECTED).

The retry and timeout rules dm applies around these calls are the constants
and helpers at the end of this module.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import datetime
import importlib
import importlib.metadata
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from google.protobuf import any_pb2, json_format, message

from dmcore.errors import InvalidArgument
from dmcore.ids import ExecutionID
from dmcore.proto import config_pb2, dm_pb2
from dmcore.store.base import Store

log = logging.getLogger("dm.distributor")

M = TypeVar("M", bound=message.Message)

ENTRY_POINT_GROUP = "dm.distributors"

Register = Callable[["Registry"], None]
"""A distributor package's ``register(registry)``."""

_provided: list[Register] = []


def provide(register: Register) -> None:
    """Have :meth:`Registry.load_installed` call ``register`` too (once, however often given).

    For code that knows its distributors by name but is not installed with
    entry points: the Cloud Functions bundle (``functions/``).
    """
    if register not in _provided:
        _provided.append(register)


class TransientError(Exception):
    """A distributor failure that may pass; dm retries the call later."""


class UnknownConfig(InvalidArgument):
    """No distributor config of that name (or a broken alias)."""


@dataclasses.dataclass(frozen=True)
class Notification:
    """A message from a distributor about one execution (Pub/Sub or task queue)."""

    execution_id: ExecutionID
    data: bytes = b""
    attrs: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Started:
    """What :meth:`D.run` returns.

    ``token`` identifies the distributor's task (opaque to dm). A positive
    ``poll_timeout`` replaces the quest's stop timeout: dm polls
    :meth:`D.get_status` that long after the execution stops. A positive
    ``poll_interval`` makes dm also poll :meth:`D.get_status` that often while
    the execution is scheduled or running, for distributors whose
    notification can be lost (a supervisor process that dies, a lost message).
    """

    token: str
    poll_timeout: datetime.timedelta = datetime.timedelta(0)
    poll_interval: datetime.timedelta = datetime.timedelta(0)


@dataclasses.dataclass(frozen=True)
class TaskRequest:
    """A task-queue task delivered back to its distributor (see Config.enqueue_task)."""

    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Config:
    """What a distributor is built from.

    ``name`` is the config name the quest asked for (possibly an alias);
    ``kind`` the registered implementation; ``content`` its config message
    (shared between builds of the same config: read it, never change it).
    ``prepare_topic`` and ``enqueue_task`` are wired by dm to its notification
    and task-queue back ends; ``snapshot`` is what this config was built from
    (a task queued through ``enqueue_task`` carries it back to the same config).
    """

    name: str
    kind: str
    version: str
    content: message.Message
    dm_host: str = ""
    snapshot: Snapshot | None = None
    _prepare_topic: Callable[[str, ExecutionID], tuple[str, str]] | None = None
    _enqueue_task: Callable[[Snapshot, bytes, float, str | None], None] | None = None
    _client: Callable[[], Any] | None = None
    _store: Store | None = None

    def store(self) -> Store:
        """dm's document store, for a distributor's own records.

        Use collections named after the distributor (``jobsim_tasks/...``);
        dm's collections are not yours to touch.
        """
        if self._store is None:
            raise TransientError("no store available to distributors in this process")
        return self._store

    def client(self) -> Any:
        """A ``dmcore.client.Client`` for jobs this distributor runs in-process."""
        if self._client is None:
            raise TransientError("no dm client available in this process")
        return self._client()

    def prepare_topic(self, eid: ExecutionID) -> tuple[str, str]:
        """The Pub/Sub topic to publish notifications for ``eid`` to, and the
        ``auth_token`` attribute each message must carry."""
        if self._prepare_topic is None:
            raise TransientError("no notification back end configured")
        return self._prepare_topic(self.name, eid)

    def enqueue_task(self, body: bytes, *, delay_s: float = 0.0, name: str | None = None) -> None:
        """Queue ``body`` for this distributor's :meth:`D.handle_task_queue_task`.

        ``name`` (any text, unique within this config) makes queueing idempotent:
        a task of that name already queued, or run within the queue's dedupe
        window (about an hour), is not queued again. So a retried ``run`` can
        queue its task again without a record of whether it did.

        The task is handed back to a distributor built from this very config
        (the execution's snapshot, W-11), even if the named config has since
        been changed or removed.
        """
        if self._enqueue_task is None:
            raise TransientError("no task queue configured")
        snap = self.snapshot or Snapshot(
            self.name,
            self.kind,
            self.version,
            json_format.MessageToDict(self.content, preserving_proto_field_name=True),
        )
        self._enqueue_task(snap, body, delay_s, name)


class D(abc.ABC):
    """One distributor, built for one config (and usually one request)."""

    @abc.abstractmethod
    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> Started:
        """Start a task for execution ``auth.id``.

        The task must get ``auth`` (execution ID + activation token) and the
        dm address, and should use ``prev_result`` (the distributor result of
        the attempt's last execution that ended normally). Calling it again
        for the same execution should return the same token. Never called
        inside a store transaction.
        """

    @abc.abstractmethod
    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        """Cancel the task; cancelling a finished or cancelled task is fine."""

    @abc.abstractmethod
    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        """None while the task runs; a Result with data (normal end) or abnormal_finish."""

    @abc.abstractmethod
    def info_url(self, token: str) -> str:
        """A URL a person can open to see the task (computed locally)."""

    @abc.abstractmethod
    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: Notification
    ) -> dm_pb2.Result | None:
        """Interpret a notification; None means "ignore it"."""

    @abc.abstractmethod
    def handle_task_queue_task(self, request: TaskRequest) -> list[Notification]:
        """Handle a task this distributor queued; returned notifications are
        then processed like any other."""

    @abc.abstractmethod
    def validate(self, distributor_parameters: str) -> None:
        """Check a quest's (already normalised) distributor parameters.

        Raise ValueError (or InvalidArgument) with a message naming the problem.
        """


Factory = Callable[[Config], D]


def parse_fields(raw: Mapping[str, Any], msg: M) -> M:
    """Parse ``raw`` (protobuf JSON of ``msg``'s type, as a dict) into ``msg``, field by
    field; a bad one is a ValueError naming it ("deadline: ...", "x: unknown field").

    For configs and distributor parameters written by hand: the error says which
    field is wrong and why, without protobuf's wording around it.
    """
    fields = {f.name: f for f in msg.DESCRIPTOR.fields}
    fields.update({f.json_name: f for f in msg.DESCRIPTOR.fields})
    for key in sorted(raw):
        if key not in fields:
            names = ", ".join(f.name for f in msg.DESCRIPTOR.fields) or "none"
            raise ValueError(f"{key}: unknown field (known: {names})")
    for key, value in sorted(raw.items()):
        f = fields[key]
        takes_object = (
            f.message_type is not None
            and f.message_type.full_name.split(".")[0] != "google"  # Duration etc. take text
            and not f.is_repeated
        )
        if takes_object and value is not None and not isinstance(value, Mapping):
            raise ValueError(f"{key}: must be an object, got {type(value).__name__} {value!r}")
        try:
            json_format.ParseDict({key: value}, msg)
        except json_format.ParseError as e:
            text = str(e).removeprefix(f"Failed to parse {key} field: ")
            raise ValueError(f"{key}: {text.split(' at ')[0].rstrip('.')}") from None
    return msg


@dataclasses.dataclass(frozen=True)
class Kind:
    """A registered distributor implementation."""

    name: str
    config_type: type[message.Message]
    factory: Factory
    check: Callable[[Any], None] | None = None
    """Checks a config message beyond its proto (ValueError naming the field)."""
    in_process: bool = False
    """Its calls return at once and reach nothing outside this process but dm's
    own store and queue (jobsim, the fake): dm may make them while it holds
    the store's write lock. Calls of any other kind (a process to start, a
    server to ask) pass :attr:`Registry.call_guard` first."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The config an execution was started with, stored on it (W-11)."""

    name: str
    kind: str
    version: str
    content: dict[str, Any]

    def to_doc(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its generic deep copy cost more than the step
        # that stores the snapshot (every ScheduleExecution, every distributor task).
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "content": copy.deepcopy(self.content),
        }

    @classmethod
    def from_doc(cls, d: Mapping[str, Any]) -> Snapshot:
        return cls(str(d["name"]), str(d["kind"]), str(d["version"]), dict(d["content"]))


def _type_url(t: type[message.Message]) -> str:
    return "type.googleapis.com/" + t.DESCRIPTOR.full_name


class Registry:
    """Distributor kinds (implementations) and the service's named configs.

    Kinds are registered by name (``register``) or found where they were
    installed (``load_installed``: :func:`provide`, then ``load_entry_points``). Configs
    come from a ``Config`` message or a JSON/YAML document (``set_config`` /
    ``config_from_dict``).
    """

    def __init__(self, *, dm_host: str = "") -> None:
        self.dm_host = dm_host
        self._kinds: dict[str, Kind] = {}
        self._by_type_url: dict[str, Kind] = {}
        self._configs: dict[str, config_pb2.Distributor] = {}
        # Parsing configs is a sizeable part of a short execution's cost, and both
        # are immutable: snapshots per config name (until set_config), parsed
        # config messages per snapshot content.
        self._snapshots: dict[str, Snapshot] = {}
        self._parsed: dict[tuple[str, str], message.Message] = {}
        self.version = ""
        self.prepare_topic: Callable[[str, ExecutionID], tuple[str, str]] | None = None
        self.enqueue_task: Callable[[Snapshot, bytes, float, str | None], None] | None = None
        self.client: Callable[[], Any] | None = None
        self.store: Store | None = None
        self.call_guard: Callable[[], None] | None = None
        """Called before each call of a distributor whose kind is not ``in_process``
        (``run``, ``cancel``, ``get_status``, ``handle_notification``,
        ``handle_task_queue_task``); it may raise to refuse the call. The embedded
        worker refuses them inside its batch, so that no other process waits
        for the store's write lock while a job starts or a server answers."""

    # -- kinds ---------------------------------------------------------------

    def register(
        self,
        name: str,
        config_type: type[message.Message],
        factory: Factory,
        check: Callable[[Any], None] | None = None,
        *,
        in_process: bool = False,
    ) -> None:
        """Register implementation ``name``, configured by ``config_type``.

        ``check(config)`` (optional) refuses a config its proto accepts but the
        distributor cannot use (a malformed URL, a missing field): it raises
        ValueError naming the field, and the config file is refused.
        ``in_process``: see :attr:`Kind.in_process`.
        """
        if name == "alias":
            raise ValueError("'alias' is reserved")
        kind = Kind(name, config_type, factory, check, in_process)
        self._kinds[name] = kind
        self._by_type_url[_type_url(config_type)] = kind

    def register_deferred(
        self,
        name: str,
        config_type: type[message.Message],
        module: str,
        *,
        factory: str,
        check: str = "",
    ) -> None:
        """:meth:`register` with the implementation imported on first use.

        ``factory`` (and ``check``, optional) are names in ``module``, imported
        when a config of kind ``name`` is checked or a distributor built. Some
        implementations pull client libraries that take most of a second to
        import; a process that loads the registry but uses none of them (a
        ``local`` job, its supervisor) should not pay for them.
        """

        def new(cfg: Config) -> D:
            made: D = getattr(importlib.import_module(module), factory)(cfg)
            return made

        def check_config(cfg: Any) -> None:
            getattr(importlib.import_module(module), check)(cfg)

        self.register(name, config_type, new, check_config if check else None)

    def load_entry_points(self) -> list[str]:
        """Call ``register(registry)`` of every installed ``dm.distributors`` entry point."""
        loaded = []
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            register: Register = ep.load()
            register(self)
            loaded.append(ep.name)
        return loaded

    def load_installed(self) -> list[str]:
        """Call every provided ``register`` (:func:`provide`), then every ``dm.distributors``
        entry point's, each once; returns their names (``module:function`` for provided ones).
        """
        done: list[Register] = []
        loaded: list[str] = []
        for register in _provided:
            register(self)
            done.append(register)
            loaded.append(f"{register.__module__}:{register.__qualname__}")
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            fn: Register = ep.load()
            if fn in done:
                continue
            fn(self)
            done.append(fn)
            loaded.append(ep.name)
        return loaded

    @property
    def kinds(self) -> Mapping[str, Kind]:
        return dict(self._kinds)

    # -- configs -------------------------------------------------------------

    def set_config(self, cfg: config_pb2.Config, version: str) -> None:
        """Replace the named configs (checked first: nothing changes on error)."""
        for name, dist in cfg.distributor_configs.items():
            self._check_entry(name, dist, cfg)
        self._configs = dict(cfg.distributor_configs)
        self.version = version
        self._snapshots.clear()

    def config_from_dict(self, data: Any) -> config_pb2.Config:
        """Parse a config document.

        Accepts ``{"distributor_configs": {NAME: ENTRY}}`` where ENTRY is
        ``{"alias": {"other_config": NAME}}``, ``{KIND: {...kind's config in
        protobuf JSON...}}`` for a registered kind, or the protobuf JSON form
        ``{"config": {"@type": ..., ...}}``.
        """
        if not isinstance(data, Mapping) or set(data) - {"distributor_configs"}:
            raise InvalidArgument("config: expected an object with only 'distributor_configs'")
        entries = data.get("distributor_configs") or {}
        if not isinstance(entries, Mapping):
            raise InvalidArgument("distributor_configs: must be an object")
        cfg = config_pb2.Config()
        for name, entry in entries.items():
            if not isinstance(name, str) or not name:
                raise InvalidArgument("distributor_configs: a config name must not be empty")
            where = f"distributor_configs.{name}"
            if not isinstance(entry, Mapping) or len(entry) != 1:
                raise InvalidArgument(f"{where}: must have exactly one key (alias or a kind)")
            ((key, body),) = entry.items()
            dist = cfg.distributor_configs[name]
            try:
                if key == "alias":
                    json_format.ParseDict(body, dist.alias)
                elif key == "config":
                    json_format.ParseDict(body, dist.config)
                elif key in self._kinds:
                    if body is not None and not isinstance(body, Mapping):
                        raise InvalidArgument(
                            f"{where}.{key}: must be an object of {key}'s fields, "
                            f"got {type(body).__name__} {body!r}"
                        )
                    msg = self._kinds[key].config_type()
                    try:
                        parse_fields(body or {}, msg)
                    except ValueError as e:
                        raise InvalidArgument(f"{where}.{key}: {e}") from None
                    dist.config.Pack(msg)
                else:
                    raise InvalidArgument(
                        f"{where}: unknown distributor kind {key!r} "
                        f"(known: {', '.join(sorted(self._kinds)) or 'none'})"
                    )
            except json_format.ParseError as e:
                raise InvalidArgument(f"{where}.{key}: {e}") from None
        for name, dist in cfg.distributor_configs.items():
            self._check_entry(name, dist, cfg)
        return cfg

    def _check_entry(self, name: str, dist: config_pb2.Distributor, cfg: config_pb2.Config) -> None:
        where = f"distributor_configs.{name}"
        which = dist.WhichOneof("distributor_type")
        if which is None:
            raise InvalidArgument(f"{where}: has no distributor type")
        if which == "alias":
            other = cfg.distributor_configs.get(dist.alias.other_config)
            if other is None:
                raise InvalidArgument(
                    f"{where}: alias to unknown config {dist.alias.other_config!r}"
                )
            if other.WhichOneof("distributor_type") == "alias":
                raise InvalidArgument(f"{where}: alias to an alias: too many levels of indirection")
            return
        kind = self._by_type_url.get(dist.config.type_url)
        if kind is None:
            raise InvalidArgument(f"{where}: no registered distributor for {dist.config.type_url}")
        if kind.check is not None:
            msg = kind.config_type()
            dist.config.Unpack(msg)
            try:
                kind.check(msg)
            except ValueError as e:
                raise InvalidArgument(f"{where}.{kind.name}: {e}") from None

    @property
    def config_names(self) -> list[str]:
        return sorted(self._configs)

    def snapshot(self, name: str) -> Snapshot:
        """Resolve ``name`` (one alias level) to the config to store on an execution."""
        snap = self._snapshots.get(name)
        if snap is None:
            snap = self._snapshots[name] = self._snapshot(name)
        return snap

    def _snapshot(self, name: str) -> Snapshot:
        dist = self._configs.get(name)
        if dist is None:
            raise UnknownConfig(f"unknown distributor config {name!r}")
        if dist.WhichOneof("distributor_type") == "alias":
            target = self._configs.get(dist.alias.other_config)
            if target is None or target.WhichOneof("distributor_type") != "config":
                raise UnknownConfig(f"distributor config {name!r}: broken alias")
            dist = target
        kind = self._by_type_url.get(dist.config.type_url)
        if kind is None:
            raise UnknownConfig(f"distributor config {name!r}: no registered implementation")
        msg = kind.config_type()
        dist.config.Unpack(msg)
        content = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        return Snapshot(name=name, kind=kind.name, version=self.version, content=content)

    def build(self, snap: Snapshot) -> tuple[D, Config]:
        """Build the distributor for a snapshot (what executions use all their life)."""
        kind = self._kinds.get(snap.kind)
        if kind is None:
            raise UnknownConfig(f"distributor kind {snap.kind!r} is not installed")
        key = (snap.kind, json.dumps(snap.content, sort_keys=True))
        msg = self._parsed.get(key)
        if msg is None:
            msg = kind.config_type()
            json_format.ParseDict(snap.content, msg)
            if len(self._parsed) > 1000:  # configs change rarely; never grow without bound
                self._parsed.clear()
            self._parsed[key] = msg
        cfg = Config(
            name=snap.name,
            kind=snap.kind,
            version=snap.version,
            content=msg,
            dm_host=self.dm_host,
            snapshot=snap,
            _prepare_topic=self.prepare_topic,
            _enqueue_task=self.enqueue_task,
            _client=self.client,
            _store=self.store,
        )
        d = kind.factory(cfg)
        if self.call_guard is not None and not kind.in_process:
            d = _Guarded(d, self.call_guard)
        return d, cfg

    def check_call(self, snap: Snapshot) -> None:
        """Pass :attr:`call_guard` now for a distributor of ``snap``'s kind, as a
        call would: for a step that writes before it calls (the refusal must come
        before the write, or the write stands against the step's own re-run)."""
        kind = self._kinds.get(snap.kind)
        if self.call_guard is not None and kind is not None and not kind.in_process:
            self.call_guard()

    def in_process(self, kind: str) -> bool:
        """Whether distributors of ``kind`` are :attr:`Kind.in_process` (False if unknown)."""
        found = self._kinds.get(kind)
        return found is not None and found.in_process

    def build_named(self, name: str) -> tuple[D, Config]:
        return self.build(self.snapshot(name))


class _Guarded(D):
    """A distributor whose calls pass :attr:`Registry.call_guard` first."""

    def __init__(self, d: D, guard: Callable[[], None]) -> None:
        self._d = d
        self._guard = guard

    def __getattr__(self, name: str) -> Any:  # the kind's own helpers (info, files, ...)
        return getattr(self._d, name)

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> Started:
        self._guard()
        return self._d.run(desc, auth, prev_result)

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        self._guard()
        self._d.cancel(desc, token)

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        self._guard()
        return self._d.get_status(desc, token)

    def info_url(self, token: str) -> str:
        return self._d.info_url(token)

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: Notification
    ) -> dm_pb2.Result | None:
        self._guard()
        return self._d.handle_notification(desc, notification)

    def handle_task_queue_task(self, request: TaskRequest) -> list[Notification]:
        self._guard()
        return self._d.handle_task_queue_task(request)

    def validate(self, distributor_parameters: str) -> None:
        self._d.validate(distributor_parameters)


def any_config(msg: message.Message) -> any_pb2.Any:
    """Pack a kind's config message for a ``Distributor.config`` entry."""
    a = any_pb2.Any()
    a.Pack(msg)
    return a


# -- retry and timeout rules --------------------------------------------------

RUN_RETRY_WINDOW = datetime.timedelta(hours=1)
"""How long transient ``run`` errors are retried, from the first try to run the
execution, before it is REJECTED: a distributor outage shorter than this costs
time, not the attempt (dm's default; engine setting ``run_retry_window_us``)."""

RUN_RETRY_CAP = datetime.timedelta(minutes=5)
"""The longest wait between two tries of a failing ``run`` (exponential backoff
from 1 s, capped so that an outage's end is noticed within this)."""

GET_STATUS_GRACE = datetime.timedelta(seconds=30)
"""A non-transient get_status error within this long after run is treated as
transient; later it means the task is MISSING."""

STOPPING_REPOLLS = 3
STOPPING_REPOLL_INTERVAL = datetime.timedelta(seconds=30)
"""After the stop timeout, get_status is polled once and then up to 3 more
times, 30 s apart, before the execution is TIMED_OUT."""

DEFAULT_STOP_HEDGE = datetime.timedelta(hours=12)
"""Stop timeout used when neither the quest nor the distributor set one (W-10)."""


def backoff(attempt: int, *, base_s: float = 1.0, cap_s: float = 300.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): exponential, capped."""
    return float(min(cap_s, base_s * 2 ** max(0, attempt - 1)))


def result_json(obj: Any) -> dm_pb2.JsonResult:
    """A JsonResult holding ``obj`` serialised (convenience for distributors)."""
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    return dm_pb2.JsonResult(object=text, size=len(text.encode()))
