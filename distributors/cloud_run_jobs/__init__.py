"""cloud_run_jobs: one Cloud Run Job execution per dm execution.

Config (``config.proto``)::

    {"cloud_run_jobs": {"jobs": ["projects/P/locations/L/jobs/render"],
                        "max_task_count": 1, "max_timeout": "3600s"}}

Quest distributor parameters: ``{"job": "render", "args": [...], "task_count":
1, "timeout": "600s"}`` (each optional; limits from the config).

How an execution runs:

* ``run`` starts an execution of the job through ``Jobs.RunJob`` of the
  Cloud Run Admin API v2 (the official ``google-cloud-run`` client) with
  overrides: the container's env carries the variables of
  :mod:`dmcore.job` for a remote job (``DM_API_URL``, ``DM_EXECUTION_AUTH``,
  ``DM_QUEST_ID``, ``DM_QUEST_PARAMETERS`` unless over
  :data:`ENV_VALUE_LIMIT` — then the job reads them through the API —,
  ``DM_PREVIOUS_STATE``, where to report), args, task count and timeout.
  The job is a container whose program uses ``dmcore.job.Job.from_env()``.
* Idempotency: RunJob has no request id, and an execution's name is chosen
  by Cloud Run, so a retried ``run`` could start a second execution. dm keeps
  a record per dm execution in its store (``cloud_run_jobs_runs/...``):
  claimed before RunJob, the Cloud Run execution's name recorded after. A
  ``run`` that finds the name returns it; one that finds a fresh claim
  without a name (another ``run`` is calling RunJob) is told to retry later
  (transient); one that finds a stale claim (a ``run`` died between RunJob
  and recording, or RunJob's answer was lost) lists the job's executions and
  adopts the one whose env carries ``DM_EXECUTION_ID`` = this execution,
  before it would start another. A RunJob that failed for sure (permission,
  quota, bad request) drops the claim. (Adoption reads the env overrides in
  the listed execution's ``template``, the template its tasks run. Were they
  not shown there, nothing would be adopted and a second execution started.
  Only one of the two can activate — dm swaps the activation token for the
  first job's own — and the other fails at activation; when that is the one
  dm follows, the execution ends FAILED and the quest's ``retry.failed``
  decides. Never two jobs running one execution.)
* Completion by polling (``poll_interval``, default 30 s, while the execution
  runs; two intervals after it stopped, then the STOPPING re-polls; the 30 s
  rule of :mod:`dmcore.distributor` applies to final errors): the execution's
  ``Completed`` condition decides — succeeded -> the result ``{"state": ...,
  "execution": ...}``; failed with a non-zero exit code -> FAILED; cancelled
  -> CANCELLED; deleted, or the execution (or its job) gone -> MISSING; any
  other failure (a task timeout, an internal error) -> CRASHED. The job's
  report (its state, sent by ``Job.finish`` / a halting ``depend`` through
  dm's Pub/Sub topic: the optional route to ``dm_notify``) is recorded by
  ``handle_notification``, which then asks Cloud Run at once; a succeeded
  execution without a report waits :data:`REPORT_GRACE` for it.
* One job activates per execution (the activation token is swapped for the
  job's own): with several tasks, one of them (``CLOUD_RUN_TASK_INDEX`` 0)
  should use ``Job``; and Cloud Run's own task retries cannot activate again,
  so jobs run with ``max_retries: 0`` and dm retries executions instead.
* ``cancel``: ``Executions.CancelExecution`` (gone or finished already is
  fine). ``info_url``: the execution's page in the Cloud Console.

Errors: unavailability, deadlines, quota (RESOURCE_EXHAUSTED) and internal
errors are transient; permission errors, a bad request or a missing job are
final (``run``: REJECTED).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmcore.distributor import Registry


def register(registry: Registry) -> None:
    """Entry point (group ``dm.distributors``): the ``cloud_run_jobs`` kind (implementation
    imported on first use: :meth:`~dmcore.distributor.Registry.register_deferred`)."""
    from distributors.cloud_run_jobs import config_pb2

    registry.register_deferred(
        "cloud_run_jobs",
        config_pb2.Config,
        "distributors.cloud_run_jobs.distributor",
        factory="CloudRunJobs",
        check="check_config",
    )
