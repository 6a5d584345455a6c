"""Where the Attic client gets its token on every request: a fixed ``ATTIC_TOKEN``, or the token
exchange's short-lived token, renewed in the background before it expires.

``RenewingToken`` renews at 2/3 of the token's lifetime (``core.token_grant.renewal_delay``,
retrying with backoff when the exchange fails) on a daemon thread. ``renew`` masks what it
returns; listeners (rewrite the netrc Nix reads) then run under the lock, in the order they
subscribed, before anyone can be handed the new token. ``tick`` does one step, so tests drive
it with a fake clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nix_job.core.errors import NixJobError
from nix_job.core.secret import Secret
from nix_job.core.token_grant import Grant, minutes, renewal_delay

log = logging.getLogger(__name__)

#: Never renew sooner than this after the last attempt (a minted token lives at least 60 s).
FLOOR_S = 20.0

Listener = Callable[[Grant], None]


class TokenSource(Protocol):
    def current(self) -> Secret | None:
        """The token to send now (None: anonymous)."""
        ...


@dataclass(frozen=True, slots=True)
class StaticToken:
    """``ATTIC_TOKEN``, as today: the same token for the whole run."""

    token: Secret | None

    def current(self) -> Secret | None:
        return self.token


class RenewingToken:
    """The exchange's grant, renewed by ``renew`` (which raises NixJobError on failure)."""

    def __init__(
        self,
        *,
        grant: Grant,
        renew: Callable[[], Grant],
        clock: Callable[[], float] = time.monotonic,
        floor_s: float = FLOOR_S,
    ) -> None:
        self._grant = grant
        self._renew = renew
        self._clock = clock
        self._floor_s = floor_s
        self._lock = threading.RLock()  # a listener may ask for current() itself
        self._listeners: list[Listener] = []
        self._failures = 0
        self._expires = clock() + grant.lifetime_s
        self._next = clock() + renewal_delay(
            lifetime_s=grant.lifetime_s, failures=0, left_s=grant.lifetime_s, floor_s=floor_s
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._expired_said = False
        self.renewals = 0
        self.last_error: str | None = None

    # what the clients ask ----------------------------------------------------------------------

    def current(self) -> Secret:
        with self._lock:
            return self._grant.token

    @property
    def grant(self) -> Grant:
        with self._lock:
            return self._grant

    # listeners -----------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Returns once no renewal is running ``listener`` any more (it holds the lock)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # renewal -------------------------------------------------------------------------------------

    def due_in(self) -> float:
        return self._next - self._clock()

    def tick(self) -> bool:
        """Renew if it is time; True when a new grant is in place. Never raises for a failed
        exchange: it is logged, and retried later (until the run ends)."""
        if self.due_in() > 0:
            return False
        try:
            fresh = self._renew()
        except NixJobError as error:
            if not self._stop.is_set():
                self._failed(error.message)
            return False
        now = self._clock()
        with self._lock:
            if self._stop.is_set():
                return False  # closed meanwhile: nobody needs it any more
            self._grant = fresh
            self._failures = 0
            self._expires = now + fresh.lifetime_s
            self._next = now + renewal_delay(
                lifetime_s=fresh.lifetime_s,
                failures=0,
                left_s=fresh.lifetime_s,
                floor_s=self._floor_s,
            )
            self.renewals += 1
            self.last_error = None
            self._expired_said = False
            for listener in self._listeners:
                listener(fresh)
        log.info(
            "renewed the Attic token from the token exchange: valid for %s more",
            minutes(fresh.lifetime_s),
        )
        return True

    def _failed(self, message: str) -> None:
        now = self._clock()
        left = self._expires - now
        with self._lock:
            self._failures += 1
            self.last_error = message
            self._next = now + renewal_delay(
                lifetime_s=self._grant.lifetime_s,
                failures=self._failures,
                left_s=max(0.0, left),
                floor_s=self._floor_s,
            )
        retry = max(0.0, self._next - now)
        if left > 0:
            log.warning(
                "renewing the Attic token failed (%s); it is still valid for %s, retrying in "
                "%.0f s",
                message,
                minutes(left),
                retry,
            )
        elif not self._expired_said:
            self._expired_said = True
            log.warning(
                "the Attic token from the token exchange has expired and could not be renewed "
                "(%s): uploads are refused and private reads are anonymous until a renewal "
                "works; retrying every %.0f s or so",
                message,
                retry,
            )

    # the thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nix-job-token", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(max(0.0, self.due_in())):
            try:
                self.tick()
            except Exception:  # a listener's bug must not kill renewal silently
                if self._stop.is_set():
                    return  # the exchange's client was closed under a late renewal
                log.exception("renewing the Attic token failed unexpectedly")
                with self._lock:
                    self._next = self._clock() + self._floor_s

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop renewing. Waits at most ``timeout_s`` for a renewal in progress (a cancelled
        run has seconds left): a late one changes nothing, its result is dropped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
