"""The workloads every system runs, the task bodies, and how a runner reports.

Standard library only: this module is imported by each system's runner in
that system's own environment (dm's, Prefect's, Celery's), with the
repository on ``PYTHONPATH``.

Shapes (the same for every system):

* ``fan:N``: N no-op tasks, then one task summing their values (N + 1 tasks);
  the fan-out of 1,000 and the fan-in of 10,000 are this shape;
* ``chain:N``: N tasks, each taking the value of the one before (N tasks);
* ``cached:N``: ``fan:N`` run once, then again with every result reused from
  the system's cache; the second run is timed;
* ``local:N``: ``fan:N`` with every task in an operating-system process of
  its own (or of a pool, where that is what the system offers).

The task bodies are :func:`noop`, :func:`add1` and :func:`total`; dm's jobsim
jobs compute the same values (a leaf returns 1, a sum adds 1 to its inputs).
A runner is ``python -m bench.peers.<system>_runner KIND:N HOME`` and prints
one JSON line (:func:`report`) on stdout; the harness checks the value.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
from collections.abc import Callable, Iterable
from typing import Any

KINDS = ("fan", "chain", "cached", "local")


def noop(i: int) -> int:
    """A leaf: does nothing, returns 1."""
    return 1


def add1(x: int) -> int:
    """A chain link: the value before it, plus one."""
    return x + 1


def total(values: Iterable[int]) -> int:
    """The sum task: its inputs' values, plus one."""
    return sum(values) + 1


@dataclasses.dataclass(frozen=True)
class Workload:
    kind: str
    size: int

    @classmethod
    def parse(cls, text: str) -> Workload:
        kind, _, n = text.partition(":")
        if kind not in KINDS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"workload {text!r}: expected KIND:N with KIND one of {KINDS}")
        return cls(kind, int(n))

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.size}"

    @property
    def tasks(self) -> int:
        """Task nodes in the graph."""
        return self.size if self.kind == "chain" else self.size + 1

    @property
    def value(self) -> int:
        """What the last task returns."""
        return self.size if self.kind == "chain" else self.size + 1


def peak_rss_mib() -> float:
    """This process's peak RSS and its largest waited-for child's (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def report(seconds: float, value: int, **extra: Any) -> None:
    """The runner's answer: one JSON line on stdout."""
    out = {"seconds": seconds, "value": value, "self_peak_rss_mib": peak_rss_mib(), **extra}
    print(json.dumps(out), flush=True)


def runner_main(run: Callable[[Workload, str], tuple[float, int, dict[str, Any]]]) -> None:
    """A runner's ``main``: ``KIND:N HOME`` -> ``run(workload, home)`` -> :func:`report`."""
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} KIND:N HOME", file=sys.stderr)
        raise SystemExit(2)
    try:
        workload = Workload.parse(sys.argv[1])
    except ValueError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None
    seconds, value, extra = run(workload, sys.argv[2])
    report(seconds, value, **extra)
