"""The watch-store tests configure logging as the service does: put it back afterwards, so the
rest of the suite (one process) keeps its handlers and levels."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from nix_job.service.logs import QUIETED

_TOUCHED = ("httpx", "httpcore", "nix_job.cache", *QUIETED)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in _TOUCHED}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
