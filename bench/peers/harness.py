"""``make bench``: dm and its peers side by side, then BENCHMARKS.md and its plots.

Run: ``uv run python -m bench.peers`` (``--help`` for the knobs). In order:

1. the peers' environments under ``.bench/`` (:mod:`bench.peers.envs`):
   Prefect 3, Celery 5 with the Redis client, matplotlib for the plots;
2. every workload of :mod:`bench.peers.workloads` on every system, the
   systems alternating run by run (dm, Prefect, Celery, dm, ...) for
   ``--rounds`` rounds; each run is a fresh process (the system's runner) in a
   fresh directory, its summed process-tree RSS sampled meanwhile
   (:mod:`bench.peers.procs`), its answer checked; Celery is skipped, with
   the reason, when there is no ``redis-server``;
3. dm alone: :mod:`bench.bench_engine` (embedded scale) and
   :mod:`bench.bench_firestore` (Firestore operations per execution, on the
   emulator), each as a subprocess printing JSON;
4. the raw figures (``bench/results/*.json``), the plots
   (``bench/results/*.png``, :mod:`bench.peers.plots` in the plot
   environment), ``BENCHMARKS.md`` (:mod:`bench.peers.report`), and the
   headline block of README.md between its ``bench:headline`` markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench.peers import envs, procs, report
from bench.peers.workloads import Workload

ROOT = envs.ROOT
DEFAULT_WORKLOADS = "fan:100,fan:1000,fan:10000,chain:200,cached:1000,local:100"
RUN_TIMEOUT_S = 3600.0


@dataclasses.dataclass(frozen=True)
class System:
    key: str
    name: str
    module: str
    durability: str
    runs: tuple[str, ...]
    """Workload kinds it runs."""
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    """Why it does not run a kind, or how it runs one."""


SYSTEMS = (
    System(
        "dm",
        "dm",
        "bench.peers.dm_runner",
        "SQLite in WAL mode with synchronous=FULL, the task queue in the same file: "
        "a batch of steps is fsynced before it is acknowledged (survives power loss)",
        ("fan", "chain", "cached", "local"),
        {
            "local": "local distributor: a new process per task (and a supervisor each)",
            "cached": "the same graph submitted again: every result reused (memoised)",
        },
    ),
    System(
        "prefect",
        "Prefect",
        "bench.peers.prefect_runner",
        "its ephemeral server's SQLite (WAL, synchronous=NORMAL: survives a crash of "
        "the process, may lose the last commits on power loss); task states reach it "
        "as events batched in memory",
        ("fan", "chain", "cached", "local"),
        {
            "local": "ProcessPoolTaskRunner: a pool of one process per CPU "
            "(Prefect 3 has no process per task)",
            "cached": "cache keys from the task inputs (cache_policy=INPUTS), results "
            "persisted to local files",
        },
    ),
    System(
        "celery",
        "Celery",
        "bench.peers.celery_runner",
        "none here: Redis without persistence (no RDB, no AOF) holds the queue and "
        "the results; a Redis restart loses both",
        ("fan", "chain", "local"),
        {
            "local": "prefork worker with --max-tasks-per-child 1: a new process per task",
            "cached": "no result cache (Celery keeps none): not run",
        },
    ),
)


@dataclasses.dataclass
class Run:
    system: str
    workload: str
    round: int
    ok: bool
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    executions: int | None = None
    error: str = ""


# -- running -----------------------------------------------------------------------------------


def runner_env(system: System, home: pathlib.Path, redis: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if system.key == "prefect":
        env |= {
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        }
        env.pop("PREFECT_API_URL", None)
    if system.key == "celery" and redis:
        env["REDIS_SERVER"] = redis
    return env


def run_once(
    system: System,
    python: pathlib.Path,
    workload: Workload,
    rnd: int,
    *,
    work: pathlib.Path,
    logs: pathlib.Path,
    redis: str | None,
    timeout_s: float,
) -> Run:
    """One fresh run of ``workload`` on ``system``, in its own directory and process."""
    home = pathlib.Path(tempfile.mkdtemp(prefix=f"{system.key}-", dir=work))
    log = logs / f"{system.key}-{workload.kind}-{workload.size}-round{rnd}.log"
    argv = [str(python), "-m", system.module, workload.name, str(home)]
    rss = procs.PeakRss()
    try:
        with log.open("wb") as err, rss:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=runner_env(system, home, redis),
                stdout=subprocess.PIPE,
                stderr=err,
            )
            try:
                out, _ = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                why = f"timed out after {timeout_s:.0f} s (log: {log.relative_to(ROOT)})"
                return Run(system.key, workload.name, rnd, False, error=why)
    finally:
        procs.stop_leftovers(keep=rss.before)
        shutil.rmtree(home, ignore_errors=True)
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = f"exit {proc.returncode}: {last_line(log)} (log: {log.relative_to(ROOT)})"
        return Run(system.key, workload.name, rnd, False, error=why)
    answer = json.loads(lines[-1])
    if answer["value"] != workload.value:
        return Run(
            system.key,
            workload.name,
            rnd,
            False,
            error=f"value {answer['value']}, expected {workload.value}",
        )
    return Run(
        system.key,
        workload.name,
        rnd,
        True,
        seconds=float(answer["seconds"]),
        peak_rss_mib=max(rss.mib, float(answer.get("self_peak_rss_mib", 0))),
        executions=answer.get("executions"),
    )


def last_line(log: pathlib.Path, limit: int = 200) -> str:
    """The last non-empty line a runner wrote to its log (what it died of)."""
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:limit] if lines else ""


def summarise(runs: Sequence[Run], workloads: Sequence[Workload]) -> dict[str, Any]:
    """Per workload and system: min and median seconds, tasks/s, per-link ms, peak RSS."""
    out: dict[str, Any] = {}
    for w in workloads:
        row: dict[str, Any] = {}
        for s in SYSTEMS:
            mine = [r for r in runs if r.system == s.key and r.workload == w.name]
            good = [r.seconds for r in mine if r.ok]
            if not mine:
                continue
            if not good:
                row[s.key] = {"error": next(r.error for r in mine if not r.ok)}
                continue
            best = min(good)
            entry: dict[str, Any] = {
                "runs": len(good),
                "failed": len(mine) - len(good),
                "errors": [r.error for r in mine if not r.ok],
                "min_seconds": round(best, 4),
                "median_seconds": round(statistics.median(good), 4),
                "tasks_per_s": round(w.tasks / best, 1) if best > 0 else None,
                "peak_rss_mib": max(r.peak_rss_mib for r in mine if r.ok),
            }
            if w.kind == "chain":
                entry["per_link_ms"] = round(best / w.size * 1000, 3)
            execs = [r.executions for r in mine if r.ok and r.executions is not None]
            if execs:
                entry["executions"] = execs[0]
            row[s.key] = entry
        dm = row.get("dm", {})
        for key, entry in row.items():
            if key != "dm" and "min_seconds" in entry and "min_seconds" in dm:
                # > 1: dm is that many times faster (peer's time / dm's time).
                entry["dm_speedup"] = round(entry["min_seconds"] / max(dm["min_seconds"], 1e-9), 2)
        out[w.name] = {"tasks": w.tasks, "systems": row}
    return out


# -- dm alone ------------------------------------------------------------------------------------


def dm_alone(module: str, args: Sequence[str], log: pathlib.Path) -> dict[str, Any] | None:
    """Run ``python -m module ... --json`` in dm's environment; its JSON, or None (logged)."""
    argv = [sys.executable, "-m", module, *args, "--json"]
    with log.open("wb") as err:
        proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, check=False)
    if proc.returncode != 0:
        print(f"  {module} failed (exit {proc.returncode}); see {log}", flush=True)
        return None
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# -- the environment -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    load = os.getloadavg()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "dm_commit": commit or "?",
        "load_average_at_start": [round(x, 2) for x in load],
    }


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return out.stdout.strip() or "?"


# -- the program ---------------------------------------------------------------------------------


def parse_workloads(text: str) -> list[Workload]:
    try:
        return [Workload.parse(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each workload per system")
    ap.add_argument(
        "--systems", default="dm,prefect,celery", help="which systems (dm,prefect,celery)"
    )
    ap.add_argument(
        "--workloads",
        type=parse_workloads,
        default=parse_workloads(DEFAULT_WORKLOADS),
        help=f"KIND:N, comma-separated; kinds fan, chain, cached, local ({DEFAULT_WORKLOADS})",
    )
    ap.add_argument(
        "--engine-cases",
        default=None,
        help="bench_engine --cases (default: its own); 'none' to skip",
    )
    ap.add_argument(
        "--firestore-scenarios",
        default=None,
        help="bench_firestore --scenarios (default: its own); 'none' to skip",
    )
    ap.add_argument("--results", type=pathlib.Path, default=ROOT / "bench" / "results")
    ap.add_argument("--report", type=pathlib.Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument(
        "--readme",
        type=pathlib.Path,
        default=ROOT / "README.md",
        help="README whose bench:headline block is rewritten ('none': leave it)",
    )
    ap.add_argument("--no-plots", action="store_true", help="no plots (no matplotlib needed)")
    ap.add_argument("--run-timeout", type=float, default=RUN_TIMEOUT_S, help="seconds per run")
    ap.add_argument(
        "--report-only",
        type=pathlib.Path,
        metavar="RESULTS_JSON",
        help="run nothing: write the report, plots and README block from a results.json",
    )
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(wanted) - {s.key for s in SYSTEMS}
    if unknown:
        ap.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    logs = envs.HOME / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return republish(args.report_only, args, logs)
    work = envs.HOME / "runs"
    work.mkdir(parents=True, exist_ok=True)
    if not procs.become_subreaper():
        print("note: cannot adopt detached processes; their memory is not counted", flush=True)

    meta = machine()
    versions: dict[str, str] = {"dm": envs.version_of(pathlib.Path(sys.executable), "dm")}
    pythons: dict[str, pathlib.Path] = {"dm": pathlib.Path(sys.executable)}
    skipped: dict[str, str] = {}
    redis = shutil.which("redis-server")
    for key in wanted:
        if key == "dm":
            continue
        if key == "celery" and redis is None:
            skipped[key] = "no redis-server binary (apt-get install redis-server)"
            print(f"Celery skipped: {skipped[key]}", flush=True)
            continue
        print(f"environment .bench/{key} ...", flush=True)
        try:
            pythons[key] = envs.ensure(key, log=logs / f"env-{key}.log")
        except envs.EnvError as e:
            skipped[key] = str(e)
            print(f"{key} skipped: {e}", flush=True)
            continue
    if "prefect" in pythons:
        versions["prefect"] = envs.version_of(pythons["prefect"], "prefect")
    if "celery" in pythons:
        versions["celery"] = envs.version_of(pythons["celery"], "celery")
        versions["redis (Python client)"] = envs.version_of(pythons["celery"], "redis")
        versions["redis-server"] = redis_version(redis or "redis-server")

    systems = [s for s in SYSTEMS if s.key in pythons]
    runs: list[Run] = []
    for rnd in range(1, args.rounds + 1):
        for w in args.workloads:
            for s in systems:
                if w.kind not in s.runs:
                    continue
                started = time.monotonic()
                r = run_once(
                    s,
                    pythons[s.key],
                    w,
                    rnd,
                    work=work,
                    logs=logs,
                    redis=redis,
                    timeout_s=args.run_timeout,
                )
                runs.append(r)
                what = (
                    f"{r.seconds:.3f} s, peak RSS {r.peak_rss_mib:.0f} MiB"
                    if r.ok
                    else f"FAILED: {r.error}"
                )
                print(
                    f"round {rnd} {w.name:<12} {s.name:<8} {what} "
                    f"({time.monotonic() - started:.0f} s with set-up)",
                    flush=True,
                )

    engine = firestore = None
    if args.engine_cases != "none":
        print("bench_engine ...", flush=True)
        extra = ["--cases", args.engine_cases] if args.engine_cases else []
        engine = dm_alone("bench.bench_engine", extra, logs / "bench_engine.log")
    if args.firestore_scenarios != "none":
        print("bench_firestore ...", flush=True)
        extra = ["--scenarios", args.firestore_scenarios] if args.firestore_scenarios else []
        firestore = dm_alone("bench.bench_firestore", extra, logs / "bench_firestore.log")

    results = {
        "machine": meta,
        "versions": versions,
        "rounds": args.rounds,
        "systems": {
            s.key: {"name": s.name, "durability": s.durability, "notes": s.notes}
            for s in SYSTEMS
            if s.key in wanted
        },
        "skipped": skipped,
        "workloads": [w.name for w in args.workloads],
        "summary": summarise(runs, args.workloads),
        "runs": [dataclasses.asdict(r) for r in runs],
        "engine": engine,
        "firestore": firestore,
    }
    publish(results, args, logs)
    return 0 if all(r.ok for r in runs) else 1


def publish(results: dict[str, Any], args: argparse.Namespace, logs: pathlib.Path) -> None:
    """Save the results, draw the plots, write the report and README's headline block."""
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plots: list[str] = []
    if not args.no_plots:
        plots = make_plots(args.results, logs)
    text = report.render(results, plots, relative_to=args.report.parent)
    args.report.write_text(text)
    print(f"wrote {args.report} and {args.results}/", flush=True)
    if (
        str(args.readme) != "none"
        and args.readme.exists()
        and report.update_readme(args.readme, results, args.report)
    ):
        print(f"updated the headline figures in {args.readme}", flush=True)


def republish(source: pathlib.Path, args: argparse.Namespace, logs: pathlib.Path) -> int:
    """The report of an earlier run again (its summary recomputed), without running anything."""
    results = json.loads(source.read_text())
    runs = [Run(**r) for r in results["runs"]]
    results["summary"] = summarise(runs, [Workload.parse(w) for w in results["workloads"]])
    publish(results, args, logs)
    return 0


def make_plots(results: pathlib.Path, logs: pathlib.Path) -> list[str]:
    """The PNGs, drawn in the plot environment; their paths ([] if that failed, said why)."""
    try:
        py = envs.ensure("plot", log=logs / "env-plot.log")
    except envs.EnvError as e:
        print(f"no plots: {e}", flush=True)
        return []
    proc = subprocess.run(
        [str(py), "-m", "bench.peers.plots", str(results / "results.json"), str(results)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(f"no plots: {proc.stderr[-2000:]}", flush=True)
        return []
    return [line for line in proc.stdout.splitlines() if line.endswith(".png")]
