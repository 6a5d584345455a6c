"""Capturing what nix-job logs (through the ``nix_job`` loggers, its one log seam) in tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(record.getMessage())


@contextmanager
def captured_log(lines: list[str]) -> Iterator[list[str]]:
    """Append every message logged under ``nix_job`` (INFO and up) to ``lines`` meanwhile."""
    logger = logging.getLogger("nix_job")
    handler = _ListHandler(lines)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
