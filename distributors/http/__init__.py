"""http: each execution is one named Cloud Task POSTing a work order to a worker URL.

Config (``config.proto``)::

    {"http": {"url": "https://worker-xyz.a.run.app",
              "service_account_email": "dm-worker-invoker@P.iam.gserviceaccount.com",
              "queue": "projects/P/locations/L/queues/dm-http", "max_attempts": 3}}

How an execution runs:

* ``run`` creates the Cloud Task ``dm-<sha256(config, execution)>`` on the
  config's queue. Its body is a :class:`dmcore.remote.WorkOrder` (the
  execution's auth, dm_api's URL, the quest's parameters, the previous
  execution's state, where to report, ``max_attempts``); Cloud Tasks POSTs it
  to the worker with an OIDC token for the worker's audience. The name makes
  ``run`` idempotent: a second ``run`` of the execution meets ``AlreadyExists``
  and returns the same token. Parameters and state too large for a task are
  left out; the worker reads them through dm's API.
* The worker (:func:`dmcore.job.worker`) activates, runs the job, and
  *reports* how it ended with a notification carrying the execution's
  ``auth_token``, to dm's Pub/Sub topic (or ``report_url``): the state when
  the execution stops (FinishAttempt or a halt for dependencies), FAILED
  "worker returned without finishing" when the function returned without
  stopping, CRASHED when it raised on the last allowed delivery. A raise
  before that answers 500, and Cloud Tasks delivers the task again; the next
  delivery activates with the same (derived) token and carries on. dm staying
  unavailable past the job's retries (``DM_API_RETRY_BUDGET_S``) answers 503,
  delivered again and not counted as the worker's crash; on the last allowed
  delivery the worker reports CRASHED "dm unavailable ..." instead: dm's
  trouble is no failure of the job's, and CRASHED is retried under
  ``meta.retry.crashed`` (but "stopped", with the state, when a ``finish`` or
  ``depend`` got no word from dm at all: dm may have stopped the execution, and
  CRASHED would throw its result away). The worker counts deliveries by Cloud Tasks'
  ``X-CloudTasks-TaskRetryCount`` (every earlier attempt, 5xx answers
  included, as the queue's ``max_attempts`` counts them; not
  ``-TaskExecutionCount``, which leaves out 5xx answers).

Why the worker reports (and dm does not read the worker's answer): Cloud
Tasks keeps the answer to itself (a task that got a 2xx is simply gone, as is
one that used up its attempts), so dm cannot learn from the queue *how* a
task ended, nor the job's state. The worker knows both, and reports through
the road every distributor uses (Pub/Sub, authenticated by the HMAC token).
What the worker cannot report (it was killed, it timed out on every
delivery), or a worker that does not report at all (any HTTPS endpoint), dm
finds by polling ``get_status``: the task still exists -> still running;
gone with no report for :data:`REPORT_GRACE` -> a normal end without state,
which dm makes FINISHED if the job stopped (FinishAttempt, or a halt) and
FAILED ("distributor finished execution while it was in the RUNNING state.")
if it had not: a 2xx without FinishAttempt fails, whatever the worker (and so
does a last delivery whose report could not be delivered). Before
that, an optional ``status_url`` is asked (a worker that keeps its own
records).

Errors: Cloud Tasks' unavailability, deadlines, quota and internal errors are
transient; permission errors, a missing queue or a malformed request are
final (``run``: REJECTED). ``cancel`` deletes the task (gone already is fine)
and POSTs the optional ``cancel_url``. ``info_url`` is the queue's page in
the Cloud Console (no secret in it: tokens travel only in task bodies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmcore.distributor import Registry


def register(registry: Registry) -> None:
    """Entry point (group ``dm.distributors``): the ``http`` kind (implementation
    imported on first use: :meth:`~dmcore.distributor.Registry.register_deferred`)."""
    from distributors.http import config_pb2

    registry.register_deferred(
        "http",
        config_pb2.Config,
        "distributors.http.distributor",
        factory="HttpDistributor",
        check="check_config",
    )
