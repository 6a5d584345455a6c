"""Publishing on runs the gate allowed: watcher + push session around the command, then drain.

Only constructed after ``gating.decide_publish`` said yes, so no write request exists on any
other path. Upload trouble never raises from here: it is counted and reported.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nix_job.cache.attic import AtticClient
from nix_job.core.errors import NixJobError
from nix_job.core.report import PushFacts
from nix_job.nix.store import NixStore
from nix_job.push.report import PushReport
from nix_job.push.session import PushSession
from nix_job.push.store_events import EventSourceFactory, InotifyEventSource
from nix_job.push.watcher import StoreWatcher

STORE_DIR = "/nix/store"
# After a cancellation the runner sends SIGTERM 7.5 s after SIGINT: drain for less than that.
CANCEL_GRACE_S = 5.0
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
        failures=tuple(f"`{f.path}`: {f.reason}" for f in report.failures),
        left_over_sample=report.left_over_sample,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    report: PushReport
    watcher_note: str | None  # a watcher problem worth a warning


class Publisher:
    """Owns the push session and the store watcher of one publishing run."""

    def __init__(
        self,
        *,
        client: AtticClient,
        store: NixStore,
        upstream_key_names: Iterable[str],
        exclude: str | None,
        jobs: int,
        log: Callable[[str], None],
        event_source: EventSourceFactory = InotifyEventSource,
    ) -> None:
        self._log = log
        self._session = PushSession(
            store=store,
            client=client,
            upstream_key_names=tuple(upstream_key_names),
            exclude=re.compile(exclude) if exclude else None,
            jobs=jobs,
        )
        self._watcher: StoreWatcher | None = StoreWatcher(
            store_dir=Path(STORE_DIR),
            is_valid=store.valid,
            on_paths=self._session.queue,
            event_source=event_source,
        )
        self._watcher_note: str | None = None

    def start(self) -> None:
        """Start watching the store. Without inotify, only the final push runs."""
        if self._watcher is None:
            return
        try:
            self._watcher.start()
            self._log(f"nix-job: watching {STORE_DIR}; new store paths upload during the build")
        except NixJobError as error:
            self._watcher = None
            self._watcher_note = (
                f"The store watcher could not start ({error.message}); only the command's "
                "outputs are pushed, at the end."
            )
            self._log(f"nix-job: {self._watcher_note}")

    def finish(
        self, *, roots: list[str], timeout_s: float, cancelled: Callable[[], bool]
    ) -> Outcome:
        """Stop watching, sweep the store, push ``roots`` and drain until ``timeout_s``.

        A cancellation during the drain shortens it to ``CANCEL_GRACE_S``. Never hangs.
        """
        started = time.monotonic()
        if self._watcher is not None:
            if not self._watcher.stop(timeout=WATCHER_STOP_S):
                self._watcher_note = "The store watcher did not stop in time; it was abandoned."
            swept = self._watcher.rescan()
            stats = self._watcher.stats
            if swept:
                self._log(f"nix-job: the final store sweep found {len(swept)} more path(s)")
            if stats.crashed or stats.dropped:
                self._watcher_note = (
                    f"The store watcher reported {stats.errors} error(s) "
                    f"(last: {stats.last_error}); the final sweep and push covered what it missed."
                )
        if roots:
            self._log(f"nix-job: pushing the command's outputs: {' '.join(roots)}")
            self._session.queue(roots, origin="final")
        deadline = started + (CANCEL_GRACE_S if cancelled() else timeout_s)
        while time.monotonic() < deadline:
            if self._session.wait_idle(min(0.25, max(0.0, deadline - time.monotonic()))):
                break
            if cancelled():
                deadline = min(deadline, time.monotonic() + CANCEL_GRACE_S)
        report = self._session.drain(max(0.0, deadline - time.monotonic()))
        # The whole drain phase (sweep, final push, waiting), not only the session's last wait.
        report = dataclasses.replace(report, drain_seconds=time.monotonic() - started)
        return Outcome(report=report, watcher_note=self._watcher_note)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop(timeout=WATCHER_STOP_S)
        self._session.close()
