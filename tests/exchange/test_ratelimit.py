"""Token buckets: burst, refill, Retry-After, separate keys, bounded memory."""

from __future__ import annotations

import pytest

from nix_job.exchange.ratelimit import RateLimiter


def test_burst_then_wait_then_refill() -> None:
    limiter = RateLimiter(burst=3, per_minute=60)
    assert [limiter.take("k", 0.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("k", 0.0) == 1  # one token a second
    assert limiter.take("k", 0.5) == 1
    assert limiter.take("k", 1.0) == 0
    assert limiter.take("k", 1.0) == 1


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    limiter = RateLimiter(burst=1, per_minute=2)  # one token every 30 s
    assert limiter.take("k", 0.0) == 0
    assert limiter.take("k", 0.0) == 30
    assert limiter.take("k", 29.5) == 1
    assert limiter.take("k", 30.0) == 0


def test_keys_are_independent() -> None:
    limiter = RateLimiter(burst=1, per_minute=1)
    assert limiter.take("a", 0.0) == 0
    assert limiter.take("a", 0.0) > 0
    assert limiter.take("b", 0.0) == 0


def test_refill_never_exceeds_burst() -> None:
    limiter = RateLimiter(burst=2, per_minute=60)
    assert limiter.take("k", 0.0) == 0
    assert [limiter.take("k", 1000.0) for _ in range(3)] == [0, 0, 1]


def test_memory_is_bounded_dropping_full_buckets_first() -> None:
    limiter = RateLimiter(burst=1, per_minute=1, max_keys=2)
    assert limiter.take("busy", 0.0) == 0
    for i in range(10):
        assert limiter.take(f"k{i}", 100.0 + i) == 0
    assert len(limiter) == 2
    # "busy" refilled long ago, so it was dropped as full; a drop never grants more than
    # a new bucket would.
    assert limiter.take("busy", 200.0) == 0


@pytest.mark.parametrize(
    ("burst", "per_minute", "max_keys"),
    [(0, 1, 1), (1, 0, 1), (1, 1, 0)],
)
def test_nonsense_settings_are_refused(burst: int, per_minute: float, max_keys: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        RateLimiter(burst=burst, per_minute=per_minute, max_keys=max_keys)
