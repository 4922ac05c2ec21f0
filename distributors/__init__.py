"""dm's distributors, one sub-package per kind; :data:`BUILTIN` names those shipped with dm.

Each sub-package exposes ``register(registry)``. :func:`register_builtin`
registers every built-in one: it is the project's single ``dm.distributors``
entry point (an installed dm finds them like any third-party distributor),
and ``functions/`` hands it to :func:`dmcore.distributor.provide`, because a
deployed bundle is not an installed package and has no entry points.

A new built-in distributor is one line in :data:`BUILTIN`; the bundle test
checks that every kind listed there resolves in a deployed bundle.
Third-party distributors keep their own entry points.

Standard library only at import: the ``local`` distributor's supervisor
(``python -m distributors.local.supervise``) imports this package first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmcore.distributor import Registry

BUILTIN: dict[str, str] = {
    "fake": "distributors.fake",
    "jobsim": "distributors.jobsim",
    "local": "distributors.local",
    "http": "distributors.http",
    "cloud_run_jobs": "distributors.cloud_run_jobs",
    "swarming_v1": "distributors.swarming_v1",
}
"""Distributor kind -> the sub-package whose ``register(registry)`` adds it."""


def register_builtin(registry: Registry) -> None:
    """Register every kind in :data:`BUILTIN` (each sub-package imported only now)."""
    for module in BUILTIN.values():
        importlib.import_module(module).register(registry)
