"""``python -m bench.peers``: see :mod:`bench.peers.harness`."""

from __future__ import annotations

import sys

from bench.peers.harness import main

sys.exit(main())
