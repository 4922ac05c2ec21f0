"""When a step fails, through the ``dm`` command: root cause, retry, reuse explained,
fingerprints, progress, IDs a user can paste (real ``local`` jobs: subprocesses)."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

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
                # top's result depends on leaf.py too: its fingerprint covers it.
                "distributor_parameters": {
                    "command": [sys.executable, "top.py"],
                    "inputs": ["leaf.py"],
                },
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


def test_retry_after_a_fix_resumes_the_graph(pipeline: pathlib.Path) -> None:
    code, out, _ = dm("run", "run.json", "--json")
    assert code == 1
    leaf = json.loads(out)["failures"][0]["quest"]
    (pipeline / "flag").write_text("ok\n")
    # Nothing is re-run by a plain re-run: the failure is remembered.
    code, out, _ = dm("run", "run.json", "--json")
    assert code == 1 and json.loads(out)["executions_run"] == 0

    code, out, err = dm("retry", leaf[:8])  # the leaf only: top is re-opened with it
    assert code == 0, out + err
    assert "retried 1 attempt(s), 1 re-opened with them" in out
    assert "1 depender(s) re-opened" in err
    code, out, _ = dm("run", "run.json", "--json", "--explain")
    doc = json.loads(out)
    assert code == 0 and doc["attempts"][0]["result"] == {"v": 2}
    assert doc["executions_run"] == 0 and doc["reused"] == 1
    assert [line.split()[0] for line in doc["explain"]] == ["top", "leaf"]
    assert all(" reused: finished " in line for line in doc["explain"])
    # Executions are kept: leaf failed once, then ran again on the same attempt.
    code, out, _ = dm("walk", leaf, "--json")
    assert json.loads(out)["attempts"][0]["executions"] == 2

    code, _, err = dm("retry", leaf)
    assert code == 2 and "never re-opened" in err
    code, _, err = dm("retry")
    assert code == 2 and "--failed" in err


def test_run_retry_failed(pipeline: pathlib.Path) -> None:
    assert dm("run", "run.json", "--quiet")[0] == 1
    (pipeline / "flag").write_text("ok\n")
    code, out, err = dm("run", "run.json", "--retry-failed", "--json")
    assert code == 0, out + err
    assert json.loads(out)["attempts"][0]["result"] == {"v": 2}
    code, out, _ = dm("retry", "--failed")
    assert code == 0 and "nothing ended abnormally" in out


def test_edited_script_is_a_new_quest(pipeline: pathlib.Path) -> None:
    (pipeline / "flag").write_text("ok\n")
    code, out, _ = dm("run", "run.json", "--json")
    assert code == 0
    first = json.loads(out)["attempts"][0]["quest"]
    assert dm("quest-id", "run.json")[1].split()[0] == first
    code, out, _ = dm("run", "run.json", "--json")
    assert json.loads(out)["executions_run"] == 0

    (pipeline / "top.py").write_text(TOP + "# edited\n")
    code, out, _ = dm("run", "run.json", "--json", "--explain")
    doc = json.loads(out)
    second = doc["attempts"][0]["quest"]
    assert second != first
    assert doc["changed"] == [line for line in doc["changed"] if line.startswith("top: ")]
    assert any(line.startswith("top: its files changed") for line in doc["changed"])
    assert any("differs in fingerprint" in line for line in doc["explain"])
    assert any(line.startswith("leaf (") and " reused: " in line for line in doc["explain"])

    # A dependency's script, named in top's `inputs`: top runs again, and its
    # Job.depend fingerprints leaf anew, so leaf runs again too.
    (pipeline / "leaf.py").write_text(LEAF + "# edited\n")
    code, out, _ = dm("run", "run.json", "--explain")
    assert code == 0
    assert "leaf: its files changed since quest" in out
    assert "top: its files changed since quest" in out
    assert "a new quest, run again" in out

    code, out, _ = dm("quest-id", "run.json", "--no-fingerprint")
    plain = out.split()[0]
    code, out, _ = dm("run", "run.json", "--no-fingerprint", "--json")
    assert code == 0 and json.loads(out)["attempts"][0]["quest"] == plain != first
    assert "DM_NO_FINGERPRINT" not in os.environ  # only for the jobs of that run


def test_explain_says_why_not_reused(pipeline: pathlib.Path) -> None:
    (pipeline / "flag").write_text("ok\n")
    assert dm("run", "run.json", "--quiet")[0] == 0
    run = json.loads((pipeline / "run.json").read_text())
    run["quests"][0]["parameters"]["extra"] = 1
    (pipeline / "run2.json").write_text(json.dumps(run))
    code, out, _ = dm("run", "run2.json", "--explain")
    assert code == 0
    assert "top (" in out and "ran: 1 execution(s)" in out
    assert "not reused: quest" in out and "differs in parameters" in out


def test_progress_lines_quiet_and_counts(pipeline: pathlib.Path) -> None:
    # Progress reads the graph every TICK_S: top is seen WAITING only if it waits
    # across a tick, so leaf takes a while before it fails (else, when leaf failed
    # before top's halt was recorded, top went from EXECUTING to its end unseen).
    leaf = LEAF.replace('print("reading the input")', "import time; time.sleep(2)")
    (pipeline / "leaf.py").write_text(leaf)
    code, _, err = dm("run", "run.json")
    assert code == 1
    # Not a terminal: one line per state change, of this run's attempts only.
    assert " leaf (" in err and "ABNORMAL_FINISHED (exit code 1)" in err
    assert " top (" in err and " WAITING" in err
    code, out, err = dm("run", "run.json", "--quiet")
    assert code == 1 and err == "" and "ran 0 execution(s)" in out


def test_plain_words_for_a_job_that_never_reported(pipeline: pathlib.Path) -> None:
    (pipeline / "plain.py").write_text("print('hello')\n")
    (pipeline / "half.py").write_text(
        "from dmcore.job import Job\njob = Job.from_env()\njob.activate()\n"
    )
    run = {
        "quests": [
            {
                "distributor_config_name": "local",
                "parameters": {"name": script},
                "distributor_parameters": {"command": [sys.executable, f"{script}.py"]},
            }
            for script in ("plain", "half")
        ]
    }
    (pipeline / "plain.json").write_text(json.dumps(run))
    code, out, _ = dm("run", "plain.json", "--json")
    assert code == 1
    reasons = {f["name"]: f["reason"] for f in json.loads(out)["failures"]}
    assert reasons["half"] == "the command exited 0 without reporting a result (call Job.finish)"
    assert reasons["plain"].startswith("the command exited 0 without reporting a result")
    assert "state" not in reasons["plain"]


def test_large_parameters_reach_the_job_through_a_file(pipeline: pathlib.Path) -> None:
    (pipeline / "big.py").write_text(
        "import json, os\nfrom dmcore.job import Job\n"
        "job = Job.from_env()\njob.activate()\n"
        "assert 'DM_QUEST_PARAMETERS' not in os.environ\n"
        "with open(os.environ['DM_QUEST_PARAMETERS_FILE']) as f:\n"
        "    params = json.load(f)\n"
        "job.finish({'n': len(params['blob'])})\n"
    )
    blob = "x" * 200_000  # over Linux's 128 KiB for one environment string
    run: dict[str, list[dict[str, Any]]] = {
        "quests": [
            {
                "distributor_config_name": "local",
                "parameters": {"name": "big", "blob": blob},
                "distributor_parameters": {"command": [sys.executable, "big.py"]},
            }
        ]
    }
    (pipeline / "big.json").write_text(json.dumps(run))
    code, out, _ = dm("run", "big.json", "--json")
    assert code == 0, out
    assert json.loads(out)["attempts"][0]["result"] == {"n": 200_000}
    run["quests"][0]["parameters"]["blob"] = "x" * 300_000  # over dm's 256 KiB
    (pipeline / "big.json").write_text(json.dumps(run))
    code, _, err = dm("run", "big.json")
    assert code == 2 and "262144-byte limit" in err


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("inf.yaml", "quests:\n  - distributor_config_name: jobsim\n    parameters: {v: .inf}\n"),
        ("nan.yaml", "quests:\n  - distributor_config_name: jobsim\n    parameters: {v: .nan}\n"),
        (
            "big.json",
            '{"quests": [{"distributor_config_name": "jobsim", "parameters": {"v": 1e400}}]}',
        ),
        (
            "nan.json",
            '{"quests": [{"distributor_config_name": "jobsim", "parameters": {"v": NaN}}]}',
        ),
    ],
)
def test_numbers_json_has_not(tmp_path: pathlib.Path, name: str, text: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    for args in (["run", str(f), "--home", str(tmp_path / "h")], ["quest-id", str(f)]):
        code, _, err = dm(*args)
        assert code == 2 and "out of range or not a number" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "h").exists()


def test_clear_errors(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"quests": [{"distributor_config_name": "jobsim"}]}))
    afile = tmp_path / "afile"
    afile.write_text("")
    code, _, err = dm("run", str(run), "--home", str(afile))
    assert code == 2 and "not a folder" in err
    code, _, err = dm("run", str(run), "--home", str(tmp_path / "h"), "--timeout", "-1")
    assert code == 2 and "--timeout" in err
    assert dm("run", str(run), "--home", str(tmp_path / "h"))[0] == 1  # jobsim: empty phrase
    code, _, err = dm("graph", "--home", str(tmp_path / "h"), "-o", str(tmp_path / "no" / "g.html"))
    assert code == 2 and "cannot write" in err
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"distributor_configs": {"": {"jobsim": {}}}}))
    code, _, err = dm("config", "validate", str(cfg))
    assert code == 2 and "must not be empty" in err
    for out_err in (err,):
        assert "Traceback" not in out_err


def test_ctrl_c_leaves_jobs_running(tmp_path: pathlib.Path) -> None:
    """Ctrl-C stops waiting, not the jobs; the next `dm run` picks them up."""
    import signal
    import subprocess

    (tmp_path / "slow.py").write_text(
        "import time\nfrom dmcore.job import Job\njob = Job.from_env()\njob.activate()\n"
        "time.sleep(3)\njob.finish({'slept': 3})\n"
    )
    run = {
        "quests": [
            {
                "distributor_config_name": "local",
                "parameters": {"name": "slow"},
                "distributor_parameters": {"command": [sys.executable, "slow.py"]},
            }
        ]
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    # As from a terminal: Ctrl-C delivered. A test worker may hand its children
    # SIGINT ignored (inherited across exec, as a shell's background job has it),
    # and then dm rightly never sees it; reset in the child's own Python (no
    # preexec_fn: the worker has gRPC threads, and forking them misbehaves).
    prelude = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"
    dm_cmd = [sys.executable, "-c", f"{prelude}; from dmcore.cli import main; main()"]
    dm_cmd += ["run", "run.json"]
    proc = subprocess.Popen(
        dm_cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = ""
    while "EXECUTING" not in seen:
        line = proc.stderr.readline()
        assert line, f"dm run ended early: {seen}"
        seen += line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "jobs already started keep running" in err and "Traceback" not in err

    done = subprocess.run(
        [*dm_cmd, "--json", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["attempts"][0]["result"] == {"slept": 3}
    assert doc["executions_run"] == 0  # the first run started it; this one only waited


def test_odd_ids_and_homes_are_clear_errors(tmp_path: pathlib.Path) -> None:
    """Attempt numbers that are digits to Python but not to a user (a superscript
    two, an Arabic-Indic one), a prefix shared by two quests, and a --home below a
    file or naming one for every command that takes one (`dm serve` too): exit 2,
    plain words."""
    from dmcore.engine import docs
    from dmcore.store.sqlite import SqliteStore

    run = tmp_path / "run.json"
    quest = {
        "distributor_config_name": "jobsim",
        "parameters": {"name": "one", "return_stage": {"retval": 1}},
    }
    run.write_text(json.dumps({"quests": [quest]}))
    home = tmp_path / "h"
    code, out, _ = dm("run", str(run), "--home", str(home), "--json")
    assert code == 0, out
    qid = json.loads(out)["attempts"][0]["quest"]
    store = SqliteStore(home / "dm.sqlite", indexed_fields=docs.INDEXED_FIELDS)
    twins = ["Twins0" + "a" * 37, "Twins0" + "b" * 37]  # two IDs, one 6-character prefix
    store.transaction(
        lambda tx: [tx.set(docs.quest_path(q), {"desc": "", "created": 0}) for q in twins]
    )
    store.close()
    for ref, message in [
        (f"{qid[:8]}|²", "attempt number"),
        (f"{qid[:8]}|\u0661", "attempt number"),
        ("Twins0", "2 quest IDs start with 'Twins0'"),
    ]:
        for command in ("why", "walk", "cancel", "retry"):
            code, _, err = dm(command, ref, "--home", str(home))
            assert code == 2 and message in err, (command, ref, err)
            assert "Traceback" not in err
    code, _, err = dm("why", "Twins0a", "--home", str(home))  # unique again: no attempt
    assert code == 2 and f"{twins[0]}|1 does not exist" in err, err

    afile = tmp_path / "afile"
    afile.write_text("")
    for args in (
        ["run", str(run)],
        ["serve", "--port", "0"],
        ["why", qid],
        ["walk"],
        ["retry", "--failed"],
        ["graph"],
    ):
        for where in (afile, afile / "below"):
            code, _, err = dm(*args, "--home", str(where))
            assert code == 2 and f"{afile}: not a folder" in err, (args, where, err)


ODD = "[/]odd [bold]name"
"""A step name rich would take for markup (and fail on): it must print as written."""


def test_names_and_paths_with_brackets_print_as_written(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fail.py").write_text("import sys\nprint('[/] broken')\nsys.exit(1)\n")
    run = {
        "quests": [
            {
                "distributor_config_name": "local",
                "parameters": {"name": ODD},
                "distributor_parameters": {"command": [sys.executable, "fail.py"]},
            }
        ]
    }
    (tmp_path / "run[bold].json").write_text(json.dumps(run))
    monkeypatch.chdir(tmp_path)
    code, out, err = dm("run", "run[bold].json")
    assert code == 1, out + err
    assert f"failed: {ODD} (" in out and "| [/] broken" in out
    assert f" {ODD} (" in err  # the progress lines
    code, out, _ = dm("walk")
    assert code == 0 and "[/]odd" in out and "[bold]name" in out  # in a narrow table
    qid = json.loads(dm("walk", "--json")[1])["attempts"][0]["quest"]
    code, out, err = dm("why", qid)
    assert code == 1 and ODD in out, err
    code, _, err = dm("run", "run[bold].json", "--timeout", "-1")
    assert code == 2 and "Traceback" not in err
    for missing in ("a[/]b.json", "run[bold]2.json"):
        code, _, err = dm("run", missing)
        assert code == 2 and f"{missing}: no such file" in err, err


def test_progress_bar_on_a_terminal_and_lines_in_order(pipeline: pathlib.Path) -> None:
    """On a terminal, the bar counts this run's attempts, failed ones apart, and names
    what runs (printed as written); elsewhere, a tick's changes come in the order
    they happened: leaf ended before top did."""
    import io

    from rich.console import Console

    from dmcore.cli import progress
    from dmcore.ids import AttemptID
    from dmcore.runtime.embedded import Embedded, home_registry

    code, out, _ = dm("run", "run.json", "--json")
    assert code == 1
    top = AttemptID(json.loads(out)["attempts"][0]["quest"], 1)
    home = pipeline / ".dm"
    emb = Embedded(home, home_registry(home))
    try:
        screen = io.StringIO()
        term = Console(file=screen, force_terminal=True, width=120)
        with progress.Watch(emb.engine, [top], term, quiet=False) as watch:
            watch.tick(force=True)
        assert "2/2" in screen.getvalue() and "2 failed" in screen.getvalue()

        log = io.StringIO()
        watch = progress.Watch(emb.engine, [top], Console(file=log, width=200), quiet=False)
        watch._lines(watch.states, {})
        lines = log.getvalue().splitlines()
        assert [line.split()[1] for line in lines] == ["leaf", "top"], lines
    finally:
        emb.close()


def test_fingerprint_globs(
    pipeline: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`inputs` globs: `**` leaves out hidden folders (dm's own home among them) and
    __pycache__, so the same files give the same ID run after run; an absolute
    pattern counts; a pattern that matches nothing is a warning."""
    (pipeline / "flag").write_text("ok\n")
    (pipeline / "conf").mkdir()
    (pipeline / "conf" / "a.json").write_text("{}")
    (pipeline / "conf" / "__pycache__").mkdir()
    (pipeline / "conf" / "__pycache__" / "x.json").write_text("1")
    outside = tmp_path_factory.mktemp("outside") / "shared.json"
    outside.write_text("{}")
    run = json.loads((pipeline / "run.json").read_text())
    run["quests"][0]["distributor_parameters"]["inputs"] = [
        "leaf.py",
        "**/*.json",
        str(outside),
        "data/*.csv",
    ]
    (pipeline / "run.json").write_text(json.dumps(run))
    code, out, err = dm("run", "run.json", "--json")
    assert code == 0, out + err
    first = json.loads(out)["attempts"][0]["quest"]
    assert "inputs 'data/*.csv' matches no file" in err
    # dm's home now holds *.json files (job states), compiled Python appeared: same ID.
    assert list((pipeline / ".dm").glob("**/*.json"))
    (pipeline / "conf" / "__pycache__" / "x.json").write_text("2")
    code, out, _ = dm("run", "run.json", "--json")
    assert json.loads(out)["attempts"][0]["quest"] == first
    assert json.loads(out)["executions_run"] == 0
    for edit in (pipeline / "conf" / "a.json", outside):
        edit.write_text('{"edited": true}')
        code, out, _ = dm("quest-id", "run.json")
        assert code == 0 and out.split()[0] != first, edit
        first = out.split()[0]


def test_a_command_that_cannot_start_says_why(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    run = {
        "quests": [
            {
                "distributor_config_name": "local",
                "parameters": {"name": name},
                "distributor_parameters": {"command": [program]},
            }
            for name, program in (("folder", "./adir"), ("absent", "no-such-program-dm"))
        ]
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    code, out, _ = dm("run", str(tmp_path / "run.json"), "--home", str(tmp_path / "h"), "--json")
    assert code == 1
    reasons = {f["name"]: f["reason"] for f in json.loads(out)["failures"]}
    assert reasons["folder"].endswith("./adir is a folder, not a program"), reasons
    assert reasons["absent"].endswith(
        "no program 'no-such-program-dm' on PATH (./no-such-program-dm for one in the working "
        "folder)"
    ), reasons
