"""Process-group helpers shared by the emulators dm starts and the local distributor.

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
