"""The service's words: structured log lines (``key=value``, one line per event) and the
one-line status. Pure.

Keys are stable (docs/watch-store.md lists them): ``event`` first, then the event's fields in
a fixed order. Values with spaces, quotes, ``=`` or control characters are quoted with
JSON-style escapes, so a line can never become two.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

Value = str | int | float | bool | None

_BARE = re.compile(r"^[A-Za-z0-9_./:@+\-,]+$")
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


def render_value(value: Value) -> str:
    """One value as logfmt: bare when safe, else a JSON string (escapes included)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    return value if _BARE.match(value) else json.dumps(value, ensure_ascii=False)


def logfmt(fields: Mapping[str, Value]) -> str:
    """``key=value key=value``; keys must be lower snake case (a bug otherwise)."""
    parts = []
    for key, value in fields.items():
        if not _KEY.match(key):
            raise ValueError(f"log key {key!r} is not lower snake case")
        parts.append(f"{key}={render_value(value)}")
    return " ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What the service has done since it started, and what it holds now."""

    uptime_s: float
    server: str  # up, connecting, unavailable, refused, unusable
    pushed: int = 0  # paths uploaded (or deduplicated by the server)
    pushed_bytes: int = 0  # their NAR bytes
    cached: int = 0  # already in the cache
    upstream: int = 0  # signed by an upstream cache
    excluded: int = 0  # matched --exclude
    vanished: int = 0  # garbage-collected before their upload
    failed: int = 0  # failed attempts (each is retried later)
    gave_up: int = 0  # paths dropped after their last attempt
    queue: int = 0  # paths in the journal: seen, not confirmed
    retrying: int = 0  # of the queue: waiting for their next attempt
    refused_full: int = 0  # paths not journaled because the queue was full
    watcher_errors: int = 0

    @property
    def skipped(self) -> int:
        return self.cached + self.upstream + self.excluded + self.vanished


def status_fields(s: Snapshot) -> dict[str, Value]:
    """The status as ordered fields (the log line and systemd's STATUS= share them)."""
    return {
        "pushed": s.pushed,
        "pushed_bytes": s.pushed_bytes,
        "skipped": s.skipped,
        "cached": s.cached,
        "upstream": s.upstream,
        "excluded": s.excluded,
        "vanished": s.vanished,
        "failed": s.failed,
        "gave_up": s.gave_up,
        "queue": s.queue,
        "retrying": s.retrying,
        "refused_full": s.refused_full,
        "server": s.server,
        "watcher_errors": s.watcher_errors,
        "uptime_s": round(s.uptime_s),
    }


def status_line(s: Snapshot) -> str:
    """``event=status pushed=... queue=...``: one line, every ``--status-interval`` and on
    SIGUSR1."""
    return logfmt({"event": "status", **status_fields(s)})


def systemd_status(s: Snapshot) -> str:
    """The same line for ``systemctl status`` (STATUS=), without the event key."""
    return logfmt(status_fields(s))
