"""Run a remote distributor's example end to end on this machine, against TEST DOUBLES.

    uv run python examples/run_local.py http             # a real functions-framework worker
    uv run python examples/run_local.py cloud_run_jobs
    uv run python examples/run_local.py swarming_v1

No emulator exists for Cloud Tasks, Cloud Run or Swarming, so the service the
distributor talks to is a test double from the test tree, run here on
127.0.0.1 and named as such (``tests/fake_cloudtasks.py``,
``tests/fake_cloudrun.py``, ``tests/fake_swarming.py``): nothing reaches
Google Cloud or a Swarming server. What is real: dm (``dm serve``'s functions,
embedded store, in this process), the distributor and its official client
library talking to the double over the wire, the example worker or job as its
own process talking to dm over HTTP, and the reports it sends.

* ``http``: the Cloud Tasks double dispatches each task to
  ``examples/http/worker.py`` served by functions-framework.
* ``cloud_run_jobs``: the Cloud Run double runs each execution of the job as
  ``python examples/cloud_run_jobs/job.py ARGS`` with the execution's env.
* ``swarming_v1``: the Swarming double runs each task's command as a bot
  would (``LUCI_CONTEXT`` carrying ``secret_bytes``) and, as Swarming
  publishes to Pub/Sub, pushes the task's end to dm_notify as a Pub/Sub push
  subscription would.

The example's ``config.yaml`` and ``run.yaml`` are used as they are, with
their 127.0.0.1 addresses pointed at the ports chosen here. Exit status 0 when
every attempt of ``run.yaml`` FINISHED.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the test doubles live in tests/

from dmcore import remote  # noqa: E402
from dmcore.cli.runfile import parse_run_file  # noqa: E402
from dmcore.runtime.files import load_document  # noqa: E402
from tests import remote_support as rs  # noqa: E402

EXAMPLES = ("http", "cloud_run_jobs", "swarming_v1")
NOTIFY_TOPIC = "projects/dm-local/topics/dm-distributor-notify"
TIMEOUT_S = 300.0

Say = Callable[[str], None]


def _double(say: Say, what: str, where: str) -> None:
    say(f"TEST DOUBLE of {what} on {where} (tests/; not the real service)")


def _now_us() -> int:
    return time.time_ns() // 1000


def _local(url: str, port: int) -> str:
    """``url`` with its 127.0.0.1 address moved to ``port``."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname != "127.0.0.1":
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


@contextlib.contextmanager
def _http(cfg: dict[str, Any], dm_port: int, tmp: pathlib.Path, say: Say) -> Iterator[None]:
    from distributors.http import distributor as httpd
    from tests.fake_cloudtasks import FakeCloudTasksServer

    worker, url = rs.start_worker(REPO / "examples/http/worker.py", "main", tmp / "worker.log")
    say(f"worker: functions-framework --source examples/http/worker.py on {url}")
    cfg["url"] = url
    try:
        limit = int(cfg.get("max_attempts") or httpd.DEFAULT_MAX_ATTEMPTS)
        with FakeCloudTasksServer(clock=_now_us, max_attempts=limit) as tasks:
            os.environ[httpd.EMULATOR_ENV] = tasks.address
            _double(say, "Cloud Tasks", f"{tasks.address} ({httpd.EMULATOR_ENV})")
            tasks.start_dispatcher()
            yield
    finally:
        rs.stop(worker)


@contextlib.contextmanager
def _cloud_run_jobs(
    cfg: dict[str, Any], dm_port: int, tmp: pathlib.Path, say: Say
) -> Iterator[None]:
    from distributors.cloud_run_jobs import distributor as crj
    from tests.fake_cloudrun import FakeCloudRunServer, FakeJob

    job = FakeJob(
        cfg["jobs"][0], command=[sys.executable, str(REPO / "examples/cloud_run_jobs/job.py")]
    )
    with FakeCloudRunServer(clock=_now_us, jobs=[job]) as cloudrun:
        os.environ[crj.EMULATOR_ENV] = cloudrun.address
        _double(say, "Cloud Run", f"{cloudrun.address} ({crj.EMULATOR_ENV})")
        say(f"its job {job.name} runs: python examples/cloud_run_jobs/job.py ARGS")
        yield


@contextlib.contextmanager
def _swarming_v1(cfg: dict[str, Any], dm_port: int, tmp: pathlib.Path, say: Say) -> Iterator[None]:
    from tests.fake_swarming import FakeSwarming

    notify = f"http://127.0.0.1:{dm_port}/dm_notify/"

    def push(topic: str, data: bytes, attrs: dict[str, str]) -> None:
        body = remote.push_envelope(data, attrs, "projects/dm-local/subscriptions/dm-notify-push")
        req = urllib.request.Request(notify, body, {"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(req, timeout=30).close()

    os.environ["DM_NOTIFY_TOPIC"] = NOTIFY_TOPIC  # what Swarming is told to publish to
    with FakeSwarming(push, run_commands=True) as swarming:
        cfg["swarming"] = {"url": swarming.url}
        _double(say, "Swarming (v1 API, and a bot)", swarming.url)
        say(f"Pub/Sub stand-in: the double pushes task ends to {notify}")
        yield


DOUBLES = {"http": _http, "cloud_run_jobs": _cloud_run_jobs, "swarming_v1": _swarming_v1}


def _summary(att: Any) -> str:
    if att.data.HasField("finished"):
        return f"FINISHED {att.data.finished.data.object}"
    a = att.data.abnormal_finish
    return f"ABNORMAL_FINISHED {a.status} {a.reason}"


def run(example: str, home: pathlib.Path, say: Say = print) -> bool:
    """Run ``examples/<example>``; True when every attempt of its run file FINISHED."""
    from dmcore.runtime import backend as backends
    from dmcore.runtime.serve import LocalServer
    from dmcore.service import Caller

    home = home.resolve()
    os.chdir(REPO)  # run files name scripts relative to the repository
    doc = load_document(REPO / "examples" / example / "config.yaml")
    [(name, entry)] = doc["distributor_configs"].items()
    cfg = entry[example]
    port = rs.free_port()
    for key in ("dm_api_url", "report_url"):
        if key in cfg:
            cfg[key] = _local(cfg[key], port)
    rr = parse_run_file(REPO / "examples" / example / "run.yaml")
    with (
        tempfile.TemporaryDirectory(prefix="dm-example-") as tmp,
        DOUBLES[example](cfg, port, pathlib.Path(tmp), say),
    ):
        server = LocalServer(port, home, config=doc, sweep_every_s=0.5, out=say).start()
        try:
            service = backends.get().service
            service.ensure_graph_data(rr.request, Caller.trusted())
            got = rs.wait_for(service, rr.attempts, TIMEOUT_S)
        finally:
            server.close()
    ok = True
    for aid, att in got.items():
        say(f"{aid.quest}|{aid.num}: {_summary(att)} ({len(att.executions)} execution(s))")
        ok = ok and att.data.HasField("finished")
    say(f"quest {name!r} of examples/{example}: {'done' if ok else 'FAILED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("example", choices=EXAMPLES)
    parser.add_argument("--home", type=pathlib.Path, help="dm's home (default: a fresh one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dm-home-") as fresh:
        ok = run(args.example, args.home or pathlib.Path(fresh))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
