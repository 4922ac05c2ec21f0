"""The Cloud Functions entry points: the ``main.py`` at the root of the bundle.

``make bundle`` copies this file to the root of ``build/functions.zip``
beside the ``dmcore``, ``distributors`` and ``functions`` packages (the shape
the Google Python buildpack deploys); locally functions-framework loads it in
place (``--source functions/main.py``). Only re-exports; each function lives
in its own module. On Cloud Run
(``K_SERVICE`` set) the backend is built at import, so a misconfigured
deployment fails to start instead of failing every request. Elsewhere, on
the embedded backend, loading refuses unless something runs the embedded
queue (``dm serve`` does; a bare functions-framework would accept work and
never run it: the error points to ``dm serve`` and ``dm dev``).
"""

from __future__ import annotations

import os

from dmcore import server
from functions.dm_api import dm_api
from functions.dm_notify import dm_notify
from functions.dm_sweep import dm_sweep
from functions.dm_tasks import dm_tasks

__all__ = ["dm_api", "dm_notify", "dm_sweep", "dm_tasks"]

if os.environ.get("K_SERVICE"):
    server.start()
else:
    server.check_standalone(os.environ)
