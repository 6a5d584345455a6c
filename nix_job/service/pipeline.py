"""The upload side of ``nix-job watch-store``: one push session at a time, connected with the
current token, replaced when the server refuses the token, when the token file changes (at the
next idle moment), when the cache is unusable, or after many paths (the session remembers every
path it saw; a fresh one keeps memory bounded).

Connecting (``cache_config``) runs in this module's own thread with backoff, never in the main
loop, so a hanging server cannot starve the systemd watchdog. The server's state is logged
once per change (``ServerHealth``), not once per path or attempt.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from nix_job.cache.answers import AtticUnavailableError
from nix_job.cache.attic import CacheConfig
from nix_job.core.errors import AtticAuthError, AtticError
from nix_job.core.secret import Secret
from nix_job.push.report import Origin, PushReport
from nix_job.push.types import Excluder, PushClient, PushStore
from nix_job.service.credential import Credential
from nix_job.service.ledger import Ledger
from nix_job.service.logs import event
from nix_job.service.observe import Batch, ObservedClient, ObservedExcluder, ObservedStore

log = logging.getLogger("nix_job.service")


class AtticLike(PushClient, Protocol):
    def cache_config(self) -> CacheConfig: ...


class SessionLike(Protocol):
    """What the service uses of ``nix_job.push.session.PushSession``."""

    def queue(self, paths: Iterable[str], origin: Origin = "watch") -> None: ...
    def wait_idle(self, timeout_s: float) -> bool: ...
    def drain(self, timeout_s: float) -> PushReport: ...
    def close(self) -> None: ...


class Connector(Protocol):
    """Makes the real (or fake) pieces: clients, sessions, the excluder."""

    store: PushStore
    logical_store_dir: str

    def client(self, token: Secret) -> AtticLike: ...
    def excluder(self) -> Excluder | None: ...
    def session(
        self,
        *,
        client: PushClient,
        store: PushStore,
        upstream: Sequence[str],
        exclude: Excluder | None,
    ) -> SessionLike: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineTiming:
    connect_initial_s: float = 1.0
    connect_max_s: float = 60.0
    auth_retry_s: float = 60.0  # a refused token is tried again this often (or when it changes)
    unusable_retry_s: float = 300.0  # a missing cache or a store-dir mismatch
    recycle_paths: int = 50_000  # paths queued into one session before it is replaced when idle
    poll_s: float = 0.5


class ServerHealth:
    """The server's state (``connecting``, ``up``, ``unavailable``, ``refused``, ``unusable``),
    logged once per episode. Thread-safe; implements ``observe.Health``.

    A server that flaps (get-missing-paths answers while uploads fail; a token that may read
    the cache but not push) would log a pair of lines per batch: each bad state is logged at
    most once per ``quiet_s``, and ``server-available`` only after a logged bad state. A new
    token (``reset``) makes its refusal news again.
    """

    def __init__(self, clock: Callable[[], float], *, quiet_s: float = 600.0) -> None:
        self._clock = clock
        self._quiet_s = quiet_s
        self._lock = threading.Lock()
        self.state = "connecting"
        self._since = clock()
        self._logged: dict[str, float] = {}  # bad state -> when it was last logged
        self._recovery_due = False
        self.refused_generation = -1
        self.unusable_generation = -1

    def available(self) -> None:
        with self._lock:
            if self.state == "up":
                return
            previous, self.state = self.state, "up"
            waited = round(self._clock() - self._since, 1)
            self._since = self._clock()
            due, self._recovery_due = self._recovery_due, False
        if due:
            event(log, logging.INFO, "server-available", was=previous, for_s=waited)

    def unavailable(self, reason: str) -> None:
        if self._enter("unavailable"):
            event(log, logging.WARNING, "server-unavailable", reason=reason, msg="retrying")

    def refused(self, generation: int, reason: str) -> None:
        with self._lock:
            self.refused_generation = max(self.refused_generation, generation)
        if self._enter("refused"):
            msg = "waiting for a valid token (the token file is re-read when it changes)"
            event(log, logging.ERROR, "token-refused", reason=reason, msg=msg)

    def unusable(self, generation: int, reason: str) -> None:
        with self._lock:
            self.unusable_generation = max(self.unusable_generation, generation)
        if self._enter("unusable"):
            event(log, logging.ERROR, "cache-unusable", reason=reason, msg="retrying later")

    def reset(self) -> None:
        """A new token: its refusal, if it comes, is news again."""
        with self._lock:
            self._logged.pop("refused", None)
            if self.state == "refused":
                self.state = "connecting"

    def _enter(self, state: str) -> bool:
        """Move to a bad ``state``; True when that is to be logged."""
        with self._lock:
            if self.state == state:
                return False
            self.state = state
            now = self._clock()
            self._since = now
            last = self._logged.get(state)
            if last is not None and now - last < self._quiet_s:
                return False
            self._logged[state] = now
            self._recovery_due = True
            return True


class Pipeline:
    """Owns the current push session and the thread that (re)connects it."""

    def __init__(
        self,
        *,
        connector: Connector,
        credential: Credential,
        ledger: Ledger,
        health: ServerHealth,
        timing: PipelineTiming | None = None,
    ) -> None:
        self._connector = connector
        self._credential = credential
        self._ledger = ledger
        self.health = health
        self._timing = timing or PipelineTiming()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._session: SessionLike | None = None
        self._generation = 0
        self._queued = 0
        self._thread: threading.Thread | None = None

    # -- main-loop side -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nix-job-pipeline", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Look again now (the token changed)."""
        self._wake.set()

    def queue(self, paths: Sequence[str]) -> int | None:
        """Queue into the current session; its generation, or None when there is none."""
        if not paths:
            return self.generation
        with self._lock:
            if self._session is None:
                return None
            self._session.queue(paths)
            self._queued += len(paths)
            return self._generation

    @property
    def generation(self) -> int | None:
        with self._lock:
            return self._generation if self._session is not None else None

    def idle(self) -> bool:
        """A session exists and has nothing queued, planned or in flight."""
        with self._lock:
            return self._session is not None and self._session.wait_idle(0)

    def finish(self, timeout_s: float) -> bool:
        """Stop connecting, then drain the session for at most ``timeout_s`` (not at all when
        the server is not answering: everything is journaled) and close it. True when the
        session ended idle."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            session, self._session = self._session, None
        drained = False
        if session is not None:
            if self.health.state == "up" and timeout_s > 0:
                drained = session.drain(timeout_s).left_over.paths == 0
            session.close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        return drained

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        wait = self._timing.connect_initial_s
        last_version = self._credential.version
        while not self._stopping.is_set():
            token, version = self._credential.current()
            if version != last_version:
                self.health.reset()
                last_version = version
            outcome = self._connect(token, version)
            if outcome == "connected":
                wait = self._timing.connect_initial_s
                reason = self._hold(version)
                if reason == "stop":
                    return  # finish() drains the session
                with self._lock:
                    session, self._session = self._session, None
                if session is None:
                    return
                session.close()  # what it held is journaled and goes to the next one
                event(log, logging.INFO, "session-replaced", reason=reason)
                if reason == "token refused":
                    self._wait_for_token(version, self._timing.auth_retry_s)
                elif reason == "cache unusable":
                    self._sleep(self._timing.unusable_retry_s)
            elif outcome == "refused":
                self._wait_for_token(version, self._timing.auth_retry_s)
            elif outcome == "unusable":
                self._sleep(self._timing.unusable_retry_s)
            else:
                self._sleep(wait * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto
                wait = min(self._timing.connect_max_s, wait * 2)

    def _not_connected(self, exc: Exception) -> str:
        """Record why reading the cache configuration failed; what to do next."""
        if isinstance(exc, AtticAuthError):
            self.health.refused(self._generation, exc.message)
            return "refused"
        if isinstance(exc, AtticUnavailableError):
            self.health.unavailable(exc.message)
            return "unavailable"
        if isinstance(exc, AtticError):
            self.health.unusable(self._generation, exc.message)
            return "unusable"
        log.error("connecting to Attic failed unexpectedly", exc_info=exc)
        self.health.unavailable(f"{type(exc).__name__}: {exc}")
        return "unavailable"

    def _connect(self, token: Secret, version: int) -> str:
        client = self._connector.client(token)
        try:
            config = client.cache_config()
        except Exception as exc:
            client.close()
            return self._not_connected(exc)
        logical = self._connector.logical_store_dir
        if config.store_dir and config.store_dir.rstrip("/") != logical:
            client.close()
            self.health.unusable(
                self._generation,
                f"the cache holds paths of store {config.store_dir}, this machine's store is "
                f"{logical}; point --cache at a cache created for {logical}",
            )
            return "unusable"
        generation = self._generation + 1
        batch = Batch()
        ledger = self._ledger
        store = ObservedStore(
            self._connector.store,
            sink=ledger,
            generation=generation,
            upstream_key_names=config.upstream_cache_key_names,
            batch=batch,
        )
        observed = ObservedClient(
            client, sink=ledger, health=self.health, generation=generation, batch=batch
        )
        excluder = self._connector.excluder()
        exclude = ObservedExcluder(excluder, sink=ledger, batch=batch) if excluder else None
        session = self._connector.session(
            client=observed, store=store, upstream=config.upstream_cache_key_names, exclude=exclude
        )
        if self._stopping.is_set():
            session.close()
            return "stopped"
        ledger.new_generation(generation)
        with self._lock:
            self._session = session
            self._generation = generation
            self._queued = 0
        self.health.available()
        event(
            log,
            logging.INFO,
            "connected",
            generation=generation,
            token_version=version,
            upstream=",".join(config.upstream_cache_key_names) or None,
        )
        return "connected"

    def _hold(self, version: int) -> str:
        """Wait while the session serves; why it must be replaced (or "stop")."""
        generation = self._generation
        while True:
            self._wake.wait(self._timing.poll_s)
            self._wake.clear()
            if self._stopping.is_set():
                return "stop"
            if self.health.refused_generation >= generation:
                return "token refused"
            if self.health.unusable_generation >= generation:
                return "cache unusable"
            with self._lock:
                queued = self._queued
            rotated = self._credential.version != version
            if (rotated or queued >= self._timing.recycle_paths) and self.idle():
                return "token rotated" if rotated else "recycled"

    def _wait_for_token(self, version: int, timeout_s: float) -> None:
        """Until the token changes, ``timeout_s`` passes or the service stops."""
        waited = 0.0
        while waited < timeout_s and not self._stopping.is_set():
            if self._credential.version != version:
                return
            self._sleep(self._timing.poll_s)
            waited += self._timing.poll_s

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)
