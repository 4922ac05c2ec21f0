"""local: runs a quest's command as a subprocess on this machine (embedded mode).

Config (``config.proto``): ``{"local": {"log_dir": ..., "max_jobs": N}}``;
logs and state files go to ``<DM home>/logs`` by default; at most
``max_jobs`` commands (default: the CPU count) run at once, the others wait
their turn (their supervisor holds no slot yet: ``supervise.py``). Quest distributor parameters:
``{"command": [argv...], "env": {...}, "cwd": "...", "timeout": "600s"}``.

How an execution runs:

* ``run`` claims a record ``local_tasks/<quest>.<attempt>.<execution>`` in
  dm's store (the token is that id, so ``run`` is idempotent per
  execution), writes the state file (the ``state`` of the previous
  execution's result, or ``{}``), and starts ``python -m
  distributors.local.supervise`` detached in its own session, then waits
  (tens of milliseconds) until it has started the command, or queued it
  when ``max_jobs`` commands run already. A command that
  cannot start (not found, not executable) or a missing ``cwd`` is a
  non-transient error: the execution is REJECTED.
* The command gets dm's environment + ``env`` + the variables of
  :mod:`dmcore.job` (``DM_EXECUTION_AUTH``, ``DM_HOME``, ``DM_STATE_FILE``,
  ``DM_QUEST_ID``, ``DM_QUEST_PARAMETERS`` or, over 64 KiB,
  ``DM_QUEST_PARAMETERS_FILE``, ``DM_WORKDIR``); stdout and stderr go to
  ``<log_dir>/<token>.log`` (``info_url``).
* The supervisor (``supervise.py``) enforces ``timeout``, records how the
  command ended and notifies dm. The execution's result is then:
  exit 0 -> ``{"exit_code": 0, "state": <final state file>}`` (handed to the
  next execution, e.g. after a halt for dependencies), or FAILED "the command
  exited 0 without reporting a result (call Job.finish)" when it neither
  finished nor halted; exit N -> FAILED
  "exit code N"; killed by a signal -> CRASHED; timeout -> TIMED_OUT;
  ``cancel`` -> CANCELLED; supervisor gone while the record says running ->
  CRASHED "supervisor died"; unknown token -> MISSING.

POSIX only (sessions, process groups, ``flock``). The implementation lives in
:mod:`distributors.local.distributor`, imported by :func:`register`, so that
the supervisor starts without importing dm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmcore.distributor import Registry


def register(registry: Registry) -> None:
    """Entry point (group ``dm.distributors``): the ``local`` kind (implementation
    imported on first use: :meth:`~dmcore.distributor.Registry.register_deferred`)."""
    from distributors.local import config_pb2

    registry.register_deferred(
        "local",
        config_pb2.Config,
        "distributors.local.distributor",
        factory="LocalDistributor",
    )
