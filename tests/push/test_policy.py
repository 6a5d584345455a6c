"""What gets pushed and proof that it arrived (issue 20): push-max-size, push-closure, the
reconcile after the final push, and rate limits.

Real Nix and the Attic double over HTTP, except where the in-memory store and Attic make a case
exact (a cache that loses a path between the plan and the reconcile).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_job.cache.answers import AtticUnavailableError
from nix_job.cache.attic import AtticClient
from nix_job.core.secret import Secret
from nix_job.nix.store import NixStore
from nix_job.push.command import push_once
from nix_job.push.plan import PushPolicy
from nix_job.push.publisher import Publisher
from nix_job.push.report import PushReport
from nix_job.push.retry import RetryPolicy
from nix_job.push.session import PushSession
from tests.attic_double.server import AtticDouble
from tests.attic_double.state import Faults
from tests.fakes.attic import FakeAttic
from tests.fakes.store import FakeStore
from tests.nixenv import NixEnv, require_nix

S = "/nix/store/"
ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(attempts=3, initial_wait_s=0.01, max_wait_s=0.05, jitter_s=0.01)


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        d.create_cache("demo")
        yield d


def client(double: AtticDouble, jobs: int = 3) -> AtticClient:
    token = Secret(double.make_token({"demo": "rw"}))
    return AtticClient(endpoint=double.url, cache="demo", token=token, max_connections=jobs + 1)


def push(
    nix: NixEnv,
    double: AtticDouble,
    roots: list[str],
    *,
    policy: PushPolicy | None = None,
    store: NixStore | None = None,
    jobs: int = 3,
    timeout_s: float = 120,
    retry: RetryPolicy = FAST,
) -> PushReport:
    return push_once(
        roots,
        store=store or NixStore(nix.env()),
        client=client(double, jobs),
        policy=policy,
        jobs=jobs,
        timeout_s=timeout_s,
        retry=retry,
    )


def stored(double: AtticDouble, paths: list[str]) -> set[str]:
    return {p for p in paths if double.has_path("demo", p)}


def add_file(nix: NixEnv, where: Path, size: int) -> str:
    file = where / f"blob-{uuid.uuid4().hex[:8]}"
    file.write_bytes(os.urandom(size))
    return nix.text(["nix-store", "--add", str(file)])


# --- push-max-size ------------------------------------------------------------------------------


@pytest.mark.nix
def test_a_path_above_push_max_size_is_skipped_and_reported(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    small = add_file(nix, tmp_path, 1000)
    big = add_file(nix, tmp_path, 3 * 1024 * 1024)

    report = push(nix, double, [small, big], policy=PushPolicy(max_size=1024 * 1024))

    assert stored(double, [small, big]) == {small}
    assert report.oversize.paths == 1
    assert report.oversize.bytes > 3 * 1024 * 1024
    assert report.oversize_sample == (big,)
    assert report.complete
    # Not expected in the cache, so not counted against the outputs.
    assert report.verification is not None
    assert (report.verification.outputs, report.verification.outputs_present) == (1, 1)


@pytest.mark.nix
def test_a_large_path_is_skipped_while_watching_too(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    session = PushSession(
        store=NixStore(nix.env()),
        client=client(double),
        policy=PushPolicy(max_size=4096),
        retry=FAST,
        idle_s=0.01,
    )
    with session:
        small = add_file(nix, tmp_path, 100)
        big = add_file(nix, tmp_path, 10_000)
        session.queue([small, big], origin="watch")
        report = session.drain(60)
    assert stored(double, [small, big]) == {small}
    assert report.oversize_sample == (big,)


# --- push-closure -------------------------------------------------------------------------------


def app_with_build_inputs(nix: NixEnv, where: Path) -> dict[str, str]:
    """``app`` refers at run time to ``lib``; its build also reads ``tool`` (built), ``fetched``
    (a fixed-output derivation, as fetchurl makes) and ``src`` (a source file), none of which
    its output refers to. Built; returns every name's store path."""
    tag = uuid.uuid4().hex[:12]
    fetched_text = f"fetched-{tag}"
    digest = hashlib.sha256(fetched_text.encode()).hexdigest()
    (where / f"src-{tag}.txt").write_text(f"source {tag}\n")
    expr = where / f"app-{tag}.nix"
    expr.write_text(
        f"""
      let
        mk = name: attrs: builtins.derivation ({{
          inherit name; system = builtins.currentSystem; builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
        }} // attrs);
        src = ./src-{tag}.txt;
        fetched = mk "fetched-{tag}" {{
          args = [ "-c" "printf {fetched_text} > $out" ];
          outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "{digest}";
        }};
        tool = mk "tool-{tag}" {{ args = [ "-c" "echo tool > $out" ]; }};
        lib = mk "lib-{tag}" {{ args = [ "-c" "echo lib > $out" ]; }};
        app = mk "app-{tag}" {{
          args = [ "-c" "cat ${{tool}} ${{fetched}} ${{src}} > /dev/null; echo ${{lib}} > $out" ];
        }};
      in {{ inherit app lib tool fetched; src = "${{src}}"; }}
    """
    )
    names = ("app", "lib", "tool", "fetched")
    built = dict(zip(names, nix.build(expr, *names), strict=True))
    src = nix.text(["nix-instantiate", "--eval", "--read-write-mode", "-A", "src", str(expr)])
    built["src"] = src.strip('"')
    assert nix.query("--references", built["app"]) == [built["lib"]]
    return built


@pytest.mark.nix
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param("runtime", {"app", "lib"}, id="runtime"),
        pytest.param("build", {"app", "lib", "tool", "fetched", "src"}, id="build"),
        pytest.param("outputs", {"app"}, id="outputs"),
    ],
)
@pytest.mark.parametrize("read_db", [True, False], ids=["database", "nix-cli"])
def test_each_closure_mode_pushes_exactly_its_set(  # noqa: PLR0917 - pytest passes these
    nix: NixEnv,
    double: AtticDouble,
    tmp_path: Path,
    mode: str,
    expected: set[str],
    read_db: bool,
) -> None:
    paths = app_with_build_inputs(nix, tmp_path)

    report = push(
        nix,
        double,
        [paths["app"]],
        policy=PushPolicy(closure=mode),  # type: ignore[arg-type]
        store=NixStore(nix.env(), read_db=read_db),
    )

    uploaded = {o.store_path for o in double.objects("demo")}
    assert uploaded == {paths[name] for name in expected}
    assert not any(p.endswith(".drv") for p in uploaded)
    assert report.closure_mode == mode
    assert report.without_derivation == 0
    assert report.verification is not None
    assert report.verification.paths_present == report.verification.paths == len(expected)


@pytest.mark.nix
def test_build_mode_says_when_an_output_has_no_derivation_in_the_store(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    added = add_file(nix, tmp_path, 100)  # nix-store --add: no deriver

    report = push(nix, double, [added], policy=PushPolicy(closure="build"))

    assert stored(double, [added]) == {added}
    assert report.without_derivation == 1


@pytest.mark.nix
def test_outputs_mode_uploads_nothing_while_the_build_runs(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    publisher = Publisher(
        client=client(double),
        store=NixStore(nix.env()),
        upstream_key_names=(),
        exclude=None,
        jobs=3,
        cancel_grace_s=5,
        policy=PushPolicy(closure="outputs"),
    )
    publisher.start()
    try:
        paths = app_with_build_inputs(nix, tmp_path)
        time.sleep(1.0)  # what a watcher would have needed to upload during the build
        assert double.upload_requests() == []
        outcome = publisher.finish(roots=[paths["app"]], timeout_s=60, cancelled=lambda: False)
    finally:
        publisher.close()
    assert {o.store_path for o in double.objects("demo")} == {paths["app"]}
    assert outcome.report.pushed_watch.paths == 0


# --- the reconcile ------------------------------------------------------------------------------


@pytest.mark.nix
def test_an_output_valid_before_the_run_is_reconciled_and_uploaded(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    warm = app_with_build_inputs(nix, tmp_path)  # built before the watcher starts
    publisher = Publisher(
        client=client(double),
        store=NixStore(nix.env()),
        upstream_key_names=(),
        exclude=None,
        jobs=3,
        cancel_grace_s=5,
    )
    publisher.start()
    try:
        outcome = publisher.finish(roots=[warm["app"]], timeout_s=60, cancelled=lambda: False)
    finally:
        publisher.close()
    report = outcome.report
    assert stored(double, [warm["app"], warm["lib"]]) == {warm["app"], warm["lib"]}
    assert report.pushed_watch.paths == 0
    assert report.verification is not None
    assert report.verification.checked
    assert (report.verification.outputs, report.verification.outputs_present) == (1, 1)
    assert report.verification.missing_sample == ()


def test_a_path_the_cache_lost_after_the_plan_is_pushed_again() -> None:
    store, attic = FakeStore(), FakeAttic()
    lib = store.add(S + "l" * 32 + "-lib")
    app = store.add(S + "a" * 32 + "-app", lib)
    attic.have.add("l" * 32)  # the cache holds lib when the batch is planned
    session = PushSession(store=store, client=attic, retry=FAST, sleep=lambda _s: None)
    with session:
        session.queue([app], origin="final")
        assert session.wait_idle(30)
        assert attic.uploads == [app]
        attic.have.discard("l" * 32)  # … and loses it before the reconcile (GC, a failed disk)
        verification = session.verify([app], 30)
        session.drain(30)
    assert attic.uploads == [app, lib]
    assert verification.repushed == 1
    assert (verification.paths, verification.paths_present) == (2, 2)
    # The plan, the reconcile, the re-pushed path's own batch, and the check after it.
    assert [len(call) for call in attic.missing_calls] == [2, 2, 1, 1]


def test_an_output_that_cannot_be_pushed_is_named_as_missing() -> None:
    store, attic = FakeStore(), FakeAttic()
    app = store.add(S + "a" * 32 + "-app")
    store.broken_dumps.add(app)
    session = PushSession(store=store, client=attic, retry=FAST, sleep=lambda _s: None)
    with session:
        session.queue([app], origin="final")
        assert session.wait_idle(30)
        verification = session.verify([app], 30)
        report = session.drain(30)
    assert verification.checked
    assert verification.outputs_missing == 1
    assert verification.missing_sample == (app,)
    assert report.failed.paths == 1


def test_a_reconcile_the_server_cannot_answer_says_so() -> None:
    store, attic = FakeStore(), FakeAttic()
    app = store.add(S + "a" * 32 + "-app")
    session = PushSession(store=store, client=attic, retry=FAST, sleep=lambda _s: None)
    with session:
        session.queue([app], origin="final")
        assert session.wait_idle(30)
        attic.fail_missing.extend([AtticUnavailableError("HTTP 502", status=502)] * 3)
        verification = session.verify([app], 30)
        session.drain(30)
    assert not verification.checked
    assert verification.reason is not None
    assert "502" in verification.reason
    assert verification.outputs_missing == 0  # unknown is not "missing"


# --- rate limits --------------------------------------------------------------------------------


@pytest.mark.nix
def test_retry_after_on_429_is_honoured_and_every_path_arrives(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    paths = [add_file(nix, tmp_path, 5000) for _ in range(6)]
    double.faults = Faults(fail_first_uploads=4, upload_failure_status=429, retry_after="1")
    started = time.monotonic()

    report = push(nix, double, paths, jobs=3, retry=RetryPolicy(attempts=2, total_s=60))

    assert stored(double, paths) == set(paths)
    assert report.complete
    assert report.throttle.throttled == 4
    assert report.throttle.lowest_concurrency < 3
    assert report.throttle.waited_s >= 4.0
    assert time.monotonic() - started < 30
    # Each path answered 429 came back no sooner than the server asked.
    uploads = [r for r in double.upload_requests() if r.status in (200, 429)]
    for rejected in (r for r in uploads if r.status == 429):
        path = rejected.metadata["store_path"] if rejected.metadata else None
        later = [
            r
            for r in uploads
            if r.metadata
            and r.metadata["store_path"] == path
            and r.started_mono > rejected.ended_mono
        ]
        assert later, f"{path} was never sent again"
        assert later[0].started_mono - rejected.ended_mono >= 1.0


@pytest.mark.nix
def test_a_long_retry_after_never_stretches_the_drain_deadline(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    paths = [add_file(nix, tmp_path, 2000) for _ in range(3)]
    double.faults = Faults(fail_first_uploads=100, upload_failure_status=503, retry_after="120")
    started = time.monotonic()

    report = push(nix, double, paths, timeout_s=3, retry=RetryPolicy(total_s=600))

    assert time.monotonic() - started < 8
    assert report.left_over.paths == 3
    # The first 503 halves the concurrency, so not every path gets a request of its own.
    assert report.throttle.throttled >= 1
    # Only the time really spent waiting counts: the 120 s asked for were cut at the deadline.
    assert report.throttle.waited_s < 6
    assert stored(double, paths) == set()


# --- the options through `nix-job run` ----------------------------------------------------------


@pytest.mark.nix
def test_nix_job_run_takes_the_push_policy_flags(
    nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    """The CLI process end to end: --push-max-size and --push-closure reach the push, and the
    summary file shows what was skipped and what was verified."""
    work = tmp_path / "work"
    work.mkdir()
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(os.urandom(2000))
    big.write_bytes(os.urandom(200_000))
    summary = tmp_path / "summary.md"
    script = (
        f'ln -s "$(nix-store --add {small})" result\nln -s "$(nix-store --add {big})" result-big\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            str(ROOT / "runtime" / "start.py"),
            "run",
            "--publish",
            "--push-cache",
            "true",
            "--push-max-size",
            "100K",
            "--push-closure",
            "outputs",
            "--nix-installer",
            "none",
            "--summary-file",
            str(summary),
            "--command",
            script,
        ],
        cwd=work,
        env={
            **nix.env(),
            "ATTIC_SERVER": double.url,
            "ATTIC_CACHE": "demo",
            "ATTIC_TOKEN": double.make_token({"demo": "rw"}),
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    small_path = os.path.realpath(work / "result")
    big_path = os.path.realpath(work / "result-big")
    assert {o.store_path for o in double.objects("demo")} == {small_path}
    text = summary.read_text()
    assert "Closure pushed: **outputs**" in text
    assert "Outputs verified in the cache: 1 of 1" in text
    assert big_path.rsplit("/", 1)[1] in text
    assert "paths too large to push" in done.stdout
