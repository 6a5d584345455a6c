"""Store events: which top-level store names can be uploadable paths, and the inotify source
that reports lock removals on the store directory (with a wakeup pipe for prompt stops)."""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from inotify_simple import INotify, flags

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import BASE_NAME_RE

LOCK_SUFFIX = ".lock"
IGNORED_SUFFIXES = (".drv", ".chroot")

# Raw inotify bits the watcher interprets (values from <sys/inotify.h>, via inotify_simple).
IN_DELETE = int(flags.DELETE)
IN_ISDIR = int(flags.ISDIR)
IN_Q_OVERFLOW = int(flags.Q_OVERFLOW)
IN_IGNORED = int(flags.IGNORED)
IN_UNMOUNT = int(flags.UNMOUNT)


# --- pure name filter ---------------------------------------------------------------------------


def is_candidate(name: str) -> bool:
    """Whether a top-level store entry name may be an uploadable store path.

    Dot-names (``.links``), ``*.lock``, ``*.drv`` and ``*.chroot`` are never candidates, nor is
    anything that is not a store base name. ``*-source`` paths (flake inputs, fetched sources)
    ARE candidates on purpose: they are what an offline rebuild needs; users who do not want
    them uploaded exclude them with the uploader's exclude pattern.
    """
    if name.startswith(".") or name.endswith(LOCK_SUFFIX) or name.endswith(IGNORED_SUFFIXES):
        return False
    return BASE_NAME_RE.match(name) is not None


def lock_target(name: str) -> str | None:
    """The store base name whose lock file ``name`` is, if it is a candidate; else None.

    Nix deletes ``<path>.lock`` only after registering ``<path>`` as valid (``PathLocks`` with
    ``setDeletion(true)`` in NixOS/nix ``src/libstore/local-store.cc``),
    so a deleted lock is the signal that a path is finished.
    """
    if not name.endswith(LOCK_SUFFIX):
        return None
    target = name[: -len(LOCK_SUFFIX)]
    return target if is_candidate(target) else None


# --- event source seam --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreEvent:
    """One raw event on the store directory: an inotify mask and the entry name ('' if none)."""

    mask: int
    name: str


class EventSource(Protocol):
    """Where the watcher thread reads store events from (inotify in production)."""

    def read(self, timeout_s: float) -> list[StoreEvent]:
        """Events available now, waiting up to ``timeout_s`` for the first; [] on timeout/wake."""
        ...

    def wake(self) -> None:
        """Make a ``read`` blocked in another thread return promptly. Thread-safe."""
        ...

    def close(self) -> None:
        """Release the watch; further reads are not allowed."""
        ...


EventSourceFactory = Callable[[Path], EventSource]


class InotifyEventSource:
    """A non-recursive inotify watch for ``IN_DELETE`` on one directory, with a wakeup pipe.

    ``IN_Q_OVERFLOW``, ``IN_IGNORED`` and ``IN_UNMOUNT`` are always delivered by the kernel.
    The watch exists when the constructor returns, so no later event is missed.
    """

    def __init__(self, directory: Path) -> None:
        try:
            self._inotify = INotify(nonblocking=True)
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            raise StoreError(
                f"Cannot watch the Nix store {directory}: inotify is unavailable ({exc}). "
                "New store paths will only be found by the final rescan; raise "
                "fs.inotify.max_user_instances if it is exhausted, or use Linux for live uploads.",
                title="nix-job: cannot watch the Nix store",
            ) from exc
        try:
            self._inotify.add_watch(directory, flags.DELETE | flags.ONLYDIR)
        except OSError as exc:
            self._inotify.close()
            raise StoreError(
                f"Cannot watch the Nix store directory {directory}: {exc.strerror or exc}. "
                "Check that the directory exists and is readable by the runner user "
                "(a chroot store must be created before the watcher starts).",
                title="nix-job: cannot watch the Nix store",
            ) from exc
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._inotify.fileno(), selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()  # wake() must never write to a closed (reused) fd
        self._closed = False

    def read(self, timeout_s: float) -> list[StoreEvent]:
        self._selector.select(max(0.0, timeout_s))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        return [StoreEvent(mask=e.mask, name=e.name) for e in self._inotify.read(timeout=0)]

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):  # a full pipe already wakes the reader
                os.write(self._wake_w, b"x")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._selector.close()
            self._inotify.close()
            os.close(self._wake_r)
            os.close(self._wake_w)


# --- the watcher --------------------------------------------------------------------------------
