"""swarming_v1: each execution is one Swarming task (spec §6, DM's own remote distributor).

Config (``config.proto``)::

    {"swarming_v1": {"swarming": {"url": "https://chromium-swarm.appspot.com"},
                     "isolate": {"url": "https://isolateserver.appspot.com",
                                 "expiration": "86400s"}}}

Quest distributor parameters (``Parameters``): ``scheduling`` (priority,
dimensions, snapshot_dimensions, io_timeout), ``meta.name_prefix``, ``job``
(``inputs``: cipd / isolated / cas, at least one; ``command``, required;
``env``). Checked as DM checked them (field-named errors).

``run`` creates the task with ``POST {swarming}/_ah/api/swarming/v1/tasks/new``:

* name ``"<name_prefix> / <quest>|<attempt>|<execution>"``, priority,
  ``expiration_secs`` = the quest's start timeout (Swarming refuses 0: then
  the config's ``default_expiration``), ``execution_timeout_secs`` = run
  timeout (none: Swarming's longest), ``grace_period_secs`` = stop timeout,
  ``io_timeout_secs``; each brought within what Swarming accepts (30 s..7
  days; grace at most 1 h): dm's own timers, the stricter, still apply;
* the command **is sent** (W-15 fixed), with ``env`` plus ``DM_API_URL``,
  ``DM_QUEST_ID`` and ``DM_QUEST_PARAMETERS`` (when at most 1 KiB, Swarming's
  limit for an env value; else the task reads them through dm's API), so the task can use
  ``dmcore.job.Job.from_env()``; the execution's auth travels in
  ``secret_bytes`` (protobuf JSON of Execution.Auth, base64), which the task
  reads from ``LUCI_CONTEXT`` (``Job.from_env`` does);
* inputs: CIPD packages (the previous execution's pins when there is one),
  one isolated input as ``inputs_ref``, or a CAS tree as ``cas_input_root``;
  dimensions, overlaid with the previous execution's snapshot dimensions;
* ``pubsub_topic`` + ``pubsub_auth_token`` from dm and ``pubsub_userdata`` =
  the execution ID: Swarming publishes ``{"task_id", "userdata"}`` to dm's
  topic when the task ends; ``handle_notification`` then reads the result;
* tags ``requestor:DM``, ``requestor:<dm host>``, ``requestor:swarming_v1``,
  ``quest:``, ``attempt:``, ``execution:``;
* ``request_uuid`` derived from the config and the execution: Swarming
  returns the same task for a repeated request, so a retried ``run`` does not
  start a second task.

``get_status`` maps ``task/{id}/result`` by spec §6's table (PENDING/RUNNING
-> running; COMPLETED -> ``Result{exit_code, cipd_pins,
snapshot_dimensions}``, a non-zero exit code included, or CRASHED on an
internal failure; BOT_DIED -> CRASHED; CANCELED and KILLED (what ``cancel``
makes of a running task) -> CANCELLED; EXPIRED, and NO_RESOURCE (no bot has
the dimensions: such a task used to stay pending until it expired) ->
EXPIRED; TIMED_OUT; anything else -> RESULT_MALFORMED; HTTP 404 -> MISSING).
``info_url`` = ``<swarming>/user/task/<id>``. ``cancel`` =
``task/{id}/cancel`` with ``kill_running``.

Errors: an outage (5xx, 429, no answer, a timeout, dm's credentials not
refreshed for a transport error) is transient (the original REJECTED
executions on an outage); 400/401/403 are final. Each call has a 10 s
deadline and up to 3 attempts. ``validate`` also refuses, by field, what
Swarming would refuse (env keys and values, the number of arguments, an I/O
timeout under 30 s), so a quest fails when it is made, not at ``run``.

The v1 API is the one DM used (``/_ah/api/swarming/v1/``). Current Swarming
servers (luci-go's Go server) serve only a couple of legacy v1 bot calls and
take tasks through the v2 pRPC API (``swarming.v2.Tasks``), which this
distributor does not speak: against them ``tasks/new`` answers 404 and the
execution is REJECTED.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmcore.distributor import Registry


def register(registry: Registry) -> None:
    """Entry point (group ``dm.distributors``): the ``swarming_v1`` kind (implementation
    imported on first use: :meth:`~dmcore.distributor.Registry.register_deferred`)."""
    from distributors.swarming_v1 import config_pb2

    registry.register_deferred(
        "swarming_v1",
        config_pb2.Config,
        "distributors.swarming_v1.distributor",
        factory="SwarmingV1",
        check="check_config",
    )
