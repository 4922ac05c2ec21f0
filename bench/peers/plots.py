"""The bench's plots, drawn with matplotlib in the plot environment (``.bench/plot``).

``python -m bench.peers.plots RESULTS.json OUT_DIR`` writes, and prints the
paths of:

* ``throughput.png``: tasks/s against graph size (the fan-out/fan-in
  workloads), one line per system, both axes logarithmic;
* ``firestore_cost.png``: dm's Firestore reads, writes and deletes and queue
  tasks per execution per scenario, with the $ per million executions
  (when the results hold bench_firestore's figures).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt

COLOURS = {"dm": "#1f77b4", "prefect": "#ff7f0e", "celery": "#2ca02c"}


def throughput(results: dict[str, Any], out: pathlib.Path) -> pathlib.Path | None:
    lines: dict[str, list[tuple[int, float]]] = {}
    for name, w in results["summary"].items():
        if not name.startswith("fan:"):
            continue
        for key, entry in w["systems"].items():
            if entry.get("tasks_per_s"):
                lines.setdefault(key, []).append((int(w["tasks"]), float(entry["tasks_per_s"])))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in [k for k in results["systems"] if k in lines]:
        points = sorted(lines[key])
        xs, ys = zip(*points, strict=True)
        label = results["systems"][key]["name"]
        ax.plot(xs, ys, marker="o", label=label, color=COLOURS.get(key))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tasks in the graph (N no-op tasks + 1 sum)")
    ax.set_ylabel("tasks per second (best run)")
    m = results["machine"]
    ax.set_title(f"Throughput vs graph size ({m['cpus']} CPUs, {m['date']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def firestore_cost(results: dict[str, Any], out: pathlib.Path) -> pathlib.Path | None:
    fs = results.get("firestore")
    if not fs or not fs.get("scenarios"):
        return None
    scenarios = list(fs["scenarios"].values())
    names = [s["description"] for s in scenarios]
    reads = [s["reads_per_execution"] for s in scenarios]
    deletes = [s["deletes_per_execution"] for s in scenarios]
    writes = [s["writes_per_execution"] - s["deletes_per_execution"] for s in scenarios]
    tasks = [s["tasks_per_execution"] for s in scenarios]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(names))
    width = 0.2
    ax.bar([x - 1.5 * width for x in xs], reads, width, label="reads")
    ax.bar([x - 0.5 * width for x in xs], writes, width, label="writes")
    ax.bar([x + 0.5 * width for x in xs], deletes, width, label="deletes")
    ax.bar([x + 1.5 * width for x in xs], tasks, width, label="queue tasks")
    for x, s in zip(xs, scenarios, strict=True):
        top = max(s["reads_per_execution"], s["writes_per_execution"])
        ax.annotate(
            f"${s['usd_per_million_executions']:.0f}/M",
            (x, top),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=10)
    ax.set_ylabel("operations per execution (dm's own)")
    ax.set_title(f"Firestore cost per execution (list prices of {fs['prices']['date']})")
    ax.legend()
    ax.margins(y=0.15)
    fig.tight_layout()
    path = out / "firestore_cost.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    results = json.loads(pathlib.Path(sys.argv[1]).read_text())
    out = pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for draw in (throughput, firestore_cost):
        path = draw(results, out)
        if path is not None:
            print(path)


if __name__ == "__main__":
    main()
