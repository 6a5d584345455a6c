"""The in-process Nix store watcher: emits store paths that became valid while the command ran.

Owns batching the store's lock-removal events into validity checks, dedupe and the overflow
rescan (the events themselves come from ``nix_job.push.store_events``). It never talks HTTP:
paths go to an injected ``on_paths`` (the push session).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import STORE_DIR
from nix_job.push.store_events import (
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    EventSource,
    EventSourceFactory,
    InotifyEventSource,
    StoreEvent,
    is_candidate,
    lock_target,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class WatcherStats:
    """A consistent snapshot of what the watcher has done so far."""

    events: int = 0  # raw events read from the source
    ignored: int = 0  # events or rescanned entries that name no candidate store path
    duplicates: int = 0  # candidates already emitted or waiting for a validity check
    validity_checks: int = 0  # calls of is_valid
    invalid: int = 0  # candidates Nix said are not valid; dropped
    emitted: int = 0  # paths handed to on_paths successfully
    dropped: int = 0  # paths given up on after is_valid or on_paths failed twice
    overflows: int = 0  # IN_Q_OVERFLOW events (each triggers a rescan)
    rescans: int = 0  # rescans done (overflow or explicit)
    errors: int = 0  # every failure recorded below, counted
    last_error: str | None = None
    crashed: bool = False  # the watcher thread ended on an unexpected error


class StoreWatcher:
    """Watches one store directory and hands newly valid store paths to ``on_paths``.

    ``start()`` sets up the watch and notes what the store held before returning; a thread then
    collects lock deletions, checks them with ``is_valid`` in batches (at most ``batch_max``
    names, waiting at most ``batch_delay_s`` after the first), and calls ``on_paths`` from that
    thread with the valid ones, in event order, each path at most once per watcher.
    ``stop()`` processes what is pending and joins the thread within its timeout.

    What the store held at the start is what a rescan (after a lost event, and the final sweep)
    compares with. With ``registered_since`` (the store's database: the paths registered at or
    after a time, or None when it cannot answer) that is only the start time; without it, a
    listing of the store directory, which costs tens of milliseconds of CPU on a store of
    10,000 paths, twice a run.
    """

    def __init__(
        self,
        *,
        store_dir: Path,
        is_valid: Callable[[Sequence[str]], set[str]],
        on_paths: Callable[[list[str]], None],
        logical_store_dir: str = STORE_DIR,
        event_source: EventSourceFactory = InotifyEventSource,
        batch_max: int = 500,
        batch_delay_s: float = 0.1,
        idle_wait_s: float = 1.0,
        registered_since: Callable[[float], list[str] | None] | None = None,
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be at least 1, not {batch_max}")
        self._store_dir = Path(store_dir)
        self._logical = logical_store_dir.rstrip("/")
        self._is_valid = is_valid
        self._on_paths = on_paths
        self._event_source = event_source
        self._batch_max = batch_max
        self._batch_delay_s = batch_delay_s
        self._idle_wait_s = idle_wait_s
        self._registered_since = registered_since
        self._started_at = 0.0  # wall clock, for registered_since

        self._work = threading.RLock()  # serialises event handling, flushes and rescans
        self._stats_lock = threading.Lock()
        self._stats = WatcherStats()
        self._source: EventSource | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._snapshot: frozenset[str] | None = None
        self._pending: dict[str, int] = {}  # base name -> failed validity attempts
        self._redeliver: list[str] = []  # valid paths whose on_paths call failed once
        self._emitted: set[str] = set()  # base names handed over (or being retried)
        self._deadline: float | None = None  # when the pending batch is due

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Watch the store directory and snapshot it; events after this returns are not missed.

        Raises StoreError when the directory cannot be watched or listed.
        """
        if self._source is not None:
            raise RuntimeError("StoreWatcher.start() called twice; create one watcher per run")
        self._started_at = time.time()
        source = self._event_source(self._store_dir)  # the watch exists from here on
        try:
            if self._registered_since is not None:
                os.stat(self._store_dir)  # the database stands in for a listing
                # Registration times are whole seconds: what was registered in this second
                # before the watch began is the start's, not the run's.
                before = self._registered_since(float(int(self._started_at)))
                snapshot: frozenset[str] = frozenset(self._names(before or ()))
            else:
                snapshot = frozenset(os.listdir(self._store_dir))
        except OSError as exc:
            source.close()
            raise StoreError(
                f"Cannot list the Nix store directory {self._store_dir}: "
                f"{exc.strerror or exc}. Check that it exists and is readable by the runner user.",
                title="nix-job: cannot watch the Nix store",
            ) from exc
        self._source = source
        self._snapshot = snapshot
        self._thread = threading.Thread(
            target=self._run, args=(source, snapshot), name="nix-job-store-watcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Handle pending events, then end the thread. Idempotent; waits at most ``timeout``.

        Returns True when the thread has finished (or never ran), False if it is still busy
        (e.g. a hung ``is_valid``); it is a daemon thread and cannot block interpreter exit.
        """
        thread = self._thread
        if thread is None:
            return True
        self._stopping.set()
        if self._source is not None:
            self._source.wake()
        thread.join(timeout)
        if thread.is_alive():
            self._record_error(
                f"the store watcher did not stop within {timeout:g} s (a validity check or "
                "on_paths call is still running); paths it has not emitted are left to the "
                "final rescan"
            )
            return False
        return True

    @property
    def stats(self) -> WatcherStats:
        with self._stats_lock:
            return self._stats

    def rescan(self) -> list[str]:
        """List the store, emit every new valid candidate not emitted yet; return what it emitted.

        "New" means absent from the start snapshot. Works before and after ``stop()``; pending
        names are checked in the same pass. The final sweep that catches what events missed.
        """
        snapshot = self._snapshot
        if snapshot is None:
            raise RuntimeError("StoreWatcher.rescan() needs start() first (it takes the snapshot)")
        with self._work:
            self._rescan_locked(snapshot)
            return self._flush_locked(final=True)

    # -- the thread -----------------------------------------------------------------------------

    def _run(self, source: EventSource, snapshot: frozenset[str]) -> None:
        try:
            drain_rounds = 0
            while True:
                stopping = self._stopping.is_set()
                events = source.read(0.0 if stopping else self._wait_s())
                with self._work:
                    if self._absorb_locked(events):
                        self._rescan_locked(snapshot)
                    if stopping:
                        drain_rounds += 1
                        # Kernel events of unlinks before stop() are already queued; a store
                        # that never quiets down must not keep the thread alive forever.
                        if not events or drain_rounds >= 64:
                            self._flush_locked(final=True)
                            return
                    elif self._due():
                        self._flush_locked(final=False)
        except Exception as exc:
            log.exception("store watcher thread failed")
            self._record_error(
                f"the store watcher stopped on an unexpected error ({type(exc).__name__}: {exc}); "
                "paths built after this are only found by the final rescan",
                crashed=True,
            )
        finally:
            with contextlib.suppress(OSError):
                source.close()

    def _wait_s(self) -> float:
        with self._work:
            if self._deadline is None:
                return self._idle_wait_s
            return max(0.0, self._deadline - time.monotonic())

    def _due(self) -> bool:
        if self._deadline is None:
            return False
        return len(self._pending) >= self._batch_max or time.monotonic() >= self._deadline

    def _absorb_locked(self, events: Sequence[StoreEvent]) -> bool:
        """Queue candidates from raw events; True when the kernel queue overflowed."""
        overflow = False
        ignored = duplicates = 0
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                overflow = True
                self._bump(overflows=1)
                continue
            if event.mask & (IN_IGNORED | IN_UNMOUNT):
                self._record_error(
                    f"the watch on {self._store_dir} was removed (directory deleted or "
                    "unmounted); paths built from now on are only found by the final rescan"
                )
                continue
            target = None
            if event.mask & IN_DELETE and not event.mask & IN_ISDIR:
                target = lock_target(event.name)
            if target is None:
                ignored += 1
            elif not self._queue_locked(target):
                duplicates += 1
        self._bump(events=len(events), ignored=ignored, duplicates=duplicates)
        return overflow

    def _queue_locked(self, name: str) -> bool:
        if name in self._emitted or name in self._pending:
            return False
        self._pending[name] = 0
        self._arm_locked()
        return True

    def _arm_locked(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._batch_delay_s

    def _rescan_locked(self, snapshot: frozenset[str]) -> None:
        try:
            names = self._new_names(snapshot)
        except OSError as exc:
            self._record_error(
                f"rescanning {self._store_dir} failed ({exc.strerror or exc}); paths whose "
                "events were lost cannot be found"
            )
            return
        ignored = duplicates = 0
        for name in names:
            if not is_candidate(name):
                ignored += 1
            elif not self._queue_locked(name):
                duplicates += 1
        self._bump(rescans=1, ignored=ignored, duplicates=duplicates)

    def _new_names(self, snapshot: frozenset[str]) -> list[str]:
        """The store entries that appeared since the start, in a stable order."""
        if self._registered_since is not None:
            found = self._registered_since(float(int(self._started_at)))
            if found is not None:
                return sorted(set(self._names(found)) - snapshot)
            # The database could not answer: entries whose inode changed since the start (Nix
            # registers a path right after making it read-only, which sets its ctime).
            return sorted(
                entry.name
                for entry in os.scandir(self._store_dir)
                if entry.stat(follow_symlinks=False).st_ctime >= int(self._started_at)
            )
        # Only the names that are new since the snapshot are looked at (a store holds
        # thousands of paths; a run adds a few).
        return sorted(set(os.listdir(self._store_dir)) - snapshot)

    def _names(self, paths: Iterable[str]) -> list[str]:
        prefix = self._logical + "/"
        return [p.removeprefix(prefix) for p in paths if p.startswith(prefix)]

    def _flush_locked(self, *, final: bool) -> list[str]:
        """Check and deliver the pending work; ``final`` also retries what just failed."""
        delivered: list[str] = []
        rounds = 2 if final else 1  # a final flush gives failures their one retry right away
        for _ in range(rounds):
            self._deadline = None
            redeliver, self._redeliver = self._redeliver, []
            if redeliver:
                delivered += self._deliver_locked(redeliver, retry=True)
            batch = list(self._pending.items())
            self._pending.clear()
            for start in range(0, len(batch), self._batch_max):
                delivered += self._check_locked(batch[start : start + self._batch_max])
            if not (self._pending or self._redeliver):
                break
        return delivered

    def _check_locked(self, batch: list[tuple[str, int]]) -> list[str]:
        paths = [f"{self._logical}/{name}" for name, _ in batch]
        self._bump(validity_checks=1)
        try:
            valid = self._is_valid(paths)
        except Exception as exc:
            log.warning("validity check of %d store paths failed: %s", len(paths), exc)
            retry = [name for name, attempts in batch if attempts == 0]
            self._record_error(
                f"checking {len(paths)} store paths for validity failed "
                f"({type(exc).__name__}: {exc}); "
                + ("retrying them once" if retry else "giving up on them; the final rescan retries")
            )
            for name in retry:
                self._pending.setdefault(name, 1)
            if retry:
                self._arm_locked()
            self._bump(dropped=len(batch) - len(retry))
            return []
        good = [path for path in paths if path in valid]
        self._bump(invalid=len(paths) - len(good))
        return self._deliver_locked(good, retry=False) if good else []

    def _deliver_locked(self, paths: list[str], *, retry: bool) -> list[str]:
        names = [path.rsplit("/", 1)[1] for path in paths]
        self._emitted.update(names)
        try:
            self._on_paths(list(paths))
        except Exception as exc:
            log.warning("handing %d store paths to the uploader failed: %s", len(paths), exc)
            self._record_error(
                f"handing {len(paths)} store paths to the uploader failed "
                f"({type(exc).__name__}: {exc}); "
                + ("giving up on them; the final rescan retries" if retry else "retrying once")
            )
            if retry:
                self._emitted.difference_update(names)  # let a later rescan find them again
                self._bump(dropped=len(paths))
            else:
                self._redeliver.extend(paths)
                self._arm_locked()
            return []
        self._bump(emitted=len(paths))
        return paths

    # -- stats ----------------------------------------------------------------------------------

    def _bump(self, **increments: int) -> None:
        with self._stats_lock:
            s = self._stats
            self._stats = dataclasses.replace(
                s, **{k: getattr(s, k) + v for k, v in increments.items()}
            )

    def _record_error(self, message: str, *, crashed: bool = False) -> None:
        log.warning("%s", message)
        with self._stats_lock:
            s = self._stats
            self._stats = dataclasses.replace(
                s, errors=s.errors + 1, last_error=message, crashed=s.crashed or crashed
            )
