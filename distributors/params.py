"""Strict parsing of a quest's distributor parameters into a distributor's proto message.

Shared by the remote distributors: the parameters are protobuf JSON of the
distributor's ``Parameters`` message; an unknown field or a bad value is a
ValueError naming the field (``validate`` refuses the quest with it).
"""

from __future__ import annotations

import json
from typing import TypeVar

from google.protobuf import json_format, message

M = TypeVar("M", bound=message.Message)


def parse(text: str, msg: M) -> M:
    """Parse ``text`` (a JSON object, or empty for ``{}``) into ``msg``; returns it."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object")
    fields = msg.DESCRIPTOR.fields
    known = {f.name for f in fields} | {f.json_name for f in fields}
    for key in sorted(raw):
        if key not in known:
            names = ", ".join(f.name for f in fields) or "none"
            raise ValueError(f"{key}: unknown field (known: {names})")
    for key, value in sorted(raw.items()):
        try:
            json_format.ParseDict({key: value}, msg)
        except json_format.ParseError as e:
            text = str(e).removeprefix(f"Failed to parse {key} field: ")
            raise ValueError(f"{key}: {text.split(' at ')[0].rstrip('.')}") from None
    return msg
