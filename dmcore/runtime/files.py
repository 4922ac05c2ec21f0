"""Reading a user's JSON or YAML file (run files, distributor configs)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import yaml


class BadFile(Exception):
    """A user's file cannot be used; the message says where and why."""


def load_document(path: pathlib.Path) -> Any:
    """Parse a JSON or YAML file (``.json`` as JSON, anything else as YAML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadFile(f"{path}: no such file") from None
    except OSError as e:
        raise BadFile(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadFile(f"{path}: not UTF-8 text") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise BadFile(f"{path}: not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        raise BadFile(f"{path}: not valid YAML: {e}") from None
