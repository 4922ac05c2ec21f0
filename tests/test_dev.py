"""``dm dev``: the local rehearsal of the deployment, end to end, and its start/stop.

The rehearsal (:class:`~dmcore.runtime.dev.DevStack`) runs each function in
its own functions-framework process on the gcp backend, the gcloud Firestore
and Pub/Sub emulators (the session's, reused), the Cloud Tasks stand-in
pushing tasks to dm_tasks over HTTP, the push subscription to dm_notify and a
scheduler tick. The test drives the jobsim fan-out graph
(``examples/jobsim_fanout.yaml``: 6 leaves of 3, root 6 x 3 + 1 = 19) through
dm_api's HTTP endpoint alone, as a user of the deployment would. The wait is
bounded by a generous safety limit; nothing asserts on timing.

``dm dev`` itself (the command) is started as a process and stopped with
SIGTERM: everything it started must be gone. And a bare functions-framework
on the embedded backend refuses to start, pointing to ``dm dev``.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from dmcore.cli.runfile import parse_run_file
from dmcore.proto import dm_pb2
from dmcore.runtime import dev
from dmcore.runtime.procs import group_alive
from tests.test_functions_support import MAIN, ROOT, clean_env
from tests.test_gcp_e2e import prpc, walk

FANOUT = ROOT / "examples" / "jobsim_fanout.yaml"
SAFETY_S = 300.0
"""Wall-clock safety limit (a hang fails; it is no timing assertion)."""


def _bound(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


@pytest.fixture
def stack(
    firestore_emulator: str,
    pubsub_emulator: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dev.DevStack]:
    clean_env(monkeypatch)
    project = f"dm-dev-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    lines: list[str] = []
    with dev.DevStack(
        0, tmp_path / "home", sweep_every_s=1.0, project=project, out=lines.append, queues=2
    ) as st:
        assert any(st.api_url in line for line in lines)  # the banner names dm_api's URL
        yield st


@pytest.mark.emulator
def test_jobsim_graph_to_its_result_through_dm_api(stack: dev.DevStack) -> None:
    # Each function is its own process, bound to 127.0.0.1 only.
    pids = {fn.proc.pid for fn in stack.functions.values() if fn.proc is not None}
    assert len(pids) == 4
    assert all(fn.url.startswith("http://127.0.0.1:") for fn in stack.functions.values())
    assert stack.emulators == []  # the session's emulators were reused, not started

    run = parse_run_file(FANOUT)
    (root,) = run.attempts
    rsp = prpc(stack.api_url, "EnsureGraphData", run.request, dm_pb2.EnsureGraphDataRsp())
    assert rsp.accepted and rsp.quest_ids[0].id == root.quest
    deadline = time.monotonic() + SAFETY_S
    state = "not walked yet"
    while state != "finished":
        assert time.monotonic() < deadline, f"safety limit hit: root attempt {state}"
        assert not stack.dead(), [f.target for f in stack.dead()]
        att = walk(stack.api_url, root)
        state = att.data.WhichOneof("attempt_type") or "unknown"
        assert state != "abnormal_finish", att
        time.sleep(0.5)
    final = walk(stack.api_url, root)
    assert json.loads(final.data.finished.data.object) == {"success": True, "value": 19}

    # Cloud Tasks' part was played by the stand-in over HTTP, with Cloud Tasks' headers,
    # spread over both queues; Pub/Sub pushed to dm_notify; the scheduler ticked.
    assert stack.tasks is not None
    dispatches = list(stack.tasks.dispatches)
    assert dispatches and all(d.url.startswith(stack.functions["dm_tasks"].url) for d in dispatches)
    assert all("X-CloudTasks-TaskRetryCount" in d.headers for d in dispatches)
    assert {d.headers["X-CloudTasks-QueueName"] for d in dispatches} == {
        "dm-tasks-0",
        "dm-tasks-1",
    }
    assert not stack.tasks.tasks("failed")
    notify_log = stack.functions["dm_notify"].log.read_text()
    assert '"notification processed"' in notify_log
    assert stack.sweeps > 0


@pytest.mark.emulator
def test_dm_dev_stops_everything_on_sigterm(
    firestore_emulator: str, pubsub_emulator: str, tmp_path: pathlib.Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DM_")}
    dm = pathlib.Path(sys.executable).with_name("dm")
    proc = subprocess.Popen(
        [str(dm), "dev", "--port", "0", "--home", str(tmp_path / "home")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        seen: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + SAFETY_S
        while not any("Ctrl-C stops everything" in line for line in seen):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
            seen.append(proc.stdout.readline())
        banner = "".join(seen)
        urls = [w for w in banner.split() if w.startswith("http://127.0.0.1:")]
        ports = sorted({int(u.rsplit(":", 1)[1].split("/")[0]) for u in urls})
        assert len(ports) == 4, banner
        assert all(_bound("127.0.0.1", p) for p in ports)
        groups = _function_groups(proc.pid)
        assert len(groups) == 4
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, rest
        assert "dm dev: stopping" in rest
        assert not [g for g in groups if group_alive(g)]
        assert not [p for p in ports if _bound("127.0.0.1", p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _function_groups(parent: int) -> list[int]:
    """Process groups of the guard shells ``dm dev`` (pid ``parent``) started."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid,ppid,pgid,args"], capture_output=True, text=True, check=True
    ).stdout
    groups = []
    for line in out.splitlines()[1:]:
        _pid, ppid, pgid, args = line.split(None, 3)
        if int(ppid) == parent and "dm-dev-dm_" in args:
            groups.append(int(pgid))
    return groups


def test_bare_functions_framework_on_the_embedded_backend_refuses(
    tmp_path: pathlib.Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DM_", "K_"))}
    env["DM_HOME"] = str(tmp_path / "home")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ff = [sys.executable, "-m", "functions_framework", "--target", "dm_api", "--source", MAIN]
    out = subprocess.run(
        [*ff, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode != 0
    assert "dm dev" in out.stderr and "dm serve" in out.stderr
    assert not (tmp_path / "home" / "dm.sqlite").exists()  # refused before accepting anything


def test_dm_dev_bad_config_is_exit_2_without_traceback(tmp_path: pathlib.Path) -> None:
    from typer.testing import CliRunner

    from dmcore.cli import app

    bad = tmp_path / "dm.yaml"
    bad.write_text("distributor_configs:\n  x:\n    warp: {}\n")
    r = CliRunner().invoke(app, ["dev", "--config", str(bad), "--home", str(tmp_path / "h")])
    assert r.exit_code == 2, r.output
    assert "warp" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "h").exists()  # nothing was started
