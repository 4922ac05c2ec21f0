"""Shared fixtures: the engine harness on the real local queue and on the ChaosQueue.

Also the rule that CI never skips: with ``CI`` set to a true value (``.ci/run``
exports ``CI=true``), a test that would be skipped (an emulator, ``java``,
gcloud or Chromium missing) fails instead, naming what was missing. Outside CI
such tests skip with the reason, so a laptop without the gcloud SDK can still
run the rest.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Generator, Iterator

import pytest

from tests.harness import Chaos, Harness


def no_skip() -> bool:
    """Whether skips are failures (``CI`` is set to a true value)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.fixture(params=["local", "chaos"])
def h(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Harness]:
    """The engine with the fake distributor, once per queue kind.

    ``chaos`` delivers every task twice (and every notification), delays and
    reorders deliveries, and fails one dispatch in ten after the commit (left
    to the sweep).
    """
    harness = Harness(
        tmp_path,
        queue=request.param,
        seed=7,
        chaos=Chaos(duplicate=1.0, delay=0.3, fail_dispatch=0.1),
    )
    yield harness
    harness.close()


pytest_plugins = ["tests.emulator_fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the seeded simulation in tests/sim (registered here: root conftest)."""
    group = parser.getgroup("dm simulation")
    group.addoption("--seeds", type=int, default=1000, help="run simulation seeds 0..N-1")
    group.addoption("--seed", type=int, default=None, help="run only simulation seed S")


def _skip_reason(longrepr: object) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """In CI, a skipped test (not an expected failure) is reported as failed."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and no_skip():
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} would be skipped ({_skip_reason(report.longrepr)}), "
            "but CI is set: tests must not skip in CI (install what is missing)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, None]:
    """In CI, a module that skips as a whole (``pytest.skip(allow_module_level=True)``) fails."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and no_skip():
        report.outcome = "failed"
        report.longrepr = (
            f"{collector.nodeid} would be skipped ({_skip_reason(report.longrepr)}), "
            "but CI is set: tests must not skip in CI"
        )
