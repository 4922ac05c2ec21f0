"""Fixed mistakes planted again, for a test to patch in (never in product code).

:func:`replanted` recompiles a function from its own source with one change, so
that the planted mistake follows the code it is planted in, and the test that
plants it fails loudly once that code no longer reads as it did.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any


def replanted(fn: Callable[..., Any], pattern: str, repl: str) -> Callable[..., Any]:
    """``fn`` recompiled from its source (decorators included) in a copy of its
    module's names, with the one match of the regular expression ``pattern``
    replaced by ``repl``. Not for a function using ``super()`` without arguments."""
    fn = inspect.unwrap(fn)  # a decorated function's own source and module
    source = textwrap.dedent(inspect.getsource(fn))
    changed, n = re.subn(pattern, repl, source)
    if n != 1:
        raise AssertionError(
            f"{fn.__qualname__}: {n} matches of {pattern!r}, want 1 (the code changed: "
            "plant the mistake again)"
        )
    scope = dict(fn.__globals__)
    exec(compile(changed, inspect.getsourcefile(fn) or "<planted>", "exec"), scope)
    planted: Callable[..., Any] = scope[fn.__name__]
    return planted
