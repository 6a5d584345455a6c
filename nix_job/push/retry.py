"""Retries of Attic requests: which errors, how often, how long to wait, and stopping early when
the drain deadline has passed."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from nix_job.cache.answers import AtticUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Retries for connection errors, timeouts, 5xx and 429: exponential backoff plus jitter, or
    the server's ``Retry-After``.

    Bounded by ``attempts`` (throttling answers aside) and by ``total_s`` since the first try;
    other 4xx answers are never retried.
    """

    attempts: int = 5
    initial_wait_s: float = 1.0
    max_wait_s: float = 30.0
    jitter_s: float = 1.0
    total_s: float = 300.0


class Abandoned(Exception):
    """The drain deadline passed: stop this request and leave the path to the report."""


def _log_retry(state: RetryCallState) -> None:
    log.warning(
        "attempt %d failed, retrying in %.1f s: %s",
        state.attempt_number,
        state.next_action.sleep if state.next_action else 0.0,
        state.outcome.exception() if state.outcome else "?",
    )


def _error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None],
    abandoned: threading.Event,
    on_retry: Callable[[AtticUnavailableError, float], None] | None = None,
    on_waited: Callable[[float], None] | None = None,
) -> Retrying:
    """A tenacity ``Retrying`` for one request; it raises ``Abandoned`` instead of sleeping
    (or retrying) once ``abandoned`` is set.

    A server that throttles (429/503) with ``Retry-After`` is waited for that long (plus up to
    10 % jitter, so the workers do not come back together), and such retries do not count
    against ``attempts``: they are bounded by ``total_s`` and by the drain deadline (which sets
    ``abandoned``). ``on_retry(error, wait_s)`` runs before each wait, and ``on_waited(seconds)``
    after each wait that followed an answer from the server (as long as it really lasted).
    """
    answered = threading.local()
    backoff = wait_exponential_jitter(
        multiplier=policy.initial_wait_s, max=policy.max_wait_s, jitter=policy.jitter_s
    )

    def wait(state: RetryCallState) -> float:
        error = _error(state)
        after = error.retry_after_s if isinstance(error, AtticUnavailableError) else None
        if after is None:
            return float(backoff(state))
        return after + random.uniform(0, after / 10)  # noqa: S311 - jitter, not a secret

    def stop(state: RetryCallState) -> bool:
        if state.seconds_since_start is not None and state.seconds_since_start >= policy.total_s:
            return True
        error = _error(state)
        if isinstance(error, AtticUnavailableError) and error.throttled:
            return False
        return state.attempt_number >= policy.attempts

    def sleep_unless_abandoned(seconds: float) -> None:
        started = time.monotonic()
        try:
            sleep(seconds)
        finally:
            if on_waited is not None and getattr(answered, "status", None) is not None:
                answered.status = None
                on_waited(time.monotonic() - started)
        if abandoned.is_set():
            raise Abandoned

    def before_sleep(state: RetryCallState) -> None:
        _log_retry(state)
        error = _error(state)
        if isinstance(error, AtticUnavailableError):
            answered.status = error.status
            if on_retry is not None:
                on_retry(error, state.next_action.sleep if state.next_action else 0.0)

    return Retrying(
        stop=stop,
        wait=wait,
        retry=retry_if_exception_type(AtticUnavailableError),
        sleep=sleep_unless_abandoned,
        before_sleep=before_sleep,
        reraise=True,
    )
