"""Shared fixtures: the engine harness on the real local queue and on the ChaosQueue."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.harness import Chaos, Harness


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
    group.addoption("--seeds", type=int, default=200, help="run simulation seeds 0..N-1")
    group.addoption("--seed", type=int, default=None, help="run only simulation seed S")
