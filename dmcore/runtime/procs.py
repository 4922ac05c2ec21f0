"""Process-group helpers shared by the processes dm starts (emulators, ``dm dev``'s
functions) and the local distributor.

Standard library only: the local distributor's supervisor imports this before
it answers ``run``, where every millisecond of start-up counts.
"""

from __future__ import annotations

import os


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member (zombies count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, just not ours to signal
    return True


# Runs a command in the background of a small shell that leads the process
# group and stops the whole group once the starting process is gone (killed by
# a signal, so nobody stopped the command) or the command exited.
_GUARD = (
    'parent=$1; shift; "$@" & child=$!; '
    'while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1; done; '
    "kill -TERM 0"
)


def guarded(name: str, argv: list[str]) -> list[str]:
    """``argv`` under a guard shell: start it with ``start_new_session=True``, and the
    group (guard, command and its children) dies with this process, even by SIGKILL."""
    return ["/bin/sh", "-c", _GUARD, f"{name}-guard", str(os.getpid()), *argv]
