"""The ledger behind a real PushSession, through the observed seams, with a fake store and a
fake Attic: every outcome reaches the journal; path failures are retried with backoff and
given up; failures that are not the path's never count against it."""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nix_job.cache.answers import AtticUnavailableError
from nix_job.core.errors import AtticApiError, AtticAuthError, StoreError
from nix_job.push.exclude import Verdict
from nix_job.push.retry import RetryPolicy
from nix_job.push.session import PushSession
from nix_job.service.journal import Journal
from nix_job.service.ledger import Ledger, RetryPlan
from nix_job.service.observe import Batch, ObservedClient, ObservedExcluder, ObservedStore
from nix_job.service.pipeline import ServerHealth
from tests.fakes.attic import FakeAttic
from tests.fakes.clock import FakeClock
from tests.fakes.store import FakeStore

S = "/nix/store/"
LEAF = S + "0" * 32 + "-leaf"
TOP = S + "1" * 32 + "-top"
SIGNED = S + "2" * 32 + "-signed"
HOME = S + "3" * 32 + "-excluded-docs"
CACHED = S + "4" * 32 + "-cached"
GONE = S + "5" * 32 + "-collected"
FAST = RetryPolicy(
    attempts=sys.maxsize, initial_wait_s=0.01, max_wait_s=0.02, jitter_s=0, total_s=math.inf
)


@dataclass
class Health:
    calls: list[tuple[str, object]] = field(default_factory=list)

    def available(self) -> None:
        self.calls.append(("available", None))

    def unavailable(self, reason: str) -> None:
        self.calls.append(("unavailable", reason))

    def refused(self, generation: int, reason: str) -> None:
        self.calls.append(("refused", generation))

    def unusable(self, generation: int, reason: str) -> None:
        self.calls.append(("unusable", generation))


class RegexExcluder:
    def __init__(self, pattern: str) -> None:
        self._re = re.compile(pattern)
        self.closed = False

    def match(self, paths: Sequence[str]) -> Verdict:
        return Verdict(excluded=frozenset(p for p in paths if self._re.search(p)), undecided=())

    def close(self) -> None:
        self.closed = True


@dataclass
class Rig:
    ledger: Ledger
    journal: Journal
    store: FakeStore
    attic: FakeAttic
    health: Health
    clock: FakeClock
    generation: int = 0
    sessions: list[PushSession] = field(default_factory=list)

    def session(self) -> PushSession:
        self.generation += 1
        self.ledger.new_generation(self.generation)
        batch = Batch()
        session = PushSession(
            store=ObservedStore(
                self.store,
                sink=self.ledger,
                generation=self.generation,
                upstream_key_names=("cache.nixos.org-1",),
                batch=batch,
            ),
            client=ObservedClient(
                self.attic,
                sink=self.ledger,
                health=self.health,
                generation=self.generation,
                batch=batch,
            ),
            upstream_key_names=("cache.nixos.org-1",),
            exclude=ObservedExcluder(RegexExcluder("-excluded-"), sink=self.ledger, batch=batch),
            jobs=2,
            retry=FAST,
            idle_s=0.01,
            batch_cap_s=0.05,
        )
        self.sessions.append(session)
        return session

    def push(self, session: PushSession, paths: list[str]) -> None:
        new = self.ledger.seen(paths, wall=0.0)
        session.queue(new)
        self.ledger.queued(new, self.generation)
        assert session.wait_idle(10)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    journal = Journal(tmp_path, limit=100)
    clock = FakeClock(now=1000.0)
    ledger = Ledger(journal=journal, clock=clock, retry=RetryPlan(base_s=60, max_attempts=3))
    store = FakeStore()
    store.add(LEAF)
    store.add(TOP, LEAF)
    store.add(SIGNED, sigs=("cache.nixos.org-1:abc",))
    store.add(HOME)
    store.add(CACHED)
    r = Rig(ledger, journal, store, FakeAttic(), Health(), clock)
    r.attic.have.add(CACHED[len(S) :][:32])
    yield r
    for session in r.sessions:
        session.close()


def test_every_outcome_empties_the_journal_and_is_counted(rig: Rig) -> None:
    rig.push(rig.session(), [TOP, SIGNED, HOME, CACHED, GONE])
    counts = rig.ledger.counts()
    assert rig.journal.pending() == []
    assert (counts.pushed, counts.upstream, counts.excluded, counts.cached) == (2, 1, 1, 1)
    assert counts.vanished == 1  # GONE was never valid: not in the closure
    assert counts.pushed_bytes == 200
    assert sorted(rig.attic.uploads) == [LEAF, TOP]  # the closure went up


def test_a_path_failure_is_retried_with_backoff_then_given_up(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    too_big = AtticApiError("uploading: request too large (HTTP 413)", status=413)
    rig.attic.fail_upload[LEAF] = [too_big] * 5
    session = rig.session()
    rig.push(session, [LEAF])
    assert rig.journal.attempts(LEAF) == 1
    assert rig.ledger.take(10) == []  # not due yet
    rig.clock.now += 60
    for expected_attempts in (2, 3):
        paths = rig.ledger.take(10)
        assert paths == [LEAF]
        session.queue(paths)
        rig.ledger.queued(paths, rig.generation)
        assert session.wait_idle(10)
        rig.clock.now += 60 * 2 ** (expected_attempts - 1)
    counts = rig.ledger.counts()
    assert rig.journal.pending() == []  # given up after max_attempts
    assert (counts.failed, counts.gave_up, counts.pushed) == (3, 1, 0)
    gave_up = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "gave-up"]
    assert len(gave_up) == 1


def test_an_outage_is_the_servers_not_the_paths(rig: Rig) -> None:
    down = AtticUnavailableError("could not talk to the server", status=None)
    rig.attic.fail_missing = [down, down, down]
    rig.attic.fail_upload[TOP] = [AtticUnavailableError("HTTP 502", status=502)]
    rig.push(rig.session(), [TOP])
    counts = rig.ledger.counts()
    assert (counts.failed, counts.pushed) == (0, 2)
    assert rig.journal.pending() == []
    kinds = [kind for kind, _ in rig.health.calls]
    assert kinds.count("unavailable") == 4
    assert kinds[-1] == "available"


def test_a_refused_token_keeps_the_paths_for_the_next_session(rig: Rig) -> None:
    rig.attic.fail_upload[LEAF] = [AtticAuthError("401", status=401)]
    rig.push(rig.session(), [LEAF])
    assert ("refused", 1) in rig.health.calls
    assert rig.journal.pending() == [LEAF]
    assert rig.ledger.counts().failed == 0
    assert rig.ledger.sweep() == 1  # the auth stop failed it silently: held back
    second = rig.session()  # a new token, a new session: held-back paths are free again
    paths = rig.ledger.take(10)
    assert paths == [LEAF]
    second.queue(paths)
    rig.ledger.queued(paths, rig.generation)
    assert second.wait_idle(10)
    assert rig.journal.pending() == []


def test_a_failed_batch_counts_no_attempt(rig: Rig) -> None:
    rig.store.closure_error = StoreError("nix-store --query --requisites: daemon gone")
    rig.push(rig.session(), [TOP])
    assert rig.journal.attempts(TOP) == 0
    assert rig.ledger.counts().retrying == 1
    rig.store.closure_error = None
    rig.clock.now += 30
    assert rig.ledger.take(10) == [TOP]


def test_a_404_is_the_cache_not_the_path(rig: Rig) -> None:
    rig.attic.fail_upload[LEAF] = [AtticApiError("NoSuchCache", status=404, error="NoSuchCache")]
    rig.push(rig.session(), [LEAF])
    assert ("unusable", 1) in rig.health.calls
    assert rig.journal.attempts(LEAF) == 0


def test_a_full_queue_refuses_and_remembers_when(rig: Rig, tmp_path: Path) -> None:
    (tmp_path / "small").mkdir()
    small = Ledger(journal=Journal(tmp_path / "small", limit=1), clock=rig.clock)
    assert small.seen([LEAF, TOP], wall=500.0) == [LEAF]
    assert small.overflow_since == 500.0
    seq = small.overflow_seq
    small.seen([HOME], wall=600.0)
    assert small.overflow_since == 500.0  # the first refusal counts
    assert not small.release_overflow(seq)  # refused again since
    assert small.release_overflow(small.overflow_seq)
    assert small.overflow_since is None
    assert small.counts().refused_full == 2


def test_failures_of_a_replaced_session_are_ignored(rig: Rig) -> None:
    rig.ledger.seen([LEAF], wall=0.0)
    rig.ledger.new_generation(2)
    rig.ledger.path_failed(1, LEAF, "late news from an old session")
    assert rig.journal.attempts(LEAF) == 0


def test_a_failed_dependency_nobody_journaled_is_journaled(rig: Rig) -> None:
    rig.ledger.new_generation(1)
    rig.ledger.path_failed(1, LEAF, "bad NAR")
    assert rig.journal.attempts(LEAF) == 1


def test_restore_puts_the_journal_in_the_backlog(tmp_path: Path) -> None:
    journal = Journal(tmp_path, limit=10)
    journal.add([LEAF, TOP])
    ledger = Ledger(journal=Journal(tmp_path, limit=10), clock=FakeClock())
    assert ledger.restore() == 2
    assert ledger.take(1) == [LEAF]
    assert ledger.take(5) == [TOP]


def test_server_health_logs_once_per_episode_even_when_it_flaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock(now=0.0)
    health = ServerHealth(clock, quiet_s=600)

    def logged() -> list[str]:
        return [str(getattr(r, "fields", {}).get("event")) for r in caplog.records]

    health.available()  # connecting -> up: nothing was wrong, nothing to say
    for _ in range(5):  # get-missing-paths answers, uploads fail: flapping
        health.unavailable("HTTP 502")
        clock.now += 1
        health.available()
    assert logged() == ["server-unavailable", "server-available"]
    clock.now += 600
    health.unavailable("HTTP 502")
    health.available()
    assert logged()[2:] == ["server-unavailable", "server-available"]
    health.refused(1, "401")
    health.available()
    health.refused(2, "401")  # the same token again, within the quiet time: silent
    health.reset()  # a new token
    health.refused(3, "401")
    assert logged()[4:] == ["token-refused", "server-available", "token-refused"]
    assert health.refused_generation == 3
