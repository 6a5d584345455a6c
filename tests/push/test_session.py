"""uploader: planning, filters, dedupe, retries, auth stop and the drain deadline.

Unit tests run a real ``PushSession`` (its threads) against an in-memory store and Attic and
an injected clock; ``nix``-marked tests push real Nix builds to the Attic double over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nix_job.cache.answers import AtticUnavailableError
from nix_job.cache.attic import AtticClient
from nix_job.core.errors import AtticApiError, AtticAuthError, StoreError
from nix_job.core.secret import Secret
from nix_job.nix.store import NixStore
from nix_job.push.command import push_once
from nix_job.push.exclude import ExcludeMatcher
from nix_job.push.report import FAILURE_SAMPLE, PushReport, PushStats, ThrottleStats
from nix_job.push.retry import RetryPolicy
from nix_job.push.session import PushSession
from tests.attic_double.server import AtticDouble
from tests.attic_double.state import Faults
from tests.fakes.attic import FakeAttic
from tests.fakes.clock import FakeClock
from tests.fakes.store import FakeStore
from tests.nixenv import NixEnv, require_nix, write_derivations

S = "/nix/store/"
NO_WAIT = RetryPolicy(attempts=3, initial_wait_s=0, max_wait_s=0, jitter_s=0)


def sp(n: int, name: str) -> str:
    """A well-formed store path with a distinct hash per ``n``."""
    digits = "0123456789abcdfghijklmnpqrsvwxyz"
    return S + (digits[n % 32] + digits[n // 32 % 32]) * 16 + "-" + name


def session(store: FakeStore, attic: FakeAttic, **kwargs: object) -> PushSession:
    options: dict[str, object] = {
        "upstream_key_names": ("cache.nixos.org-1",),
        "jobs": 3,
        "retry": NO_WAIT,
        "sleep": lambda _s: None,
        "idle_s": 0.05,
        "clock": time.monotonic,  # real batching windows; deadline tests pass a FakeClock
    }
    options.update(kwargs)
    return PushSession(store=store, client=attic, **options)  # type: ignore[arg-type]


def run(
    store: FakeStore, attic: FakeAttic, paths: list[str], origin: str = "watch", **kwargs: object
) -> PushReport:
    with session(store, attic, **kwargs) as s:
        s.queue(paths, origin)  # type: ignore[arg-type]
        return s.drain(60)


@pytest.fixture
def chain() -> tuple[FakeStore, list[str]]:
    """leaf <- mid <- top, 100/200/300 bytes."""
    store = FakeStore()
    leaf = store.add(sp(1, "leaf"), size=100)
    mid = store.add(sp(2, "mid"), leaf, size=200)
    top = store.add(sp(3, "top"), mid, size=300)
    return store, [leaf, mid, top]


# --- planning --------------------------------------------------------------------------------


def test_the_whole_closure_of_a_queued_path_is_uploaded(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, (leaf, mid, top) = chain
    attic = FakeAttic()
    report = run(store, attic, [top])
    assert sorted(attic.uploads) == sorted([leaf, mid, top])
    assert report.pushed_watch.paths == 3
    assert report.pushed_watch.bytes == 600
    assert report.pushed_final.paths == 0
    assert report.complete
    assert attic.upload_bytes[top] == store.nars[top]


@pytest.mark.parametrize(
    ("setup", "uploaded", "field_name", "count"),
    [
        pytest.param(
            lambda store, attic, p: attic.have.add(p[0][len(S) : len(S) + 32]),
            [1, 2],
            "already_cached",
            1,
            id="already-cached-on-server",
        ),
        pytest.param(
            lambda store, attic, p: store.sigs.__setitem__(p[1], ("cache.nixos.org-1:c2ln",)),
            [0, 2],
            "upstream",
            1,
            id="upstream-signed-skipped-but-its-deps-pushed",
        ),
        pytest.param(
            lambda store, attic, p: store.sigs.__setitem__(p[1], ("my-own-key:c2ln",)),
            [0, 1, 2],
            "upstream",
            0,
            id="signed-by-another-key-pushed",
        ),
    ],
)
def test_paths_the_cache_has_or_upstream_serves_are_not_uploaded(
    chain: tuple[FakeStore, list[str]],
    setup: object,
    uploaded: list[int],
    field_name: str,
    count: int,
) -> None:
    store, paths = chain
    attic = FakeAttic()
    setup(store, attic, paths)  # type: ignore[operator]
    report = run(store, attic, [paths[2]])
    assert sorted(attic.uploads) == sorted(paths[i] for i in uploaded)
    assert getattr(report, field_name).paths == count


def test_the_exclude_pattern_matches_full_store_paths(chain: tuple[FakeStore, list[str]]) -> None:
    store, (leaf, _mid, top) = chain
    attic = FakeAttic()
    report = run(store, attic, [top], exclude=ExcludeMatcher(r"^/nix/store/[^-]+-mid$"))
    assert sorted(attic.uploads) == sorted([leaf, top])
    assert report.excluded.paths == 1
    assert report.excluded.bytes == 200


def test_paths_known_to_the_session_are_not_planned_again(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, (leaf, mid, top) = chain
    attic = FakeAttic(have={leaf[len(S) : len(S) + 32]})
    with session(store, attic) as s:
        s.queue([top])
        assert s.wait_idle(60)
        s.queue([top, mid])
        assert s.wait_idle(60)
        s.queue([leaf, top], "final")
        report = s.drain(60)
    assert sorted(attic.uploads) == sorted([mid, top])
    assert len(attic.missing_calls) == 1  # later batches found everything already known
    assert report.pushed.paths == 2
    assert report.already_cached == PushStats(paths=1, bytes=100)


def test_paths_queued_together_are_planned_in_one_batch(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, paths = chain
    attic = FakeAttic()
    with session(store, attic, idle_s=0.5) as s:
        for p in paths:
            s.queue([p])
        report = s.drain(60)
    assert len(attic.missing_calls) == 1
    assert report.pushed.paths == 3


def test_final_paths_count_as_final_and_watch_paths_as_watch(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, (leaf, mid, top) = chain
    attic = FakeAttic()
    with session(store, attic) as s:
        s.queue([leaf], "watch")
        assert s.wait_idle(60)
        s.queue([top], "final")
        report = s.drain(60)
    assert report.pushed_watch == PushStats(paths=1, bytes=100)
    assert report.pushed_final == PushStats(paths=2, bytes=500)
    origins = {c.path: c.origin for c in report.completions}
    assert origins == {leaf: "watch", mid: "final", top: "final"}


def test_completions_record_queue_and_upload_times(chain: tuple[FakeStore, list[str]]) -> None:
    store, (_, _, top) = chain
    report = run(store, FakeAttic(), [top], clock=FakeClock(now=1000.0, step=1.0))
    assert len(report.completions) == 3
    for completion in report.completions:
        assert completion.completed_at > completion.queued_at
        assert completion.nar_size > 0


def test_collected_roots_are_skipped_not_failed(chain: tuple[FakeStore, list[str]]) -> None:
    store, (leaf, _, _) = chain
    gone = store.add(sp(9, "gone"))
    store.collected.add(gone)
    report = run(store, FakeAttic(), [gone, leaf])
    assert report.vanished == 1
    assert report.failed.paths == 0
    assert report.pushed.paths == 1


# --- failures, retries, errors --------------------------------------------------------------


def test_transient_errors_are_retried_until_the_upload_succeeds(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, (leaf, _, _) = chain
    attic = FakeAttic(
        fail_upload={leaf: [AtticUnavailableError("HTTP 500"), AtticUnavailableError("reset")]}
    )
    sleeps: list[float] = []
    report = run(store, attic, [leaf], sleep=sleeps.append)
    assert attic.uploads == [leaf, leaf, leaf]
    assert len(sleeps) == 2
    assert report.pushed.paths == 1
    assert report.failed.paths == 0


def test_retries_stop_after_the_attempt_limit(chain: tuple[FakeStore, list[str]]) -> None:
    store, (leaf, _, _) = chain
    attic = FakeAttic(fail_upload={leaf: [AtticUnavailableError("HTTP 503")] * 5})
    report = run(store, attic, [leaf])
    assert attic.uploads == [leaf] * NO_WAIT.attempts
    assert report.failed.paths == 1
    assert report.failures[0].path == leaf
    assert "HTTP 503" in report.failures[0].reason


def test_client_errors_are_never_retried_and_not_remembered_as_done(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, (leaf, _, _) = chain
    attic = FakeAttic(fail_upload={leaf: [AtticApiError("Bad NAR Hash or Size", status=400)]})
    with session(store, attic) as s:
        s.queue([leaf])
        assert s.wait_idle(60)
        s.queue([leaf], "final")
        report = s.drain(60)
    assert attic.uploads.count(leaf) == 2  # once failed (no retry), once more when queued again
    # The report tells how things ended: the path is in the cache, so it is not a failure.
    assert report.failed.paths == 0
    assert report.failures == ()
    assert report.pushed.paths == 1


def test_a_path_that_keeps_failing_is_one_failure_with_its_reason(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, (leaf, _, _) = chain
    errors: list[Exception] = [AtticApiError("Bad NAR Hash or Size", status=400) for _ in range(2)]
    attic = FakeAttic(fail_upload={leaf: errors})
    with session(store, attic) as s:
        s.queue([leaf])
        assert s.wait_idle(60)
        s.queue([leaf], "final")
        report = s.drain(60)
    assert attic.uploads.count(leaf) == 2
    assert report.failed.paths == 1
    assert report.failures[0].path == leaf
    assert "Bad NAR Hash" in report.failures[0].reason


def test_a_path_collected_before_its_upload_is_skipped(chain: tuple[FakeStore, list[str]]) -> None:
    store, (leaf, _, _) = chain
    store.collect_on_dump.add(leaf)
    report = run(store, FakeAttic(), [leaf])
    assert report.vanished == 1
    assert report.failed.paths == 0


def test_a_dump_failure_of_a_valid_path_is_a_failure(chain: tuple[FakeStore, list[str]]) -> None:
    store, (leaf, _, _) = chain
    store.broken_dumps.add(leaf)
    report = run(store, FakeAttic(), [leaf])
    assert report.failed.paths == 1
    assert "nix-store --dump" in report.failures[0].reason


def _server_errors_on_get_missing_paths(store: FakeStore, attic: FakeAttic) -> None:
    attic.fail_missing.extend([AtticUnavailableError("HTTP 502")] * 3)


def _nix_fails_on_closure(store: FakeStore, attic: FakeAttic) -> None:
    store.closure_error = StoreError("database is locked")


#: Ways to make a batch's planning fail.
BROKEN_PLANNING = pytest.mark.parametrize(
    "break_planning",
    [_server_errors_on_get_missing_paths, _nix_fails_on_closure],
    ids=lambda breaker: breaker.__name__.strip("_").replace("_", "-"),
)


@BROKEN_PLANNING
def test_a_failed_batch_does_not_stop_the_session(
    chain: tuple[FakeStore, list[str]], break_planning: Callable[[FakeStore, FakeAttic], None]
) -> None:
    store, (leaf, mid, top) = chain
    attic = FakeAttic()
    with session(store, attic) as s:
        break_planning(store, attic)
        s.queue([leaf], "final")
        assert s.wait_idle(60)
        store.closure_error = None
        s.queue([top], "final")
        report = s.drain(60)
    # leaf failed in the broken batch, then went up with top's closure: not a failure at the end.
    assert report.failed.paths == 0
    assert sorted(attic.uploads) == sorted([leaf, mid, top])


@BROKEN_PLANNING
def test_a_failed_batch_is_reported_with_its_reason(
    chain: tuple[FakeStore, list[str]], break_planning: Callable[[FakeStore, FakeAttic], None]
) -> None:
    store, (leaf, _, _) = chain
    attic = FakeAttic()
    with session(store, attic) as s:
        break_planning(store, attic)
        s.queue([leaf], "final")
        report = s.drain(60)
    assert report.failed.paths == 1
    assert report.failures[0].path == leaf
    assert "planning failed" in report.failures[0].reason
    assert attic.uploads == []


def test_an_auth_error_stops_uploads_and_is_reported_once() -> None:
    store = FakeStore()
    paths = [store.add(sp(n, f"p{n}")) for n in range(30)]
    refused = AtticAuthError("Attic answered 401: check the token", status=401)
    attic = FakeAttic(fail_upload={p: [refused] for p in paths})
    report = run(store, attic, paths, jobs=2)
    assert report.auth_error == "Attic answered 401: check the token"
    assert len(report.failures) == 1
    assert report.failed.paths == 30
    assert len(attic.uploads) <= 2 + 2  # the first refusals in flight, then no more


def test_an_auth_error_while_planning_uploads_nothing(chain: tuple[FakeStore, list[str]]) -> None:
    store, (_, _, top) = chain
    attic = FakeAttic(fail_missing=[AtticAuthError("403: token lacks 'w'", status=403)])
    report = run(store, attic, [top])
    assert attic.uploads == []
    assert report.auth_error == "403: token lacks 'w'"
    assert not report.complete


def test_the_failure_sample_is_bounded_but_every_failure_counted() -> None:
    store = FakeStore()
    paths = [store.add(sp(n, f"p{n}")) for n in range(FAILURE_SAMPLE + 10)]
    attic = FakeAttic(fail_upload={p: [AtticApiError("HTTP 400", status=400)] for p in paths})
    report = run(store, attic, paths)
    assert report.failed.paths == FAILURE_SAMPLE + 10
    assert len(report.failures) == FAILURE_SAMPLE


def test_uploads_run_at_most_jobs_at_a_time() -> None:
    store = FakeStore()
    paths = [store.add(sp(n, f"p{n}")) for n in range(12)]
    attic = FakeAttic()
    report = run(store, attic, paths, jobs=2)
    assert report.pushed.paths == 12
    assert attic.max_concurrent <= 2


# --- drain -----------------------------------------------------------------------------------


def test_drain_with_nothing_queued_reports_nothing() -> None:
    report = run(FakeStore(), FakeAttic(), [])
    assert report == PushReport(
        drain_seconds=report.drain_seconds,
        throttle=ThrottleStats(jobs=3, lowest_concurrency=3),
    )
    assert report.complete
    assert not report.throttle.slowed


def test_drain_gives_up_at_the_deadline_and_reports_what_is_left(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, (leaf, mid, top) = chain
    attic = FakeAttic(block=threading.Event())
    try:
        s = session(store, attic, jobs=1, clock=FakeClock(now=1000.0, step=10.0))
        s.queue([top], "final")
        assert attic.started.wait(10)
        report = s.drain(30)
        s.queue([sp(7, "late")])  # ignored after the drain
    finally:
        attic.block.set()  # type: ignore[union-attr]
    assert report.left_over.paths == 3  # one in flight, two waiting
    assert report.left_over.bytes == 600
    assert set(report.left_over_sample) == {leaf, mid, top}
    assert report.pushed.paths == 0
    assert report.drain_seconds >= 30
    assert attic.closed
    assert not report.complete


def test_push_once_pushes_as_final_and_closes_the_client(
    chain: tuple[FakeStore, list[str]],
) -> None:
    store, (_, _, top) = chain
    attic = FakeAttic()
    report = push_once(
        [top],
        store=store,
        client=attic,
        upstream_key_names=(),
        jobs=2,
        timeout_s=60,
        retry=NO_WAIT,
    )
    assert report.pushed_final.paths == 3
    assert report.pushed_watch.paths == 0
    assert attic.closed


def test_jobs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PushSession(store=FakeStore(), client=FakeAttic(), jobs=0)


# --- real Nix, real HTTP: the Attic double --------------------------------------------------------

FAST = RetryPolicy(attempts=4, initial_wait_s=0.01, max_wait_s=0.05, jitter_s=0.01)


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        d.create_cache("demo", upstream_key_names=("cache.nixos.org-1",))
        yield d


def push(
    nix: NixEnv, double: AtticDouble, paths: list[str], *, token: str | None = None
) -> PushReport:
    token = token or double.make_token({"demo": "rw"})
    client = AtticClient(endpoint=double.url, cache="demo", token=Secret(token))
    upstream = client.cache_config().upstream_cache_key_names
    return push_once(
        paths,
        store=NixStore(nix.env()),
        client=client,
        upstream_key_names=upstream,
        jobs=3,
        timeout_s=120,
        retry=FAST,
    )


@pytest.mark.nix
def test_a_built_closure_is_uploaded_and_verified(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    drvs = write_derivations(tmp_path, count=3, chain=True)
    top = drvs.build(nix, "d2")[0]
    closure = nix.text(["nix-store", "-qR", top]).split()
    assert len(closure) == 3

    report = push(nix, double, [top])

    assert report.pushed_final.paths == 3
    assert report.complete
    for path in closure:
        stored = double.get_object("demo", path)
        assert stored is not None
        assert stored.nar == nix.dump(path)
        assert set(stored.references) == {
            r.removeprefix(S) for r in nix.query("--references", path)
        }


@pytest.mark.nix
def test_a_second_push_uploads_nothing(nix: NixEnv, double: AtticDouble, tmp_path: Path) -> None:
    top = write_derivations(tmp_path, count=2, chain=True).build(nix, "d1")[0]
    push(nix, double, [top])
    double.clear_requests()

    report = push(nix, double, [top])

    assert report.pushed.paths == 0
    assert report.already_cached.paths == 2
    assert double.upload_requests() == []


@pytest.mark.nix
def test_a_path_signed_by_an_upstream_key_is_not_uploaded(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    drvs = write_derivations(tmp_path, count=2, chain=True)
    leaf, top = drvs.build(nix, "d0", "d1")
    key = tmp_path / "upstream.sec"
    nix.run(
        [
            "nix-store",
            "--generate-binary-cache-key",
            "cache.nixos.org-1",
            str(key),
            str(tmp_path / "upstream.pub"),
        ]
    )
    nix.run(["nix", "store", "sign", "--key-file", str(key), leaf])

    report = push(nix, double, [top])

    assert report.upstream.paths == 1
    assert report.pushed.paths == 1
    assert not double.has_path("demo", leaf)
    assert double.has_path("demo", top)


@pytest.mark.nix
def test_transient_server_errors_are_retried_until_the_push_succeeds(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    top = write_derivations(tmp_path, count=3, chain=True).build(nix, "d2")[0]
    double.faults = Faults(fail_first_uploads=2, upload_failure_status=500)

    report = push(nix, double, [top])

    assert report.pushed.paths == 3
    assert report.failed.paths == 0
    statuses = sorted(r.status or 0 for r in double.upload_requests())
    assert statuses == [200, 200, 200, 500, 500]


@pytest.mark.nix
def test_a_dropped_connection_mid_upload_is_retried(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    top = write_derivations(tmp_path, count=1, size=300_000).build(nix, "d0")[0]
    double.faults = Faults(fail_first_uploads=1, upload_failure="drop", drop_after_bytes=1000)

    report = push(nix, double, [top])

    assert report.pushed.paths == 1
    assert double.has_path("demo", top)


@pytest.mark.nix
def test_a_token_for_another_cache_is_one_clear_error(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    drvs = write_derivations(tmp_path, count=4)
    paths = drvs.build(nix)
    token = double.make_token({"other": "rw"})
    client = AtticClient(endpoint=double.url, cache="demo", token=Secret(token))

    report = push_once(paths, store=NixStore(nix.env()), client=client, retry=FAST)

    assert report.auth_error is not None
    assert "401" in report.auth_error
    assert token not in report.auth_error
    assert len(report.failures) == 1
    assert report.failed.paths == 4
    assert double.upload_requests() == []


# VmHWM, not getrusage's ru_maxrss: ru_maxrss survives execve, so a child forked from a big
# pytest process (the in-process double keeps every NAR) would report its parent's peak.
PEAK_RSS_SCRIPT = """
import json, re, sys
from nix_job.cache.attic import AtticClient
from nix_job.nix.store import NixStore
from nix_job.core.secret import Secret
from nix_job.push.command import push_once
args = json.loads(sys.argv[1])
client = AtticClient(endpoint=args["url"], cache="demo", token=Secret(args["token"]))
report = push_once([args["path"]], store=NixStore(args["env"]), client=client, timeout_s=600)
print(json.dumps({"pushed": report.pushed.bytes,
                  "peak_kib": int(re.search(r"VmHWM:\\s+(\\d+) kB",
                                            open("/proc/self/status").read()).group(1))}))
"""


@pytest.mark.nix
@pytest.mark.slow
def test_uploading_a_300_mib_nar_keeps_memory_bounded(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    size = 300 * 1024 * 1024
    big = write_derivations(tmp_path, count=1, size=size).build(nix, "d0")[0]
    args: dict[str, object] = {
        "url": double.url,
        "token": double.make_token({"demo": "rw"}),
        "path": big,
        "env": nix.env(),
    }
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["pushed"] > size
    assert result["peak_kib"] < 150 * 1024, f"peak RSS {result['peak_kib'] // 1024} MiB"
