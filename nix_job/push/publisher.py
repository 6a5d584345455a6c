"""Publishing on runs the gate allowed: watcher + push session around the command, then drain.

Only constructed after ``gating.decide_publish`` said yes, so no write request exists on any
other path. Upload trouble never raises from here: it is counted and reported.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nix_job.core.errors import NixJobError
from nix_job.core.nixhash import STORE_DIR
from nix_job.core.problem import Problem
from nix_job.core.report import PushFacts
from nix_job.push.plan import PushPolicy
from nix_job.push.report import PushReport, throttle_text, verification_text
from nix_job.push.session import PushSession
from nix_job.push.store_events import EventSourceFactory, InotifyEventSource
from nix_job.push.types import Excluder, PushClient, PushStore
from nix_job.push.watcher import StoreWatcher

log = logging.getLogger(__name__)

WATCHER_STOP_S = 5.0


def final_roots(cwd: Path, push_paths: Iterable[str], store_dir: str = STORE_DIR) -> list[str]:
    """The command's outputs: ``result*`` links in ``cwd`` and ``push-paths`` (links or store
    paths, relative to ``cwd``), as top-level store paths. Entries outside the store are skipped.
    """
    prefix = store_dir.rstrip("/") + "/"
    candidates = [p for p in sorted(cwd.glob("result*")) if p.is_symlink()]
    candidates += [Path(p) if os.path.isabs(p) else cwd / p for p in push_paths]
    roots: list[str] = []
    for candidate in candidates:
        text = str(candidate)
        resolved = text if text.startswith(prefix) else os.path.realpath(candidate)
        if resolved.startswith(prefix) and len(resolved) > len(prefix):
            root = prefix + resolved[len(prefix) :].split("/", 1)[0]
            if root not in roots:
                roots.append(root)
    return roots


def push_facts(report: PushReport) -> PushFacts:
    return PushFacts(
        pushed_during_build=report.pushed_watch.paths,
        pushed_final=report.pushed_final.paths,
        already_cached=report.already_cached.paths,
        upstream=report.upstream.paths,
        excluded=report.excluded.paths,
        vanished=report.vanished,
        failed=report.failed.paths,
        left_over=report.left_over.paths,
        bytes_uploaded=report.pushed.bytes,
        drain_seconds=report.drain_seconds,
        exclude_undecided=report.exclude_undecided,
        nar_fallbacks=report.nar_fallbacks,
        nar_fallback_reason=report.nar_fallback_reason,
        oversize=report.oversize.paths,
        oversize_bytes=report.oversize.bytes,
        oversize_sample=report.oversize_sample,
        closure_mode=report.closure_mode,
        without_derivation=report.without_derivation,
        verification=verification_text(report.verification) if report.verification else None,
        outputs_missing=report.verification.outputs_missing if report.verification else 0,
        throttling=throttle_text(report)
        if report.throttle.throttled or report.throttle.server_errors
        else None,
        failures=tuple((f.path, f.reason) for f in report.failures),
        left_over_sample=report.left_over_sample,
    )


_WATCHER = "nix-job: store watcher"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    report: PushReport
    watcher_problem: Problem | None  # the watcher missed something; the final sweep covered it


class Publisher:
    """Owns the push session and the store watcher of one publishing run."""

    def __init__(
        self,
        *,
        client: PushClient,
        store: PushStore,
        upstream_key_names: Iterable[str],
        exclude: Excluder | None,
        jobs: int,
        cancel_grace_s: float,
        policy: PushPolicy | None = None,
        store_dir: str = STORE_DIR,
        event_source: EventSourceFactory = InotifyEventSource,
    ) -> None:
        self._cancel_grace_s = cancel_grace_s
        self._store_dir = store_dir
        self._policy = policy or PushPolicy()
        self._session = PushSession(
            store=store,
            client=client,
            upstream_key_names=tuple(upstream_key_names),
            exclude=exclude,
            policy=self._policy,
            jobs=jobs,
        )
        # push-closure "outputs": only the named outputs go up, at the end; nothing is watched.
        watching = self._policy.closure != "outputs"
        self._watcher: StoreWatcher | None = None
        if watching:
            self._watcher = StoreWatcher(
                # The files: a chroot store keeps /nix/store paths under another directory.
                store_dir=Path(store.real_store_dir or store_dir),
                logical_store_dir=store_dir,
                is_valid=store.valid,
                on_paths=self._session.queue,
                event_source=event_source,
                registered_since=store.registered_since,
            )
        self._watcher_problem: Problem | None = None

    def start(self) -> None:
        """Start watching the store. Without inotify, only the final push runs."""
        if self._watcher is None:
            if self._policy.closure == "outputs":
                log.info("push-closure is outputs: only the outputs are uploaded, at the end")
            return
        try:
            self._watcher.start()
            log.info(f"watching {self._store_dir}; new store paths upload during the build")
        except NixJobError as error:
            self._watcher = None
            self._watcher_problem = Problem.warning(
                _WATCHER,
                f"The store watcher could not start ({error.message}); only the command's "
                "outputs are pushed, at the end.",
            )
            log.info("%s", self._watcher_problem.message)

    def finish(
        self, *, roots: list[str], timeout_s: float, cancelled: Callable[[], bool]
    ) -> Outcome:
        """Stop watching, sweep the store, push ``roots`` and drain until ``timeout_s``.

        A cancellation during the drain shortens it to ``cancel_grace_s``. Never hangs.
        """
        started = time.monotonic()
        if self._watcher is not None:
            if not self._watcher.stop(timeout=WATCHER_STOP_S):
                self._watcher_problem = Problem.warning(
                    _WATCHER, "The store watcher did not stop in time; it was abandoned."
                )
            swept = self._watcher.rescan()
            stats = self._watcher.stats
            if swept:
                log.info(f"the final store sweep found {len(swept)} more path(s)")
            if stats.crashed or stats.dropped:
                self._watcher_problem = Problem.warning(
                    _WATCHER,
                    f"The store watcher reported {stats.errors} error(s) "
                    f"(last: {stats.last_error}); the final sweep and push covered what it missed.",
                )
        if roots:
            log.info(f"pushing the command's outputs: {' '.join(roots)}")
            self._session.queue(roots, origin="final")
        grace = self._cancel_grace_s
        deadline = started + (grace if cancelled() else timeout_s)
        idle = False
        while time.monotonic() < deadline:
            if self._session.wait_idle(min(0.25, max(0.0, deadline - time.monotonic()))):
                idle = True
                break
            if cancelled():
                deadline = min(deadline, time.monotonic() + grace)
        verification = None
        if idle and roots and not cancelled():
            verification = self._session.verify(roots, max(0.0, deadline - time.monotonic()))
        report = self._session.drain(max(0.0, deadline - time.monotonic()))
        # The whole drain phase (sweep, final push, waiting), not only the session's last wait.
        report = dataclasses.replace(
            report, drain_seconds=time.monotonic() - started, verification=verification
        )
        return Outcome(report=report, watcher_problem=self._watcher_problem)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop(timeout=WATCHER_STOP_S)
        self._session.close()
