"""Progress of one ``dm run`` (or ``dm retry``): only the attempts it reaches.

On a terminal, a rich progress bar counts this run's attempts (finished of
all reached) and names the steps running now; elsewhere (a log, CI), one line
per state change, so the output reads as a log. ``--quiet``: nothing.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from dmcore.cli import report
from dmcore.engine import docs
from dmcore.engine.core import Engine
from dmcore.ids import AttemptID
from dmcore.states import AttemptState, is_terminal_attempt

TICK_S = 0.5
"""How often the graph is read again for progress (reading it costs)."""


def reached(engine: Engine, roots: Iterable[AttemptID]) -> dict[AttemptID, AttemptState]:
    """Every attempt ``roots`` reach through their dependencies, with its state."""
    out: dict[AttemptID, AttemptState] = {}
    level = list(dict.fromkeys(roots))
    while level:
        got = engine.store.get_many([docs.attempt_path(a) for a in level])
        nxt: list[AttemptID] = []
        for a in level:
            doc = got[docs.attempt_path(a)]
            if doc is None or a in out:
                continue
            out[a] = AttemptState(doc["state"])
            for path, _ in engine.store.query(docs.fwd_deps_collection(a)):
                dep = AttemptID.decode(docs.last_id(path))
                if dep not in out:
                    nxt.append(dep)
        level = list(dict.fromkeys(nxt))
    return out


class Watch:
    """Reports how this run's attempts move, on ``console`` (stderr)."""

    def __init__(
        self,
        engine: Engine,
        roots: list[AttemptID],
        console: Console,
        *,
        quiet: bool,
        extra: Iterable[AttemptID] = (),
    ) -> None:
        self.engine = engine
        self.roots = list(dict.fromkeys([*roots, *extra]))
        self.console = console
        self.quiet = quiet
        self.states: dict[AttemptID, AttemptState] = reached(engine, self.roots)
        self.names: dict[AttemptID, str] = {}
        self._last = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if not quiet and console.is_terminal:
            self._bar = Progress(
                TextColumn("dm", style="bold"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                # Not markup: step names may hold "[...]".
                TextColumn("{task.fields[failed]}", style="red", markup=False),
                TextColumn("{task.description}", markup=False),
                console=console,
                transient=True,
            )

    def name(self, aid: AttemptID) -> str:
        if aid not in self.names:
            self.names[aid] = report.quest_name(self.engine, aid.quest)
        return self.names[aid]

    def __enter__(self) -> Watch:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("", total=max(1, len(self.states)), failed="")
        elif not self.quiet:
            # Where each unfinished step stands as the run starts; then its changes.
            self._lines({a: s for a, s in self.states.items() if not is_terminal_attempt(s)}, {})
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self._last < TICK_S):
            return
        self._last = now
        states = reached(self.engine, self.roots)
        if self._bar is not None and self._task is not None:
            done = sum(1 for s in states.values() if is_terminal_attempt(s))
            failed = sum(1 for s in states.values() if s == AttemptState.ABNORMAL_FINISHED)
            running = [self.name(a) for a, s in states.items() if s == AttemptState.EXECUTING]
            waiting = sum(1 for s in states.values() if s == AttemptState.WAITING)
            bits = []
            if waiting:
                bits.append(f"{waiting} waiting")
            if running:
                shown = ", ".join(sorted(running)[:4]) + (", …" if len(running) > 4 else "")
                bits.append(f"{len(running)} running: {shown}")
            self._bar.update(
                self._task,
                total=max(1, len(states)),
                completed=done,
                failed=f"{failed} failed" if failed else "",
                description=" · ".join(bits),
            )
        else:
            self._lines(states, self.states)
        self.states = states

    def _lines(
        self, states: dict[AttemptID, AttemptState], before: dict[AttemptID, AttemptState]
    ) -> None:
        """One line per attempt whose state differs from ``before``, in the order the
        changes happened (a depender resumes after its dependency ended, not before)."""
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        changed = [a for a, s in states.items() if before.get(a) != s]
        got = self.engine.store.get_many([docs.attempt_path(a) for a in changed])
        changed.sort(key=lambda a: int((got[docs.attempt_path(a)] or {}).get("modified", 0)))
        for a in changed:
            s = states[a]
            how = ""
            if s == AttemptState.ABNORMAL_FINISHED:
                ab = (got[docs.attempt_path(a)] or {}).get("abnormal")
                how = f" ({(ab or {}).get('reason', '')})"
            self.console.print(
                f"{stamp} {self.name(a)} ({report.ref(a)}) {s.name}{how}",
                highlight=False,
                markup=False,
            )
