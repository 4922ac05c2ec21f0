"""The ``dm`` command line (embedded mode: everything lives in a home folder, default ``.dm``).

Exit codes: 0 success; 1 a requested attempt ended abnormally (or did not end
in time); 2 bad input (nothing written).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from dmcore import fingerprint, ids
from dmcore.cli import progress, report
from dmcore.cli.runfile import RunRequest, parse_run_file
from dmcore.distributor import Registry
from dmcore.engine import docs, records
from dmcore.engine.layout import LayoutMismatch
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
from dmcore.states import AbnormalStatus, AttemptState, is_terminal_attempt
from dmcore.store.sqlite import LockTimeout

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

# No markup: what is printed holds names, reasons and paths that may contain "[...]".
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(Text.assemble(("error:", "red"), f" {message}"), highlight=False)
    return typer.Exit(code=code)


def _warn(rr: RunRequest) -> None:
    for w in rr.warnings:
        err.print(Text.assemble(("warning:", "yellow"), f" {w}"), highlight=False)


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
    try:
        emb = Embedded(home, home_registry(home, config))
    except LayoutMismatch as e:
        raise fail(e.message) from None
    try:
        yield emb
    except LockTimeout as e:  # another process kept the home's write lock for minutes
        raise fail(str(e), code=1) from None
    finally:
        emb.close()


def _runs_locally(registry: Registry) -> Callable[[str], bool]:
    """Whether a config name is of the ``local`` kind (its quests are fingerprinted)."""

    def local(name: str) -> bool:
        try:
            return registry.build_named(name)[1].kind == "local"
        except DMError:
            return False  # an unknown config: reported with the quest, later

    return local


def _usable_home(home: pathlib.Path) -> pathlib.Path:
    for p in (home, *home.parents):  # the nearest that exists must be a folder
        if p.exists():
            if not p.is_dir():
                raise fail(f"{p}: not a folder (--home names the folder holding dm's state)")
            break
    return home


def _existing_home(home: pathlib.Path) -> pathlib.Path:
    if not (_usable_home(home) / "dm.sqlite").exists():
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
    if sep and not (re.fullmatch(r"[0-9]+", num) and 1 <= int(num) <= ids.MAX_NUM):
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
            Text.assemble(
                ("failed:", "red"),
                " ",
                (f.view.name, "bold"),
                f" ({report.ref(f.view.aid)}) {f.status}: {f.reason}{took}",
            ),
            highlight=False,
        )
        if len(f.via) > 1:
            out.print(f"  via {' <- '.join(f.via)}", highlight=False, markup=False)
        if f.log:
            out.print(f"  log: {f.log}", highlight=False, markup=False)
        for line in f.tail:
            out.print(f"  | {line}", highlight=False, markup=False)


INTERRUPTED = (
    "interrupted: jobs already started keep running on their own; "
    "run the same `dm run` again to wait for them (finished results are reused)"
)


def _executions_since(emb: Embedded, attempts: Iterable[AttemptID], since_us: int) -> int:
    """Executions of ``attempts`` created since ``since_us``: this run's work."""
    return sum(
        1
        for a in attempts
        if (att := emb.store.get(docs.attempt_path(a))) is not None
        for ex in docs.list_executions(emb.store, a, att)
        if int(ex["created"]) >= since_us
    )


def _drive(
    emb: Embedded,
    roots: list[AttemptID],
    *,
    timeout: float | None,
    quiet: bool,
    extra: Iterable[AttemptID] = (),
) -> bool:
    """Run the worker until ``roots`` (and ``extra``) are over; progress on stderr.

    Ctrl-C stops waiting, not the jobs: they run on, and the next run finds them.
    """
    watch = progress.Watch(emb.engine, roots, err, quiet=quiet, extra=extra)
    wanted = [*roots, *extra]

    def done() -> bool:
        got = emb.store.get_many([docs.attempt_path(a) for a in wanted])
        return all(
            d is not None and is_terminal_attempt(AttemptState(d["state"])) for d in got.values()
        )

    try:
        with watch:
            finished = emb.drive(done, timeout_s=timeout, tick=watch.tick)
            watch.tick(force=True)
    except KeyboardInterrupt:
        raise fail(INTERRUPTED, code=130) from None
    return finished


def _report(
    emb: Embedded,
    wanted: list[AttemptID],
    *,
    started_us: int,
    elapsed: float,
    reused: int,
    as_json: bool,
    explain: bool,
    extra: list[AttemptID] | None = None,
    retried: int | None = None,
) -> bool:
    """Print the outcome of a run over ``wanted``; returns whether all FINISHED."""
    reach = progress.reached(emb.engine, [*wanted, *(extra or [])])
    ran = _executions_since(emb, reach, started_us)
    views = {a: report.view(emb.engine, a) for a in wanted}
    failures = [f for a in wanted for f in report.root_causes(emb.engine, a)]
    changed = report.changed_files(emb.engine, reach, started_us)
    lines = report.explain(emb.engine, reach, started_us) if explain else []
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
            "changed": changed,
        }
        if explain:
            doc["explain"] = lines
        typer.echo(json.dumps(doc, sort_keys=True))
    else:
        for line in changed:
            out.print(line, highlight=False, markup=False)
        t = Table(title="results")
        for col in ("quest", "name", "attempt", "state", "result"):
            t.add_column(col)
        for a, v in views.items():
            if v is None:
                t.add_row(a.quest[:12], "", str(a.num), "MISSING", "")
                continue
            colour = "green" if v.state == AttemptState.FINISHED else "red"
            if v.expired:
                colour = "yellow"
            t.add_row(
                a.quest[:12],
                v.name,
                str(a.num),
                Text(v.state.name + (" (expired)" if v.expired else ""), style=colour),
                _short(v.result) if v.result is not None else v.abnormal,
            )
        out.print(t)
        if len(views) <= 3:  # few results: show them whole
            for a, v in views.items():
                if v is not None and v.result is not None:
                    out.print(f"{v.name} ({a}):", highlight=False)
                    out.print_json(json.dumps(v.result, sort_keys=True), indent=None)
        _print_failures(failures)
        if explain:
            out.print("explain:", highlight=False)
            for line in lines:
                out.print(f"  {line}", highlight=False, markup=False)
        head = (
            f"reused {reused} of {len(wanted)} requested result(s)"
            if retried is None
            else f"retried {retried} attempt(s), {len(wanted) - retried} re-opened with them"
        )
        out.print(f"{head}; ran {ran} execution(s) in {elapsed:.2f}s", highlight=False)
        expired = sum(1 for v in views.values() if v is not None and v.expired)
        if expired:
            out.print(
                f"{expired} result(s) expired: dm no longer serves them; for a fresh result "
                "ask for a new attempt of the quest (its `attempts` in the run file)",
                highlight=False,
            )
    return all(v is not None and v.state == AttemptState.FINISHED for v in views.values())


QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress on stderr, only the outcome.")
]
TimeoutOpt = Annotated[
    float | None, typer.Option(min=0, help="Give up waiting after this many seconds.")
]


def _retry(emb: Embedded, attempts: Iterable[AttemptID]) -> list[AttemptID]:
    """Re-open each of ``attempts`` (each ended abnormally); returns them."""
    done: list[AttemptID] = []
    for a in attempts:
        try:
            emb.service.retry_attempt(a, Caller.trusted("cli"))
        except DMError as e:
            raise fail(e.message) from None
        done.append(a)
    return done


def _failed(emb: Embedded, among: Iterable[AttemptID] | None = None) -> list[AttemptID]:
    """Attempts that ended abnormally, except cancelled ones (a user's decision)."""
    if among is None:
        rows = emb.store.query(docs.ATTEMPTS, {"state": int(AttemptState.ABNORMAL_FINISHED)})
        docs_by = {AttemptID.decode(docs.last_id(p)): d for p, d in rows}
    else:
        wanted = list(among)
        got = emb.store.get_many([docs.attempt_path(a) for a in wanted])
        docs_by = {a: d for a in wanted if (d := got[docs.attempt_path(a)]) is not None}
    return [
        a
        for a, d in docs_by.items()
        if d["state"] == AttemptState.ABNORMAL_FINISHED
        and (d.get("abnormal") or {}).get("status") != AbnormalStatus.CANCELLED
    ]


@app.command()
def run(  # noqa: PLR0917 - typer: one parameter per option
    file: Annotated[pathlib.Path, typer.Argument(help="JSON/YAML file: {quests: [...]}")],
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    config: Annotated[
        pathlib.Path | None,
        typer.Option("--config", help="Distributor configs replacing the built-in ones."),
    ] = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = None,
    quiet: QuietOpt = False,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", help="One line per step: reused (when, by which execution), ran, failed."
        ),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Retry the attempts this run reaches that ended abnormally (see `dm retry`).",
        ),
    ] = False,
    no_fingerprint: Annotated[
        bool,
        typer.Option(
            "--no-fingerprint",
            help="Do not put a fingerprint of the files a local quest runs in its description.",
        ),
    ] = False,
) -> None:
    """Submit the quests in FILE and drive them to completion."""
    home = _usable_home(home)
    try:
        cfg = _config(config)
        registry = build_registry(cfg)
        rr = parse_run_file(file, None if no_fingerprint else _runs_locally(registry))
        for i, desc in enumerate(rr.request.quest):
            try:
                d, _ = registry.build_named(desc.distributor_config_name)
                d.validate(desc.distributor_parameters)
            except (ValueError, DMError) as e:
                raise BadFile(f"{file}: quests[{i}]: {e}") from None
    except BadFile as e:
        raise fail(str(e)) from None
    _warn(rr)
    with _no_fingerprint_for_jobs(no_fingerprint):
        _run(rr, home, cfg, file, as_json, timeout, quiet, explain, retry_failed)


@contextmanager
def _no_fingerprint_for_jobs(on: bool) -> Iterator[None]:
    """DM_NO_FINGERPRINT=1 for the jobs this run starts (their Job.depend), while it runs."""
    key = fingerprint.ENV_NO_FINGERPRINT
    before = os.environ.get(key)
    if on:
        os.environ[key] = "1"
    try:
        yield
    finally:
        if on and before is None:
            os.environ.pop(key, None)
        elif on and before is not None:
            os.environ[key] = before


def _run(  # noqa: PLR0917 - the options of `dm run`, once parsed
    rr: RunRequest,
    home: pathlib.Path,
    cfg: dict[str, Any],
    file: pathlib.Path,
    as_json: bool,
    timeout: float | None,
    quiet: bool,
    explain: bool,
    retry_failed: bool,
) -> None:
    started = time.monotonic()
    with _open(home, cfg) as emb:
        started_us = emb.clock()
        before = emb.store.get_many([docs.attempt_path(a) for a in rr.attempts])
        now_us = emb.clock()
        reused = sum(  # an expired result is not reused: the report counts it apart
            1
            for d in before.values()
            if d is not None
            and d["state"] == AttemptState.FINISHED
            and not records.attempt_expired(d, now_us)
        )
        try:
            emb.service.ensure_graph_data(rr.request, Caller.trusted())
        except DMError as e:
            raise fail(f"{file}: {e.message}") from None
        if retry_failed:
            again = _retry(emb, _failed(emb, progress.reached(emb.engine, rr.attempts)))
            if again and not quiet:
                err.print(
                    f"retrying {len(again)} attempt(s) that ended abnormally", highlight=False
                )
        finished = _drive(emb, rr.attempts, timeout=timeout, quiet=quiet or as_json)
        ok = _report(
            emb,
            rr.attempts,
            started_us=started_us,
            elapsed=time.monotonic() - started,
            reused=reused,
            as_json=as_json,
            explain=explain,
        )
    if not finished:
        raise fail(f"gave up after {timeout}s; `dm why` tells what is still running", code=1)
    if not ok:
        raise typer.Exit(code=1)


@app.command(context_settings=TAKES_IDS)
def retry(  # noqa: PLR0917 - typer: one parameter per option
    attempts: Annotated[
        list[str] | None, typer.Argument(help=f"{ID_HELP}; each must have ended abnormally.")
    ] = None,
    failed: Annotated[
        bool,
        typer.Option(
            "--failed", help="Every attempt of the home that ended abnormally (not cancelled)."
        ),
    ] = False,
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run failed attempts again: a new execution on the same attempt, and every
    depender that ended abnormally because of it re-opened too, so the graph
    resumes. FINISHED attempts are never re-opened."""
    _existing_home(home)
    if not attempts and not failed:
        raise fail("name the attempts to retry, or --failed for every failed one")
    started = time.monotonic()
    with _open(home) as emb:
        started_us = emb.clock()
        chosen = [_resolve(emb, a) for a in attempts or []]
        if failed:
            chosen += _failed(emb)
        chosen = list(dict.fromkeys(chosen))
        if not chosen:
            out.print("nothing ended abnormally: nothing to retry", highlight=False)
            return
        _retry(emb, chosen)
        emb.drain()  # re-opens its dependers
        reopened = report.reopened_since(emb.engine, started_us)
        extra = [a for a in reopened if a not in chosen]
        if not quiet and not as_json:
            err.print(
                f"retrying {len(chosen)} attempt(s); {len(extra)} depender(s) re-opened",
                highlight=False,
            )
        finished = _drive(emb, chosen, timeout=timeout, quiet=quiet or as_json, extra=extra)
        ok = _report(
            emb,
            [*chosen, *extra],
            started_us=started_us,
            elapsed=time.monotonic() - started,
            reused=0,
            as_json=as_json,
            explain=False,
            retried=len(chosen),
        )
    if not finished:
        raise fail(f"gave up after {timeout}s; `dm why` tells what is still running", code=1)
    if not ok:
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
            report.ref(a),
            v.name,
            v.state.name + (" (expired)" if v.expired else ""),
            str(v.num_executions),
            str(len(v.all_deps)),
            _short(v.result) if v.result is not None else v.abnormal,
        )
    out.print(t)
    for m in missing:
        out.print(Text(f"{m}: does not exist", style="yellow"))


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
        label = Text.assemble((v.name, "bold"), f" {report.ref(v.aid)}: {v.state.name}")
        if v.state == AttemptState.WAITING:
            open_deps = sum(1 for _, s in v.deps if not s)
            label.append(f" on {open_deps} unfinished dependenc{'y' if open_deps == 1 else 'ies'}")
        elif v.state == AttemptState.EXECUTING and v.execution_state is not None:
            label.append(
                f", execution {v.num_executions} {v.execution_state.name} on '{v.config_name}'"
                f", {_when(v.timer_deadline_us)}"
            )
            if v.info_url:
                label.append(f", see {v.info_url}")
        elif v.abnormal:
            label.append(f" ({v.abnormal})")
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
    try:
        output.write_text(report.graph_html(views), encoding="utf-8")
    except OSError as e:
        raise fail(f"{output}: cannot write: {e.strerror}") from None
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

    home = _usable_home(home)
    try:
        cfg = _config(config) if config is not None else None
    except BadFile as e:
        raise fail(str(e)) from None
    try:
        run_server(port, home, emulators, config=cfg)
    except EmulatorError as e:
        raise fail(str(e)) from None
    except LayoutMismatch as e:
        raise fail(e.message) from None


@app.command()
def dev(
    home: HomeOpt = pathlib.Path(DEFAULT_HOME),
    port: Annotated[
        int,
        typer.Option(help="Port of dm_api; dm_notify, dm_tasks, dm_sweep take the next three."),
    ] = 8080,
    host: Annotated[
        str, typer.Option(help="Address the functions bind (identity checks are off).")
    ] = "127.0.0.1",
    config: Annotated[
        pathlib.Path | None,
        typer.Option("--config", help="Distributor configs (default: jobsim, simulated jobs)."),
    ] = None,
) -> None:
    """Rehearse the Google Cloud deployment locally: each function in its own
    functions-framework process, on the Firestore and Pub/Sub emulators and a
    Cloud Tasks stand-in. Ctrl-C stops everything."""
    from dmcore.runtime import dev as rehearsal
    from dmcore.runtime.emulators import EmulatorError

    try:
        cfg = _config(config) if config is not None else None
    except BadFile as e:
        raise fail(str(e)) from None
    try:
        code = rehearsal.run(port, home, host=host, config=cfg)
    except (EmulatorError, rehearsal.DevError) as e:
        raise fail(str(e), 1) from None
    raise typer.Exit(code)


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
    config: Annotated[
        pathlib.Path | None,
        typer.Option("--config", help="Distributor configs replacing the built-in ones."),
    ] = None,
    no_fingerprint: Annotated[
        bool, typer.Option("--no-fingerprint", help="As `dm run --no-fingerprint`.")
    ] = False,
) -> None:
    """Print the quest ID of each quest in FILE (as `dm run` computes them)."""
    try:
        local = None if no_fingerprint else _runs_locally(build_registry(_config(config)))
        rr = parse_run_file(file, local)
    except BadFile as e:
        raise fail(str(e)) from None
    _warn(rr)
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
    try:
        app()
    except InvalidArgument as e:  # a setting no command checks, e.g. a distributor's env
        raise SystemExit(fail(e.message).exit_code) from None
