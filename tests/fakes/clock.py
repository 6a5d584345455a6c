"""A fake monotonic clock: it moves when slept on, and optionally on every reading."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeClock:
    """``now`` advances by ``step`` on every reading (deadlines pass without real waiting) and
    by the slept time on ``sleep``."""

    now: float = 0.0
    step: float = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
