"""The dm CLI through typer's CliRunner (embedded mode, jobsim and local distributors)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from dmcore.cli import app

runner = CliRunner()
ROOT = pathlib.Path(__file__).resolve().parent.parent
FANOUT = ROOT / "examples" / "jobsim_fanout.yaml"


def dm(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def write(path: pathlib.Path, doc: object) -> pathlib.Path:
    path.write_text(json.dumps(doc))
    return path


def jobsim_quest(name: str, **phrase: object) -> dict[str, object]:
    return {
        "distributor_config_name": "jobsim",
        "parameters": {"name": name, **phrase},
        "distributor_parameters": {},
    }


def test_run_fanout_example_json(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    code, out, _ = dm("run", str(FANOUT), "--home", str(home), "--json")
    assert code == 0, out
    doc = json.loads(out)
    (att,) = doc["attempts"]
    assert att["state"] == "FINISHED"
    assert att["result"] == {"success": True, "value": 6 * 3 + 1}
    assert doc["reused"] == 0
    assert doc["executions_run"] == 1 + 1 + 6  # root halts once, resumes once; six leaves

    code, out, _ = dm("run", str(FANOUT), "--home", str(home), "--json")
    again = json.loads(out)
    assert code == 0 and again["reused"] == 1 and again["executions_run"] == 0


def test_run_table_output(tmp_path: pathlib.Path) -> None:
    code, out, _ = dm("run", str(FANOUT), "--home", str(tmp_path / "h"))
    assert code == 0
    assert "FINISHED" in out and "hello" in out
    assert "reused 0 of 1 requested result(s); ran 8 execution(s)" in out


def test_run_abnormal_exit_code(tmp_path: pathlib.Path) -> None:
    # A phrase jobsim refuses at run time: the execution is REJECTED.
    f = write(tmp_path / "bad_phrase.json", {"quests": [jobsim_quest("", stages=[{}])]})
    code, out, _ = dm("run", str(f), "--home", str(tmp_path / "h"), "--json")
    assert code == 1
    (att,) = json.loads(out)["attempts"]
    assert att["state"] == "ABNORMAL_FINISHED" and att["abnormal"].startswith("REJECTED")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ('{"quests": 3}', "expected an object with a list 'quests'"),
        ('{"quests": []}', "quests: empty"),
        ('{"quests": [], "extra": 1}', "unknown top-level field"),
        ('{"quests": [7]}', r"quests\[0\]: must be an object"),
        ('{"quests": [{"parameters": {}}]}', "distributor_config_name: required"),
        (
            '{"quests": [{"distributor_config_name": "jobsim", "parameters": "[1]"}]}',
            r"quests\[0\]: parameters: .*object",
        ),
        (
            '{"quests": [{"distributor_config_name": "nope", "parameters": {}}]}',
            "unknown distributor config 'nope'",
        ),
        (
            '{"quests": [{"distributor_config_name": "jobsim", "attempts": [0]}]}',
            r"quests\[0\]\.attempts",
        ),
        (
            '{"quests": [{"distributor_config_name": "jobsim", "parameters": {}, "bogus": 1}]}',
            "bogus",
        ),
        (
            '{"quests": [{"distributor_config_name": "local", "parameters": {}, '
            '"distributor_parameters": {}}]}',
            "command: required",
        ),
    ],
)
def test_run_bad_files(tmp_path: pathlib.Path, content: str | None, message: str) -> None:
    f = tmp_path / "run.json"
    if content is not None:
        f.write_text(content)
    home = tmp_path / "home"
    code, out, err = dm("run", str(f), "--home", str(home))
    assert code == 2
    assert "Traceback" not in out + err
    import re

    assert re.search(message, err), err
    assert not home.exists()  # nothing written


def test_run_bad_yaml(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("quests: [\n  - a: b\n")
    code, _, err = dm("run", str(f), "--home", str(tmp_path / "h"))
    assert code == 2 and "not valid YAML" in err


def test_run_with_config_replacing_builtins(tmp_path: pathlib.Path) -> None:
    cfg = write(tmp_path / "cfg.json", {"distributor_configs": {"sim": {"jobsim": {"pool": "x"}}}})
    run = write(
        tmp_path / "run.json",
        {
            "quests": [
                {
                    **jobsim_quest("solo", return_stage={"retval": 5}),
                    "distributor_config_name": "sim",
                }
            ]
        },
    )
    code, out, _ = dm(
        "run", str(run), "--home", str(tmp_path / "h"), "--config", str(cfg), "--json"
    )
    assert code == 0, out
    assert json.loads(out)["attempts"][0]["result"]["value"] == 5
    # The built-in names are gone with --config.
    code, _, err = dm("run", str(FANOUT), "--home", str(tmp_path / "h2"), "--config", str(cfg))
    assert code == 2 and "unknown distributor config 'jobsim'" in err


def test_config_validate(tmp_path: pathlib.Path) -> None:
    good = write(
        tmp_path / "good.json",
        {"distributor_configs": {"a": {"jobsim": {}}, "b": {"alias": {"other_config": "a"}}}},
    )
    code, out, _ = dm("config", "validate", str(good))
    assert code == 0 and "OK (2 config(s): a, b)" in out
    for doc, msg in [
        ({"distributor_configs": {"a": {"nokind": {}}}}, "unknown distributor kind 'nokind'"),
        (
            {"distributor_configs": {"a": {"alias": {"other_config": "zz"}}}},
            "alias to unknown config",
        ),
        (
            {"distributor_configs": {"a": {"jobsim": {"pool": 3, "bad": 1}}}},
            "distributor_configs.a.jobsim",
        ),
        ({"other": 1}, "only 'distributor_configs'"),
    ]:
        code, _, err = dm("config", "validate", str(write(tmp_path / "bad.json", doc)))
        assert code == 2 and msg in err, err


def test_walk_why_cancel_and_timeout(tmp_path: pathlib.Path) -> None:
    home = str(tmp_path / "h")
    # The leaf stalls for an hour on the real clock: the root waits on it.
    run = write(
        tmp_path / "run.json",
        {
            "quests": [
                jobsim_quest(
                    "root",
                    stages=[
                        {
                            "deps": {
                                "deps": [
                                    {
                                        "phrase": {
                                            "name": "slow",
                                            "stages": [{"stall": {"delay": "3600s"}}],
                                        }
                                    }
                                ]
                            }
                        }
                    ],
                )
            ]
        },
    )
    code, out, err = dm("run", str(run), "--home", home, "--timeout", "1", "--json")
    assert code == 1 and "gave up after 1.0s" in err
    root = json.loads(out)["attempts"][0]
    assert root["state"] == "WAITING"
    qid = root["quest"]

    code, out, _ = dm("why", qid, "--home", home)
    assert code == 0
    assert "root" in out and "WAITING on 1 unfinished dependency" in out
    assert "slow" in out and "EXECUTING" in out and "RUNNING on 'jobsim'" in out

    code, out, _ = dm("why", qid, "--home", home, "--json")
    chain = json.loads(out)["chain"]
    assert [c["name"] for c in chain] == ["root", "slow"] and chain[1]["phase"] == "RUNNING"

    code, out, _ = dm("walk", "--home", home, "--json")
    names = {a["name"]: a for a in json.loads(out)["attempts"]}
    assert set(names) == {"root", "slow"}
    slow = names["slow"]

    code, out, _ = dm("walk", "--home", home)
    assert code == 0 and "2 attempt(s)" in out

    code, out, _ = dm("cancel", f"{slow['quest']}|1", "--home", home, "--reason", "enough")
    assert code == 0 and "ABNORMAL_FINISHED" in out and "enough" in out
    # Cancelling the leaf unblocks the root (an abnormal dependency counts as done).
    code, out, _ = dm("run", str(run), "--home", home, "--json", "--timeout", "30")
    assert json.loads(out)["attempts"][0]["state"] == "FINISHED"


def _expired_run(tmp_path: pathlib.Path) -> tuple[str, pathlib.Path]:
    """A home whose one attempt FINISHED with a result that had expired already
    (jobsim's ``return_stage.expiration``, in the past): marked expired at once."""
    home = str(tmp_path / "h")
    stale = {"retval": 5, "expiration": "2001-01-01T00:00:00Z"}
    run = write(tmp_path / "run.json", {"quests": [jobsim_quest("stale", return_stage=stale)]})
    code, out, err = dm("run", str(run), "--home", home, "--json")
    assert code == 0, err
    (att,) = json.loads(out)["attempts"]
    assert att["state"] == "FINISHED" and att["expired"] is True
    return home, run


def test_walk_shows_an_expired_result_as_such(tmp_path: pathlib.Path) -> None:
    """docs/behaviour.md: `dm walk` reads FINISHED (expired); --json adds "expired"."""
    home, _ = _expired_run(tmp_path)
    code, out, _ = dm("walk", "--home", home)
    assert code == 0 and "(expired)" in out
    code, out, _ = dm("walk", "--home", home, "--json")
    (att,) = json.loads(out)["attempts"]
    assert att["state"] == "FINISHED" and att["expired"] is True


def test_run_shows_an_expired_result_as_such(tmp_path: pathlib.Path) -> None:
    """`dm run` over an attempt whose result expired says so, as `dm walk` does, rather
    than presenting it as a result reused like any other."""
    home, run = _expired_run(tmp_path)
    for _ in range(2):  # just finished, then asked for again
        code, out, _ = dm("run", str(run), "--home", home)
        assert code == 0 and "FINISHED (expired)" in out, out
        assert "1 result(s) expired" in out and "new attempt" in out
        row = next(line for line in out.splitlines() if "FINISHED (expired)" in line)
        assert row.split("FINISHED (expired)")[1].strip(" │|") == ""  # no result served
    assert "reused 0 of 1" in out  # found finished, but not reused: expired


def test_commands_on_missing_home(tmp_path: pathlib.Path) -> None:
    for args in (["walk"], ["why", "x" * 43], ["graph"], ["cancel", "x" * 43]):
        code, _, err = dm(*args, "--home", str(tmp_path / "none"))
        assert code == 2 and "no dm home here" in err


def test_bad_attempt_reference(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "h"
    assert dm("run", str(FANOUT), "--home", str(home))[0] == 0
    code, _, err = dm("why", "nope", "--home", str(home))
    assert code == 2 and "expected QUEST_ID or QUEST_ID|ATTEMPT" in err


def test_quest_id(tmp_path: pathlib.Path) -> None:
    code, out, _ = dm("quest-id", str(FANOUT))
    assert code == 0 and len(out.split()[0]) == 43


def test_graph_html_renders_in_chromium(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "h"
    assert dm("run", str(FANOUT), "--home", str(home))[0] == 0
    page = tmp_path / "graph.html"
    code, out, _ = dm("graph", "--home", str(home), "-o", str(page))
    assert code == 0 and "7 attempts" in out
    html = page.read_text()
    assert "cytoscape" in html and "http://" not in html.split("<script>")[0]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make test installs it where it can)")
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    # The page's script counted the graph it drew.
    assert "7 attempts, 6 dependencies" in dom


def test_serve_refuses_a_bad_config(tmp_path: pathlib.Path) -> None:
    bad = write(tmp_path / "cfg.json", {"distributor_configs": {"a": {"nokind": {}}}})
    code, _, err = dm("serve", "--home", str(tmp_path / "h"), "--config", str(bad))
    assert code == 2 and "unknown distributor kind 'nokind'" in err
    assert not (tmp_path / "h").exists()
