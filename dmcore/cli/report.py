"""Read-only views of the graph for people: tables, "why is this stuck", the HTML page.

Reads the store directly (no API call), so it works on any dm home, running
or not.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import importlib.resources
import json
from collections.abc import Iterable
from typing import Any

from dmcore import distributor as dist
from dmcore.engine import docs, records
from dmcore.engine.core import Engine
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState, is_terminal_attempt


@dataclasses.dataclass
class AttemptView:
    """One attempt as a person wants to see it."""

    aid: AttemptID
    name: str
    state: AttemptState
    num_executions: int
    config_name: str = ""
    execution_state: ExecutionState | None = None
    dist_token: str = ""
    info_url: str = ""
    result: Any = None
    abnormal: str = ""
    expired: bool = False
    """Finished with a result whose expiration has passed (dm no longer serves it)."""
    timer_state: ExecutionState | None = None
    timer_deadline_us: int | None = None
    deps: list[tuple[AttemptID, bool]] = dataclasses.field(default_factory=list)
    """Dependencies declared by the current execution: (attempt, satisfied)."""
    all_deps: list[AttemptID] = dataclasses.field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return is_terminal_attempt(self.state)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "quest": self.aid.quest,
            "attempt": self.aid.num,
            "name": self.name,
            "state": self.state.name,
            "executions": self.num_executions,
        }
        if self.result is not None:
            out["result"] = self.result
        if self.abnormal:
            out["abnormal"] = self.abnormal
        if self.expired:
            out["expired"] = True
        if self.all_deps:
            out["deps"] = [str(a) for a in self.all_deps]
        return out


def ref(aid: AttemptID) -> str:
    """How dm prints an attempt: a prefix its commands take back (``QUEST|N``)."""
    return f"{aid.quest[:12]}|{aid.num}"


def quest_name(engine: Engine, qid: str) -> str:
    """A short human name for a quest: its parameters' "name", else the ID's head."""
    desc = engine.quest_desc(qid)
    if desc is not None:
        try:
            params = json.loads(desc.parameters)
        except ValueError:
            params = None
        if isinstance(params, dict):
            for key in ("name", "step", "task"):
                if isinstance(params.get(key), str):
                    return str(params[key])
    return qid[:10]


def view(engine: Engine, aid: AttemptID, *, with_result: bool = True) -> AttemptView | None:
    store = engine.store
    doc = store.get(docs.attempt_path(aid))
    if doc is None:
        return None
    v = AttemptView(
        aid=aid,
        name=quest_name(engine, aid.quest),
        state=AttemptState(doc["state"]),
        num_executions=int(doc["cur_execution"]),
    )
    if doc.get("abnormal"):
        ab = doc["abnormal"]
        v.abnormal = f"{AbnormalStatus(ab['status']).name}: {ab['reason']}"
    v.expired = records.attempt_expired(doc, engine.clock())
    if with_result and v.state == AttemptState.FINISHED and not v.expired:  # not served
        res = docs.read_result(store, aid, doc)
        if res is not None:
            v.result = json.loads(res["object"])
    cur = int(doc["cur_execution"])
    if cur:
        eid = aid.execution(cur)
        ex = docs.read_execution(store, eid, doc)
        if ex is not None:
            v.execution_state = ExecutionState(ex["state"])
            cfg = ex.get("config") or {}
            v.config_name = str(cfg.get("name", ""))
            v.dist_token = str(ex.get("dist_token", ""))
            if v.dist_token and cfg:
                try:
                    d, _ = engine.registry.build(dist.Snapshot.from_doc(cfg))
                    v.info_url = d.info_url(v.dist_token)
                except Exception:
                    v.info_url = ""
        timer = docs.timer_of(doc, eid)
        if timer is not None:
            v.timer_state = ExecutionState(timer["state"])
            v.timer_deadline_us = int(timer["deadline_us"])
    for path, edge in store.query(docs.fwd_deps_collection(aid)):
        dep = AttemptID.decode(docs.last_id(path))
        v.all_deps.append(dep)
        if edge["for_execution"] == cur:
            v.deps.append((dep, bool(edge["satisfied"])))
    return v


def walk(
    engine: Engine, roots: Iterable[AttemptID], max_depth: int = -1
) -> dict[AttemptID, AttemptView]:
    """Views of ``roots`` and, up to ``max_depth`` hops (-1: all), their dependencies."""
    out: dict[AttemptID, AttemptView] = {}
    todo = [(a, 0) for a in roots]
    while todo:
        aid, depth = todo.pop(0)
        if aid in out:
            continue
        v = view(engine, aid)
        if v is None:
            continue
        out[aid] = v
        if max_depth == -1 or depth < max_depth:
            todo += [(d, depth + 1) for d in v.all_deps]
    return out


def all_attempts(engine: Engine) -> list[AttemptID]:
    return sorted(
        AttemptID(str(doc["quest"]), int(doc["num"]))
        for _, doc in engine.store.query(docs.ATTEMPTS)
    )


def blockers(engine: Engine, aid: AttemptID) -> list[tuple[int, AttemptView]]:
    """What ``aid`` waits on, down to the leaves: (depth, view) in tree order."""
    out: list[tuple[int, AttemptView]] = []
    seen: set[AttemptID] = set()

    def visit(a: AttemptID, depth: int) -> None:
        if a in seen:
            return
        seen.add(a)
        v = view(engine, a, with_result=False)
        if v is None:
            return
        out.append((depth, v))
        if v.state in (AttemptState.WAITING, AttemptState.EXECUTING):
            for dep, satisfied in v.deps:
                if not satisfied:
                    visit(dep, depth + 1)

    visit(aid, 0)
    return out


LOG_TAIL_LINES = 12


@dataclasses.dataclass
class Failure:
    """An attempt where a failure started: it ended abnormally, and not because a
    dependency of its did."""

    view: AttemptView
    status: str
    reason: str
    seconds: float | None
    log: str
    """The log file of its last execution (local distributor), or its info URL."""
    tail: list[str]
    via: list[str]
    """Names from the requested attempt down to this one."""

    def to_json(self) -> dict[str, Any]:
        return {
            "quest": self.view.aid.quest,
            "attempt": self.view.aid.num,
            "name": self.view.name,
            "status": self.status,
            "reason": self.reason,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "log": self.log,
            "log_tail": self.tail,
            "via": self.via,
        }


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a local log file (``[]`` when there is none)."""
    if not path or "://" in path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _failure(engine: Engine, v: AttemptView, via: list[str]) -> Failure:
    doc = engine.store.get(docs.attempt_path(v.aid)) or {}
    ab = doc.get("abnormal") or {}
    seconds = None
    if v.num_executions:
        ex = docs.read_execution(engine.store, v.aid.execution(v.num_executions))
        if ex is not None:
            seconds = max(0, int(ex["modified"]) - int(ex["created"])) / 1e6
    log = v.info_url
    if log.startswith("file://"):
        log = log[len("file://") :]
    return Failure(
        view=v,
        status=AbnormalStatus(int(ab.get("status", 0))).name,
        reason=str(ab.get("reason", "")),
        seconds=seconds,
        log=log,
        tail=log_tail(log),
        via=via,
    )


def root_causes(engine: Engine, aid: AttemptID) -> list[Failure]:
    """Where the abnormal end of ``aid`` started: following dependencies that ended
    abnormally down to attempts none of whose dependencies did (``[]`` unless
    ``aid`` ended abnormally)."""
    out: list[Failure] = []
    seen: set[AttemptID] = set()

    def visit(a: AttemptID, via: list[str]) -> None:
        if a in seen:
            return
        seen.add(a)
        v = view(engine, a, with_result=False)
        if v is None or v.state != AttemptState.ABNORMAL_FINISHED:
            return
        path = [*via, v.name]
        failed_deps = [
            d
            for d in v.all_deps
            if (dv := view(engine, d, with_result=False)) is not None
            and dv.state == AttemptState.ABNORMAL_FINISHED
        ]
        if not failed_deps:
            out.append(_failure(engine, v, path))
        for d in failed_deps:
            visit(d, path)

    visit(aid, [])
    return out


# -- explaining reuse (dm run --explain) ---------------------------------------------


def _params(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def differences(a: dm_pb2.Quest.Desc, b: dm_pb2.Quest.Desc) -> list[str]:
    """What tells two quest descriptions apart, in words (fingerprint apart from the
    rest of the distributor parameters)."""
    out: list[str] = []
    if a.distributor_config_name != b.distributor_config_name:
        out.append("distributor config")
    if _params(a.parameters) != _params(b.parameters):
        out.append("parameters")
    da, db = _params(a.distributor_parameters), _params(b.distributor_parameters)
    fa = da.pop("fingerprint", None) if isinstance(da, dict) else None
    fb = db.pop("fingerprint", None) if isinstance(db, dict) else None
    if da != db:
        out.append("distributor parameters")
    if fa != fb:
        out.append(f"fingerprint {str(fb or 'none')[:8]} -> {str(fa or 'none')[:8]}")
    if a.meta.SerializeToString(deterministic=True) != b.meta.SerializeToString(deterministic=True):
        out.append("meta")
    return out


def quests_by_name(engine: Engine) -> dict[str, list[tuple[str, int]]]:
    """Quests of the home by their ``name`` parameter: (quest ID, created), newest first."""
    out: dict[str, list[tuple[str, int]]] = {}
    for path, doc in engine.store.query(docs.QUESTS):
        qid = docs.last_id(path)
        name = quest_name(engine, qid)
        if name != qid[:10]:
            out.setdefault(name, []).append((qid, int(doc.get("created", 0))))
    for rows in out.values():
        rows.sort(key=lambda r: -r[1])
    return out


def not_reused_because(
    engine: Engine, qid: str, by_name: dict[str, list[tuple[str, int]]]
) -> tuple[str, list[str]] | None:
    """The newest other quest with the same name, and how ``qid`` differs from it."""
    desc = engine.quest_desc(qid)
    if desc is None:
        return None
    for other, _ in by_name.get(quest_name(engine, qid), []):
        if other == qid:
            continue
        odesc = engine.quest_desc(other)
        if odesc is not None:
            return other, differences(desc, odesc)
    return None


def explain(engine: Engine, attempts: Iterable[AttemptID], since_us: int) -> list[str]:
    """One line per attempt: reused (when, by which execution), ran (how long), failed;
    and, for one not reused, why not (another quest of the same name differs)."""
    by_name = quests_by_name(engine)
    lines: list[str] = []
    for aid in attempts:
        doc = engine.store.get(docs.attempt_path(aid))
        if doc is None:
            continue
        name = quest_name(engine, aid.quest)
        state = AttemptState(doc["state"])
        execs = docs.list_executions(engine.store, aid, doc)
        mine = [ex for ex in execs if int(ex["created"]) >= since_us]
        took = sum(max(0, int(ex["modified"]) - int(ex["created"])) for ex in mine) / 1e6
        ab = doc.get("abnormal") or {}
        why = f"{AbnormalStatus(int(ab.get('status', 0))).name}: {ab.get('reason', '')}"
        if state == AttemptState.FINISHED and not mine:
            res = docs.read_result(engine.store, aid, doc) or {}
            when = _stamp(int(doc["modified"]))
            line = f"reused: finished {when} by execution {res.get('execution', '?')}"
        elif state == AttemptState.FINISHED:
            line = f"ran: {len(mine)} execution(s), {took:.1f}s"
        elif state == AttemptState.ABNORMAL_FINISHED and not mine:
            line = f"failed before this run ({why}); `dm retry` runs it again"
        elif state == AttemptState.ABNORMAL_FINISHED:
            line = f"failed: {why} ({len(mine)} execution(s), {took:.1f}s)"
        else:
            line = f"{state.name.lower()}: {len(mine)} execution(s) so far"
        lines.append(f"{name} ({ref(aid)}) {line}")
        if mine:
            other = not_reused_because(engine, aid.quest, by_name)
            if other is not None:
                oqid, diff = other
                lines.append(
                    f"  not reused: quest {oqid[:12]} of the same name differs in "
                    f"{', '.join(diff) or 'nothing visible'}"
                )
    return lines


def changed_files(engine: Engine, attempts: Iterable[AttemptID], since_us: int) -> list[str]:
    """A line for each quest new since ``since_us`` that differs from an older one of
    the same name only in its fingerprint: its files changed, so it ran again."""
    by_name: dict[str, list[tuple[str, int]]] | None = None
    lines: list[str] = []
    for qid in dict.fromkeys(a.quest for a in attempts):
        doc = engine.store.get(docs.quest_path(qid))
        if doc is None or int(doc.get("created", 0)) < since_us:
            continue
        if by_name is None:
            by_name = quests_by_name(engine)
        other = not_reused_because(engine, qid, by_name)
        if other is not None and len(other[1]) == 1 and other[1][0].startswith("fingerprint"):
            lines.append(
                f"{quest_name(engine, qid)}: its files changed since quest {other[0][:12]} "
                f"({other[1][0]}): a new quest, run again"
            )
    return lines


def reopened_since(engine: Engine, since_us: int) -> list[AttemptID]:
    """Attempts re-opened (dm retry) since ``since_us``."""
    out: list[AttemptID] = []
    for path, doc in engine.store.query(docs.ATTEMPTS):
        if any(int(r["at_us"]) >= since_us for r in doc.get("reopened", [])):
            out.append(AttemptID.decode(docs.last_id(path)))
    return out


def _stamp(us: int) -> str:
    t = datetime.datetime.fromtimestamp(us / 1e6, tz=datetime.UTC)
    return f"{t:%Y-%m-%d %H:%M:%S} UTC"


STATE_COLOURS = {
    AttemptState.SCHEDULING: "#9e9e9e",
    AttemptState.EXECUTING: "#1e88e5",
    AttemptState.WAITING: "#fb8c00",
    AttemptState.FINISHED: "#43a047",
    AttemptState.ABNORMAL_FINISHED: "#e53935",
}


def graph_html(views: dict[AttemptID, AttemptView], title: str = "dm graph") -> str:
    """A self-contained page drawing the graph (vendored cytoscape.js, no network)."""
    js = (importlib.resources.files("dmcore.web") / "vendor" / "cytoscape.min.js").read_text()
    elements: list[dict[str, Any]] = []
    for aid, v in views.items():
        details = v.to_json()
        if v.execution_state is not None:
            details["execution_state"] = v.execution_state.name
        if v.config_name:
            details["distributor"] = v.config_name
        if v.info_url:
            details["info_url"] = v.info_url
        elements.append(
            {
                "data": {
                    "id": str(aid),
                    "label": f"{v.name}#{aid.num}",
                    "state": v.state.name,
                    "colour": STATE_COLOURS[v.state],
                    "details": json.dumps(details, indent=2, sort_keys=True),
                }
            }
        )
        for dep in v.all_deps:
            if dep in views:
                elements.append(
                    {"data": {"id": f"{aid}->{dep}", "source": str(aid), "target": str(dep)}}
                )
    data = json.dumps(elements).replace("</", "<\\/")
    legend = " ".join(
        f'<span class="key" style="background:{c}">{s.name}</span>'
        for s, c in STATE_COLOURS.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; display: flex; height: 100vh; }}
#cy {{ flex: 1; }}
#side {{ width: 32em; padding: 1em; border-left: 1px solid #ddd; overflow: auto; }}
pre {{ white-space: pre-wrap; word-break: break-all; font-size: 12px; }}
.key {{ color: white; padding: 2px 6px; border-radius: 3px; font-size: 12px; }}
</style></head>
<body><div id="cy"></div>
<div id="side"><h1>{html.escape(title)}</h1><p>{legend}</p>
<p id="count"></p><h2>Details</h2><pre id="details">Click an attempt.</pre></div>
<script>{js}</script>
<script>
const elements = {data};
const cy = cytoscape({{
  container: document.getElementById('cy'),
  elements: elements,
  layout: {{ name: 'breadthfirst', directed: true, spacingFactor: 1.2 }},
  style: [
    {{ selector: 'node', style: {{ 'background-color': 'data(colour)', 'label': 'data(label)',
       'font-size': 10, 'text-valign': 'bottom' }} }},
    {{ selector: 'edge', style: {{ 'width': 1.5, 'curve-style': 'bezier',
       'target-arrow-shape': 'triangle' }} }},
    {{ selector: ':selected', style: {{ 'border-width': 3, 'border-color': '#000' }} }}
  ]
}});
cy.on('tap', 'node', (e) => {{
  document.getElementById('details').textContent = e.target.data('details');
}});
document.getElementById('count').textContent = cy.nodes().length + ' attempts, ' +
  cy.edges().length + ' dependencies';
document.title = '{html.escape(title)} (' + cy.nodes().length + ' attempts)';
</script></body></html>
"""
