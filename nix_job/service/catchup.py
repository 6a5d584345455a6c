"""Catch-up: which store paths were registered while nothing watched, and how far the service
may say it has seen. Pure.

The *mark* (``seen_through``, a Unix time kept in the state directory) promises: every path
registered before it was journaled or confirmed. At start, paths registered since the mark are
caught up, within two bounds: the window (nothing registered more than ``window_s`` before the
start) and a count (the newest ``max_paths``). Nix records the registration time of every
valid path (``registrationTime`` in ``nix path-info --json``, whole seconds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nix_job.core.nixhash import BASE_NAME_RE, STORE_DIR

#: registrationTime is whole seconds (time_t): a path registered at 10.7 reads 10.
REGISTRATION_GRANULARITY_S = 1.0
#: Store entries whose inode changed (ctime) this long before the catch-up start are still
#: asked about. Nix canonicalises a path's metadata (mtime 1, read-only modes) just before it
#: registers it, which sets the ctime (NixOS/nix src/libstore/posix-fs-canonicalise.cc;
#: local-store.cc in 2.8); the slack covers hashing a huge output between the two.
CTIME_SLACK_S = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchUp:
    """What to catch up, and what the bounds left out (for the log)."""

    since: float  # registration times from here on are caught up
    paths: tuple[str, ...]  # oldest first
    beyond_window: bool  # the mark was older than the window: older paths are not caught up
    truncated: int  # paths left out by the count bound (the oldest ones)


def catch_up_since(mark: float, *, now: float, window_s: float) -> tuple[float, bool]:
    """Where the catch-up starts: the mark, or the window's start when the mark is older."""
    earliest = now - window_s
    return (earliest, True) if mark < earliest else (mark, False)


def select(
    registered: Mapping[str, int], *, mark: float, now: float, window_s: float, max_paths: int
) -> CatchUp:
    """Paths whose registration time is at or after the mark (allowing for whole seconds),
    within the window; the newest ``max_paths`` when there are more."""
    since, beyond = catch_up_since(mark, now=now, window_s=window_s)
    wanted = sorted(
        ((t, p) for p, t in registered.items() if t >= since - REGISTRATION_GRANULARITY_S),
        key=lambda item: (item[0], item[1]),
    )
    truncated = max(0, len(wanted) - max_paths)
    kept = wanted[truncated:] if max_paths > 0 else []
    return CatchUp(
        since=since,
        paths=tuple(p for _, p in kept),
        beyond_window=beyond,
        truncated=truncated if max_paths > 0 else len(wanted),
    )


def next_mark(previous: float, *, now: float, margin_s: float, holds: Iterable[float]) -> float:
    """The mark to record now: ``margin_s`` behind the clock (paths still on their way from
    the watcher), never past a hold (a catch-up not finished, a queue that was full, a watcher
    that was down), and never backwards."""
    candidate = now - margin_s
    for hold in holds:
        candidate = min(candidate, hold)
    return max(previous, candidate)


def parse_registrations(text: str | bytes, store_dir: str = STORE_DIR) -> dict[str, int]:
    """``{store path: registrationTime}`` from any shape of ``nix path-info --json``: a list
    of objects with ``path`` (Nix 2.8-2.18), an object keyed by path (2.19+), or the versioned
    envelope keyed by base name (2.33+). Entries without a time (invalid paths) are left out.
    Raises ValueError on anything else."""
    data = json.loads(text)
    logical = store_dir.rstrip("/")
    prefix = logical + "/"
    entries: Iterable[tuple[Any, Any]]
    if isinstance(data, list):
        entries = ((item.get("path") if isinstance(item, dict) else None, item) for item in data)
    elif isinstance(data, dict) and isinstance(data.get("info"), dict) and "version" in data:
        prefix = str(data.get("storeDir") or store_dir).rstrip("/") + "/"
        entries = data["info"].items()
    elif isinstance(data, dict):
        entries = data.items()
    else:
        raise ValueError(f"top level is {type(data).__name__}, not a list or an object")
    found: dict[str, int] = {}
    for key, obj in entries:
        if not isinstance(obj, dict) or not isinstance(key, str):
            continue
        when = obj.get("registrationTime")
        if not isinstance(when, int) or isinstance(when, bool):
            continue
        name = key.removeprefix(prefix)
        if BASE_NAME_RE.match(name):
            found[f"{logical}/{name}"] = when
    return found
