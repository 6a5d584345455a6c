"""What a push session did, as plain values: counts and bytes per outcome, failures, leftovers;
and the tally a session keeps while it runs. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nix_job.core.errors import AtticAuthError

Origin = Literal["watch", "final"]

Status = Literal["uploaded", "deduplicated", "failed", "vanished", "refused", "abandoned"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadOutcome:
    status: Status
    reason: str | None = None  # failed: why; refused: Attic's answer
    auth_error: AtticAuthError | None = None  # refused
    fallback: str | None = None  # why the in-process NAR was not used (nix-store --dump was)


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
class ThrottleStats:
    """How the server pushed back: 429/503 answers, other 5xx answers, the lowest upload
    concurrency the session fell to (of ``jobs``), and the seconds spent waiting to retry."""

    throttled: int = 0
    server_errors: int = 0
    jobs: int = 0
    lowest_concurrency: int = 0
    waited_s: float = 0.0

    @property
    def slowed(self) -> bool:
        return self.lowest_concurrency < self.jobs


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """The reconcile after the final push: are the outputs and their closures in the cache?

    Counts only what this cache should hold: upstream-signed, excluded and oversized paths are
    not expected. ``checked`` is False when the server could not be asked (``reason`` says why).
    """

    checked: bool
    outputs: int = 0
    outputs_present: int = 0
    paths: int = 0
    paths_present: int = 0
    repushed: int = 0  # missing at the first check (e.g. valid before the run), pushed then
    missing_sample: tuple[str, ...] = ()  # still missing, outputs first
    reason: str | None = None

    @property
    def outputs_missing(self) -> int:
        return self.outputs - self.outputs_present if self.checked else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PushReport:
    """Everything a summary needs to say about one session."""

    pushed_watch: PushStats = PushStats()
    pushed_final: PushStats = PushStats()
    deduplicated: int = 0  # of the pushed: the server already held the NAR (Deduplicated)
    already_cached: PushStats = PushStats()
    upstream: PushStats = PushStats()
    excluded: PushStats = PushStats()
    oversize: PushStats = PushStats()  # NAR larger than push-max-size: not uploaded
    oversize_sample: tuple[str, ...] = ()
    closure_mode: str = "runtime"
    without_derivation: int = 0  # build mode: outputs whose build inputs are unknown
    verification: Verification | None = None
    throttle: ThrottleStats = ThrottleStats()
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
    oversize: PushStats = field(default_factory=PushStats)
    oversize_sample: list[str] = field(default_factory=list)
    without_derivation: set[str] = field(default_factory=set)
    vanished: int = 0
    exclude_undecided: int = 0
    nar_fallbacks: int = 0
    nar_fallback_reason: str | None = None
    # Per path, so a path that fails twice counts once, and one the reconcile then uploads
    # is no longer a failure: size and reason (None: auth fallout, counted without a sample).
    failed_paths: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    completions: list[Completion] = field(default_factory=list)

    def uploaded(self, done: Completion, *, deduplicated: bool) -> None:
        self.failed_paths.pop(done.path, None)
        self.pushed[done.origin] = self.pushed[done.origin].plus(done.nar_size)
        self.deduplicated += deduplicated
        if len(self.completions) < COMPLETION_LIMIT:
            self.completions.append(done)

    def too_large(self, path: str, nar_size: int) -> None:
        self.oversize = self.oversize.plus(nar_size)
        if len(self.oversize_sample) < FAILURE_SAMPLE:
            self.oversize_sample.append(path)

    def fell_back(self, reason: str) -> None:
        """An upload's NAR came from ``nix-store --dump`` because of ``reason``."""
        self.nar_fallbacks += 1
        if self.nar_fallback_reason is None:
            self.nar_fallback_reason = reason

    def fail(self, path: str, nar_size: int, reason: str | None) -> None:
        """Count a failure; ``reason`` None counts it without a sample (auth fallout)."""
        self.failed_paths[path] = (nar_size, reason)

    def report(
        self,
        *,
        left_over: dict[str, int],
        auth_error: str | None,
        drain_seconds: float,
        closure_mode: str = "runtime",
        throttle: ThrottleStats | None = None,
    ) -> PushReport:
        """The counts as a report; ``left_over`` maps paths not done to their NAR size."""
        return PushReport(
            pushed_watch=self.pushed["watch"],
            pushed_final=self.pushed["final"],
            deduplicated=self.deduplicated,
            already_cached=self.already_cached,
            upstream=self.upstream,
            excluded=self.excluded,
            oversize=self.oversize,
            oversize_sample=tuple(self.oversize_sample),
            closure_mode=closure_mode,
            without_derivation=len(self.without_derivation),
            throttle=throttle or ThrottleStats(),
            vanished=self.vanished,
            exclude_undecided=self.exclude_undecided,
            nar_fallbacks=self.nar_fallbacks,
            nar_fallback_reason=self.nar_fallback_reason,
            failed=PushStats(
                paths=len(self.failed_paths), bytes=sum(n for n, _ in self.failed_paths.values())
            ),
            failures=tuple(
                Failure(path=path, reason=reason)
                for path, (_, reason) in self.failed_paths.items()
                if reason is not None
            )[:FAILURE_SAMPLE],
            left_over=PushStats(paths=len(left_over), bytes=sum(left_over.values())),
            left_over_sample=tuple(list(left_over)[:FAILURE_SAMPLE]),
            auth_error=auth_error,
            drain_seconds=drain_seconds,
            completions=tuple(self.completions),
        )


def verification_text(v: Verification) -> str:
    """One line on the reconcile, for logs and the push command."""
    if not v.checked:
        return f"Outputs not verified in the cache: {v.reason}"
    if v.outputs == 0 and v.paths == 0:
        return "Outputs verified in the cache: none expected there (upstream, excluded or none)."
    text = (
        f"Outputs verified in the cache: {v.outputs_present} of {v.outputs} "
        f"({v.paths_present} of {v.paths} paths with their closures"
    )
    text += f"; {v.repushed} pushed by the reconcile)." if v.repushed else ")."
    if v.missing_sample:
        text += " Missing: " + ", ".join(v.missing_sample[:3])
        text += " …" if len(v.missing_sample) > 3 else ""
    return text


def throttle_text(report: PushReport) -> str:
    """One line on how the server pushed back."""
    t = report.throttle
    return (
        f"The server pushed back: {t.throttled} throttling answer(s) (429/503) and "
        f"{t.server_errors} other server error(s); waited {t.waited_s:.1f} s in all, uploads "
        f"at once went down to {t.lowest_concurrency} of {t.jobs}."
    )
