"""Smoke runs of the benchmarks (tiny sizes), so they do not rot. No figure is asserted:
only that they run, check their own results, and report every case they were asked for."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from bench import bench_engine
from dmcore.proto import dm_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_engine_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    bench_engine.main(["-n", "3", "-r", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    cases = out["cases"]
    assert set(cases) == {"independent:3", "fan-in:3", "chain:3"}
    # Executions are dm's behaviour, not timing: a fan-in root runs twice (halts
    # on its shards, resumes), and so does every link of a chain but the bottom one.
    assert cases["independent:3"]["executions"] == 3
    assert cases["fan-in:3"]["executions"] == 3 + 2
    assert cases["chain:3"]["executions"] == 2 * 3 - 1
    for c in cases.values():
        assert c["seconds"] > 0 and c["executions_per_s"] > 0 and c["peak_rss_mib"] > 0
        assert c["memo_seconds"] >= 0
    assert cases["chain:3"]["per_link_ms"] > 0


def test_bench_reads_a_memoised_answer_only_when_every_attempt_is_over() -> None:
    answer = dm_pb2.GraphData()
    answer.quests["a"].attempts[1].data.finished.data.object = '{"value":1}'
    answer.quests["b"].attempts[1].data.abnormal_finish.reason = "failed"
    assert bench_engine.memoised_results(answer, ["b", "a"]) == [None, {"value": 1}]
    answer.quests["c"].attempts[1].data.executing.cur_execution_id = 1
    answer.quests["d"].attempts[2].data.finished.data.object = "{}"
    for qids in (["a", "c"], ["a", "d"], ["a", "e"]):
        assert bench_engine.memoised_results(answer, qids) is None
    assert "e" not in answer.quests  # looked for, not added


def test_bench_engine_refuses_unknown_cases(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench_engine.main(["--cases", "nope:3"])
    assert e.value.code == 2
    assert "unknown case 'nope'" in capsys.readouterr().err


@pytest.mark.emulator
def test_bench_firestore_smoke(firestore_emulator: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import bench_firestore

    bench_firestore.main(
        ["--scenarios", "leaf:2,fan-in:2,chain:2", "--emulator-host", firestore_emulator, "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["prices"]["date"]
    scenarios = out["scenarios"]
    assert {n: s["executions"] for n, s in scenarios.items()} == {
        "leaf": 2,
        "fan-in": 2 + 2,
        "chain": 2 * 2 - 1,
    }
    for s in scenarios.values():
        n = s["executions"]
        # The breakdown by step and by collection adds up to the per-execution figures.
        for table in (s["steps"], s["collections"]):
            reads = sum(r["reads"] for r in table.values())
            writes = sum(r["writes"] + r["deletes"] for r in table.values())
            assert reads == pytest.approx(s["reads_per_execution"] * n, abs=0.01 * n)
            assert writes == pytest.approx(s["writes_per_execution"] * n, abs=0.01 * n)
        deliveries = sum(r["deliveries"] for r in s["steps"].values())
        assert deliveries == pytest.approx(s["tasks_per_execution"] * n, abs=0.01 * n)
        # Function invocations: every delivery of dm's tasks is one of dm_tasks; the
        # client's EnsureGraphData and each job's calls are dm_api; each job's end
        # is reported once (dm_notify); jobsim's own task is the distributor's.
        calls = s["invocations"]
        assert calls["dm_tasks"] == deliveries
        assert calls["dm_api"] >= 1 + n and calls["dm_notify"] == n
        assert sum(calls.values()) == pytest.approx(
            s["invocations_per_execution"] * n, abs=0.01 * n
        )
        assert (
            s["distributor"]["invocations_per_execution"] == s["distributor"]["tasks_per_execution"]
        )
        assert s["max_writes_one_document"] >= 1
        assert s["largest_commit"] >= 1
        assert s["max_documents_one_transaction"] >= s["largest_commit"]
        assert s["usd_per_million_executions"] > 0
        # jobsim keeps one task document per execution in its own collection.
        assert s["distributor"]["collections"] == ["jobsim_tasks"]
        assert s["distributor"]["tasks_per_execution"] >= 1
        assert "jobsim_tasks" not in s["collections"]


def test_side_by_side_harness_smoke(tmp_path: pathlib.Path) -> None:
    """``make bench``'s harness, dm only and tiny: it runs every kind of workload, checks
    each answer and writes its report (the peers and the plots are left to ``make bench``)."""
    report = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.peers",
            "--systems",
            "dm",
            "--workloads",
            "fan:10,chain:10,cached:10,local:2",
            "--rounds",
            "1",
            "--engine-cases",
            "none",
            "--firestore-scenarios",
            "none",
            "--no-plots",
            "--results",
            str(tmp_path),
            "--report",
            str(report),
            "--readme",
            "none",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["workload"] for r in results["runs"]] == [
        "fan:10",
        "chain:10",
        "cached:10",
        "local:2",
    ]
    assert all(r["ok"] for r in results["runs"]), results["runs"]
    # N leaves and the root twice (halted on its leaves, resumed); the memoised
    # re-run executes nothing.
    executions = {r["workload"]: r["executions"] for r in results["runs"]}
    assert executions == {"fan:10": 12, "chain:10": 19, "cached:10": 0, "local:2": 4}
    text = report.read_text()
    for heading in ("## Method", "## Durability", "## Headline", "## chain of 10 tasks"):
        assert heading in text
