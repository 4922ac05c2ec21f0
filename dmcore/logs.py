"""Structured logs: one JSON object per line on stdout, as Cloud Logging reads them.

Cloud Functions (Cloud Run) parses each stdout line that is a JSON object:
``severity`` sets the level, ``message`` the text, and
``logging.googleapis.com/trace`` ties the line to the request's trace. We
render everything (structlog *and* the standard ``logging`` calls of the
engine and the distributors) through one structlog ``ProcessorFormatter`` on
the root logger, so every line has the same shape.

The trace is bound per request with :func:`request_context` (a contextvar,
so threads and concurrent requests do not mix).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"
TRACE_HEADER = "X-Cloud-Trace-Context"

_SEVERITY = {
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
    "fatal": "CRITICAL",
}
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/([0-9]+))?")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")

_state: dict[str, Any] = {}


def _cloud_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``level`` -> ``severity`` (Cloud Logging's names), ``event`` -> ``message``."""
    level = str(event_dict.pop("level", "info")).lower()
    event_dict["severity"] = _SEVERITY.get(level, level.upper())
    if "event" in event_dict:
        event_dict["message"] = event_dict.pop("event")
    return event_dict


def _shared() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        structlog.processors.format_exc_info,
        _cloud_fields,
    ]


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is *now* (pytest's capsys swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure(level: int | str = logging.INFO) -> None:
    """Route structlog and stdlib logging to JSON lines on stdout (idempotent)."""
    if _state:
        return
    handler = _StdoutHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=False, default=str),
            ],
        )
    )
    root = logging.getLogger()
    _state.update(handler=handler, root_level=root.level)
    root.addHandler(handler)
    root.setLevel(level)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def unconfigure() -> None:
    """Undo :func:`configure` (tests: leave the process as it was found)."""
    if not _state:
        return
    root = logging.getLogger()
    root.removeHandler(_state["handler"])
    root.setLevel(_state["root_level"])
    structlog.reset_defaults()
    _state.clear()


def get(name: str = "dm") -> Any:
    """A structlog logger (``log.info("message", key=value)``)."""
    return structlog.stdlib.get_logger(name)


def trace_of(headers: Mapping[str, str], project: str | None = None) -> dict[str, str]:
    """The Cloud Logging trace fields for a request's trace headers (empty if none).

    ``X-Cloud-Trace-Context: TRACE/SPAN;o=1`` (Google's front ends) or W3C
    ``traceparent``. The trace is ``projects/P/traces/TRACE`` when the project
    is known (``GOOGLE_CLOUD_PROJECT``), else the bare trace ID.
    """
    project = project if project is not None else os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    trace = span = ""
    value = _header(headers, TRACE_HEADER)
    if value and (m := _CLOUD_TRACE.match(value.strip())):
        trace, span = m.group(1).lower(), m.group(2) or ""
    elif (value := _header(headers, "traceparent")) and (
        m := _TRACEPARENT.match(value.strip().lower())
    ):
        trace, span = m.group(1), m.group(2)
    if not trace:
        return {}
    out = {TRACE_KEY: f"projects/{project}/traces/{trace}" if project else trace}
    if span:
        out[SPAN_KEY] = span
    return out


def _header(headers: Mapping[str, str], name: str) -> str:
    got = headers.get(name)
    if got is None:
        lower = name.lower()
        got = next((v for k, v in headers.items() if k.lower() == lower), None)
    return got or ""


@contextlib.contextmanager
def request_context(headers: Mapping[str, str], **fields: Any) -> Iterator[None]:
    """Bind the request's trace (and ``fields``) to every line logged inside."""
    with structlog.contextvars.bound_contextvars(**trace_of(headers), **fields):
        yield
