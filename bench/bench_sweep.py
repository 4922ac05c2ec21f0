"""What one sweep and one attempt write cost on SQLite (run: uv run python -m bench.bench_sweep).

The sweep (``Engine.sweep``) runs one ordered query per due field of the
attempts (timers, polls, expiries, pending follow-ups). Served by the store's
ordered columns it reads only the attempts that have the field; without them
it parses every attempt. For each size N (``--sizes``, default
1,000/10,000/100,000) this fills a home with N attempts cloned from a real
finished attempt (a jobsim graph run first), a few of them with due fields,
and times one sweep (best of ``--repeat``, wall and CPU seconds):

* ``scan``: the file without ordered columns (as dm wrote it before), opened
  by a store that is given none: every query parses every document;
* ``indexed``: the same file opened by the embedded runtime, which adds the
  columns, filled from the documents, at open (the time of that is shown).

Then the cost of an attempt write (µs of CPU per transaction writing one
attempt of the template, 100 transactions per commit as the worker batches),
with and without ordered columns, in the same run. Figures only, never
asserted in tests; compare figures of one run (same load).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.bench_engine import CONFIG, SHAPES, request, timed_request
from dmcore.engine import docs, layout
from dmcore.runtime.embedded import Embedded, build_registry
from dmcore.store.base import Doc, Transaction
from dmcore.store.sqlite import SqliteStore

DUE = 200
"""Attempts with due fields not yet due (a timer, pending follow-ups) at every N: a full
page of each of those queries (``Settings.sweep_batch``). A sweep's queries are bounded
by now, so it should decode none of them; the rest are finished attempts the sweep
should not look at either."""
FILL_CHUNK = 500
WRITES = 20_000
WRITES_PER_COMMIT = 100


def template(base: pathlib.Path) -> Doc:
    """A home ``base / "template-home"`` without ordered columns, holding only the layout
    record of a small jobsim graph run apart; one of that run's finished attempts."""
    run_home = base / "template-run"
    emb = Embedded(run_home, build_registry(CONFIG))
    try:
        timed_request(emb, request(SHAPES["independent"](20)))
        rows = emb.store.query(docs.ATTEMPTS, limit=1)
        meta = emb.store.get(layout.PATH)
    finally:
        emb.close()
    if not rows or meta is None:
        raise SystemExit("the template run made no attempt")
    home = SqliteStore(base / "template-home" / "dm.sqlite", indexed_fields=docs.INDEXED_FIELDS)
    home.transaction(lambda tx: tx.set(layout.PATH, meta))
    home.close()
    shutil.rmtree(run_home)
    return rows[0][1]


def clone(doc: Doc, i: int, now_us: int) -> Doc:
    """The template attempt as the ``i``-th; the first DUE have due fields, not yet due
    (the sweep looks, queues nothing, and the next sweep finds the same)."""
    out = dict(doc)
    for f in docs.SWEPT:
        out.pop(f, None)
    if i < DUE:
        out[docs.TIMER_DUE] = now_us + 3_600_000_000 + i
        out[docs.PENDING_DUE] = now_us + 3_600_000_000 + i
    return out


def fill(store: SqliteStore, doc: Doc, n: int, now_us: int) -> None:
    for start in range(0, n, FILL_CHUNK):

        def put(tx: Transaction, start: int = start) -> None:
            for i in range(start, min(n, start + FILL_CHUNK)):
                tx.set(f"{docs.ATTEMPTS}/bench{i:07d}", clone(doc, i, now_us))

        store.transaction(put)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Best wall and CPU seconds of ``fn`` over ``repeat`` runs."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best


def sweep_case(base: pathlib.Path, tmpl: Doc, n: int, repeat: int) -> dict[str, Any]:
    """One sweep over N attempts, without and with ordered columns."""
    src = base / "template-home"
    scan_home, idx_home = base / f"scan{n}", base / f"idx{n}"
    shutil.copytree(src, scan_home)
    now_us = time.time_ns() // 1000
    plain = SqliteStore(scan_home / "dm.sqlite", indexed_fields=docs.INDEXED_FIELDS)
    if plain.ordered_fields:
        raise SystemExit("the template home has ordered columns already")
    fill(plain, tmpl, n, now_us)
    plain.close()
    shutil.copytree(scan_home, idx_home)
    out: dict[str, Any] = {"attempts": n}
    scan = Embedded(
        scan_home,
        build_registry(CONFIG),
        store=SqliteStore(scan_home / "dm.sqlite", indexed_fields=docs.INDEXED_FIELDS),
    )
    try:
        counts = scan.engine.sweep()
        out["scan_wall_s"], out["scan_cpu_s"] = timed(scan.engine.sweep, repeat)
    finally:
        scan.close()
    w, c = time.perf_counter(), time.process_time()
    idx = Embedded(idx_home, build_registry(CONFIG))  # adds and fills the ordered columns
    out["open_with_backfill_s"] = round(time.perf_counter() - w, 3)
    out["open_with_backfill_cpu_s"] = round(time.process_time() - c, 3)
    try:
        if idx.engine.sweep() != counts:
            raise SystemExit(f"N={n}: the indexed sweep found other work than the scan")
        out["indexed_wall_s"], out["indexed_cpu_s"] = timed(idx.engine.sweep, repeat)
    finally:
        idx.close()
    shutil.rmtree(scan_home)
    shutil.rmtree(idx_home)
    return out


def _set(tx: Transaction, *, path: str, doc: Doc) -> None:
    tx.set(path, doc)


def write_cost(base: pathlib.Path, tmpl: Doc, ordered: bool) -> float:
    """µs of CPU per transaction writing one attempt (batched as the worker does)."""
    path = base / f"writes-{ordered}.sqlite"
    kw: dict[str, Any] = {"ordered_fields": docs.SWEPT} if ordered else {}
    store = SqliteStore(path, indexed_fields=docs.INDEXED_FIELDS, **kw)
    now_us = time.time_ns() // 1000
    docs_ = [clone(tmpl, i, now_us) for i in range(WRITES)]
    try:
        # Half the writes create, half overwrite (upsert), as attempts are written.
        c = time.process_time()
        for rnd in range(2):
            for start in range(0, WRITES, WRITES_PER_COMMIT):
                with store.batch():
                    for i in range(start, start + WRITES_PER_COMMIT):
                        p = f"{docs.ATTEMPTS}/w{i:07d}"
                        d = docs_[(i + rnd) % WRITES]
                        store.transaction(functools.partial(_set, path=p, doc=d))
        return (time.process_time() - c) / (2 * WRITES) * 1e6
    finally:
        store.close()
        for f in path.parent.glob(path.name + "*"):
            f.unlink()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default="1000,10000,100000", help="attempt counts, comma-separated")
    ap.add_argument("-r", "--repeat", type=int, default=3, help="sweeps timed per case (best kept)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes: not a list of numbers: {args.sizes!r}")
    if any(n < 1 for n in sizes) or args.repeat < 1:
        ap.error("sizes and --repeat must be at least 1")
    result: dict[str, Any] = {"sqlite": sqlite3.sqlite_version, "sweeps": []}
    with tempfile.TemporaryDirectory(prefix="dm-bench-sweep-") as tmp:
        base = pathlib.Path(tmp)
        tmpl = template(base)
        for n in sizes:
            result["sweeps"].append(sweep_case(base, tmpl, n, args.repeat))
            if not args.json:
                s = result["sweeps"][-1]
                print(
                    f"N={n:>7,}: sweep scan {s['scan_wall_s'] * 1e3:8.1f} ms "
                    f"({s['scan_cpu_s'] * 1e3:.1f} CPU), indexed "
                    f"{s['indexed_wall_s'] * 1e3:6.2f} ms ({s['indexed_cpu_s'] * 1e3:.2f} CPU); "
                    f"open with backfill {s['open_with_backfill_s']:.2f} s",
                    flush=True,
                )
        # Alternated, best of 3 each: the machine may be shared.
        plain, ordered = [], []
        for _ in range(3):
            plain.append(write_cost(base, tmpl, False))
            ordered.append(write_cost(base, tmpl, True))
        result["write_us_plain"] = round(min(plain), 2)
        result["write_us_ordered"] = round(min(ordered), 2)
    result["attempt_doc_bytes"] = len(json.dumps(tmpl, separators=(",", ":")))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"attempt write ({result['attempt_doc_bytes']} B): "
            f"{result['write_us_plain']:.2f} µs CPU without ordered columns, "
            f"{result['write_us_ordered']:.2f} µs with (SQLite {result['sqlite']})"
        )


if __name__ == "__main__":
    main()
