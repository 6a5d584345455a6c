"""Adaptive upload concurrency (nix_job.push.throttle): halve on push-back, grow back slowly."""

from __future__ import annotations

import pytest

from nix_job.push.throttle import CUT_INTERVAL_S, Throttle


def test_push_back_halves_the_limit_down_to_one() -> None:
    t = Throttle(jobs=8)
    limits = []
    for n in range(5):
        t.pushed_back(throttled=True, now=n * CUT_INTERVAL_S)
        t.waited(1.0)
        limits.append(t.limit)
    assert limits == [4, 2, 1, 1, 1]
    assert t.stats().lowest_concurrency == 1
    assert t.stats().throttled == 5
    assert t.stats().waited_s == 5.0


def test_a_burst_of_answers_is_one_signal() -> None:
    t = Throttle(jobs=8)
    for _ in range(6):  # six requests sent together, six 429s within the same second
        t.pushed_back(throttled=True, now=10.0)
    assert t.limit == 4
    assert t.stats().throttled == 6


def test_successes_raise_the_limit_one_step_at_a_time_up_to_jobs() -> None:
    t = Throttle(jobs=4)
    t.pushed_back(throttled=False, now=0.0)
    assert t.limit == 2
    raised = [t.succeeded() for _ in range(2)]
    assert raised == [False, True]
    assert t.limit == 3
    for _ in range(10):
        t.succeeded()
    assert t.limit == 4
    assert t.stats().server_errors == 1
    assert t.stats().slowed  # it went below jobs at some point


def test_push_back_resets_the_success_streak() -> None:
    t = Throttle(jobs=4)
    t.pushed_back(throttled=True, now=0.0)
    t.succeeded()
    t.pushed_back(throttled=True, now=5.0)
    assert t.limit == 1
    assert t.streak == 0


def test_jobs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Throttle(jobs=0)
