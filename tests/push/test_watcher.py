"""StoreWatcher: lock-deletion events on a tmp "store" (real inotify), injected events, real Nix."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import NIX32_ALPHABET
from nix_job.nix.store import NixStore
from nix_job.push.store_events import (
    IN_DELETE,
    IN_ISDIR,
    IN_Q_OVERFLOW,
    EventSource,
    InotifyEventSource,
    StoreEvent,
    is_candidate,
    lock_target,
)
from nix_job.push.watcher import StoreWatcher
from tests.fakes.store import FakeNix, StoreDir
from tests.nixenv import NixEnv, require_nix, write_derivations

WAIT_S = 20.0  # upper bound for "eventually"; never a timing assertion


def store_hash() -> str:
    return "".join(secrets.choice(NIX32_ALPHABET) for _ in range(32))


def base(name: str) -> str:
    return f"{store_hash()}-{name}"


class Collector:
    """on_paths double: records batches, can fail its first calls, can be awaited."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.times: dict[str, float] = {}
        self._fail_left = fail_first
        self._cond = threading.Condition()

    def __call__(self, paths: list[str]) -> None:
        with self._cond:
            if self._fail_left:
                self._fail_left -= 1
                raise RuntimeError("push queue closed")
            self.batches.append(paths)
            now = time.monotonic()
            self.times.update(dict.fromkeys(paths, now))
            self._cond.notify_all()

    @property
    def paths(self) -> list[str]:
        with self._cond:
            return [p for batch in self.batches for p in batch]

    def wait_for(self, predicate_paths: set[str]) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: predicate_paths <= {p for b in self.batches for p in b}, WAIT_S
            )


@pytest.fixture
def nix() -> FakeNix:
    return FakeNix()


@pytest.fixture
def store(tmp_path: Path, nix: FakeNix) -> StoreDir:
    root = tmp_path / "nix" / "store"
    root.mkdir(parents=True)
    return StoreDir(root, nix)


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def watcher(store: StoreDir, collector: Collector) -> Iterator[StoreWatcher]:
    w = StoreWatcher(store_dir=store.dir, is_valid=store.nix, on_paths=collector)
    w.start()
    yield w
    assert w.stop(timeout=WAIT_S)


class ScriptedSource:
    """An EventSource fed by the test; optionally fails on read."""

    def __init__(self, directory: Path, *, read_error: Exception | None = None) -> None:
        self.directory = directory
        self._events: list[StoreEvent] = []
        self._cond = threading.Condition()
        self._woken = False
        self._read_error = read_error
        self.closed = False

    def feed(self, *events: StoreEvent) -> None:
        with self._cond:
            self._events.extend(events)
            self._cond.notify_all()

    def read(self, timeout_s: float) -> list[StoreEvent]:
        if self._read_error is not None:
            raise self._read_error
        with self._cond:
            self._cond.wait_for(lambda: self._events or self._woken, timeout_s)
            self._woken = False
            events, self._events = self._events, []
            return events

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        self.closed = True


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def lock_deleted(name: str) -> StoreEvent:
    return StoreEvent(mask=IN_DELETE, name=f"{name}.lock")


def scripted_watcher(
    store: StoreDir, collector: Collector, *, batch_delay_s: float = 0.1
) -> tuple[StoreWatcher, ScriptedSource]:
    sources: list[ScriptedSource] = []

    def factory(directory: Path) -> EventSource:
        sources.append(ScriptedSource(directory))
        return sources[0]

    w = StoreWatcher(
        store_dir=store.dir,
        is_valid=store.nix,
        on_paths=collector,
        event_source=factory,
        batch_delay_s=batch_delay_s,
    )
    w.start()
    return w, sources[0]


# --- the pure name filter -----------------------------------------------------------------------

HASH = "0" * 31 + "z"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(f"{HASH}-hello-2.12.lock", f"{HASH}-hello-2.12", id="output-path-lock"),
        pytest.param(f"{HASH}-nixpkgs-source.lock", f"{HASH}-nixpkgs-source", id="source-kept"),
        pytest.param(f"{HASH}-hello.drv.lock", None, id="drv-lock"),
        pytest.param(f"{HASH}-hello.drv.chroot.lock", None, id="chroot-lock"),
        pytest.param(f"{HASH}-hello", None, id="not-a-lock"),
        pytest.param(".links.lock", None, id="dot-name"),
        pytest.param(f".{HASH}-hello.lock", None, id="dot-prefixed-store-name"),
        pytest.param("gc.lock", None, id="junk-name"),
        pytest.param(f"{HASH[:-1]}e-hello.lock", None, id="hash-with-letter-outside-nix32"),
        pytest.param(f"{HASH}-.lock", None, id="empty-name-part"),
        pytest.param(f"{HASH}-a b.lock", None, id="space-in-name"),
    ],
)
def test_lock_target_maps_lock_names_to_candidate_paths(name: str, expected: str | None) -> None:
    assert lock_target(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(f"{HASH}-hello", True, id="store-path"),
        pytest.param(f"{HASH}-hello.lock", False, id="lock"),
        pytest.param(f"{HASH}-hello.drv", False, id="drv"),
        pytest.param(f"{HASH}-hello.drv.chroot", False, id="chroot"),
        pytest.param(".links", False, id="links-dir"),
        pytest.param("lost+found", False, id="junk"),
    ],
)
def test_is_candidate_accepts_only_store_path_names(name: str, expected: bool) -> None:
    assert is_candidate(name) is expected


# --- component tests on a tmp store with real inotify -------------------------------------------


def test_emits_a_path_whose_lock_is_deleted_without_waiting_for_stop(
    store: StoreDir, collector: Collector, watcher: StoreWatcher
) -> None:
    path = store.add(base("hello"))
    assert collector.wait_for({path})
    assert collector.paths == [path]


def test_emits_only_paths_whose_lock_was_deleted(
    store: StoreDir, collector: Collector, watcher: StoreWatcher
) -> None:
    built = store.add(base("built"))
    store.add(base("copied-without-lock"), lock=False)
    assert watcher.stop(timeout=WAIT_S)
    assert collector.paths == [built]


def test_emits_source_paths(store: StoreDir, collector: Collector, watcher: StoreWatcher) -> None:
    path = store.add(base("source"))
    assert watcher.stop(timeout=WAIT_S)
    assert collector.paths == [path]


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(f"{HASH}-hello.drv", id="drv"),
        pytest.param(f"{HASH}-hello.drv.chroot", id="chroot"),
        pytest.param(".links", id="dot-name"),
        pytest.param("not-a-store-path", id="junk"),
        pytest.param(f"{HASH.upper()}-hello", id="upper-case-hash"),
    ],
)
def test_ignores_locks_of_names_that_are_not_uploadable(
    store: StoreDir, collector: Collector, watcher: StoreWatcher, entry: str
) -> None:
    store.add(entry)
    assert watcher.stop(timeout=WAIT_S)
    assert collector.paths == []
    assert store.nix.calls == []
    assert watcher.stats.ignored >= 1


def test_ignores_deleted_directories_and_non_lock_files(
    store: StoreDir, collector: Collector, watcher: StoreWatcher
) -> None:
    name = base("garbage-collected")
    store.add(name, lock=False)
    (store.dir / f"{name}.lock").mkdir()  # a directory named like a lock is not a lock
    (store.dir / f"{name}.lock").rmdir()
    shutil.rmtree(store.dir / name)
    assert watcher.stop(timeout=WAIT_S)
    assert collector.paths == []
    assert watcher.stats.ignored == 2


def test_stale_lock_of_a_failed_build_never_emits(
    store: StoreDir, collector: Collector, watcher: StoreWatcher
) -> None:
    name = base("failed")
    store.lock(name)
    (store.dir / name).mkdir()
    store.nix.valid.add(store.logical_path(name))  # even if it were valid: no deletion, no path
    assert watcher.stop(timeout=WAIT_S)
    assert collector.paths == []
    assert store.nix.calls == []


def test_invalid_path_is_dropped_and_emitted_once_it_becomes_valid(
    store: StoreDir, collector: Collector, watcher: StoreWatcher
) -> None:
    name = base("flaky")
    store.add(name, valid=False)
    other = store.add(base("other"))
    assert collector.wait_for({other})
    assert watcher.stats.invalid == 1
    store.lock(name)
    store.nix.valid.add(store.logical_path(name))
    store.unlock(name)
    assert watcher.stop(timeout=WAIT_S)
    assert collector.paths == [other, store.logical_path(name)]


def test_path_is_emitted_once_however_often_its_lock_is_deleted(
    store: StoreDir, collector: Collector, watcher: StoreWatcher
) -> None:
    name = base("twice")
    path = store.add(name)
    assert collector.wait_for({path})
    for _ in range(3):
        store.lock(name)
        store.unlock(name)
    assert watcher.stop(timeout=WAIT_S)
    assert collector.paths == [path]
    assert watcher.stats.duplicates >= 1  # the kernel may merge identical queued events


def test_burst_of_5000_paths_loses_none_and_batches_validity_checks(
    store: StoreDir, nix: FakeNix, collector: Collector
) -> None:
    # A long batch delay makes batches close by size or at stop(), so the count is exact-ish:
    # every flush takes >= batch_max names or is the last one, and splits into full chunks.
    w = StoreWatcher(
        store_dir=store.dir,
        is_valid=nix,
        on_paths=collector,
        batch_max=1000,
        batch_delay_s=3600,
    )
    w.start()
    names = [base(f"p{i}") for i in range(5000)]
    empty = store.dir.parent / "empty"  # hard links: creating 10,000 inodes is slow on some disks
    empty.touch()
    for name in names:
        os.link(empty, store.dir / f"{name}.lock")
        os.link(empty, store.dir / name)  # a store path may be a plain file
        nix.valid.add(store.logical_path(name))
    for name in names:
        store.unlock(name)
    assert w.stop(timeout=WAIT_S)
    emitted = collector.paths
    assert sorted(emitted) == sorted(store.logical_path(n) for n in names)
    assert len(emitted) == len(set(emitted))
    if w.stats.overflows == 0:  # without overflow, event order is lock-deletion order
        assert emitted == [store.logical_path(n) for n in names]
    assert all(len(call) <= 1000 for call in nix.calls)
    assert len(nix.calls) <= 11
    assert w.stats.emitted == 5000


def test_physical_store_dir_is_reported_with_logical_paths(
    tmp_path: Path, nix: FakeNix, collector: Collector
) -> None:
    chroot = tmp_path / "chroot"
    physical = chroot / "nix" / "store"
    physical.mkdir(parents=True)
    fake = StoreDir(physical, nix, logical="/nix/store")
    w = StoreWatcher(
        store_dir=physical, logical_store_dir="/nix/store/", is_valid=nix, on_paths=collector
    )
    w.start()
    name = base("in-chroot")
    fake.add(name)
    assert w.stop(timeout=WAIT_S)
    assert collector.paths == [f"/nix/store/{name}"]
    assert nix.calls == [[f"/nix/store/{name}"]]


def test_rescan_emits_new_valid_entries_missed_by_events_once(
    store: StoreDir, collector: Collector
) -> None:
    old = store.add(base("before-start"), lock=False)
    w = StoreWatcher(store_dir=store.dir, is_valid=store.nix, on_paths=collector)
    w.start()
    seen = store.add(base("seen"))
    assert collector.wait_for({seen})
    missed = store.add(base("substituted-by-daemon"), lock=False)
    store.add(base("half-built"), valid=False, lock=False)
    store.add(f"{store_hash()}-x.drv", lock=False)
    assert w.stop(timeout=WAIT_S)
    assert w.rescan() == [missed]
    assert w.rescan() == []
    assert old not in collector.paths
    assert collector.paths == [seen, missed]
    assert w.stats.rescans == 2


def test_watch_removed_with_the_directory_is_recorded_as_an_error(
    store: StoreDir, collector: Collector, watcher: StoreWatcher
) -> None:
    shutil.rmtree(store.dir)
    assert watcher.stop(timeout=WAIT_S)
    assert watcher.stats.errors == 1
    assert "was removed" in (watcher.stats.last_error or "")
    assert not watcher.stats.crashed


@pytest.mark.parametrize(
    "existing", [pytest.param(False, id="missing"), pytest.param(True, id="not-a-directory")]
)
def test_start_fails_with_a_store_error_when_the_store_cannot_be_watched(
    tmp_path: Path, nix: FakeNix, collector: Collector, existing: bool
) -> None:
    directory = tmp_path / "store"
    if existing:
        directory.touch()
    w = StoreWatcher(store_dir=directory, is_valid=nix, on_paths=collector)
    with pytest.raises(StoreError, match="Cannot watch the Nix store directory"):
        w.start()
    assert w.stop() is True


# --- lifecycle ----------------------------------------------------------------------------------


def test_stop_is_prompt_and_idempotent(store: StoreDir, collector: Collector) -> None:
    # With an hour-long idle wait only the wakeup pipe can end the thread within WAIT_S.
    w = StoreWatcher(store_dir=store.dir, is_valid=store.nix, on_paths=collector, idle_wait_s=3600)
    w.start()
    assert w.stop(timeout=WAIT_S) is True
    assert w.stop(timeout=WAIT_S) is True
    assert w.stats.errors == 0


def test_stop_before_start_is_a_no_op(store: StoreDir, collector: Collector) -> None:
    w = StoreWatcher(store_dir=store.dir, is_valid=store.nix, on_paths=collector)
    assert w.stop() is True


def test_start_twice_is_refused(watcher: StoreWatcher) -> None:
    with pytest.raises(RuntimeError, match="called twice"):
        watcher.start()


def test_stop_processes_events_still_pending(store: StoreDir, collector: Collector) -> None:
    w = StoreWatcher(
        store_dir=store.dir, is_valid=store.nix, on_paths=collector, batch_delay_s=3600
    )
    w.start()
    paths = [store.add(base(f"late{i}")) for i in range(3)]
    assert w.stop(timeout=WAIT_S)
    assert collector.paths == paths


def test_stop_does_not_hang_on_a_stuck_validity_check(
    store: StoreDir, nix: FakeNix, collector: Collector
) -> None:
    w = StoreWatcher(store_dir=store.dir, is_valid=nix, on_paths=collector, batch_delay_s=0)
    w.start()
    nix.release.clear()
    path = store.add(base("stuck"))
    try:
        assert w.stop(timeout=0.2) is False
        assert "did not stop" in (w.stats.last_error or "")
    finally:
        nix.release.set()
    assert w.stop(timeout=WAIT_S) is True
    assert collector.paths == [path]


# --- injected events: overflow and failures -----------------------------------------------------


def test_queue_overflow_rescans_against_the_start_snapshot(
    store: StoreDir, collector: Collector
) -> None:
    store.add(base("before-start"), lock=False)
    w, source = scripted_watcher(store, collector)
    announced = store.add(base("announced"), lock=False)
    lost = [store.add(base(f"lost{i}"), lock=False) for i in range(3)]
    store.add(base("building"), valid=False, lock=False)
    store.add(f"{store_hash()}-x.drv", lock=False)
    source.feed(lock_deleted(announced.rsplit("/", 1)[1]), StoreEvent(mask=IN_Q_OVERFLOW, name=""))
    assert w.stop(timeout=WAIT_S)
    assert collector.paths[0] == announced
    assert sorted(collector.paths[1:]) == sorted(lost)
    stats = w.stats
    assert (stats.overflows, stats.rescans, stats.emitted, stats.invalid) == (1, 1, 4, 1)
    assert source.closed


@pytest.mark.parametrize(
    ("failures", "emitted", "dropped"),
    [
        pytest.param(1, True, 0, id="fails-once-retried"),
        pytest.param(2, False, 1, id="fails-twice-dropped"),
    ],
)
def test_validity_check_errors_do_not_kill_the_watcher(
    store: StoreDir, collector: Collector, failures: int, emitted: bool, dropped: int
) -> None:
    name = base("unlucky")
    nix = FakeNix(fail_first=failures, fail_names=[name])
    store.nix = nix
    w, source = scripted_watcher(store, collector, batch_delay_s=0)
    store.add(name, lock=False)
    source.feed(lock_deleted(name))
    wait_until(lambda: len(nix.calls) >= failures)  # keep "later" out of the failing batches
    later = store.add(base("later"), lock=False)
    source.feed(lock_deleted(later.rsplit("/", 1)[1]))
    assert collector.wait_for({later})
    assert w.stop(timeout=WAIT_S)
    assert (store.logical_path(name) in collector.paths) is emitted
    assert w.stats.errors == failures
    assert w.stats.dropped == dropped
    assert not w.stats.crashed


@pytest.mark.parametrize(
    ("failures", "delivered"),
    [
        pytest.param(1, True, id="fails-once-redelivered"),
        pytest.param(2, False, id="fails-twice-left-to-rescan"),
    ],
)
def test_on_paths_errors_do_not_kill_the_watcher(
    store: StoreDir, failures: int, delivered: bool
) -> None:
    collector = Collector(fail_first=failures)
    w, source = scripted_watcher(store, collector, batch_delay_s=0)
    name = base("undeliverable")
    path = store.add(name, lock=False)
    source.feed(lock_deleted(name))
    assert w.stop(timeout=WAIT_S)
    assert collector.paths == ([path] if delivered else [])
    assert w.stats.errors == failures
    assert not w.stats.crashed
    assert w.rescan() == ([] if delivered else [path])


def test_event_source_failure_is_recorded_not_silent(store: StoreDir, collector: Collector) -> None:
    def factory(directory: Path) -> EventSource:
        return ScriptedSource(directory, read_error=OSError(9, "Bad file descriptor"))

    w = StoreWatcher(
        store_dir=store.dir, is_valid=store.nix, on_paths=collector, event_source=factory
    )
    w.start()
    assert w.stop(timeout=WAIT_S)
    stats = w.stats
    assert stats.crashed
    assert stats.errors == 1
    assert "Bad file descriptor" in (stats.last_error or "")
    missed = store.add(base("after-crash"), lock=False)
    assert w.rescan() == [missed]


def test_inotify_source_reports_overflow_mask_and_wakes(tmp_path: Path) -> None:
    source = InotifyEventSource(tmp_path)
    try:
        (tmp_path / "a.lock").touch()
        (tmp_path / "a.lock").unlink()
        (tmp_path / "d").mkdir()
        (tmp_path / "d").rmdir()
        events: list[StoreEvent] = []
        while len(events) < 2:
            events += source.read(WAIT_S)
        assert events == [
            StoreEvent(mask=IN_DELETE, name="a.lock"),
            StoreEvent(mask=IN_DELETE | IN_ISDIR, name="d"),
        ]
        results: list[list[StoreEvent]] = []
        reader = threading.Thread(target=lambda: results.append(source.read(3600)), daemon=True)
        reader.start()
        source.wake()  # from another thread, as stop() does: the hour-long read must end now
        reader.join(WAIT_S)
        assert not reader.is_alive()
        assert results == [[]]
    finally:
        source.close()
        source.close()
        source.wake()


# --- real Nix against the real /nix/store -------------------------------------------------------


@pytest.fixture
def nixenv(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nixenv")


class StoreValidity:
    """is_valid via `nix-store --check-validity --print-invalid`, as NixStore.valid does."""

    def __init__(self, nix: NixEnv) -> None:
        self.nix = nix

    def __call__(self, paths: Sequence[str]) -> set[str]:
        argv = ["nix-store", "--check-validity", "--print-invalid", *paths]
        invalid = self.nix.run(argv).stdout.decode().split()
        return set(paths) - set(invalid)


@pytest.fixture
def real_watcher(nixenv: NixEnv, collector: Collector) -> Iterator[StoreWatcher]:
    w = StoreWatcher(
        store_dir=Path("/nix/store"), is_valid=StoreValidity(nixenv), on_paths=collector
    )
    w.start()
    yield w
    assert w.stop(timeout=WAIT_S)


def build_chain(directory: Path, nix: NixEnv, *, fail_last: bool) -> tuple[list[str], int, float]:
    """Realise d0 <- d1 <- d2 (1 s each); returns (their output paths, exit code, end time)."""
    derivs = write_derivations(
        directory, count=3, chain=True, sleep_s=1, fail=[2] if fail_last else [], prefix="watch"
    )
    outs = derivs.out_paths(nix)
    proc = nix.run(["nix-build", "--no-out-link", str(derivs.file), "-A", "d2"], check=False)
    return [outs[a] for a in derivs.attrs], proc.returncode, time.monotonic()


@pytest.mark.nix
@pytest.mark.slow
def test_real_build_chain_emits_each_output_during_the_build_in_dependency_order(
    tmp_path: Path, nixenv: NixEnv, collector: Collector, real_watcher: StoreWatcher
) -> None:
    outs, code, build_end = build_chain(tmp_path, nixenv, fail_last=False)
    assert code == 0
    assert real_watcher.stop(timeout=WAIT_S)
    assert [p for p in collector.paths if p in outs] == outs
    # The first two are handed over while later steps still build (the upload hides behind
    # the build); the last one ends the build, so there is nothing left to overlap with.
    assert all(collector.times[p] < build_end for p in outs[:2])
    assert not real_watcher.stats.crashed


@pytest.mark.nix
@pytest.mark.slow
def test_real_build_failing_halfway_emits_finished_outputs_only(
    tmp_path: Path, nixenv: NixEnv, collector: Collector, real_watcher: StoreWatcher
) -> None:
    outs, code, _ = build_chain(tmp_path, nixenv, fail_last=True)
    assert code != 0
    assert real_watcher.stop(timeout=WAIT_S)
    assert Path(f"{outs[2]}.lock").exists()  # the stale lock a failed Nix build leaves
    assert [p for p in collector.paths if p in outs] == outs[:2]
    assert outs[2] not in real_watcher.rescan()


@pytest.mark.nix
def test_real_nix_store_add_is_emitted(
    tmp_path: Path, nixenv: NixEnv, collector: Collector, real_watcher: StoreWatcher
) -> None:
    file = tmp_path / f"nixjob-watch-{uuid.uuid4().hex}.txt"
    file.write_text(uuid.uuid4().hex)
    added = nixenv.text(["nix-store", "--add", str(file)])
    assert collector.wait_for({added})
    assert real_watcher.stop(timeout=WAIT_S)
    assert collector.paths.count(added) == 1


# --- the sweep from the store's database -----------------------------------------------------


class Registrations:
    """registered_since double: registration times of logical paths, or no answer at all."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.answers = True
        self.calls: list[float] = []

    def add(self, path: str, at: float) -> None:
        self.times[path] = at

    def __call__(self, since: float) -> list[str] | None:
        self.calls.append(since)
        if not self.answers:
            return None
        return [p for p, t in self.times.items() if int(t) >= since]


def test_the_sweep_asks_the_database_and_skips_what_the_start_second_held(
    store: StoreDir, collector: Collector
) -> None:
    registrations = Registrations()
    now = time.time()
    earlier = store.add(base("registered-just-before"), lock=False)
    registrations.add(earlier, now)  # the same second as the start, but before it
    w = StoreWatcher(
        store_dir=store.dir, is_valid=store.nix, on_paths=collector, registered_since=registrations
    )
    w.start()
    missed = store.add(base("events-lost"), lock=False)
    registrations.add(missed, now + 1)
    assert w.stop(timeout=WAIT_S)
    assert w.rescan() == [missed]
    assert earlier not in collector.paths
    assert registrations.calls == [float(int(registrations.calls[0]))] * 2


def test_without_an_answer_the_sweep_takes_entries_changed_since_the_start(
    store: StoreDir, collector: Collector
) -> None:
    registrations = Registrations()
    registrations.answers = False
    old = store.add(base("old"), lock=False)
    time.sleep(1.1)  # ctime has whole-second comparisons here
    w = StoreWatcher(
        store_dir=store.dir, is_valid=store.nix, on_paths=collector, registered_since=registrations
    )
    w.start()
    missed = store.add(base("new"), lock=False)
    assert w.stop(timeout=WAIT_S)
    assert w.rescan() == [missed]
    assert old not in collector.paths


@pytest.mark.nix
def test_a_real_store_s_database_finds_what_the_events_missed(tmp_path: Path) -> None:
    require_nix()
    nix = NixEnv.create(tmp_path / "nix")
    before = write_derivations(tmp_path / "before", count=1).build(nix, "d0")[0]
    store = NixStore(nix.env())
    assert store.reads_database
    collector = Collector()
    w = StoreWatcher(
        store_dir=Path("/nix/store"),
        is_valid=store.valid,
        on_paths=collector,
        event_source=ScriptedSource,  # fed nothing: every event is lost
        registered_since=store.registered_since,
    )
    w.start()
    built = write_derivations(tmp_path / "during", count=2, chain=True).build(nix)
    assert w.stop(timeout=WAIT_S)
    swept = w.rescan()
    assert set(built) <= set(swept)
    assert before not in swept
