"""The ``dm`` command line."""

from __future__ import annotations

import json
import pathlib
from typing import Annotated, Any

import typer
import yaml

from dmcore import ids
from dmcore.errors import InvalidArgument

app = typer.Typer(help="dm: a dependency-aware, memoising task scheduler.", no_args_is_help=True)


class BadFile(Exception):
    """A user-supplied file cannot be used; the message says why."""


def load_file(path: pathlib.Path) -> Any:
    """Parse a JSON or YAML file (by suffix; JSON is valid YAML anyway)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadFile(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadFile(f"{path}: not UTF-8 text") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise BadFile(
            f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {e}"
        ) from None


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@app.command("quest-id")
def quest_id_cmd(
    file: Annotated[pathlib.Path, typer.Argument(help="JSON/YAML: a quest, or {quests: [...]}")],
) -> None:
    """Print the quest ID of each quest description in FILE."""
    try:
        data = load_file(file)
        quests = data.get("quests", [data]) if isinstance(data, dict) else None
        if not isinstance(quests, list) or not quests:
            raise BadFile(f"{file}: expected a quest object or {{'quests': [...]}}")
        for i, q in enumerate(quests):
            if not isinstance(q, dict):
                raise BadFile(f"{file}: quests[{i}]: must be an object")
            desc = {k: v for k, v in q.items() if k != "attempts"}
            try:
                typer.echo(f"{ids.quest_id(desc)}  {q.get('distributor_config_name', '')}")
            except InvalidArgument as e:
                raise BadFile(f"{file}: quests[{i}]: {e.message}") from None
    except BadFile as e:
        raise _fail(str(e)) from None


def main() -> None:
    app()
