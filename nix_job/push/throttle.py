"""Adaptive upload concurrency: fewer uploads at once while the server pushes back, more again
once it keeps up. Pure: the session calls it under its own lock.

Additive increase, multiplicative decrease (as TCP's congestion control): every 429/503 or
other 5xx answer halves the limit, at most once per ``cut_interval_s`` (a burst of answers to
requests sent together is one signal, not six); ``limit`` successes in a row raise it by one,
up to ``jobs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nix_job.push.report import ThrottleStats

CUT_INTERVAL_S = 1.0


@dataclass(slots=True)
class Throttle:
    jobs: int
    limit: int = 0
    lowest: int = 0
    streak: int = 0
    throttled: int = 0
    server_errors: int = 0
    waited_s: float = 0.0
    _last_cut: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {self.jobs}")
        self.limit = self.lowest = self.jobs

    def pushed_back(self, *, throttled: bool, now: float) -> None:
        """The server answered 429/503 (``throttled``) or another 5xx."""
        if throttled:
            self.throttled += 1
        else:
            self.server_errors += 1
        self.streak = 0
        if self._last_cut is None or now - self._last_cut >= CUT_INTERVAL_S:
            self._last_cut = now
            self.limit = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)

    def waited(self, seconds: float) -> None:
        """A request waited ``seconds`` (as it really lasted) before its retry."""
        self.waited_s += seconds

    def succeeded(self) -> bool:
        """An upload went through; True when that raised the limit."""
        self.streak += 1
        if self.limit < self.jobs and self.streak >= self.limit:
            self.limit += 1
            self.streak = 0
            return True
        return False

    def stats(self) -> ThrottleStats:
        return ThrottleStats(
            throttled=self.throttled,
            server_errors=self.server_errors,
            jobs=self.jobs,
            lowest_concurrency=self.lowest,
            waited_s=self.waited_s,
        )
