"""What a push session did, as plain values: counts and bytes per outcome, failures, leftovers;
and the tally a session keeps while it runs. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Origin = Literal["watch", "final"]

#: Failures kept with their reason for the summary; the rest are only counted.
FAILURE_SAMPLE = 20
#: Per-path completion records kept for latency measurements.
COMPLETION_LIMIT = 100_000


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
    exclude_undecided: int = 0  # of the excluded: push-exclude ran out of time on them
    nar_fallbacks: int = 0  # uploads whose NAR came from nix-store --dump, not the files
    nar_fallback_reason: str | None = None  # the first reason
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


@dataclass(slots=True)
class Tally:
    """The running counts of a session (mutable; the session holds its lock around it)."""

    pushed: dict[Origin, PushStats] = field(
        default_factory=lambda: {"watch": PushStats(), "final": PushStats()}
    )
    deduplicated: int = 0
    already_cached: PushStats = field(default_factory=PushStats)
    upstream: PushStats = field(default_factory=PushStats)
    excluded: PushStats = field(default_factory=PushStats)
    vanished: int = 0
    exclude_undecided: int = 0
    nar_fallbacks: int = 0
    nar_fallback_reason: str | None = None
    failed: PushStats = field(default_factory=PushStats)
    failures: list[Failure] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)

    def uploaded(self, done: Completion, *, deduplicated: bool) -> None:
        self.pushed[done.origin] = self.pushed[done.origin].plus(done.nar_size)
        self.deduplicated += deduplicated
        if len(self.completions) < COMPLETION_LIMIT:
            self.completions.append(done)

    def fell_back(self, reason: str) -> None:
        """An upload's NAR came from ``nix-store --dump`` because of ``reason``."""
        self.nar_fallbacks += 1
        if self.nar_fallback_reason is None:
            self.nar_fallback_reason = reason

    def fail(self, path: str, nar_size: int, reason: str | None) -> None:
        """Count a failure; ``reason`` None counts it without a sample (auth fallout)."""
        self.failed = self.failed.plus(nar_size)
        if reason is not None and len(self.failures) < FAILURE_SAMPLE:
            self.failures.append(Failure(path=path, reason=reason))

    def report(
        self, *, left_over: dict[str, int], auth_error: str | None, drain_seconds: float
    ) -> PushReport:
        """The counts as a report; ``left_over`` maps paths not done to their NAR size."""
        return PushReport(
            pushed_watch=self.pushed["watch"],
            pushed_final=self.pushed["final"],
            deduplicated=self.deduplicated,
            already_cached=self.already_cached,
            upstream=self.upstream,
            excluded=self.excluded,
            vanished=self.vanished,
            exclude_undecided=self.exclude_undecided,
            nar_fallbacks=self.nar_fallbacks,
            nar_fallback_reason=self.nar_fallback_reason,
            failed=self.failed,
            failures=tuple(self.failures),
            left_over=PushStats(paths=len(left_over), bytes=sum(left_over.values())),
            left_over_sample=tuple(list(left_over)[:FAILURE_SAMPLE]),
            auth_error=auth_error,
            drain_seconds=drain_seconds,
            completions=tuple(self.completions),
        )
