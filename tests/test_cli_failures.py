"""When a step fails, through the ``dm`` command: root cause, retry, reuse explained,
fingerprints, progress, IDs a user can paste (real ``local`` jobs: subprocesses)."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest
from typer.testing import CliRunner

from dmcore.cli import app

runner = CliRunner()

LEAF = """\
import sys
from dmcore.job import Job
job = Job.from_env()
job.activate()
print("reading the input")
if open("flag").read().strip() != "ok":
    print("ValueError: the input is broken", file=sys.stderr)
    sys.exit(1)
job.finish({"v": 1})
"""

TOP = """\
import sys
from dmcore.job import Job
job = Job.from_env()
job.activate()
deps = job.depend([{"distributor_config_name": "local", "parameters": {"name": "leaf"},
    "distributor_parameters": {"command": [sys.executable, "leaf.py"]}}])
if deps.should_halt:
    sys.exit(0)
if deps.abnormal:
    print(f"a dependency failed: {deps.abnormal}", file=sys.stderr)
    sys.exit(1)
(v,) = deps.results.values()
job.finish({"v": v["v"] + 1})
"""


def dm(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def pipeline(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """top depends on leaf; leaf fails until ``flag`` says ok. Runs in ``tmp_path``."""
    (tmp_path / "leaf.py").write_text(LEAF)
    (tmp_path / "top.py").write_text(TOP)
    (tmp_path / "flag").write_text("bad\n")
    run = {
        "quests": [
            {
                "distributor_config_name": "local",
                "parameters": {"name": "top"},
                "distributor_parameters": {"command": [sys.executable, "top.py"]},
            }
        ]
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_and_why_show_the_root_cause(pipeline: pathlib.Path) -> None:
    code, out, _ = dm("run", "run.json")
    assert code == 1
    assert "failed: leaf (" in out and "FAILED: exit code 1 after" in out
    assert "via top <- leaf" in out
    assert "log: " + str(pipeline / ".dm" / "logs") in out
    assert "| ValueError: the input is broken" in out

    code, out, _ = dm("run", "run.json", "--json")
    assert code == 1
    doc = json.loads(out)
    (failure,) = doc["failures"]
    assert failure["name"] == "leaf" and failure["status"] == "FAILED"
    assert failure["reason"] == "exit code 1" and failure["via"] == ["top", "leaf"]
    assert pathlib.Path(failure["log"]).is_file()
    assert "ValueError: the input is broken" in failure["log_tail"]
    assert failure["seconds"] >= 0

    top = doc["attempts"][0]["quest"]
    code, out, _ = dm("why", top)
    assert code == 1
    assert "top" in out and "ABNORMAL_FINISHED" in out and "failed: leaf" in out
    code, out, _ = dm("why", top, "--json")
    assert code == 1 and json.loads(out)["failures"][0]["name"] == "leaf"
