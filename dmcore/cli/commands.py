"""The ``dm`` command line (embedded mode: everything lives in a home folder, default ``.dm``).

Exit codes: 0 success; 1 a requested attempt ended abnormally (or did not end
in time); 2 bad input (nothing written).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.tree import Tree

from dmcore import ids
from dmcore.cli import report
from dmcore.cli.runfile import parse_run_file
from dmcore.engine import docs
from dmcore.errors import DMError, InvalidArgument
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2
from dmcore.runtime.embedded import (
    DEFAULT_CONFIG,
    DEFAULT_HOME,
    Embedded,
    build_registry,
    home_registry,
)
from dmcore.runtime.files import BadFile, load_document
from dmcore.service import Caller
from dmcore.states import AttemptState

app = typer.Typer(
    help="dm: a dependency-aware, memoising task scheduler (embedded mode).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Distributor configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

HomeOpt = Annotated[
    pathlib.Path,
    typer.Option("--home", envvar="DM_HOME", help="Folder holding dm's state.", show_default=True),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(code=code)


def _config(path: pathlib.Path | None) -> dict[str, Any]:
    if path is None:
        return DEFAULT_CONFIG
    doc = load_document(path)
    if not isinstance(doc, dict):
        raise BadFile(f"{path}: expected an object with 'distributor_configs'")
    try:
        build_registry(doc)
    except InvalidArgument as e:
        raise BadFile(f"{path}: {e.message}") from None
    return doc


@contextmanager
def _open(home: pathlib.Path, config: Mapping[str, Any] | None = None) -> Iterator[Embedded]:
    emb = Embedded(home, home_registry(home, config))
    try:
        yield emb
    finally:
        emb.close()


def _existing_home(home: pathlib.Path) -> pathlib.Path:
    if not (home / "dm.sqlite").exists():
        raise fail(f"{home}: no dm home here (run `dm run FILE` first, or pass --home)")
    return home


MIN_PREFIX = 6
ID_HELP = (
    "QUEST_ID[|N]: a whole quest ID or a unique prefix of at least "
    f"{MIN_PREFIX} characters (as `dm walk` prints it), attempt N (default 1)"
)
TAKES_IDS: dict[str, Any] = {"ignore_unknown_options": True}
"""For commands taking IDs: one starting with "-" is an ID, not an option."""


def _resolve(emb: Embedded, text: str) -> AttemptID:
    """The attempt ``text`` names: QUEST_ID, QUEST_ID|N, or a unique prefix of the quest ID."""
    quest, sep, num = text.partition("|")
    if sep and not (num.isdigit() and 1 <= int(num) <= ids.MAX_NUM):
        raise fail(f"{text!r}: attempt number must be from 1 to {ids.MAX_NUM}")
    n = int(num) if sep else 1
    if ids.QUEST_ID_RE.match(quest):
        return AttemptID(quest, n)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", quest) or len(quest) > 43:
        raise fail(f"{text!r}: not a quest ID (expected QUEST_ID or QUEST_ID|ATTEMPT)")
    if len(quest) < MIN_PREFIX:
        raise fail(
            f"{text!r}: give at least {MIN_PREFIX} characters of the quest ID "
            "(expected QUEST_ID or QUEST_ID|ATTEMPT)"
        )
    found = [docs.last_id(p) for p, _ in emb.store.query_id_prefix(docs.QUESTS, quest)]
    if not found:
        raise fail(f"{text!r}: no quest ID starts with {quest!r} in this home")
    if len(found) > 1:
        raise fail(f"{text!r}: {len(found)} quest IDs start with {quest!r}; give more characters")
    return AttemptID(found[0], n)


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True) if value is not None else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_failures(failures: list[report.Failure]) -> None:
    """Where each failure started: name, how it ended, how long it ran, its log."""
    for f in failures:
        took = "" if f.seconds is None else f" after {f.seconds:.1f}s"
        out.print(
            f"[red]failed:[/red] [bold]{f.view.name}[/bold] ({_ref(f.view.aid)}) "
            f"{f.status}: {f.reason}{took}",
            highlight=False,
        )
        if len(f.via) > 1:
            out.print(f"  via {' <- '.join(f.via)}", highlight=False, markup=False)
        if f.log:
            out.print(f"  log: {f.log}", highlight=False, markup=False)
        for line in f.tail:
            out.print(f"  | {line}", highlight=False, markup=False)


def _ref(aid: AttemptID) -> str:
    """How commands print an attempt: a prefix ``dm`` commands take back (QUEST|N)."""
    return f"{aid.quest[:12]}|{aid.num}"


def _counts_table(emb: Embedded, wanted: list[AttemptID], started: float) -> Table:
    t = Table(title=f"dm run — {time.monotonic() - started:.1f}s", show_edge=False)
    for s in AttemptState:
        t.add_column(s.name.lower(), justify="right")
    counts = [emb.store.count("attempts", {"state": int(s)}) for s in AttemptState]
    t.add_row(*[str(c) for c in counts])
    return t


@app.command()
def run(
    file: Annotated[pathlib.Path, typer.Argument(help="JSON/YAML file: {quests: [...]}")],
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    config: Annotated[
        pathlib.Path | None,
        typer.Option("--config", help="Distributor configs replacing the built-in ones."),
    ] = None,
    as_json: JsonOpt = False,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Submit the quests in FILE and drive them to completion."""
    try:
        rr = parse_run_file(file)
        cfg = _config(config)
        registry = build_registry(cfg)
        for i, desc in enumerate(rr.request.quest):
            try:
                d, _ = registry.build_named(desc.distributor_config_name)
                d.validate(desc.distributor_parameters)
            except (ValueError, DMError) as e:
                raise BadFile(f"{file}: quests[{i}]: {e}") from None
    except BadFile as e:
        raise fail(str(e)) from None

    started = time.monotonic()
    with _open(home, cfg) as emb:
        before = emb.store.get_many([f"attempts/{a.encoded}" for a in rr.attempts])
        reused = sum(
            1 for d in before.values() if d is not None and d["state"] == AttemptState.FINISHED
        )
        execs_before = sum(v.num_executions for v in report.walk(emb.engine, rr.attempts).values())
        try:
            emb.service.ensure_graph_data(rr.request, Caller.trusted())
        except DMError as e:
            raise fail(f"{file}: {e.message}") from None

        def done() -> bool:
            docs = emb.store.get_many([f"attempts/{a.encoded}" for a in rr.attempts])
            return all(
                d is not None
                and AttemptState(d["state"])
                in (AttemptState.FINISHED, AttemptState.ABNORMAL_FINISHED)
                for d in docs.values()
            )

        if as_json or not err.is_terminal:
            finished = emb.drive(done, timeout_s=timeout)
        else:
            with Live(
                _counts_table(emb, rr.attempts, started), console=err, transient=True
            ) as live:
                finished = emb.drive(
                    done,
                    timeout_s=timeout,
                    tick=lambda: live.update(_counts_table(emb, rr.attempts, started)),
                )
        ran = (
            sum(v.num_executions for v in report.walk(emb.engine, rr.attempts).values())
            - execs_before
        )
        views = {a: report.view(emb.engine, a) for a in rr.attempts}
        failures = [f for a in rr.attempts for f in report.root_causes(emb.engine, a)]
        elapsed = time.monotonic() - started

    abnormal = [a for a, v in views.items() if v is None or v.state != AttemptState.FINISHED]
    if as_json:
        doc = {
            "attempts": [
                v.to_json()
                if v is not None
                else {"quest": a.quest, "attempt": a.num, "state": "MISSING"}
                for a, v in views.items()
            ],
            "failures": [f.to_json() for f in failures],
            "reused": reused,
            "executions_run": ran,
            "seconds": round(elapsed, 3),
        }
        typer.echo(json.dumps(doc, sort_keys=True))
    else:
        t = Table(title="results")
        for col in ("quest", "name", "attempt", "state", "result"):
            t.add_column(col)
        for a, v in views.items():
            if v is None:
                t.add_row(a.quest[:12], "", str(a.num), "MISSING", "")
                continue
            colour = "green" if v.state == AttemptState.FINISHED else "red"
            t.add_row(
                a.quest[:12],
                v.name,
                str(a.num),
                f"[{colour}]{v.state.name}[/{colour}]",
                _short(v.result) if v.result is not None else v.abnormal,
            )
        out.print(t)
        if len(views) <= 3:  # few results: show them whole
            for a, v in views.items():
                if v is not None and v.result is not None:
                    out.print(f"{v.name} ({a}):", highlight=False)
                    out.print_json(json.dumps(v.result, sort_keys=True), indent=None)
        _print_failures(failures)
        out.print(
            f"reused {reused} of {len(rr.attempts)} requested result(s); "
            f"ran {ran} execution(s) in {elapsed:.2f}s",
            highlight=False,
        )
    if not finished:
        raise fail(f"gave up after {timeout}s; `dm why` tells what is still running", code=1)
    if abnormal:
        raise typer.Exit(code=1)


@app.command(context_settings=TAKES_IDS)
def walk(
    attempts: Annotated[
        list[str] | None, typer.Argument(help=f"{ID_HELP}, to start from (default: all).")
    ] = None,
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    depth: Annotated[int, typer.Option(help="Dependency hops to follow (-1: all).")] = -1,
    as_json: JsonOpt = False,
) -> None:
    """Show attempts, their state and results."""
    _existing_home(home)
    with _open(home) as emb:
        if attempts:
            roots = [_resolve(emb, a) for a in attempts]
            views = report.walk(emb.engine, roots, depth)
            missing = [str(a) for a in roots if a not in views]
        else:
            views = report.walk(emb.engine, report.all_attempts(emb.engine), 0)
            missing = []
    if as_json:
        typer.echo(
            json.dumps({"attempts": [v.to_json() for v in views.values()], "missing": missing})
        )
        return
    t = Table(title=f"{len(views)} attempt(s)")
    for col in ("attempt", "name", "state", "execs", "deps", "result"):
        t.add_column(col)
    for a, v in views.items():
        t.add_row(
            _ref(a),
            v.name,
            v.state.name,
            str(v.num_executions),
            str(len(v.all_deps)),
            _short(v.result) if v.result is not None else v.abnormal,
        )
    out.print(t)
    for m in missing:
        out.print(f"[yellow]{m}: does not exist[/yellow]")


def _when(us: int | None) -> str:
    if us is None:
        return "no timeout armed"
    t = datetime.datetime.fromtimestamp(us / 1e6, tz=datetime.UTC)
    return f"timeout at {t:%Y-%m-%d %H:%M:%S} UTC"


@app.command(context_settings=TAKES_IDS)
def why(
    attempt: Annotated[str, typer.Argument(help=ID_HELP)],
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    as_json: JsonOpt = False,
) -> None:
    """Explain what ATTEMPT is waiting for, down to the blocking leaves."""
    _existing_home(home)
    with _open(home) as emb:
        aid = _resolve(emb, attempt)
        chain = report.blockers(emb.engine, aid)
        failures = report.root_causes(emb.engine, aid)
    if not chain:
        raise fail(f"attempt {aid} does not exist")
    if as_json:
        rows = []
        for depth, v in chain:
            row = v.to_json() | {"depth": depth, "distributor": v.config_name}
            if v.execution_state is not None:
                row["phase"] = v.execution_state.name
            if v.timer_deadline_us is not None:
                row["timeout_us"] = v.timer_deadline_us
            rows.append(row)
        typer.echo(json.dumps({"chain": rows, "failures": [f.to_json() for f in failures]}))
        if failures:
            raise typer.Exit(code=1)
        return
    nodes: dict[int, Tree] = {}
    root: Tree | None = None
    for depth, v in chain:
        label = f"[bold]{v.name}[/bold] {_ref(v.aid)}: {v.state.name}"
        if v.state == AttemptState.WAITING:
            open_deps = sum(1 for _, s in v.deps if not s)
            label += f" on {open_deps} unfinished dependenc{'y' if open_deps == 1 else 'ies'}"
        elif v.state == AttemptState.EXECUTING and v.execution_state is not None:
            label += (
                f", execution {v.num_executions} {v.execution_state.name} on '{v.config_name}'"
                f", {_when(v.timer_deadline_us)}"
            )
            if v.info_url:
                label += f", see {v.info_url}"
        elif v.abnormal:
            label += f" ({v.abnormal})"
        if root is None:
            root = Tree(label)
            nodes[0] = root
        else:
            nodes[depth] = nodes[depth - 1].add(label)
    assert root is not None
    out.print(root)
    if failures:
        _print_failures(failures)
        raise typer.Exit(code=1)


@app.command(context_settings=TAKES_IDS)
def cancel(
    attempt: Annotated[str, typer.Argument(help=ID_HELP)],
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    reason: Annotated[str, typer.Option(help="Why (recorded on the attempt).")] = "",
) -> None:
    """Cancel an attempt (its running execution is cancelled on its distributor)."""
    _existing_home(home)
    with _open(home) as emb:
        aid = _resolve(emb, attempt)
        try:
            emb.service.cancel_attempt(
                dm_pb2.CancelAttemptReq(attempt=aid.to_proto(), reason=reason),
                Caller.trusted("cli"),
            )
        except DMError as e:
            raise fail(e.message) from None
        emb.drain()
        v = report.view(emb.engine, aid)
    assert v is not None
    out.print(f"{aid}: {v.state.name} {v.abnormal}", highlight=False)


@app.command()
def graph(
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    output: Annotated[
        pathlib.Path, typer.Option("-o", "--output", help="HTML file to write.")
    ] = pathlib.Path("dm-graph.html"),
) -> None:
    """Write a self-contained HTML page of the graph (click an attempt for details)."""
    _existing_home(home)
    with _open(home) as emb:
        views = report.walk(emb.engine, report.all_attempts(emb.engine), 0)
    output.write_text(report.graph_html(views), encoding="utf-8")
    out.print(f"wrote {output} ({len(views)} attempts)", highlight=False)


@app.command()
def serve(
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    port: Annotated[
        int, typer.Option(help="Port of dm_api (the other functions share it).")
    ] = 8080,
    config: Annotated[
        pathlib.Path | None,
        typer.Option("--config", help="Distributor configs replacing the built-in ones."),
    ] = None,
    emulators: Annotated[
        bool,
        typer.Option(
            "--emulators",
            help="Keep the store on a local Firestore emulator and deliver notifications "
            "through a local Pub/Sub emulator (gcloud SDK; the task queue stays local).",
        ),
    ] = False,
) -> None:
    """Run the four Cloud Functions locally (functions-framework), WITHOUT identity checks."""
    from dmcore.runtime.emulators import EmulatorError
    from dmcore.runtime.serve import serve as run_server

    try:
        cfg = _config(config) if config is not None else None
    except BadFile as e:
        raise fail(str(e)) from None
    try:
        run_server(port, home, emulators, config=cfg)
    except EmulatorError as e:
        raise fail(str(e)) from None


@config_app.command("validate")
def config_validate(
    file: Annotated[pathlib.Path, typer.Argument(help="JSON/YAML distributor configs.")],
) -> None:
    """Check a distributor config file."""
    try:
        doc = _config(file)
    except BadFile as e:
        raise fail(str(e)) from None
    names = sorted(doc.get("distributor_configs", {}))
    out.print(f"{file}: OK ({len(names)} config(s): {', '.join(names)})", highlight=False)


@app.command("quest-id")
def quest_id_cmd(
    file: Annotated[pathlib.Path, typer.Argument(help="A run file ({quests: [...]})")],
) -> None:
    """Print the quest ID of each quest in FILE."""
    try:
        rr = parse_run_file(file)
    except BadFile as e:
        raise fail(str(e)) from None
    for desc, nums in zip(rr.request.quest, rr.request.quest_attempt, strict=True):
        out.print(
            f"{ids.quest_id(desc)}  {desc.distributor_config_name}  attempts {list(nums.nums)}",
            highlight=False,
        )


@app.command("show-request", hidden=True)
def show_request(file: pathlib.Path) -> None:
    """Print the EnsureGraphData request a run file becomes (protobuf JSON)."""
    try:
        rr = parse_run_file(file)
    except BadFile as e:
        raise fail(str(e)) from None
    typer.echo(json_format.MessageToJson(rr.request))


def main() -> None:
    app()
