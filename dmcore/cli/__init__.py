"""The ``dm`` command: its commands, the run file it reads, and its reports."""

from dmcore.cli.commands import app, main

__all__ = ["app", "main"]
