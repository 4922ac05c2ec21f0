"""dm's engine: transactional steps on the store, their follow-ups through the queue.

:mod:`~dmcore.engine.base` is the step model, :mod:`~dmcore.engine.steps`
declares every step, :mod:`~dmcore.engine.core` runs them
(:class:`~dmcore.engine.core.Engine`), and the modules imported below give
each step its behaviour, by concern. Importing the package registers them
all, so any engine can run any step it finds in its queue.
"""

from dmcore.engine import completion, deps, expiry, lifecycle, notify, reopen, timers

__all__ = ["completion", "deps", "expiry", "lifecycle", "notify", "reopen", "timers"]
