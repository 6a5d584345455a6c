"""The service's account of the paths it journaled: where each one is (waiting to be queued,
in the current push session, waiting for a retry), what became of the others, and the counts
of the status line. Thread-safe; the journal is its durable half.

A path leaves the journal when it needs nothing more (uploaded, already cached, upstream,
excluded, collected) or when it has failed ``RetryPlan.max_attempts`` times for reasons of its
own (a NAR the server refuses, a damaged path): that is logged as ``gave-up``. Failures that
are not the path's (a query that failed for the whole batch, the server down, the token
refused) never count against it.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from nix_job.service.journal import Journal
from nix_job.service.logs import event
from nix_job.service.observe import Kind

log = logging.getLogger("nix_job.service")

#: Confirmed paths remembered so that a repeated event does not journal them again.
RECENT_LIMIT = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPlan:
    """When failed paths are tried again: exponential per path, fixed after a failed batch."""

    base_s: float = 60.0
    max_s: float = 3600.0
    max_attempts: int = 8  # 1 + 2 + … + 60 minutes: about two hours of trying
    batch_s: float = 30.0

    def delay(self, attempts: int) -> float:
        return float(min(self.max_s, self.base_s * 2 ** min(attempts - 1, 30)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    pushed: int
    pushed_bytes: int
    cached: int
    upstream: int
    excluded: int
    vanished: int
    failed: int
    gave_up: int
    queue: int
    retrying: int
    refused_full: int


_COUNTERS = (
    "pushed",
    "pushed_bytes",
    "cached",
    "upstream",
    "excluded",
    "vanished",
    "failed",
    "gave_up",
    "refused_full",
)


class Ledger:
    """Implements the ``observe.Sink`` the push session's wrappers report to."""

    def __init__(
        self,
        *,
        journal: Journal,
        clock: Callable[[], float],
        retry: RetryPlan | None = None,
        recent_limit: int = RECENT_LIMIT,
    ) -> None:
        self.journal = journal
        self._clock = clock
        self._retry = retry or RetryPlan()
        self._recent_limit = recent_limit
        self._lock = threading.Lock()  # taken before the journal's own lock, never after
        self._generation = 0
        self._backlog: dict[str, None] = {}
        self._in_session: dict[str, int] = {}
        self._retry_due: dict[str, float] = {}
        self._held_back: set[str] = set()  # retries not about the path: a new session frees them
        self._retry_heap: list[tuple[float, str]] = []
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._n = dict.fromkeys(_COUNTERS, 0)
        self.overflow_since: float | None = None
        self._overflow_seq = 0

    # -- paths coming in ----------------------------------------------------------------------

    def restore(self) -> int:
        """Put every journaled path in the backlog (at start); how many there are."""
        with self._lock:
            for path in self.journal.pending():
                self._backlog[path] = None
            return len(self._backlog)

    def seen(self, paths: Iterable[str], *, wall: float, queue_now: bool = True) -> list[str]:
        """Journal new paths durably; returns them. The caller queues them; with ``queue_now``
        False they go to the backlog instead (a catch-up's many paths are fed in slices)."""
        with self._lock:
            added = self.journal.add(p for p in paths if p not in self._recent)
            if added.refused:
                self._n["refused_full"] += len(added.refused)
                self._overflow_seq += 1
                if self.overflow_since is None:
                    self.overflow_since = wall
                    event(
                        log,
                        logging.WARNING,
                        "queue-full",
                        limit=self.journal.limit,
                        refused=len(added.refused),
                        msg="new paths are not journaled until the queue drains; they are "
                        "caught up from the store afterwards (raise --queue-limit if this "
                        "repeats)",
                    )
            if not queue_now:
                self._backlog.update(dict.fromkeys(added.new))
            return list(added.new)

    def queued(self, paths: Sequence[str], generation: int | None) -> None:
        """``paths`` went to the session of ``generation``; None: there is none (backlog)."""
        with self._lock:
            for path in paths:
                if path not in self.journal:
                    continue
                if generation is None:
                    self._backlog[path] = None
                else:
                    self._in_session[path] = generation

    def take(self, limit: int) -> list[str]:
        """Up to ``limit`` paths to queue now (due retries first join the backlog)."""
        with self._lock:
            now = self._clock()
            while self._retry_heap and self._retry_heap[0][0] <= now:
                due, path = heapq.heappop(self._retry_heap)
                if self._retry_due.get(path) == due:
                    del self._retry_due[path]
                    self._held_back.discard(path)
                    self._backlog[path] = None
            taken: list[str] = []
            for path in list(self._backlog):
                if len(taken) >= limit:
                    break
                del self._backlog[path]
                if path in self.journal:
                    taken.append(path)
            return taken

    def new_generation(self, generation: int) -> None:
        """A new push session: what the old one held goes back to the backlog, and so do the
        paths held back after a batch failed (the new session may well succeed)."""
        with self._lock:
            self._generation = generation
            self._backlog.update(dict.fromkeys(self._in_session))
            self._in_session.clear()
            for path in self._held_back:
                self._retry_due.pop(path, None)
                self._backlog[path] = None
            self._held_back.clear()

    def sweep(self) -> int:
        """The session is idle yet holds paths the wrappers heard nothing about: retry them
        later (without counting an attempt). How many there were."""
        with self._lock:
            leftovers = list(self._in_session)
            self._in_session.clear()
            for path in leftovers:
                self._schedule_locked(path, self._retry.batch_s, held_back=True)
            return len(leftovers)

    # -- observe.Sink -------------------------------------------------------------------------

    def confirmed(self, items: Sequence[tuple[str, int]], kind: Kind) -> None:
        if not items:
            return
        with self._lock:
            for path, size in items:
                self._count_locked(kind, size)
                if kind in ("uploaded", "deduplicated"):
                    event(log, logging.INFO, "uploaded", path=path, bytes=size, kind=kind)
                else:
                    event(log, logging.DEBUG, "skipped", path=path, reason=kind)
                if kind != "vanished":  # a collected path may be built again
                    self._recent[path] = None
                    self._recent.move_to_end(path)
                    if len(self._recent) > self._recent_limit:
                        self._recent.popitem(last=False)
                self._forget_locked(path)
            self.journal.confirm(p for p, _ in items)

    def path_failed(self, generation: int, path: str, reason: str) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a session already replaced: its paths were handed on
            self._n["failed"] += 1
            if path not in self.journal:  # a dependency nobody journaled: keep it too
                self.journal.add([path])
            attempts = self.journal.failed_attempt(path)
            self._in_session.pop(path, None)
            self._backlog.pop(path, None)
            if attempts >= self._retry.max_attempts or attempts == 0:
                self.journal.confirm([path])
                self._forget_locked(path)
                self._n["gave_up"] += 1
                event(
                    log,
                    logging.ERROR,
                    "gave-up",
                    path=path,
                    attempts=attempts,
                    reason=reason,
                    msg="not retried again; fix the cause, then push it with nix-job push",
                )
                return
            delay = self._retry.delay(attempts)
            self._schedule_locked(path, delay, held_back=False)
            event(
                log,
                logging.WARNING,
                "upload-failed",
                path=path,
                attempts=attempts,
                retry_in_s=delay,
                reason=reason,
            )

    def batch_failed(self, generation: int, roots: Sequence[str], reason: str) -> None:
        with self._lock:
            if generation != self._generation:
                return
            affected = [r for r in roots if self._in_session.pop(r, None) is not None]
            for root in affected:
                self._schedule_locked(root, self._retry.batch_s, held_back=True)
            event(
                log,
                logging.WARNING,
                "batch-failed",
                paths=len(roots),
                retry_in_s=self._retry.batch_s,
                reason=reason,
            )

    # -- views ----------------------------------------------------------------------------------

    @property
    def in_session(self) -> int:
        with self._lock:
            return len(self._in_session)

    @property
    def backlog(self) -> int:
        with self._lock:
            return len(self._backlog)

    def counts(self) -> Counts:
        with self._lock:
            return Counts(queue=len(self.journal), retrying=len(self._retry_due), **self._n)

    @property
    def overflow_seq(self) -> int:
        with self._lock:
            return self._overflow_seq

    def release_overflow(self, seq: int) -> bool:
        """Forget the overflow when nothing was refused since ``seq``; True if forgotten."""
        with self._lock:
            if seq != self._overflow_seq:
                return False
            self.overflow_since = None
            return True

    # -- helpers (lock held) ----------------------------------------------------------------------

    def _schedule_locked(self, path: str, delay: float, *, held_back: bool) -> None:
        due = self._clock() + delay
        self._retry_due[path] = due
        if held_back:
            self._held_back.add(path)
        else:
            self._held_back.discard(path)
        heapq.heappush(self._retry_heap, (due, path))

    def _forget_locked(self, path: str) -> None:
        self._backlog.pop(path, None)
        self._in_session.pop(path, None)
        self._retry_due.pop(path, None)
        self._held_back.discard(path)

    def _count_locked(self, kind: Kind, size: int) -> None:
        if kind in ("uploaded", "deduplicated"):
            self._n["pushed"] += 1
            self._n["pushed_bytes"] += size
        else:
            self._n[kind] += 1
