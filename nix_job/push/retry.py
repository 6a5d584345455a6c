"""Retries of Attic requests: which errors, how often, how long to wait, and stopping early when
the drain deadline has passed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from nix_job.cache.attic import AtticUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Retries for connection errors, timeouts and 5xx: exponential backoff plus jitter.

    Bounded by ``attempts`` and by ``total_s`` since the first try; 4xx is never retried.
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
        "attempt %d failed, retrying: %s",
        state.attempt_number,
        state.outcome.exception() if state.outcome else "?",
    )


def retrying(
    policy: RetryPolicy, *, sleep: Callable[[float], None], abandoned: threading.Event
) -> Retrying:
    """A tenacity ``Retrying`` for one request; it raises ``Abandoned`` instead of sleeping
    (or retrying) once ``abandoned`` is set."""

    def sleep_unless_abandoned(seconds: float) -> None:
        sleep(seconds)
        if abandoned.is_set():
            raise Abandoned

    return Retrying(
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total_s),
        wait=wait_exponential_jitter(
            multiplier=policy.initial_wait_s, max=policy.max_wait_s, jitter=policy.jitter_s
        ),
        retry=retry_if_exception_type(AtticUnavailableError),
        sleep=sleep_unless_abandoned,
        before_sleep=_log_retry,
        reraise=True,
    )
