"""Smoke runs of the benchmarks (tiny sizes), so they do not rot. No figure is asserted:
only that they run, check their own results, and report every case they were asked for."""

from __future__ import annotations

import json

import pytest

from bench import bench_engine


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


def test_bench_engine_refuses_unknown_cases(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench_engine.main(["--cases", "nope:3"])
    assert e.value.code == 2
    assert "unknown case 'nope'" in capsys.readouterr().err
