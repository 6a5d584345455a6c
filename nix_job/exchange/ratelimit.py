"""Token buckets per identity key, with time passed in (no clock of its own).

Each key holds up to ``burst`` exchanges and refills ``per_minute``. Memory is bounded: past
``max_keys`` buckets, full ones are dropped first (a full bucket is the same as a new one),
then the least recently used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, *, burst: int, per_minute: float, max_keys: int = 10_000) -> None:
        if burst < 1 or per_minute <= 0 or max_keys < 1:
            raise ValueError("burst, per_minute and max_keys must be positive")
        self._burst = float(burst)
        self._rate = per_minute / 60.0
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, now: float) -> int:
        """Spend one token for ``key``: 0 when allowed, else whole seconds until one is due."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = now
        self._buckets[key] = bucket  # re-inserted: dict order is least recently used first
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self._prune(now)
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))

    def _prune(self, now: float) -> None:
        if len(self._buckets) <= self._max_keys:
            return
        for key, bucket in list(self._buckets.items()):
            refilled = bucket.tokens + (now - bucket.updated) * self._rate
            if refilled >= self._burst:
                del self._buckets[key]
        while len(self._buckets) > self._max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
