"""Code changes change identity: a hash of what a ``local`` quest runs, in its description.

A quest's ID is the hash of its description, and a finished result is reused
for the same ID. A ``local`` quest names a command, not the code it runs:
without this, editing ``transform.py`` would keep the quest ID and silently
reuse the result of the old code. So dm's tools (``dm run``'s run file,
:meth:`dmcore.job.Job.depend`) put ``fingerprint`` in the quest's
distributor parameters: a SHA-256 over the contents of every argument of
``command`` that names an existing file (relative to the quest's ``cwd``, or
the current directory) and of every file matched by its ``inputs`` globs.
Edit the script and the quest is a new one, run again.

``DM_NO_FINGERPRINT=1`` (``dm run --no-fingerprint``) leaves it out.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

ENV_NO_FINGERPRINT = "DM_NO_FINGERPRINT"
FIELD = "fingerprint"


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(ENV_NO_FINGERPRINT, "") in ("", "0")


def _files(params: Mapping[str, Any], base: pathlib.Path) -> dict[str, pathlib.Path]:
    """What the command runs and reads: the name it is hashed under -> the file."""
    cwd = base / str(params.get("cwd") or "")
    found: dict[str, pathlib.Path] = {}
    command = params.get("command")
    if isinstance(command, list):
        for arg in command:
            if isinstance(arg, str) and arg and "\0" not in arg:
                path = cwd / arg
                if path.is_file():
                    found[arg] = path
    inputs = params.get("inputs")
    if isinstance(inputs, list):
        for pattern in inputs:
            if isinstance(pattern, str) and pattern and not os.path.isabs(pattern):
                for path in sorted(cwd.glob(pattern)):
                    if path.is_file():
                        found[path.relative_to(cwd).as_posix()] = path
    return found


def of(params: Mapping[str, Any], base: pathlib.Path | None = None) -> str | None:
    """The fingerprint of a quest's distributor parameters, or None (no file named)."""
    files = _files(params, base or pathlib.Path.cwd())
    if not files:
        return None
    h = hashlib.sha256()
    for name in sorted(files):
        digest = hashlib.sha256(files[name].read_bytes()).hexdigest()
        h.update(f"{name}\0{digest}\0".encode())
    return h.hexdigest()[:32]


def add(desc: Mapping[str, Any], base: pathlib.Path | None = None) -> dict[str, Any]:
    """``desc`` (a quest description as JSON) with the fingerprint of what it runs.

    Only descriptions whose distributor parameters name a ``command`` (the
    ``local`` distributor's shape) are changed; others come back as they were.
    """
    out = dict(desc)
    raw = out.get("distributor_parameters")
    params = json.loads(raw) if isinstance(raw, str) and raw.strip() else raw
    if not isinstance(params, Mapping) or "command" not in params:
        return out
    params = {k: v for k, v in params.items() if k != FIELD}
    fp = of(params, base)
    if fp is not None:
        params[FIELD] = fp
    out["distributor_parameters"] = params
    return out
