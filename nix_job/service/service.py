"""The ``nix-job watch-store`` loop: watch the store, journal what appears, feed the push
session, catch up what nobody watched, keep the mark, talk to systemd, stop in time.

Threads: the store watcher hands paths over (journaled before they are queued); the pipeline
connects and replaces sessions; catch-ups run on their own; this loop does only quick things
(so the watchdog keep-alives are honest) every ``tick_s``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from nix_job.core.errors import StoreError
from nix_job.push.watcher import WatcherStats
from nix_job.service.catchup import catch_up_since, next_mark, select
from nix_job.service.config import ServiceConfig
from nix_job.service.credential import Credential
from nix_job.service.journal import MarkFile
from nix_job.service.ledger import Ledger
from nix_job.service.logs import SecretScrubber, event
from nix_job.service.pipeline import Pipeline
from nix_job.service.status import Snapshot, status_fields, systemd_status
from nix_job.service.systemd import Notifier

log = logging.getLogger("nix_job.service")


class Watcher(Protocol):
    """``nix_job.push.watcher.StoreWatcher`` as the loop uses it."""

    def start(self) -> None: ...
    def stop(self, timeout: float = 10.0) -> bool: ...
    @property
    def stats(self) -> WatcherStats: ...


WatcherFactory = Callable[[Callable[[list[str]], None]], Watcher]
Registrations = Callable[[float], Mapping[str, int]]  # since → {path: registration time}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopTiming:
    tick_s: float = 0.5
    mark_every_s: float = 30.0
    mark_margin_s: float = 60.0  # the mark trails the clock: paths on their way from the watcher
    feed_low: int = 500  # queue more from the backlog when the session holds fewer journaled paths
    feed_slice: int = 1000
    compact_every_s: float = 60.0
    watcher_recycle: int = 200_000  # a watcher remembers every path it emitted
    retry_s: float = 30.0  # a failed catch-up or watcher start is tried again


class Service:
    def __init__(
        self,
        *,
        config: ServiceConfig,
        ledger: Ledger,
        pipeline: Pipeline,
        marks: MarkFile,
        watcher_factory: WatcherFactory,
        registrations: Registrations,
        notifier: Notifier,
        credential: Credential,
        scrubber: SecretScrubber,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        timing: LoopTiming | None = None,
    ) -> None:
        self._config = config
        self._ledger = ledger
        self._pipeline = pipeline
        self._marks = marks
        self._make_watcher = watcher_factory
        self._registrations = registrations
        self._notifier = notifier
        self._credential = credential
        self._scrubber = scrubber
        self._clock = clock
        self._wall = wall
        self._t = timing or LoopTiming()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._holds: dict[int, float] = {}  # catch-ups not finished: the mark may not pass them
        self._ids = itertools.count()
        self._watcher: Watcher | None = None
        self._watcher_down_since: float | None = None
        self._watcher_retry_at = 0.0
        self._overflow_catching = False
        self._mark = 0.0
        self._started = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, status_requested: threading.Event) -> int:
        """Serve until ``stop`` is set; then shut down within the deadline. The exit code."""
        self._stop = stop
        self._started = self._clock()
        wall = self._wall()
        restored = self._ledger.restore()
        event(
            log,
            logging.INFO,
            "journal-replayed",
            pending=restored,
            unreadable_lines=self._ledger.journal.unreadable_lines,
        )
        if not self._start_watcher():
            return 1
        previous = self._marks.load()
        self._mark = previous if previous is not None else wall
        if previous is None:
            self._marks.save(self._mark)
            event(
                log,
                logging.INFO,
                "first-start",
                msg="paths registered before now are not caught up; push them with nix-job "
                "push if the cache needs them",
            )
        self._notifier.ready(systemd_status(self._snapshot()))
        event(
            log,
            logging.INFO,
            "ready",
            store_dir=self._config.store_dir,
            server=self._config.server,
            cache=self._config.cache,
            token_source=self._credential.source,
            watchdog_s=self._notifier.watchdog_s,
        )
        self._pipeline.start()
        if previous is not None and self._config.catch_up_max > 0:
            self._catch_up(previous, "start")
        try:
            self._loop(status_requested)
        except Exception:
            log.exception("the service loop failed; stopping")
            self._shutdown(graceful=False)
            return 1
        return self._shutdown(graceful=True)

    def _loop(self, status_requested: threading.Event) -> None:
        now = self._clock()
        tick = self._t.tick_s
        watchdog_s = self._notifier.watchdog_s
        if watchdog_s:
            tick = min(tick, watchdog_s / 2)
            self._notifier.watchdog()
        interval = self._config.status_interval_s
        due = {"mark": now + self._t.mark_every_s, "compact": now + self._t.compact_every_s}
        due["status"] = now + interval if interval else float("inf")
        due["watchdog"] = now + watchdog_s if watchdog_s else float("inf")
        while not self._stop.wait(tick):
            now, wall = self._clock(), self._wall()
            if self._credential.refresh():
                for token in self._credential.seen():
                    self._scrubber.add(token)
                event(
                    log,
                    logging.INFO,
                    "token-reloaded",
                    source=self._credential.source,
                    token_version=self._credential.version,
                )
                self._pipeline.poke()
            self._feed()
            if self._ledger.in_session and self._pipeline.idle():
                self._ledger.sweep()
            self._check_watcher(wall)
            self._check_overflow()
            if now >= due["mark"]:
                self._save_mark(wall)
                due["mark"] = now + self._t.mark_every_s
            if now >= due["compact"]:
                self._ledger.journal.sync()
                self._ledger.journal.maybe_compact()
                due["compact"] = now + self._t.compact_every_s
            if status_requested.is_set() or now >= due["status"]:
                status_requested.clear()
                self._report_status()
                due["status"] = now + interval if interval else float("inf")
            if now >= due["watchdog"]:
                self._notifier.watchdog()
                due["watchdog"] = now + (watchdog_s or 0.0)

    def _shutdown(self, *, graceful: bool) -> int:
        began = self._clock()
        budget = self._config.shutdown_timeout_s if graceful else 0.0
        deadline = began + budget
        self._notifier.stopping(systemd_status(self._snapshot()))
        event(log, logging.INFO, "stopping", deadline_s=budget)
        watcher_ok = True
        if self._watcher is not None:
            # Lock deletions already queued in the kernel are handled before it returns.
            watcher_ok = self._watcher.stop(timeout=min(5.0, budget / 4) if graceful else 1.0)
        stopped_at = self._wall()
        drain_s = max(0.0, deadline - self._clock() - 0.5)
        drained = self._pipeline.finish(drain_s)
        if watcher_ok:  # else lock deletions may be lost: the next start catches them up
            self._save_mark(stopped_at)
        journal = self._ledger.journal
        journal.close()
        self._report_status()
        event(
            log,
            logging.INFO,
            "stopped",
            journaled=len(journal),
            drained=drained,
            took_s=round(self._clock() - began, 2),
        )
        self._notifier.close()
        return 0

    # -- paths in -------------------------------------------------------------------------------

    def _on_paths(self, paths: list[str]) -> None:
        """From the watcher's thread: journal (fsync), then queue."""
        new = self._ledger.seen(paths, wall=self._wall())
        for path in new:
            event(log, logging.DEBUG, "seen", path=path)
        if new:
            self._ledger.queued(new, self._pipeline.queue(new))

    def _feed(self) -> None:
        if self._pipeline.generation is None or self._ledger.in_session >= self._t.feed_low:
            return
        paths = self._ledger.take(self._t.feed_slice)
        if paths:
            self._ledger.queued(paths, self._pipeline.queue(paths))

    # -- the watcher ------------------------------------------------------------------------------

    def _start_watcher(self) -> bool:
        watcher = self._make_watcher(self._on_paths)
        try:
            watcher.start()
        except StoreError as exc:
            event(log, logging.ERROR, "watch-failed", reason=exc.message)
            return False
        old, self._watcher = self._watcher, watcher
        if old is not None:
            old.stop(timeout=5.0)  # after the new one started: no gap, duplicates are harmless
        return True

    def _check_watcher(self, wall: float) -> None:
        watcher = self._watcher
        if watcher is None:
            return
        stats = watcher.stats
        if stats.crashed:
            if self._watcher_down_since is None:
                self._watcher_down_since = wall - self._t.tick_s
                event(log, logging.ERROR, "watcher-crashed", reason=stats.last_error)
            if wall < self._watcher_retry_at:
                return
            self._watcher_retry_at = wall + self._t.retry_s
            if self._start_watcher():
                since = self._watcher_down_since - self._t.mark_margin_s
                self._watcher_down_since = None
                self._catch_up(since, "watcher-restarted")
        elif stats.emitted >= self._t.watcher_recycle:
            self._start_watcher()

    # -- catch-up and the mark ------------------------------------------------------------------

    def _catch_up(
        self, mark: float, reason: str, on_done: Callable[[], None] | None = None
    ) -> None:
        key = next(self._ids)
        with self._lock:
            self._holds[key] = mark
        thread = threading.Thread(
            target=self._run_catch_up,
            args=(key, mark, reason, on_done),
            name=f"nix-job-catch-up-{key}",
            daemon=True,
        )
        thread.start()

    def _run_catch_up(
        self, key: int, mark: float, reason: str, on_done: Callable[[], None] | None
    ) -> None:
        while not self._stop.is_set():
            now = self._wall()
            since, _ = catch_up_since(mark, now=now, window_s=self._config.catch_up_window_s)
            try:
                registered = self._registrations(since)
            except (StoreError, OSError) as exc:
                reason_text = exc.message if isinstance(exc, StoreError) else str(exc)
                event(
                    log,
                    logging.WARNING,
                    "catch-up-failed",
                    reason=reason_text,
                    retry_in_s=self._t.retry_s,
                )
                self._stop.wait(self._t.retry_s)
                continue
            plan = select(
                registered,
                mark=mark,
                now=now,
                window_s=self._config.catch_up_window_s,
                max_paths=self._config.catch_up_max,
            )
            new = self._ledger.seen(plan.paths, wall=now, queue_now=False)
            event(
                log,
                logging.WARNING if plan.beyond_window or plan.truncated else logging.INFO,
                "catch-up",
                reason=reason,
                since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(plan.since)),
                found=len(plan.paths) + plan.truncated,
                queued=len(new),
                truncated=plan.truncated,
                beyond_window=plan.beyond_window,
            )
            with self._lock:
                self._holds.pop(key, None)
            if on_done is not None:
                on_done()
            return

    def _check_overflow(self) -> None:
        since = self._ledger.overflow_since
        journal = self._ledger.journal
        if since is None or self._overflow_catching or len(journal) >= journal.limit // 2:
            return
        self._overflow_catching = True
        seq = self._ledger.overflow_seq

        def done() -> None:
            self._ledger.release_overflow(seq)
            self._overflow_catching = False

        self._catch_up(since - self._t.mark_margin_s, "queue-drained", done)

    def _save_mark(self, wall: float) -> None:
        with self._lock:
            holds = list(self._holds.values())
        if (overflow := self._ledger.overflow_since) is not None:
            holds.append(overflow - self._t.mark_margin_s)
        if self._watcher_down_since is not None:
            holds.append(self._watcher_down_since - self._t.mark_margin_s)
        self._mark = next_mark(self._mark, now=wall, margin_s=self._t.mark_margin_s, holds=holds)
        try:
            self._marks.save(self._mark)
        except OSError as exc:
            event(log, logging.WARNING, "mark-not-saved", reason=str(exc))

    # -- status -------------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        counts = self._ledger.counts()
        watcher = self._watcher
        return Snapshot(
            uptime_s=self._clock() - self._started,
            server=self._pipeline.health.state,
            pushed=counts.pushed,
            pushed_bytes=counts.pushed_bytes,
            cached=counts.cached,
            upstream=counts.upstream,
            excluded=counts.excluded,
            vanished=counts.vanished,
            failed=counts.failed,
            gave_up=counts.gave_up,
            queue=counts.queue,
            retrying=counts.retrying,
            refused_full=counts.refused_full,
            watcher_errors=watcher.stats.errors if watcher is not None else 0,
        )

    def _report_status(self) -> None:
        snapshot = self._snapshot()
        event(log, logging.INFO, "status", **status_fields(snapshot))
        self._notifier.status(systemd_status(snapshot))
