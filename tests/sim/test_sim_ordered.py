"""What the simulation catches of SQLite ordered columns that disagree with the documents.

The sweep finds due timers, polls, expiries and pending follow-ups through the
store's ordered columns (dmcore/store/sqlite.py). They are written in the row,
by the statement, that writes the document, so no crash can part them (a
rolled-back transaction: tests/test_store_ordered.py); what remains is a
mistake in the code that derives them. The simulation's faults (dispatches
that fail, partly or wholly, so follow-ups wait for the sweep; timers and polls
only the sweep fires) catch both ways columns can be wrong.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from dmcore.store import sqlite
from tests.sim.test_sim import simulate

SEED = 0
"""A default seed that fails with either planted mistake (re-find one with them, and
update this, when the plan's draws change: of seeds 0..39, every one fails with stale
columns and 18 with blind ones)."""


def test_stale_columns_fail_the_simulation(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overwrite that keeps the old columns (the field was cleared, its column not):
    the sweep is handed an attempt without the field it asked for."""
    real = sqlite._Ordered.statements

    def planted(self: sqlite._Ordered, present: tuple[int, ...]) -> tuple[str, str]:
        insert, _ = real(self, present)
        keep = insert.split(" ON CONFLICT")[0]
        return insert, f"{keep} ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body"

    monkeypatch.setattr(sqlite._Ordered, "statements", planted)
    with pytest.raises(AssertionError, match="KeyError"):
        simulate(SEED, tmp_path, queue="chaos")


def test_blind_columns_fail_the_simulation(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Columns that miss a due field (here every one but expiries): what only the sweep
    would fire or re-send never is, and the run does not end as it must."""
    real = sqlite._Ordered.row

    def planted(self: sqlite._Ordered, body: str, doc: dict[str, Any]) -> tuple[Any, ...]:
        row = real(self, body, doc)
        return row if "expiry_due_us" in doc else (body, ())

    monkeypatch.setattr(sqlite._Ordered, "row", planted)
    with pytest.raises(AssertionError, match="invariant violation"):
        simulate(SEED, tmp_path, queue="chaos")
