"""The service loop in-process, with a fake watcher, store, Attic and registration source:
catch-up from the mark, a full queue caught up once it drains, a crashed watcher replaced and
its gap caught up, systemd notifications, shutdown within the deadline."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nix_job.cache.answers import AtticUnavailableError
from nix_job.cache.attic import CacheConfig
from nix_job.core.errors import AtticAuthError, AtticError, StoreError
from nix_job.core.secret import Secret
from nix_job.push.retry import RetryPolicy
from nix_job.push.session import PushSession
from nix_job.push.types import Excluder, PushClient, PushStore
from nix_job.push.watcher import WatcherStats
from nix_job.service.config import Options, resolve
from nix_job.service.credential import Credential
from nix_job.service.journal import Journal, MarkFile, read_pending
from nix_job.service.ledger import Ledger
from nix_job.service.logs import SecretScrubber
from nix_job.service.pipeline import Pipeline, PipelineTiming, ServerHealth
from nix_job.service.service import LoopTiming, Service
from nix_job.service.systemd import Notifier
from tests.fakes.attic import FakeAttic
from tests.fakes.store import FakeStore
from tests.service.harness import wait_until

FAST = RetryPolicy(
    attempts=sys.maxsize, initial_wait_s=0.01, max_wait_s=0.02, jitter_s=0, total_s=math.inf
)
MARGIN = 1.0


def store_path(i: int, name: str = "p") -> str:
    return f"/nix/store/{i:032d}-{name}"


class FakeWatcher:
    def __init__(self, on_paths: Callable[[list[str]], None]) -> None:
        self.on_paths = on_paths
        self._stats = WatcherStats()
        self.stopped = False

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> bool:
        self.stopped = True
        return True

    @property
    def stats(self) -> WatcherStats:
        return self._stats

    def emit(self, paths: Iterable[str]) -> None:
        self.on_paths(list(paths))

    def crash(self) -> None:
        self._stats = WatcherStats(crashed=True, errors=1, last_error="boom")


class AtticWithConfig(FakeAttic):
    def cache_config(self) -> CacheConfig:
        return CacheConfig(upstream_cache_key_names=("cache.nixos.org-1",), store_dir="/nix/store")


class AtticThatFails(AtticWithConfig):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def cache_config(self) -> CacheConfig:
        raise self.error


@dataclass
class Connector:
    store: PushStore
    attic: AtticWithConfig
    logical_store_dir: str = "/nix/store"
    tokens: list[Secret] = field(default_factory=list)

    def client(self, token: Secret) -> AtticWithConfig:
        self.tokens.append(token)
        return self.attic

    def excluder(self) -> Excluder | None:
        return None

    def session(
        self,
        *,
        client: PushClient,
        store: PushStore,
        upstream: Sequence[str],
        exclude: Excluder | None,
    ) -> PushSession:
        return PushSession(
            store=store,
            client=client,
            upstream_key_names=upstream,
            exclude=exclude,
            jobs=2,
            retry=FAST,
            idle_s=0.01,
            batch_cap_s=0.05,
        )


class Notes(Notifier):
    def __init__(self) -> None:
        super().__init__("/unused", watchdog_s=0.05)
        self.sent: list[dict[str, str]] = []

    def notify(self, **fields: str) -> bool:
        self.sent.append(fields)
        return True


@dataclass
class Registrations:
    answers: list[Mapping[str, int] | Exception]
    calls: list[float] = field(default_factory=list)

    def __call__(self, since: float) -> Mapping[str, int]:
        self.calls.append(since)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class Running:
    service: Service
    journal: Journal
    watchers: list[FakeWatcher]
    attic: AtticWithConfig
    notes: Notes
    registrations: Registrations
    stop: threading.Event
    status: threading.Event
    result: list[int]
    thread: threading.Thread

    def finish(self, timeout: float = 10.0) -> int:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.result[0]


@pytest.fixture
def fake_store() -> FakeStore:
    store = FakeStore()
    for i in range(200):
        store.add(store_path(i))
    return store


@pytest.fixture
def start(tmp_path: Path, fake_store: FakeStore) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def run(
        *, answers: list[Mapping[str, int] | Exception] | None = None, queue_limit: int = 1000
    ) -> Running:
        env = {"ATTIC_SERVER": "http://h/", "ATTIC_CACHE": "demo", "ATTIC_TOKEN": "t"}
        options = Options(state_dir=str(tmp_path), status_interval=0, shutdown_timeout=2,
                          queue_limit=queue_limit)  # fmt: skip
        config = resolve(options, env)
        journal = Journal(tmp_path, limit=queue_limit)
        ledger = Ledger(journal=journal, clock=time.monotonic)
        attic = AtticWithConfig()
        credential = Credential(token=Secret("t"))
        pipeline = Pipeline(
            connector=Connector(fake_store, attic),
            credential=credential,
            ledger=ledger,
            health=ServerHealth(time.monotonic),
            timing=PipelineTiming(connect_initial_s=0.01, poll_s=0.02),
        )
        watchers: list[FakeWatcher] = []

        def make_watcher(on_paths: Callable[[list[str]], None]) -> FakeWatcher:
            watchers.append(FakeWatcher(on_paths))
            return watchers[-1]

        notes = Notes()
        registrations = Registrations(answers or [{}])
        service = Service(
            config=config,
            ledger=ledger,
            pipeline=pipeline,
            marks=MarkFile(tmp_path),
            watcher_factory=make_watcher,
            registrations=registrations,
            notifier=notes,
            credential=credential,
            scrubber=SecretScrubber(),
            timing=LoopTiming(
                tick_s=0.02, mark_every_s=0.05, mark_margin_s=MARGIN, retry_s=0.05,
                compact_every_s=0.1,
            ),
        )  # fmt: skip
        stop, status = threading.Event(), threading.Event()
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(service.run(stop, status)))
        thread.start()
        running = Running(
            service, journal, watchers, attic, notes, registrations, stop, status, result, thread
        )
        started.append(running)
        wait_until(lambda: bool(watchers) and any("ready" in n for n in notes.sent))
        return running

    yield run
    for running in started:
        running.stop.set()
        if running.attic.block is not None:
            running.attic.block.set()
        running.thread.join(10)


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (AtticAuthError("401: the token may not read cache demo"), "refused"),
        (AtticUnavailableError("502 from the proxy", status=502), "unavailable"),
        (AtticError("cache demo does not exist", status=404), "unusable"),
        (RuntimeError("a bug in a client"), "unavailable"),
    ],
)
def test_why_connecting_failed_is_the_servers_state_and_the_client_is_closed(
    tmp_path: Path, fake_store: FakeStore, error: Exception, state: str
) -> None:
    attic = AtticThatFails(error)
    health = ServerHealth(time.monotonic)
    pipeline = Pipeline(
        connector=Connector(fake_store, attic),
        credential=Credential(token=Secret("t")),
        ledger=Ledger(journal=Journal(tmp_path, limit=10), clock=time.monotonic),
        health=health,
        timing=PipelineTiming(connect_initial_s=0.01, poll_s=0.02),
    )
    pipeline.start()
    try:
        wait_until(lambda: health.state == state and attic.closed)
        assert pipeline.generation is None  # no session on a failed connection
    finally:
        pipeline.finish(0)


def test_paths_are_uploaded_and_systemd_hears_about_it(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    run = start()
    run.watchers[0].emit([store_path(1), store_path(2)])
    wait_until(lambda: sorted(run.attic.uploads) == [store_path(1), store_path(2)])
    wait_until(lambda: read_pending(tmp_path) == {})
    run.status.set()
    wait_until(lambda: any(n.get("status", "").startswith("pushed=2 ") for n in run.notes.sent))
    assert run.finish() == 0
    sent = run.notes.sent
    assert sent[0]["ready"] == "1"
    assert sum(1 for n in sent if n.get("watchdog") == "1") >= 2
    assert next(n for n in sent if "stopping" in n)["stopping"] == "1"
    mark = MarkFile(tmp_path).load()
    assert mark is not None
    assert time.time() - 30 < mark <= time.time()
    assert run.registrations.calls == []  # first start: nothing to catch up


def test_catch_up_starts_at_the_mark(start: Callable[..., Running], tmp_path: Path) -> None:
    mark = time.time() - 600
    MarkFile(tmp_path).save(mark)
    missed, older = store_path(3), store_path(4)
    run = start(answers=[{missed: int(mark) + 5, older: int(mark) - 100}])
    wait_until(lambda: missed in run.attic.uploads)
    assert run.finish() == 0
    assert run.registrations.calls == [mark]
    assert older not in run.attic.uploads


def test_a_failed_catch_up_is_retried_and_holds_the_mark(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    mark = time.time() - 600
    MarkFile(tmp_path).save(mark)
    missed = store_path(5)
    answers: list[Mapping[str, int] | Exception] = [StoreError("nix-daemon is restarting")]
    run = start(answers=answers)
    time.sleep(0.3)  # several mark periods pass while the catch-up fails
    assert MarkFile(tmp_path).load() == mark
    answers.append({missed: int(mark) + 5})
    wait_until(lambda: missed in run.attic.uploads)
    wait_until(lambda: (MarkFile(tmp_path).load() or 0) > mark)
    assert run.finish() == 0
    assert len(run.registrations.calls) >= 2


def test_a_full_queue_is_caught_up_once_it_drains(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    run = start(queue_limit=100)
    run.attic.block = threading.Event()  # uploads hang: the queue fills
    paths = [store_path(i) for i in range(10, 160)]
    before = time.time()
    run.watchers[0].emit(paths)
    assert len(read_pending(tmp_path)) == 100
    run.status.set()
    wait_until(lambda: any("refused_full=50 " in n.get("status", "") for n in run.notes.sent))
    refused = {p: int(time.time()) for p in paths[100:]}
    run.registrations.answers[:] = [refused]
    run.attic.block.set()
    wait_until(lambda: set(paths) <= set(run.attic.uploads), what="all 150 paths")
    assert run.finish() == 0
    (since,) = run.registrations.calls
    assert before - MARGIN - 1 <= since <= time.time() - MARGIN


def test_a_crashed_watcher_is_replaced_and_its_gap_caught_up(
    start: Callable[..., Running],
) -> None:
    run = start()
    gap = store_path(170)
    run.registrations.answers[:] = [{gap: int(time.time())}]
    crashed_at = time.time()
    run.watchers[0].crash()
    wait_until(lambda: len(run.watchers) == 2)
    wait_until(lambda: gap in run.attic.uploads)
    run.watchers[1].emit([store_path(171)])
    wait_until(lambda: store_path(171) in run.attic.uploads)
    assert run.finish() == 0
    assert run.watchers[0].stopped
    (since,) = run.registrations.calls
    assert crashed_at - MARGIN - 1 <= since <= crashed_at


def test_shutdown_keeps_its_deadline_and_journals_uploads_in_flight(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    run = start()
    run.attic.block = threading.Event()
    run.watchers[0].emit([store_path(180)])
    assert run.attic.started.wait(10)
    began = time.monotonic()
    assert run.finish() == 0
    assert time.monotonic() - began < 2 + 1.0  # --shutdown-timeout 2
    assert read_pending(tmp_path) == {store_path(180): 0}
    assert run.watchers[0].stopped
