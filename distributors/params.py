"""Strict parsing of a quest's distributor parameters into a distributor's proto message.

Shared by the remote distributors: the parameters are protobuf JSON of the
distributor's ``Parameters`` message; an unknown field or a bad value is a
ValueError naming the field (``validate`` refuses the quest with it).
"""

from __future__ import annotations

import json
from typing import TypeVar

from google.protobuf import message

from dmcore import distributor as dist

M = TypeVar("M", bound=message.Message)


def parse(text: str, msg: M) -> M:
    """Parse ``text`` (a JSON object, or empty for ``{}``) into ``msg``; returns it."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object")
    return dist.parse_fields(raw, msg)
