"""What the retry simulation catches of a halting declaration retried after a dependee
it found ended was re-opened (W-6 and ``dm retry``).

Right after a declaration halted its job, a user may re-open a dependee the declaration
found ended abnormally, and the job calls again as if its answer was lost
(:meth:`tests.sim.test_sim_retry.RetrySim._after_halt`): it must be told to halt again,
not refused as a bad token. Where the depender's edge to that dependee was left by an
earlier execution (satisfied, not written again by this one), two guards each see the
edge as named by the halted execution: the re-open tags the edge with the depender's
current execution (reopen.unack_fwd_dep, f75cf72), and the retry counts an edge whose
dependee was re-opened since the execution began (deps._reopened_since, 1417ac9). Either
suffices: a seed fails with both planted out, and passes with either one alone.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from dmcore.engine import base, reopen, steps
from dmcore.engine import deps as engine_deps
from tests.sim.planted import replanted
from tests.sim.test_sim_reopen_wait import KEPT_TAG
from tests.sim.test_sim_retry import simulate_retries

SEED = 6
"""A retry seed whose user re-opens such a dependee after the halt: with both guards
planted out, of seeds 0..39 2, 6, 9, 10, 12, 16, 20, 24 and 28 fail (with the tag
alone planted, seed 6 passes). Re-find one when the draws change."""

NOT_REOPENED_SINCE = (
    r'return bool\(reopens\) and int\(reopens\[-1\]\["at_us"\]\) >= at_us',
    "return False",
)
"""The retry before 1417ac9: an edge an earlier execution left, opened again by a
re-open since, not counted as named."""


def test_a_halting_declarations_retry_after_a_dependee_is_reopened_is_answered_halted(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither guard, the retry seed's halted job, calling again after a user
    re-opened a dependee it found ended, is refused as a bad token (Unauthenticated)
    instead of being told to halt again; the same seed passes when no user re-opens
    a dependee there."""
    monkeypatch.setattr(
        engine_deps, "_reopened_since", replanted(engine_deps._reopened_since, *NOT_REOPENED_SINCE)
    )
    table: dict[Any, Any] = base._ROLL_FORWARD
    monkeypatch.delitem(table, steps.UnackFwdDep)  # put back after the test
    replanted(reopen.unack_fwd_dep, *KEPT_TAG)  # its decorator registers it
    with pytest.raises(
        AssertionError,
        match=rf"seed {SEED} \(chaos\).*\n(.*\n)*.*EnsureGraphData \(retry\) raised "
        r"Unauthenticated",
    ):
        simulate_retries(SEED, tmp_path / "with", queue="chaos")
    monkeypatch.setattr("tests.sim.test_sim_retry.P_REOPEN_AFTER_HALT", 0.0)
    simulate_retries(SEED, tmp_path / "without", queue="chaos")
