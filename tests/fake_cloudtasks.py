"""TEST DOUBLE: the fake Cloud Tasks server of the tests, by its test-side names.

The implementation moved into the package as
:mod:`dmcore.queue.cloudtasks_standin` (``dm dev`` runs it in place of Cloud
Tasks); this module keeps the names tests use: ``FakeCloudTasksServer``,
``FakeTask``, ``Dispatch``.
"""

from __future__ import annotations

from dmcore.queue.cloudtasks_standin import CloudTasksStandIn as FakeCloudTasksServer
from dmcore.queue.cloudtasks_standin import Dispatch
from dmcore.queue.cloudtasks_standin import StandInTask as FakeTask

__all__ = ["Dispatch", "FakeCloudTasksServer", "FakeTask"]
