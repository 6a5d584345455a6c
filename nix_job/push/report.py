"""What a push session did, as plain values: counts and bytes per outcome, failures, leftovers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Origin = Literal["watch", "final"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PushStats:
    """A count of store paths and the sum of their NAR sizes (bytes unknown count as 0)."""

    paths: int = 0
    bytes: int = 0

    def plus(self, nar_size: int, paths: int = 1) -> PushStats:
        return PushStats(paths=self.paths + paths, bytes=self.bytes + nar_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    path: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """One finished upload, for latency measurements (times from the session's clock)."""

    path: str
    origin: Origin
    queued_at: float
    completed_at: float
    nar_size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PushReport:
    """Everything a summary needs to say about one session."""

    pushed_watch: PushStats = PushStats()
    pushed_final: PushStats = PushStats()
    deduplicated: int = 0  # of the pushed: the server already held the NAR (Deduplicated)
    already_cached: PushStats = PushStats()
    upstream: PushStats = PushStats()
    excluded: PushStats = PushStats()
    vanished: int = 0  # garbage-collected between detection and upload: skipped, not failed
    failed: PushStats = PushStats()
    failures: tuple[Failure, ...] = ()
    left_over: PushStats = PushStats()  # not uploaded when the drain deadline passed
    left_over_sample: tuple[str, ...] = ()
    auth_error: str | None = None
    drain_seconds: float = 0.0
    completions: tuple[Completion, ...] = ()

    @property
    def pushed(self) -> PushStats:
        return PushStats(
            paths=self.pushed_watch.paths + self.pushed_final.paths,
            bytes=self.pushed_watch.bytes + self.pushed_final.bytes,
        )

    @property
    def complete(self) -> bool:
        """Nothing failed and nothing was left behind."""
        return self.failed.paths == 0 and self.left_over.paths == 0 and self.auth_error is None
