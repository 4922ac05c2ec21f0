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


def test_ids_a_user_can_paste(tmp_path: pathlib.Path) -> None:
    """Unique prefixes (>= 6 characters), the QUEST|N form walk prints, and an ID
    starting with "-", which option parsing must leave alone."""
    from dmcore import ids

    n = 0
    while True:  # a quest whose ID starts with "-" (1 in 64)
        quest = {
            "distributor_config_name": "jobsim",
            "parameters": {"name": "dash", "seed": n, "return_stage": {"retval": 1}},
            "distributor_parameters": {},
        }
        if ids.quest_id(quest).startswith("-"):
            break
        n += 1
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"quests": [quest]}))
    home = str(tmp_path / "h")
    code, out, _ = dm("run", str(run), "--home", home, "--json")
    assert code == 0, out
    qid = json.loads(out)["attempts"][0]["quest"]
    assert qid.startswith("-")

    code, out, _ = dm("walk", "--home", home)
    printed = next(w for w in out.split() if w.startswith(qid[:12]))
    assert printed == f"{qid[:12]}|1"
    for ref in (qid, f"{qid}|1", qid[:6], printed):
        code, out, err = dm("walk", ref, "--home", home, "--json")
        assert code == 0, (ref, err)
        assert [a["quest"] for a in json.loads(out)["attempts"]] == [qid]
        code, out, err = dm("why", ref, "--home", home)
        assert code == 0 and "dash" in out, (ref, err)
    code, _, err = dm("cancel", printed, "--home", home)
    assert code == 0, err

    for ref, message in [
        (qid[:5], "at least 6 characters"),
        ("zzzzzzzz", "no quest ID starts with"),
        (f"{qid[:8]}|x", "attempt number"),
        ("no/slash", "not a quest ID"),
    ]:
        code, _, err = dm("why", ref, "--home", home)
        assert code == 2 and message in err, (ref, err)
        assert "Traceback" not in err
