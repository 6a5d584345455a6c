"""Command lines of nix-job's subcommands: an argparse parser that raises instead of exiting, so
each subcommand decides its exit code and prints its own usage line."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

#: The exit code of every subcommand for a bad command line.
USAGE_EXIT = 2


class UsageError(Exception):
    """Bad command line; the message says which argument and why."""


class Exit(Exception):
    """The parser finished on its own (``--help``); ``status`` is the exit code."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """``error`` raises ``UsageError``; ``exit`` (after ``--help``) raises ``Exit``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message, file=sys.stderr, end="")
        raise Exit(status)
