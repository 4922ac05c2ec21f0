"""The TaskQueue port: named, delayed, at-least-once tasks.

dm hands follow-up work (mutations, timers, distributor tasks) to a queue as
*named* tasks. A name that the queue has already seen is refused, which is how
a re-dispatched outbox record or a duplicated timer does not run twice in a
row (delivery is still at least once: handlers must be idempotent).

Adapters: ``local`` (persistent, SQLite, embedded mode) and ``cloudtasks``
(Google Cloud Tasks, HTTP tasks to the ``dm_tasks`` function).

A task has a *target* saying which handler runs it (``"mutation"``,
``"distributor/<config name>"``, ...), a JSON *payload* and a due time in
integer microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dmcore.store.base import Store, Transaction

TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}$")


class QueueError(Exception):
    """Base class of queue errors."""


class InvalidTask(QueueError, ValueError):
    """A task is malformed (bad name, payload not JSON, ...)."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of queued work."""

    name: str
    target: str
    payload: dict[str, Any]
    eta_us: int = 0
    """Due time, microseconds since the epoch; 0 = as soon as possible."""
    shard_key: str = ""
    """Which of several queues takes the task (Cloud Tasks with ``DM_TASKS_QUEUES``):
    e.g. the root record the step is about; "" = the name. Name dedup holds within
    one queue only, so a given name must always come with the same key."""

    @property
    def key(self) -> str:
        """The key the task is sharded by: ``shard_key``, else its name."""
        return self.shard_key or self.name

    def __post_init__(self) -> None:
        if not TASK_NAME_RE.match(self.name):
            raise InvalidTask(f"task name must match {TASK_NAME_RE.pattern}: {self.name!r}")
        if not self.target:
            raise InvalidTask("task target must not be empty")


class TaskQueue(abc.ABC):
    """Where dm puts named tasks. Implementations deliver each at least once."""

    @abc.abstractmethod
    def enqueue(self, task: Task) -> bool:
        """Queue ``task``. Returns False if a task of that name was already seen.

        A refused duplicate is not an error: the work is already queued (or
        done). Other failures raise and the caller retries later.
        """

    def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        """Queue several tasks; per task, what :meth:`enqueue` would return."""
        return [self.enqueue(t) for t in tasks]

    def commits_with(self, store: Store) -> bool:
        """Whether tasks queued while ``store`` is inside a batch commit with it.

        True only for a queue kept in the store itself (the embedded queue):
        then a batch of steps may hold back their commit, since their tasks wait
        with them. Otherwise a task could be handed out before the state it is
        about is committed, so the engine must not batch.
        """
        return False

    def enqueue_in(self, tx: Transaction, tasks: Sequence[Task]) -> bool:
        """Queue ``tasks`` as part of the commit of store transaction ``tx``, if possible.

        True: the tasks are queued exactly when ``tx`` commits (duplicate names
        refused as by :meth:`enqueue`), so the engine writes no outbox record
        for them. False (the default: a queue apart from the store, such as
        Cloud Tasks): nothing was done; the engine uses its outbox.
        """
        return False
