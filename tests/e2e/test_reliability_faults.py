"""Cache trouble never changes the build's result: every server fault, through the real action.

Each case runs a publishing push with a fault of the Attic double switched on (from the start,
or when the command starts), and checks: the action's exit code is the command's (or 1 with
``require-cache-push`` when the command succeeded), the run ends within the drain deadline,
exactly one clear warning about uploads (none when retries recover), no corrupted object in the
cache, and the token nowhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.attic_double import AtticDouble, Faults
from tests.e2e.test_reliability_support import (
    Bed,
    Run,
    assert_cache_is_sound,
    assert_no_trace,
    bed_for,
    drain_seconds,
    leaks,
    only,
    shared_tool_cache,  # noqa: F401 - fixture
    upload_counts,
    when_file,
)
from tests.nixenv import require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]

DRAIN_S = 5
#: After the deadline: stopping the watcher, the summary, closing the client, process exit.
MARGIN_S = 8.0
UPLOAD_TITLES = (
    "nix-job: uploads incomplete",
    "nix-job: uploads refused",
    "nix-job: publishing skipped",
)


@pytest.fixture
def bed(tmp_path: Path, shared_tool_cache: Path) -> Iterator[Bed]:  # noqa: F811
    require_nix()
    with bed_for(tmp_path, shared_tool_cache) as b:
        yield b


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultCase:
    """A fault, when it starts, and what the run must show."""

    at_start: Faults | None = None
    when_command_starts: Callable[[AtticDouble], None] | None = None
    token_perms: str = "rw"
    pin_key: bool = False
    drain: int = DRAIN_S
    published: bool = False  # every output reached the cache despite the fault
    warning: str | None = None  # title of the one upload warning; None: no upload warning
    words: tuple[str, ...] = ()  # what that warning (or its summary) must say
    discovery_warning: bool = False  # the fault also hit the read path (a separate warning)
    hits_deadline: bool = False  # uploads are still pending when the drain deadline passes


def stop_server(double: AtticDouble) -> None:
    double.stop()


def faults_now(faults: Faults) -> Callable[[AtticDouble], None]:
    def apply(double: AtticDouble) -> None:
        double.faults = faults

    return apply


CASES = {
    "server-down-mid-run": FaultCase(
        when_command_starts=stop_server,
        warning="nix-job: uploads incomplete",
        words=("failed",),
    ),
    "http-500-on-every-upload": FaultCase(
        at_start=Faults(upload_failure_rate=1.0),
        warning="nix-job: uploads incomplete",
        words=("drain deadline",),
        hits_deadline=True,
    ),
    "intermittent-500s-recover": FaultCase(
        at_start=Faults(upload_failure_rate=0.3, seed=7),
        drain=60,
        published=True,
    ),
    "very-slow-uploads": FaultCase(
        at_start=Faults(upload_delay_s=60.0),
        warning="nix-job: uploads incomplete",
        words=("left over",),
        hits_deadline=True,
    ),
    "connection-dropped-mid-upload": FaultCase(
        at_start=Faults(upload_failure="drop", upload_failure_rate=1.0, drop_after_bytes=64),
        warning="nix-job: uploads incomplete",
        words=("drain deadline",),
    ),
    "some-connections-dropped-recover": FaultCase(
        at_start=Faults(upload_failure="drop", fail_first_uploads=1, drop_after_bytes=64),
        drain=60,
        published=True,
    ),
    "401-once-the-command-runs": FaultCase(
        when_command_starts=faults_now(Faults(unauthorized=True)),
        warning="nix-job: uploads refused",
        words=("401",),
    ),
    "401-everywhere-with-a-pinned-key": FaultCase(
        at_start=Faults(unauthorized=True),
        pin_key=True,
        warning="nix-job: publishing skipped",
        words=("401",),
        discovery_warning=True,
    ),
    "403-token-without-push": FaultCase(
        token_perms="r",
        warning="nix-job: uploads refused",
        words=("403", "'w'"),
    ),
    "413-on-get-missing-paths": FaultCase(
        at_start=Faults(missing_paths_body_limit=10),
        warning="nix-job: uploads incomplete",
        words=("413",),
    ),
    "413-on-uploads": FaultCase(
        at_start=Faults(upload_body_limit=100),
        warning="nix-job: uploads incomplete",
        words=("413",),
    ),
    "garbage-answers-mid-run": FaultCase(
        when_command_starts=faults_now(Faults(garbage_status=200)),
        warning="nix-job: uploads incomplete",
        words=("not a json object",),
    ),
}


def run_case(bed: Bed, case: FaultCase, *, exit_code: int, require: bool) -> Run:
    drv = write_derivations(bed.root / "src", count=2, chain=True, size=20_000)
    outputs = drv.out_paths(bed.nix)
    command = (
        "trap 'date +%s.%N > ended' EXIT\n"
        "touch started\n"
        "while [ ! -e go ]; do sleep 0.02; done\n"
        f"nix-build {drv.file} -A d1\n"
        f"exit {exit_code}\n"
    )
    if case.at_start is not None:
        bed.double.faults = case.at_start

    def go(workspace: Path) -> None:
        if case.when_command_starts is not None:
            case.when_command_starts(bed.double)
        (workspace / "go").touch()

    inputs = {
        "push-cache": "true",
        "drain-timeout": str(case.drain),
        "require-cache-push": "true" if require else "false",
        "push-exclude": only(drv.tag),
    }
    if case.pin_key:
        inputs["attic-public-key"] = bed.double.cache("team").public_key
    token = bed.token(case.token_perms)
    run = bed.run(command, token=token, inputs=inputs, during=when_file("started", go))
    finished = time.time()

    result = run.result
    expected = 1 if (require and exit_code == 0 and not case.published) else exit_code
    assert result.exit_code == expected, run.dump()
    assert result.outputs["exit-code"] == str(exit_code), run.dump()
    ended = float((run.workspace / "ended").read_text())
    assert finished - ended < case.drain + MARGIN_S, f"ran {finished - ended:.1f} s after it"

    upload_warnings = [a for a in run.annotations("warning") if a.title in UPLOAD_TITLES]
    titles = [a.title for a in upload_warnings]
    if case.warning is None:
        assert upload_warnings == [], run.dump()
    else:
        assert titles[:1] == [case.warning], run.dump()
        # An auth refusal is also counted as incomplete uploads: a second warning, see
        # test_an_auth_refusal_is_one_warning_not_two.
        extra = {"nix-job: uploads incomplete"} if case.warning.endswith("refused") else set()
        assert set(titles[1:]) <= extra, run.dump()
        assert len(titles) <= 1 + len(extra), run.dump()
        said = f"{upload_warnings[0].message} {run.summary}".lower()
        assert all(w.lower() in said for w in case.words), said
    if case.hits_deadline:  # the summary reports the whole drain, up to the deadline
        assert drain_seconds(run.summary) >= case.drain - 0.5, run.summary
    discovery = [a for a in run.annotations("warning") if "discovery" in (a.title or "")]
    assert bool(discovery) == case.discovery_warning, run.dump()
    errors = run.annotations("error")
    if expected == 1 and exit_code == 0:
        assert [a.title for a in errors] == ["nix-job: required cache push failed"], run.dump()
    else:
        assert errors == [], run.dump()

    bed.double.faults = Faults()
    stored = {o.store_path for o in bed.double.objects("team")}
    if case.published:
        assert set(outputs.values()) <= stored, run.dump()
        assert run.result.outputs["paths-failed"] == "0"
    assert_cache_is_sound(bed)
    assert leaks(run, bed.nix) == []
    assert_no_trace(run, bed)
    return run


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in CASES])
def test_a_fault_never_changes_a_successful_builds_result(bed: Bed, name: str) -> None:
    run_case(bed, CASES[name], exit_code=0, require=False)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("server-down-mid-run", id="server-down"),
        pytest.param("http-500-on-every-upload", id="http-500"),
        pytest.param("403-token-without-push", id="403"),
    ],
)
def test_a_fault_never_hides_a_failed_command(bed: Bed, name: str) -> None:
    run_case(bed, CASES[name], exit_code=3, require=True)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("http-500-on-every-upload", id="http-500"),
        pytest.param("413-on-uploads", id="413"),
        pytest.param("intermittent-500s-recover", id="recovered-is-not-a-failure"),
    ],
)
def test_require_cache_push_turns_upload_trouble_into_an_error(bed: Bed, name: str) -> None:
    run_case(bed, CASES[name], exit_code=0, require=True)


def test_an_auth_refusal_is_one_warning_not_two(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=1)
    run = bed.run(
        f"nix-build {drv.file}",
        token=bed.token("r"),
        inputs={"push-cache": "true", "drain-timeout": str(DRAIN_S), "push-exclude": only(drv.tag)},
    )
    assert run.result.exit_code == 0, run.dump()
    titles = [a.title for a in run.annotations("warning") if a.title in UPLOAD_TITLES]
    assert titles == ["nix-job: uploads refused"], run.dump()


def test_a_server_down_from_the_start_only_warns_and_the_build_runs(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=1)
    bed.double.stop()
    run = bed.run(
        f"nix-build {drv.file} && touch ran",
        token=bed.token(),
        inputs={"push-cache": "true", "drain-timeout": str(DRAIN_S)},
    )
    assert run.result.exit_code == 0, run.dump()
    assert (run.workspace / "ran").exists()
    warnings = run.annotations("warning")
    assert [a.title for a in warnings] == ["nix-job: Attic cache discovery failed"], run.dump()
    assert "could not reach" in warnings[0].message.lower()
    assert run.result.outputs["cache-push"] == "false"
    assert leaks(run, bed.nix) == []
    assert_no_trace(run, bed)


def test_require_cache_push_fails_a_trusted_run_whose_cache_never_attached(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=1)
    bed.double.stop()
    run = bed.run(
        f"nix-build {drv.file} && touch ran",
        token=bed.token(),
        inputs={
            "push-cache": "true",
            "require-cache-push": "true",
            "drain-timeout": str(DRAIN_S),
        },
    )
    assert run.result.exit_code == 1, run.dump()
    assert (run.workspace / "ran").exists(), "the command must still run"
    errors = run.annotations("error")
    assert [a.title for a in errors] == ["nix-job: required cache push failed"], run.dump()
    assert "not attached" in errors[0].message
    assert leaks(run, bed.nix) == []
    assert_no_trace(run, bed)


def test_require_cache_push_is_not_an_error_on_a_pull_request(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=1)
    bed.double.stop()
    run = bed.run(
        f"nix-build {drv.file}",
        token=bed.token(),
        event="pull_request",
        inputs={"push-cache": "true", "require-cache-push": "true"},
    )
    assert run.result.exit_code == 0, run.dump()
    assert run.annotations("error") == [], run.dump()


def test_uploads_report_counts_in_the_summary_after_a_fault(bed: Bed) -> None:
    run = run_case(bed, CASES["413-on-uploads"], exit_code=0, require=False)
    counts = upload_counts(run.summary)
    assert counts["failed"] == 2, run.summary
    assert counts["during"] + counts["final"] == 0
