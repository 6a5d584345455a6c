"""The push session: batch queued store paths, plan what Attic lacks, upload with workers.

Owns batching, dedupe, the counts in ``PushReport``, the auth stop, adaptive concurrency
(``nix_job.push.throttle``), the drain deadline and the reconcile after the final push.
Planning a batch is ``nix_job.push.planner``'s; one upload is ``nix_job.push.upload``'s. Talks
to Nix and Attic only through the ``PushStore`` and ``PushClient`` protocols; upload failures
are counted, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable

from tenacity import Retrying

from nix_job.cache.answers import AtticUnavailableError
from nix_job.core.errors import AtticAuthError
from nix_job.push.ledger import Ledger, Task
from nix_job.push.plan import BatchPlan, PushPolicy
from nix_job.push.planner import Planner
from nix_job.push.reconcile import reconcile
from nix_job.push.report import Origin, PushReport, Verification
from nix_job.push.retry import Abandoned, RetryPolicy, retrying
from nix_job.push.throttle import Throttle
from nix_job.push.types import Excluder, PushClient, PushStore
from nix_job.push.upload import Uploader

log = logging.getLogger(__name__)


class PushSession:
    """Queue store paths from any thread; a planner batches them, ``jobs`` workers upload.

    Batches close ``idle_s`` after the last queued path, at most ``batch_cap_s`` after the
    first, and at once for ``origin="final"`` or while draining. Per batch: closure (final
    roots per ``policy.closure``) → path info → drop upstream-signed, excluded, oversized →
    drop already known this session → get-missing-paths → upload queue. Memory: the upload
    queue holds ``PathInfo`` for missing paths only, and each upload streams its NAR.
    """

    def __init__(
        self,
        *,
        store: PushStore,
        client: PushClient,
        upstream_key_names: Iterable[str] = (),
        exclude: Excluder | None = None,
        policy: PushPolicy | None = None,
        jobs: int = 4,
        clock: Callable[[], float] = time.monotonic,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        # A batch costs no Nix process (the store's database answers) and one get-missing-paths
        # request, so windows can be short; they still gather a burst of paths into one batch,
        # which saves CPU (docs/benchmarks.md: latency, CPU per path).
        idle_s: float = 0.3,
        batch_cap_s: float = 0.8,
    ) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {jobs}")
        self._store = store
        self._client = client
        self._exclude = exclude
        self._policy = policy or PushPolicy()
        self._jobs = jobs
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self._sleep = sleep or self._wait_unless_abandoned
        self._idle_s = idle_s
        self._batch_cap_s = batch_cap_s

        # One lock, two conditions: the planner and whoever waits for idleness wait on _cond;
        # upload workers on _work, woken one per new task instead of all at once.
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._work = threading.Condition(lock)
        self._incoming: dict[str, tuple[Origin, float]] = {}
        self._queue_seq = 0
        self._last_arrival = 0.0
        self._planning: dict[str, tuple[Origin, float]] = {}
        self._ready: deque[Task] = deque()
        self._in_flight: dict[str, Task] = {}
        self._ledger = Ledger()
        self._throttle = Throttle(jobs=jobs)
        self._auth_error: AtticAuthError | None = None
        self._stopping = False
        self._closed = False
        self._abandoned = threading.Event()
        self._threads: list[threading.Thread] = []
        self._planner_ = Planner(
            store=store,
            client=client,
            exclude=exclude,
            upstream_key_names=frozenset(upstream_key_names),
            policy=self._policy,
            retrying=self._retrying,
        )
        self._uploader = Uploader(
            store=store, client=client, retrying=self._retrying, abandoned=self._abandoned
        )

    # Public API ----------------------------------------------------------------------------

    def queue(self, paths: Iterable[str], origin: Origin = "watch") -> None:
        """Add store paths to the next batch. Never blocks on I/O; safe from any thread."""
        now = self._clock()
        paths = list(paths)
        with self._cond:
            if self._closed:
                log.warning("push session already drained; ignoring %d path(s)", len(paths))
                return
            for path in paths:
                previous = self._incoming.get(path)
                if previous is None:
                    self._incoming[path] = (origin, now)
                elif origin == "final":
                    self._incoming[path] = ("final", previous[1])
            self._queue_seq += 1
            self._last_arrival = now
            self._start_threads()
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued, planned or in flight; False if ``timeout_s`` passed.

        The session keeps running (unlike ``drain``).
        """
        deadline = self._clock() + timeout_s
        with self._cond:
            return self._wait_idle_locked(deadline)

    def _wait_idle_locked(self, deadline: float) -> bool:
        while not self._idle():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._cond.wait(min(remaining, 0.25))
        return True

    def verify(self, roots: list[str], timeout_s: float) -> Verification:
        """Reconcile: ask Attic whether ``roots`` and what ``push-closure`` takes with them are
        all in the cache (paths valid before the run included), push what is missing, and check
        once more. Bounded by ``timeout_s``; call it after the final push went idle."""
        return reconcile(
            roots,
            planner=self._planner_,
            expected=self._expected,
            repush=self._repush,
            wait_idle=self.wait_idle,
            timeout_s=timeout_s,
            clock=self._clock,
        )

    def _expected(self, closure: Collection[str]) -> list[str]:
        with self._cond:
            return self._ledger.expected(closure)

    def _repush(self, paths: list[str]) -> None:
        with self._cond:
            self._ledger.reopen(paths)
        self.queue(paths, origin="final")

    def drain(self, timeout_s: float) -> PushReport:
        """Finish queued work or stop at the deadline; then report. Never hangs.

        Past the deadline, queued paths are reported as left over, in-flight uploads are
        abandoned and the client is closed. The session takes no more paths afterwards.
        """
        start = self._clock()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            idle = self._wait_idle_locked(start + timeout_s)
            if not idle:
                self._abandoned.set()
            self._closed = True
            self._cond.notify_all()
            self._work.notify_all()
            report = self._report(drain_seconds=max(0.0, self._clock() - start))
        if idle:
            for thread in self._threads:
                thread.join(timeout=5)
        else:
            log.warning(
                "push drain deadline passed: %d path(s) left unpushed",
                report.left_over.paths,
            )
            self._client.close()
        return report

    def close(self) -> None:
        """Stop at once (abandoning any work) and close the client. Idempotent."""
        with self._cond:
            if not self._idle():
                self._abandoned.set()
            self._closed = True
            self._cond.notify_all()
            self._work.notify_all()
        self._client.close()
        if self._exclude is not None:
            self._exclude.close()

    def __enter__(self) -> PushSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # State helpers (call with the lock held) ------------------------------------------------

    def _idle(self) -> bool:
        return not (self._incoming or self._planning or self._ready or self._in_flight)

    def _start_threads(self) -> None:
        if self._threads:
            return
        planner = threading.Thread(target=self._planner, name="nix-job-push-planner", daemon=True)
        self._threads.append(planner)
        for n in range(self._jobs):
            worker = threading.Thread(target=self._worker, name=f"nix-job-push-{n}", daemon=True)
            self._threads.append(worker)
        for thread in self._threads:
            thread.start()

    def _fail(self, path: str, nar_size: int, reason: str | None) -> None:
        self._ledger.tally.fail(path, nar_size, reason)

    def _on_auth_error(self, path: str, nar_size: int, exc: AtticAuthError) -> None:
        if self._auth_error is None:
            self._auth_error = exc
            log.error("Attic refused the token; no further uploads: %s", exc.message)
            self._fail(path, nar_size, exc.message)
        else:
            self._fail(path, nar_size, None)
        while self._ready:
            task = self._ready.popleft()
            self._ledger.known.pop(task.info.hash, None)
            self._fail(task.info.path, task.info.nar_size, None)

    def _report(self, *, drain_seconds: float) -> PushReport:
        left: dict[str, int] = {}
        for path in (*self._incoming, *self._planning):
            left.setdefault(path, 0)
        for task in (*self._ready, *self._in_flight.values()):
            left[task.info.path] = task.info.nar_size
        auth = self._auth_error.message if self._auth_error else None
        return self._ledger.tally.report(
            left_over=left,
            auth_error=auth,
            drain_seconds=drain_seconds,
            closure_mode=self._policy.closure,
            throttle=self._throttle.stats(),
        )

    # Retry plumbing ------------------------------------------------------------------------

    def _retrying(self) -> Retrying:
        return retrying(
            self._retry,
            sleep=self._sleep,
            abandoned=self._abandoned,
            on_retry=self._pushed_back,
            on_waited=self._waited,
        )

    def _pushed_back(self, error: AtticUnavailableError, wait_s: float) -> None:
        """A request will be retried: fewer uploads at once while the server pushes back."""
        del wait_s  # what was asked for: the deadline may cut it short (``_waited``)
        if error.status is None:
            return  # no answer at all: a network problem, not load
        with self._cond:
            self._throttle.pushed_back(throttled=error.throttled, now=self._clock())

    def _waited(self, seconds: float) -> None:
        with self._cond:
            self._throttle.waited(seconds)

    def _wait_unless_abandoned(self, seconds: float) -> None:
        self._abandoned.wait(seconds)

    # Planner -------------------------------------------------------------------------------

    def _planner(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            try:
                self._plan(batch)
            except Abandoned:
                return
            except AtticAuthError as exc:
                with self._cond:
                    for path in batch:
                        self._on_auth_error(path, 0, exc)
            except Exception as exc:
                log.warning("planning %d queued path(s) failed: %s", len(batch), exc)
                reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                with self._cond:
                    for path in batch:
                        self._fail(path, 0, f"planning failed: {reason}")
            finally:
                with self._cond:
                    self._planning = {}
                    self._cond.notify_all()

    def _collect(self) -> dict[str, tuple[Origin, float]] | None:
        """Wait for a batch: idle time after the last path, capped; at once when final."""
        with self._cond:
            while not self._incoming and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            started = self._clock()
            seen = self._queue_seq
            while not self._closed and not self._stopping:
                if any(origin == "final" for origin, _ in self._incoming.values()):
                    break
                cap_left = self._batch_cap_s - (self._clock() - started)
                idle_left = self._idle_s - (self._clock() - self._last_arrival)
                if cap_left <= 0 or (idle_left <= 0 and self._queue_seq == seen):
                    break
                seen = self._queue_seq
                self._cond.wait(max(0.01, min(cap_left, idle_left, self._idle_s)))
            if self._closed:
                return None
            batch, self._incoming = self._incoming, {}
            self._planning = batch
            return batch

    def _plan(self, batch: dict[str, tuple[Origin, float]]) -> None:
        with self._cond:
            if self._auth_error is not None:
                for path in batch:
                    self._fail(path, 0, None)
                return
        final_roots = [p for p, (origin, _) in batch.items() if origin == "final"]
        watch_roots = [p for p, (origin, _) in batch.items() if origin != "final"]
        plan = self._planner_.plan(
            watch_roots=watch_roots, final_roots=final_roots, decided=self._decided
        )
        planned = self._apply(plan, batch)
        log.info(
            "push batch: %d queued → %d in closure, %d to upload (%d vanished)",
            len(batch),
            len(plan.closure),
            planned,
            plan.vanished,
        )

    def _decided(self, hashes: Collection[str]) -> set[str]:
        with self._cond:
            return self._ledger.settled(hashes)

    def _apply(self, plan: BatchPlan, batch: dict[str, tuple[Origin, float]]) -> int:
        """Count a plan's decisions and queue its uploads; how many were queued."""
        with self._cond:
            tasks = self._ledger.record(plan, batch)
            self._ready.extend(tasks)
            self._work.notify(len(tasks))
        return len(tasks)

    # Workers -------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (
                    not self._ready or len(self._in_flight) >= self._throttle.limit
                ):
                    self._work.wait()
                if self._closed and (self._abandoned.is_set() or not self._ready):
                    return
                task = self._ready.popleft()
                self._in_flight[task.info.path] = task
            try:
                self._upload(task)
            finally:
                with self._cond:
                    self._in_flight.pop(task.info.path, None)
                    self._cond.notify_all()  # whoever waits for idleness
                    self._work.notify()  # a worker the concurrency limit held back

    def _upload(self, task: Task) -> None:
        info = task.info
        with self._cond:
            if self._auth_error is not None:
                self._ledger.known.pop(info.hash, None)
                self._fail(info.path, info.nar_size, None)
                return
        outcome = self._uploader.upload(info)
        done = self._clock()
        with self._cond:
            self._ledger.finished(task, outcome, done)
            if outcome.status == "refused" and outcome.auth_error is not None:
                self._on_auth_error(info.path, info.nar_size, outcome.auth_error)
            elif outcome.status in ("uploaded", "deduplicated") and self._throttle.succeeded():
                self._work.notify()  # the limit went up by one
