"""What README's "Running the examples locally" says, run as it says it:
``python examples/run_local.py NAME`` for each remote distributor's example, in a
fresh process, against the test doubles (which it names as such). Its output
(dm serve's logs included) shows no execution token, no notification token and
no Swarming ``secret_bytes``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import remote_support as rs

SECRET_SHAPES = {
    '"token"': "an Execution.Auth (the activation token) in JSON",
    "eyJ2Ijo": "a notification auth_token (base64 of its JSON body)",
    "eyJpZCI6": "an Execution.Auth in base64 (Swarming's secret_bytes)",
}


@pytest.mark.parametrize(
    ("example", "result"),
    [
        ("http", '{"sum":14} (2 execution(s))'),
        ("cloud_run_jobs", '{"words":7} (2 execution(s))'),
        ("swarming_v1", '{"greeting":"hello, swarming","pool":"local"} (1 execution(s))'),
    ],
)
def test_each_example_runs_end_to_end_on_the_test_doubles(example: str, result: str) -> None:
    proc = subprocess.run(
        [sys.executable, "examples/run_local.py", example],
        cwd=rs.REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "TEST DOUBLE of" in out
    assert f"FINISHED {result}" in out
    assert f"of examples/{example}: done" in out
    for shape, what in SECRET_SHAPES.items():
        assert shape not in out, f"{what} in the output"
