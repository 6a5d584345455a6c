"""The service's log: one ``key=value`` line per event on stderr (journald keeps it), every
line run through a redactor that knows every token the process has held.

The service's own events go through ``event()``; records of the libraries it uses become
``event=log logger=... msg=...`` lines. The push layer's per-attempt and per-path messages are
silenced (the service logs outages once and outcomes as events), unless ``verbose``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO

from nix_job.core.secret import Secret
from nix_job.core.text import Redactor
from nix_job.service.status import Value, logfmt

#: Loggers whose messages the service's own events replace (set to ERROR+ unless verbose).
QUIETED = ("nix_job.push.retry", "nix_job.push.upload", "nix_job.push.session")


class SecretScrubber:
    """A thread-safe ``Redactor`` fed with ``Secret`` values and all their derived forms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._redactor = Redactor()

    def add(self, secret: Secret) -> None:
        with self._lock:
            for form in secret.derived_forms():
                self._redactor.add(form)

    def __call__(self, text: str) -> str:
        with self._lock:
            return self._redactor.redact(text)


class LogfmtFormatter(logging.Formatter):
    """``ts=… level=… event=…``: structured records as they are, others wrapped."""

    def __init__(self, scrub: Callable[[str], str], wall: Callable[[], float] = time.time):
        super().__init__()
        self._scrub = scrub
        self._wall = wall

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        head: dict[str, Value] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body: dict[str, Value] = fields
        else:
            body = {"event": "log", "logger": record.name, "msg": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            body = {**body, "exc": "".join(traceback.format_exception(record.exc_info[1]))}
        return self._scrub(logfmt({**head, **body}))


def event(logger: logging.Logger, level: int, name: str, **fields: Value) -> None:
    """Log one structured event: ``event=name`` then ``fields`` in order."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", name, extra={"fields": {"event": name, **fields}})


def configure(stream: IO[str], scrub: SecretScrubber, *, verbose: bool = False) -> None:
    """Send every record to ``stream`` as one scrubbed logfmt line."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(scrub))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # SECURITY: header-level debug output of the HTTP clients never reaches the log.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("nix_job.cache").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
