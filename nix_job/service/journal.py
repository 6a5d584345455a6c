"""The on-disk state of ``nix-job watch-store``: the journal of paths seen but not yet
confirmed uploaded, the catch-up mark, and the lock that keeps one service per directory.

Journal (``journal``): an append-only text log, one record per line, after a header::

    nix-job-journal 1
    + /nix/store/<hash>-<name> [attempts]    seen (journaled before it is queued; fsync'd)
    ! /nix/store/<hash>-<name>               one failed attempt
    - /nix/store/<hash>-<name>               confirmed (uploaded, cached, skipped) or given up

Replaying it gives the pending paths with their attempt counts; a torn last line (a crash in
the middle of a write) is ignored. When the log has grown past twice the pending set (plus
``COMPACT_SLACK`` lines) it is rewritten atomically (temporary file, fsync, rename, fsync of the
directory), so its size follows the pending set, which ``limit`` bounds.

Mark (``mark.json``): ``{"version": 1, "seen_through": <unix time>}``, replaced atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nix_job.core.nixhash import BASE_NAME_RE, STORE_DIR

log = logging.getLogger(__name__)

HEADER = "nix-job-journal 1"
JOURNAL_NAME = "journal"
MARK_NAME = "mark.json"
LOCK_NAME = "lock"
#: Log lines beyond twice the pending set that are tolerated before a rewrite.
COMPACT_SLACK = 1000
_MODE = 0o600


@dataclass(frozen=True, slots=True, kw_only=True)
class Added:
    new: tuple[str, ...]  # journaled now
    refused: tuple[str, ...]  # not journaled: the journal is full


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: write a temporary file, fsync it, rename it over the
    old one, fsync the directory (so the rename survives a power cut too)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _MODE)
    try:
        with os.fdopen(fd, "wb", closefd=True) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replay(lines: Iterable[str], store_dir: str = STORE_DIR) -> tuple[dict[str, int], int]:
    """The pending paths (with their failed attempts) a journal's records leave, and how many
    lines were unreadable. The caller drops a last line without its newline first."""
    pending: dict[str, int] = {}
    bad = 0
    prefix = store_dir.rstrip("/") + "/"
    for line in lines:
        op, _, rest = line.partition(" ")
        path, _, count = rest.partition(" ")
        if not path.startswith(prefix) or not BASE_NAME_RE.match(path[len(prefix) :]):
            bad += 1
        elif op == "+" and (not count or count.isdigit()):
            pending[path] = max(pending.get(path, 0), int(count or 0))
        elif op == "-" and not count:
            pending.pop(path, None)
        elif op == "!" and not count:
            if path in pending:
                pending[path] += 1
        else:
            bad += 1
    return pending, bad


def read_pending(directory: Path, store_dir: str = STORE_DIR) -> dict[str, int]:
    """The pending paths of the journal in ``directory``, read without touching it (safe
    while a service runs)."""
    try:
        lines = (directory / JOURNAL_NAME).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    records = lines.split("\n")
    if records[0] != HEADER:
        return {}
    return replay(records[1:-1], store_dir)[0]


class Journal:
    """The pending paths, on disk and in memory. Thread-safe."""

    def __init__(self, directory: Path, *, limit: int, store_dir: str = STORE_DIR) -> None:
        self.path = directory / JOURNAL_NAME
        self.limit = limit
        self._store_dir = store_dir
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._lines = 0
        self._dirty = False
        self.unreadable_lines = 0
        self._load()
        self._rewrite_locked()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        lines = text.split("\n")
        if lines[0] != HEADER:
            aside = self.path.with_name(f"{JOURNAL_NAME}.unreadable")
            os.replace(self.path, aside)
            log.warning(
                "the journal %s does not start with %r; it was moved to %s and a new one started",
                self.path,
                HEADER,
                aside,
            )
            return
        # The last element is "" after a final newline, else a torn record: dropped.
        self._pending, bad = replay(lines[1:-1], self._store_dir)
        self.unreadable_lines = bad + (1 if len(lines) > 1 and lines[-1] else 0)

    # -- records ------------------------------------------------------------------------------

    def add(self, paths: Iterable[str]) -> Added:
        """Journal the paths not pending yet, durably (fsync), up to the limit."""
        with self._lock:
            new: list[str] = []
            refused: list[str] = []
            for path in dict.fromkeys(paths):
                if path in self._pending:
                    continue
                if len(self._pending) >= self.limit:
                    refused.append(path)
                    continue
                self._pending[path] = 0
                new.append(path)
            if new:
                self._write_locked("".join(f"+ {p}\n" for p in new), sync=True)
            return Added(new=tuple(new), refused=tuple(refused))

    def confirm(self, paths: Iterable[str]) -> list[str]:
        """Drop pending paths (confirmed, or given up); returns those that were pending. Not
        fsync'd: a lost removal only means a path is checked again after a crash."""
        with self._lock:
            gone = [p for p in dict.fromkeys(paths) if self._pending.pop(p, None) is not None]
            if gone:
                self._write_locked("".join(f"- {p}\n" for p in gone), sync=False)
            return gone

    def failed_attempt(self, path: str) -> int:
        """Count a failed attempt of a pending path; its attempts so far (0 if not pending)."""
        with self._lock:
            if path not in self._pending:
                return 0
            self._pending[path] += 1
            self._write_locked(f"! {path}\n", sync=False)
            return self._pending[path]

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._pending

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def attempts(self, path: str) -> int:
        with self._lock:
            return self._pending.get(path, 0)

    # -- files --------------------------------------------------------------------------------

    def sync(self) -> None:
        """fsync what was written since the last fsync."""
        with self._lock:
            if self._dirty and self._fd >= 0:
                os.fsync(self._fd)
                self._dirty = False

    def maybe_compact(self) -> bool:
        """Rewrite the log when it has grown well past the pending set; True if it did."""
        with self._lock:
            if self._fd < 0 or self._lines <= 2 * len(self._pending) + COMPACT_SLACK:
                return False
            self._rewrite_locked()
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            return True

    def close(self) -> None:
        """Rewrite compactly and close; the journal holds exactly the pending paths."""
        with self._lock:
            if self._fd < 0:
                return
            os.close(self._fd)
            self._fd = -1
            self._rewrite_locked()

    def _write_locked(self, text: str, *, sync: bool) -> None:
        if self._fd < 0:
            return  # closed at shutdown: a late record is redone after the restart
        data = text.encode()
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        self._lines += text.count("\n")
        if sync:
            os.fsync(self._fd)
            self._dirty = False
        else:
            self._dirty = True

    def _rewrite_locked(self) -> None:
        body = "".join(
            f"+ {path} {attempts}\n" if attempts else f"+ {path}\n"
            for path, attempts in self._pending.items()
        )
        atomic_write(self.path, f"{HEADER}\n{body}".encode())
        self._lines = len(self._pending)
        self._dirty = False


class MarkFile:
    """The catch-up mark: the time through which every registered path was seen."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / MARK_NAME
        self._saved: float | None = None

    def load(self) -> float | None:
        """The recorded mark; None when there is none (first start) or it is unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("the catch-up mark %s is unreadable (%s); starting afresh", self.path, exc)
            return None
        value = data.get("seen_through") if isinstance(data, dict) else None
        if not isinstance(value, int | float) or isinstance(value, bool):
            log.warning("the catch-up mark %s holds no seen_through; starting afresh", self.path)
            return None
        self._saved = float(value)
        return self._saved

    def save(self, value: float) -> None:
        """Record ``value`` durably, unless it is already what the file holds."""
        if value == self._saved:
            return
        atomic_write(self.path, json.dumps({"version": 1, "seen_through": value}).encode())
        self._saved = value


class StateLock:
    """An exclusive ``flock`` on the state directory's lock file, held for the process's life:
    two services sharing a journal would confirm each other's paths."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._fd = -1

    def acquire(self) -> bool:
        """True when this process now holds the lock; False when another one does."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """The pid the lock file names (for the message), or '?'."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
