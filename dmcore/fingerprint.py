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

The same files give the same ID: each is hashed under the name it is given
by (the argument, or its path relative to ``cwd``; an absolute pattern's
matches by their absolute path), so a project moved elsewhere keeps its IDs;
and globs skip hidden folders and ``__pycache__`` unless the pattern names
them, so what runs writes (dm's home ``.dm``, compiled Python) changes nothing.
Files are read when the description is built (``dm run`` starting, the
``depend`` call): files a step writes do not belong in ``inputs``.

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


SKIPPED_FOLDERS = ("__pycache__",)
"""Folders a glob does not enter (nor hidden ones: ``.dm``, ``.git``, ``.venv``) unless
the pattern names them: what runs writes there (dm's home, compiled Python), and a
fingerprint over it would change with every run."""


def _skipped(rel: pathlib.PurePath, pattern: str) -> bool:
    named = set(pathlib.PurePath(pattern).parts)
    return any(
        (part.startswith(".") or part in SKIPPED_FOLDERS) and part not in named
        for part in rel.parts[:-1]
    )


def _matches(cwd: pathlib.Path, pattern: str) -> dict[str, pathlib.Path]:
    """The files ``pattern`` matches: the name each is hashed under -> the file. A
    relative pattern is taken from ``cwd`` (names relative to it), an absolute one as is."""
    pure = pathlib.PurePath(pattern)
    root = pathlib.Path(pure.anchor) if pure.is_absolute() else cwd
    found: dict[str, pathlib.Path] = {}
    for path in sorted(root.glob(str(pure.relative_to(pure.anchor)) if pure.anchor else pattern)):
        rel = path.relative_to(root)
        if path.is_file() and not _skipped(rel, pattern):
            found[path.as_posix() if pure.is_absolute() else rel.as_posix()] = path
    return found


def _inputs(params: Mapping[str, Any]) -> list[str]:
    inputs = params.get("inputs")
    if not isinstance(inputs, list):
        return []
    return [p for p in inputs if isinstance(p, str) and p]


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
    for pattern in _inputs(params):
        found.update(_matches(cwd, pattern))
    return found


def unmatched(params: Mapping[str, Any], base: pathlib.Path | None = None) -> list[str]:
    """The ``inputs`` patterns of a quest's distributor parameters that match no file."""
    cwd = (base or pathlib.Path.cwd()) / str(params.get("cwd") or "")
    return [p for p in _inputs(params) if not _matches(cwd, p)]


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
